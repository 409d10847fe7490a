from __future__ import annotations

import errno
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trt_provision.errors import StoreError
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
        with pytest.raises(StoreError, match="not writable"):
            LocalEngineStore(ro).ensure_writable()


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
