"""Another local user, a planted file or a full disk against the local cache, end to end.

Each test reproduces an attack on the real CLI or the real store/gate: a second local user
(a uid with no other rights, through ``setpriv``; simulated with ``os.chown`` where only
that works), symlinks and FIFOs planted in the cache, a user's directory mistaken for the
cache, a small real tmpfs filled up, a read-only cache. Tests run as root in CI too: root
ignores permission bits, so the policy is checked on stat results, never on EACCES.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from reliability._support import (
    DEMO_MANIFEST,
    DEMO_MODELS,
    ROOT,
    engine_of,
    sha256_hex,
    sidecars,
    snapshot,
)

pytestmark = pytest.mark.tier1

OTHER_UID = 54321  # a second local user: no passwd entry needed, no rights of its own


def _run(*args: str, uid: int | None = None, env: dict[str, str] | None = None,
         cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "trt_provision", *args]
    if uid is not None:
        cmd = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups", *cmd]
    full_env = {**os.environ, **(env or {})}
    return subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=full_env, cwd=cwd)


def _error_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [ln for ln in proc.stderr.splitlines() if ln.startswith(("error:", "internal error"))]


def _failures(proc: subprocess.CompletedProcess[str]) -> dict[str, str]:
    """Exit 1 with one error line, and each failed model's ``error_type: error`` from the
    JSON summary (the run goes on past a failing model)."""
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = _error_lines(proc)
    assert "not provisioned" in line, line
    return {
        r["name"]: f"{r['error_type']}: {r['error']}"
        for r in json.loads(proc.stdout)["results"]
        if r["outcome"] == "failed"
    }


def _can_switch_user() -> bool:
    if os.geteuid() != 0 or shutil.which("setpriv") is None:
        return False
    probe = subprocess.run(
        ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", "true"],
        capture_output=True, timeout=60,
    )
    return probe.returncode == 0


def _as_other(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["setpriv", f"--reuid={OTHER_UID}", f"--regid={OTHER_UID}", "--clear-groups", *cmd],
        capture_output=True, text=True, timeout=120,
    )


needs_second_user = pytest.mark.skipif(
    not _can_switch_user(), reason="needs root and setpriv to act as a second local user"
)
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to give files to another uid (os.chown)"
)


@pytest.fixture
def shared_dir() -> Iterator[Path]:
    """A sticky, world-writable directory like /tmp, reachable by the second user."""
    path = Path(tempfile.mkdtemp(prefix="shared-sticky-"))
    os.chmod(path, 0o1777)
    try:
        yield path
    finally:
        shutil.rmtree(path, ignore_errors=True)


def _copy_cache(src: Path, dst: Path) -> None:
    shutil.copytree(src, dst, symlinks=True)
    for path in (dst, *dst.rglob("*")):
        os.chmod(path, 0o755 if path.is_dir() else 0o644)


def _demo_args(cache: Path, *extra: str) -> tuple[str, ...]:
    return ("provision", str(DEMO_MANIFEST), "--cache-dir", str(cache), "--no-remote",
            "--runtime", "onnxruntime", "--json", *extra)


# ------------------------------------------------------------------ item 8: another user


def _swapped_engine_material(pristine: Path, out: Path) -> dict[str, Path]:
    """demo_cnn's entry with two_inputs' engine bytes and sidecars rewritten to agree."""
    victim = engine_of(pristine, "demo_cnn")
    donor = engine_of(pristine, "two_inputs")
    out.mkdir()
    engine = out / victim.name
    engine.write_bytes(donor.read_bytes())
    digest = sha256_hex(engine)
    sha, meta = sidecars(victim)
    (out / sha.name).write_text(f"{digest}  {victim.name}\n")
    data = json.loads(meta.read_text())
    data.update(sha256=digest, size_bytes=engine.stat().st_size)
    (out / meta.name).write_text(json.dumps(data))
    for p in (out, *out.iterdir()):
        os.chmod(p, 0o755 if p.is_dir() else 0o644)
    return {"engine": engine}


@needs_second_user
def test_second_user_planting_a_cache_in_a_shared_dir_is_refused(
    shared_dir: Path, pristine_cache: Path
) -> None:
    """The attack: in a sticky shared directory another user pre-creates the cache (or a
    model directory in it) holding a swapped engine with consistent sidecars. Root must
    neither reuse it nor call it clean, and say which path is wrong and how to fix it."""
    material = shared_dir / "material"
    _swapped_engine_material(pristine_cache, material)
    cache = shared_dir / "cache"
    for step in (
        ("mkdir", "-p", str(cache / "demo_cnn")),
        ("cp", *(str(p) for p in sorted(material.iterdir())), str(cache / "demo_cnn")),
    ):
        done = _as_other(*step)
        assert done.returncode == 0, done.stderr
    assert (cache / "demo_cnn").stat().st_uid == OTHER_UID
    before = snapshot(cache)

    proc = _run(*_demo_args(cache))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    (line,) = _error_lines(proc)
    assert f"owned by uid {OTHER_UID}" in line and str(cache) in line and "chown" in line
    assert snapshot(cache) == before  # nothing reused, nothing written into it

    verify = _run("verify", "--cache-dir", str(cache), "--json")
    assert verify.returncode == 1
    bad = json.loads(verify.stdout)["bad"]
    assert [Path(b["engine"]).parent.name for b in bad] == ["demo_cnn"]
    assert f"owned by uid {OTHER_UID}" in bad[0]["reason"]


@needs_second_user
def test_cache_created_under_umask_0_keeps_other_users_out(shared_dir: Path) -> None:
    """Directories are created 0755 whatever the umask, so the second user cannot add a
    model directory to a cache root made in a shared directory."""
    from trt_provision.stores.local import LocalEngineStore

    cache = shared_dir / "cache"
    old = os.umask(0)
    try:
        LocalEngineStore(cache).ensure_usable()
    finally:
        os.umask(old)
    assert stat.S_IMODE(cache.stat().st_mode) == 0o755
    attempt = _as_other("mkdir", str(cache / "demo_cnn"))
    assert attempt.returncode != 0 and not (cache / "demo_cnn").exists()


@needs_root
def test_model_dir_owned_by_another_user_is_neither_reused_nor_published_into(
    cache_copy: Path,
) -> None:
    """Simulated second user (os.chown): a model directory they own inside our cache."""
    model_dir = cache_copy / "demo_cnn"
    for path in (model_dir, *model_dir.iterdir()):
        os.chown(path, OTHER_UID, OTHER_UID)
    before = snapshot(cache_copy)
    proc = _run(*_demo_args(cache_copy))
    (line,) = _failures(proc).values()
    assert "StoreError" in line and f"owned by uid {OTHER_UID}" in line
    assert str(model_dir) in line and f"chown {os.geteuid()}" in line
    assert "is not reusable" in proc.stderr  # the gate refused it first
    assert snapshot(cache_copy) == before


@pytest.mark.parametrize("victim", ["engine", "sha256", "json", "model_dir", "cache_dir"])
def test_group_or_world_writable_entries_are_refused_and_verify_calls_them_bad(
    cache_copy: Path, victim: str
) -> None:
    engine = engine_of(cache_copy, "two_inputs")
    sha, meta = sidecars(engine)
    target = {"engine": engine, "sha256": sha, "json": meta, "model_dir": engine.parent,
              "cache_dir": cache_copy}[victim]
    os.chmod(target, stat.S_IMODE(target.stat().st_mode) | 0o022)
    verify = _run("verify", "--cache-dir", str(cache_copy), "--json")
    assert verify.returncode == 1
    bad = json.loads(verify.stdout)["bad"]
    expected = set(DEMO_MODELS) if victim == "cache_dir" else {"two_inputs"}
    assert {Path(b["engine"]).parent.name for b in bad} == expected
    assert all("writable by group or others" in b["reason"] for b in bad)
    assert all("chmod go-w" in b["reason"] for b in bad)
    proc = _run(*_demo_args(cache_copy))
    if victim == "cache_dir":
        # Never publish into a directory others can write: stop and say how to fix it.
        assert proc.returncode == 1, proc.stdout
        (line,) = _error_lines(proc)
        assert "writable by group or others" in line and "chmod go-w" in line
        return
    if victim == "model_dir":
        (line,) = _failures(proc).values()
        assert "writable by group or others" in line and "chmod go-w" in line
        return
    # A writable file in our own directory is not reused: it is rebuilt and replaced.
    assert proc.returncode == 0, proc.stderr
    outcomes = {r["name"]: r["outcome"] for r in json.loads(proc.stdout)["results"]}
    assert outcomes["two_inputs"] == "built"
    rebuilt = engine_of(cache_copy, "two_inputs")
    for path in (rebuilt, *sidecars(rebuilt)):
        assert not stat.S_IMODE(path.stat().st_mode) & 0o022


# ------------------------------------------------------------------ issue 12 item 9: read-only


def _reuse_and_build_read_only(cache: Path, uid: int | None, env: dict[str, str]) -> None:
    before = snapshot(cache)
    reuse = _run(*_demo_args(cache), uid=uid, env=env)
    assert reuse.returncode == 0, reuse.stderr
    summary = json.loads(reuse.stdout)
    assert summary["reused"] == len(DEMO_MODELS) and summary["built"] == 0
    assert snapshot(cache) == before  # no lock file, no last-use stamp, nothing written
    build = _run(*_demo_args(cache, "--force-rebuild"), uid=uid, env=env)
    failures = _failures(build)
    assert sorted(failures) == sorted(DEMO_MODELS)
    assert all("needs write access" in e and str(cache) in e for e in failures.values())
    assert snapshot(cache) == before


@needs_second_user
def test_read_only_cache_of_root_serves_another_user_without_write_access(
    shared_dir: Path, pristine_cache: Path
) -> None:
    cache = shared_dir / "cache"
    _copy_cache(pristine_cache, cache)  # root-owned, 0755/0644: trusted, not writable by them
    home = shared_dir / "home"
    home.mkdir(mode=0o777)
    _reuse_and_build_read_only(
        cache, OTHER_UID, {"HOME": str(home), "XDG_CACHE_HOME": str(home)}
    )


def test_read_only_cache_without_write_permission(
    tmp_path: Path, pristine_cache: Path
) -> None:
    """chmod -w: as a normal user the kernel enforces it; root ignores the bits, so there
    the same run goes through a read-only bind mount (or is skipped)."""
    cache = tmp_path / "cache"
    _copy_cache(pristine_cache, cache)
    if os.geteuid() != 0:
        for path in (cache, *cache.rglob("*")):
            os.chmod(path, 0o555 if path.is_dir() else 0o444)
        try:
            _reuse_and_build_read_only(cache, None, {})
        finally:
            for path in (cache, *cache.rglob("*")):
                os.chmod(path, 0o755 if path.is_dir() else 0o644)
        return
    with _read_only_bind(cache):
        _reuse_and_build_read_only(cache, None, {})


@contextlib.contextmanager
def _read_only_bind(path: Path) -> Iterator[None]:
    if shutil.which("mount") is None:
        pytest.skip("no mount command for a read-only bind mount")
    first = subprocess.run(["mount", "--bind", str(path), str(path)], capture_output=True)
    if first.returncode != 0:
        pytest.skip(f"bind mounts not permitted here: {first.stderr.decode().strip()}")
    try:
        ro = subprocess.run(
            ["mount", "-o", "remount,bind,ro", str(path), str(path)], capture_output=True
        )
        if ro.returncode != 0:
            pytest.skip(f"read-only remount not permitted: {ro.stderr.decode().strip()}")
        yield
    finally:
        subprocess.run(["umount", str(path)], capture_output=True)


@needs_root
def test_another_users_read_only_image_is_trusted(tmp_path: Path, pristine_cache: Path) -> None:
    """A device image mounted read-only may belong to another uid: nobody can change it
    without remounting, so reuse works; the same files on a writable mount are refused."""
    cache = tmp_path / "cache"
    _copy_cache(pristine_cache, cache)
    for path in (cache, *cache.rglob("*")):
        os.chown(path, OTHER_UID, OTHER_UID)
    with _read_only_bind(cache):
        reuse = _run(*_demo_args(cache))
        assert reuse.returncode == 0, reuse.stderr
        assert json.loads(reuse.stdout)["reused"] == len(DEMO_MODELS)
    writable = _run(*_demo_args(cache))
    assert writable.returncode == 1
    (line,) = _error_lines(writable)
    assert f"owned by uid {OTHER_UID}" in line


# ------------------------------------------------------------------ item 11: a user's directory


def _user_directory(root: Path) -> None:
    (root / ".tmp-editor-backup" / "deep").mkdir(parents=True)
    (root / ".tmp-editor-backup" / "deep" / "notes.md").write_text("keep me")
    (root / ".tmp-draft.txt").write_text("draft")
    projects = root / "projects"
    (projects / ".tmp-editor-backup").mkdir(parents=True)
    (projects / ".tmp-editor-backup" / "x.py").write_text("x = 1\n")
    (projects / ".tmp-draft.txt").write_text("draft")
    (projects / "app.engine.json").write_text('{"app": true}')
    (projects / "app.engine").write_text("not an engine of ours")
    (projects / ".tmp-999999999-deadbeef-notes.txt").write_text("looks like ours, is not")
    (projects / ".tmp-999999999-ort-abcd1234").write_text("a file, not our work dir")
    dead_dir = projects / ".tmp-999999999-xyz"
    dead_dir.mkdir()
    (dead_dir / "data.bin").write_bytes(b"\0" * 10)


@pytest.mark.parametrize(
    "command",
    [
        ("cache", "gc", "--apply"),
        ("cache", "clear", "--yes"),
        ("provision", str(DEMO_MANIFEST), "--no-remote", "--runtime", "onnxruntime"),
    ],
    ids=["gc-apply", "clear-yes", "provision"],
)
def test_a_users_directory_mistaken_for_the_cache_loses_nothing(
    tmp_path: Path, command: tuple[str, ...]
) -> None:
    root = tmp_path / "home"
    root.mkdir()
    _user_directory(root)
    before = snapshot(root)
    proc = _run(*command, "--cache-dir", str(root))
    assert proc.returncode == 0, proc.stderr
    after = snapshot(root)
    assert {k: v for k, v in after.items() if k in before} == before
    # The only new files are provision's engines (and lock files): all ours by name.
    for name in set(after) - set(before):
        assert name.startswith((".locks/", *(f"{m}/" for m in DEMO_MODELS))), name


# ------------------------------------------------------------------ item 10: planted symlinks


def test_dangling_lock_symlink_never_creates_its_target(cache_copy: Path, tmp_path: Path) -> None:
    from reliability._support import demo_request
    from trt_provision.compose import wire
    from trt_provision.config import Settings

    wired = wire(Settings(cache_dir=cache_copy, runtime="onnxruntime"), use_remote=False)
    identity = wired.compiler.identity_for(demo_request().backbones[0])[0]
    target = tmp_path / "outside" / "created-by-us"
    target.parent.mkdir()
    lock = cache_copy / ".locks" / (identity.filename + ".lock")
    lock.parent.mkdir(exist_ok=True)
    lock.unlink(missing_ok=True)
    lock.symlink_to(target)
    proc = _run(*_demo_args(cache_copy, "--force-rebuild"))
    (line,) = _failures(proc).values()
    assert "lock file is a symlink" in line and str(lock) in line
    assert not target.exists() and not os.path.lexists(target)


def test_symlinked_model_directory_is_never_followed(cache_copy: Path, tmp_path: Path) -> None:
    """A model directory replaced by a symlink to elsewhere: no reuse from it, no publish
    into it, no temp file deleted there (by provision, gc or clear)."""
    outside = tmp_path / "outside"
    shutil.move(str(cache_copy / "demo_cnn"), outside)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    engine_name = next(outside.glob("*.engine")).name
    (outside / f".tmp-{dead}-0123abcd-{engine_name}").write_bytes(b"theirs")
    (cache_copy / "demo_cnn").symlink_to(outside, target_is_directory=True)
    before = snapshot(outside)
    for args in (("cache", "gc", "--apply", "--cache-dir", str(cache_copy)),
                 ("cache", "clear", "--yes", "--cache-dir", str(cache_copy))):
        assert _run(*args).returncode == 0
        assert snapshot(outside) == before
    verify = _run("verify", "--cache-dir", str(cache_copy), "--json")
    assert verify.returncode == 1
    assert any("symlink" in b["reason"] for b in json.loads(verify.stdout)["bad"])
    proc = _run(*_demo_args(cache_copy))
    (line,) = _failures(proc).values()
    assert "model directory is a symlink" in line and "remove the symlink" in line
    assert snapshot(outside) == before


# ------------------------------------------------------------------ ENOSPC on a real tmpfs


@contextlib.contextmanager
def _tmpfs(path: Path, size: str) -> Iterator[None]:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        pytest.skip("a real tmpfs needs root; tests/reliability/test_disk_full.py injects ENOSPC")
    path.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size},mode=0755", "tmpfs", str(path)],
        capture_output=True,
    )
    if done.returncode != 0:
        pytest.skip(f"mounting a tmpfs is not permitted here: {done.stderr.decode().strip()}")
    try:
        yield
    finally:
        if subprocess.run(["umount", str(path)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(path)], capture_output=True)


def _fill(directory: Path) -> Path:
    filler = directory / "filler.bin"
    with open(filler, "wb", buffering=0) as fh:
        block = b"\0" * 4096
        with contextlib.suppress(OSError):
            while True:
                fh.write(block)
    return filler


def test_disk_full_while_onnx_runtime_writes_the_engine_on_a_real_tmpfs(
    tmp_path: Path,
) -> None:
    disk = tmp_path / "disk"
    with _tmpfs(disk, "4m"):
        cache = disk / "cache"
        first = _run(*_demo_args(cache))
        assert first.returncode == 0, first.stderr
        before = snapshot(cache)
        filler = _fill(disk)
        proc = _run(*_demo_args(cache, "--force-rebuild"))
        failures = _failures(proc)
        assert failures, proc.stdout
        for line in failures.values():
            assert "no space left on device" in line, line
            assert line.startswith("EngineBuildError") and "Protobuf" not in line
        assert {k: v for k, v in snapshot(cache).items() if not k.startswith(".locks")} == {
            k: v for k, v in before.items() if not k.startswith(".locks")
        }
        assert not [p for p in cache.rglob(".tmp-*")]
        filler.unlink()
        again = _run(*_demo_args(cache, "--force-rebuild"))
        assert again.returncode == 0, again.stderr
        assert json.loads(again.stdout)["built"] == len(DEMO_MODELS)
