from __future__ import annotations

import contextlib
import errno
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from trt_provision.errors import EngineGateError, StoreError
from trt_provision.integrity import parse_sha256_sidecar, read_metadata, sha256_file
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import EngineIdentity, PrecisionMode

pytestmark = pytest.mark.tier1

IDENTITY = EngineIdentity(
    "m", "ab" * 32, PrecisionMode.FP16, "trt", "10.3.0", "sm87", "jp6.2", "0123456789ab"
)


def _publish(store: LocalEngineStore, payload: bytes) -> Path:
    staged = store.staging_path(IDENTITY)
    staged.write_bytes(payload)
    return store.publish(IDENTITY, staged, {"note": "x"}).engine_path


def test_publish_writes_engine_and_verifiable_sidecars(cache_dir: Path) -> None:
    store = LocalEngineStore(cache_dir)
    path = _publish(store, b"engine-bytes" * 1000)
    assert path == cache_dir / "m" / IDENTITY.filename
    digest, size = sha256_file(path)
    assert parse_sha256_sidecar(path.with_name(path.name + ".sha256"), path.name) == digest
    meta = read_metadata(path)
    assert meta["sha256"] == digest and meta["size_bytes"] == size and meta["note"] == "x"
    assert [p.name for p in path.parent.iterdir() if p.name.startswith(".tmp-")] == []
    if (sha256sum := _which("sha256sum")) is not None:
        subprocess.run(
            [sha256sum, "-c", "--quiet", path.name + ".sha256"], cwd=path.parent, check=True
        )


def _which(name: str) -> str | None:
    import shutil

    return shutil.which(name)


def test_disk_full_during_publish_keeps_previous_engine(
    cache_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = LocalEngineStore(cache_dir)
    path = _publish(store, b"old-good-engine")
    before = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    staged = store.staging_path(IDENTITY)
    staged.write_bytes(b"new-engine")
    real_write = os.write

    def full_disk(fd: int, data: bytes | memoryview) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "write", full_disk)
    with pytest.raises(StoreError, match="no space left"):
        store.publish(IDENTITY, staged, {})
    monkeypatch.setattr(os, "write", real_write)
    staged.unlink()
    after = {p.name: p.read_bytes() for p in path.parent.iterdir()}
    assert after == before


def test_unwritable_cache_dir_is_a_store_error(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    with pytest.raises(StoreError, match="cannot create cache directory"):
        LocalEngineStore(blocker / "cache").ensure_writable()
    if os.geteuid() != 0:  # root ignores permission bits
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        with pytest.raises(StoreError, match="needs write access"):
            LocalEngineStore(ro).ensure_writable()
        LocalEngineStore(ro).ensure_usable()  # reuse needs no write access
        with pytest.raises(StoreError, match="needs write access"), LocalEngineStore(ro).lock(
            IDENTITY
        ):
            pass


def test_temp_files_of_dead_writers_are_cleaned(cache_dir: Path) -> None:
    store = LocalEngineStore(cache_dir)
    _publish(store, b"x")
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    stale = cache_dir / "m" / f".tmp-{dead}-1-{IDENTITY.filename}"
    stale.write_bytes(b"half")
    mine = store.staging_path(IDENTITY)
    mine.write_bytes(b"in progress")
    removed = store.clean_temp_files()
    assert removed == [stale] and mine.exists()
    assert list(store.iter_engines()) == [cache_dir / "m" / IDENTITY.filename]


def test_lock_is_exclusive_between_processes(cache_dir: Path) -> None:
    store = LocalEngineStore(cache_dir)
    code = (
        "import sys, time; from pathlib import Path\n"
        "from trt_provision.stores.local import LocalEngineStore\n"
        "from trt_provision.types import EngineIdentity, PrecisionMode\n"
        "i = EngineIdentity('m', 'ab'*32, PrecisionMode.FP16, 'trt', '10.3.0', 'sm87', 'jp6.2', '0123456789ab')\n"
        "s = LocalEngineStore(Path(sys.argv[1]))\n"
        "with s.lock(i):\n"
        "    print('locked', flush=True); time.sleep(0.5)\n"
    )
    with store.lock(IDENTITY):
        child = subprocess.Popen(
            [sys.executable, "-c", code, str(cache_dir)], stdout=subprocess.PIPE, text=True
        )
        try:
            child.wait(timeout=0.5)
            raise AssertionError("child took the lock while we held it")
        except subprocess.TimeoutExpired:
            pass
    assert child.communicate(timeout=120)[0].strip() == "locked"


# ------------------------------------------------------------------ modes, owners, symlinks


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


@pytest.mark.parametrize("umask", [0o000, 0o077])
@pytest.mark.parametrize("private", [False, True])
def test_directories_and_files_get_exact_modes_whatever_the_umask(
    tmp_path: Path, umask: int, private: bool
) -> None:
    root = tmp_path / "a" / "cache"
    old = os.umask(umask)
    try:
        store = LocalEngineStore(root, private=private)
        store.ensure_usable()
        with store.lock(IDENTITY):
            path = _publish(store, b"engine")
    finally:
        os.umask(old)
    dir_mode, file_mode = (0o700, 0o600) if private else (0o755, 0o644)
    for directory in (tmp_path / "a", root, root / "m", root / ".locks"):
        assert _mode(directory) == dir_mode, (directory, oct(_mode(directory)))
    # Files: the cache's mode, or stricter when the umask asks for it.
    for file in (path, path.with_name(path.name + ".sha256"), path.with_name(path.name + ".json")):
        assert _mode(file) == file_mode & ~umask, (file, oct(_mode(file)))


def test_refuses_to_publish_into_a_directory_others_can_write(cache_dir: Path) -> None:
    store = LocalEngineStore(cache_dir)
    path = _publish(store, b"good")
    before = path.read_bytes()
    staged = store.staging_path(IDENTITY)
    staged.write_bytes(b"new")
    os.chmod(path.parent, 0o777)
    with pytest.raises(StoreError, match="model directory is writable by group or others") as e:
        store.publish(IDENTITY, staged, {})
    assert e.value.context["fix"] == f"chmod go-w {path.parent}"
    with pytest.raises(StoreError, match="writable by group or others"):
        store.staging_path(IDENTITY)
    assert path.read_bytes() == before
    os.chmod(path.parent, 0o755)
    os.chmod(cache_dir, 0o757)
    with pytest.raises(StoreError, match="cache directory or a directory above it"):
        store.staging_path(IDENTITY)
    with pytest.raises(StoreError, match="writable by group or others"):
        store.ensure_usable()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another uid")
def test_refuses_to_publish_into_a_model_directory_of_another_user(cache_dir: Path) -> None:
    store = LocalEngineStore(cache_dir)
    (cache_dir / "m").mkdir()
    os.chown(cache_dir / "m", 54321, 54321)
    with pytest.raises(StoreError, match="owned by uid 54321") as e:
        store.staging_path(IDENTITY)
    assert str(cache_dir / "m") in str(e.value) and "chown" in str(e.value)
    (cache_dir / ".locks").mkdir()
    os.chown(cache_dir / ".locks", 54321, 54321)
    with pytest.raises(StoreError, match="lock directory is owned by uid 54321"), store.lock(
        IDENTITY
    ):
        pass


def test_dangling_lock_symlink_is_refused_and_its_target_never_created(
    cache_dir: Path, tmp_path: Path
) -> None:
    store = LocalEngineStore(cache_dir)
    (cache_dir / ".locks").mkdir()
    target = tmp_path / "victim" / "file"
    target.parent.mkdir()
    (cache_dir / ".locks" / (IDENTITY.filename + ".lock")).symlink_to(target)
    with pytest.raises(StoreError, match="lock file is a symlink"), store.lock(IDENTITY):
        pass
    assert not os.path.lexists(target)


def test_symlinked_lock_directory_is_refused(cache_dir: Path, tmp_path: Path) -> None:
    store = LocalEngineStore(cache_dir)
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (cache_dir / ".locks").symlink_to(elsewhere, target_is_directory=True)
    with pytest.raises(StoreError, match="lock directory is a symlink"), store.lock(IDENTITY):
        pass
    assert list(elsewhere.iterdir()) == []


def test_symlinked_model_directory_is_never_written_or_cleaned_through(
    cache_dir: Path, tmp_path: Path
) -> None:
    store = LocalEngineStore(cache_dir)
    outside = tmp_path / "outside"
    outside.mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    theirs = outside / f".tmp-{dead}-0123abcd-{IDENTITY.filename}"
    theirs.write_bytes(b"not ours to delete")
    (cache_dir / "m").symlink_to(outside, target_is_directory=True)
    with pytest.raises(StoreError, match="model directory is a symlink"):
        store.staging_path(IDENTITY)
    assert store.clean_temp_files() == [] and theirs.exists()
    assert sorted(p.name for p in outside.iterdir()) == [theirs.name]


def test_clean_temp_files_keeps_names_that_are_not_ours(cache_dir: Path) -> None:
    store = LocalEngineStore(cache_dir)
    model_dir = cache_dir / "m"
    model_dir.mkdir()
    keep = [
        model_dir / ".tmp-draft.txt",
        model_dir / ".tmp-999999999-deadbeef-notes.txt",
        model_dir / ".tmp-999999999-deadbeef-other.0000000000000000.fp32.cpu-x.host.ortcpu-1.c.engine",
    ]
    for path in keep:
        path.write_text("user data")
    (model_dir / ".tmp-editor-backup").mkdir()
    (model_dir / ".tmp-editor-backup" / "a.txt").write_text("user data")
    ours = model_dir / f".tmp-999999999-deadbeef-{IDENTITY.filename}.json"
    ours.write_text("{}")
    assert store.clean_temp_files() == [ours]
    assert all(p.exists() for p in keep) and (model_dir / ".tmp-editor-backup" / "a.txt").exists()


def _read_only_bind(path: Path) -> contextlib.AbstractContextManager[None]:
    @contextlib.contextmanager
    def mounted() -> Iterator[None]:
        if os.geteuid() != 0 or shutil.which("mount") is None:
            pytest.skip("a read-only bind mount needs root and mount")
        if subprocess.run(["mount", "--bind", str(path), str(path)],
                          capture_output=True).returncode != 0:
            pytest.skip("bind mounts are not permitted here")
        try:
            if subprocess.run(["mount", "-o", "remount,bind,ro", str(path), str(path)],
                              capture_output=True).returncode != 0:
                pytest.skip("read-only remounts are not permitted here")
            yield
        finally:
            subprocess.run(["umount", str(path)], capture_output=True)

    return mounted()


def test_read_only_cache_serves_reuse_and_refuses_builds_clearly(cache_dir: Path) -> None:
    store = LocalEngineStore(cache_dir)
    _publish(store, b"engine")
    dead = cache_dir / "m" / f".tmp-999999999-deadbeef-{IDENTITY.filename}"
    dead.write_bytes(b"left by a killed run")
    with _read_only_bind(cache_dir):
        store.ensure_usable()
        assert not store.writable()
        assert store.clean_temp_files() == [] and dead.exists()
        with pytest.raises(StoreError, match="needs write access"):
            store.ensure_writable()
        with pytest.raises(StoreError, match="read-only: building or fetching an engine needs "
                                             "write access"), store.lock(IDENTITY):
            pass
    assert store.clean_temp_files() == [dead]


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another gid")
def test_group_write_is_refused_for_a_shared_group_and_accepted_for_a_private_one(
    cache_dir: Path,
) -> None:
    from trt_provision._fs import _private_group

    store = LocalEngineStore(cache_dir)
    os.chmod(cache_dir, 0o775)
    os.chown(cache_dir, 0, 54321)  # a group with no passwd/group entry: not ours alone
    with pytest.raises(StoreError, match="writable by group or others"):
        store.ensure_usable()
    own_gid = os.getegid()
    if not _private_group(own_gid):
        pytest.skip("this user's group is shared with other users")
    os.chown(cache_dir, 0, own_gid)  # umask-002 style: group-writable, the group is only us
    store.ensure_usable()


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a file to another uid")
def test_lock_file_of_another_user_is_refused(cache_dir: Path) -> None:
    """A lock file another user owns could be held by them for ever: refused, naming it."""
    store = LocalEngineStore(cache_dir)
    with store.lock(IDENTITY):
        pass
    lock = cache_dir / ".locks" / (IDENTITY.filename + ".lock")
    os.chown(lock, 4242, 4242)
    with pytest.raises(StoreError, match="lock file is owned by uid 4242"), store.lock(IDENTITY):
        pass


def test_published_sha256_sidecar_covers_the_metadata(cache_dir: Path) -> None:
    store = LocalEngineStore(cache_dir)
    staged = store.staging_path(IDENTITY)
    staged.write_bytes(b"engine")
    entry = store.publish(IDENTITY, staged, {"device_memory_bytes": 1})
    meta = entry.metadata_path.read_bytes()
    assert parse_sha256_sidecar(entry.sha256_path, entry.engine_path.name,
                                metadata=meta) == entry.sha256
    with pytest.raises(EngineGateError, match="does not match its sha256"):
        parse_sha256_sidecar(entry.sha256_path, entry.engine_path.name,
                             metadata=meta.replace(b'"device_memory_bytes": 1',
                                                   b'"device_memory_bytes": 9'))
