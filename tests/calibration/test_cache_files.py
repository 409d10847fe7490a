"""Calibration and timing caches get the protections of every file we own: a planted
symlink is never followed (its target never created), a FIFO never blocks, a file or a
directory of another user is refused, an oversize file is not read."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

from trt_provision.calibration.cache import (
    CacheHeader,
    GovernedCalibrationCache,
    cache_path_for,
)
from trt_provision.errors import CalibrationCacheError, StoreError
from trt_provision.identity import model_sha256
from trt_provision.runtimes.tensorrt.timing_cache import TimingCacheFile

from .models import make_cnn

pytestmark = pytest.mark.tier0

MAX_BLOB_BYTES = 64 << 20  # the cap the cache documents
SRC = Path(__file__).resolve().parents[2] / "src"
OTHER_UID = 4242
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to give a file to another uid (os.chown)"
)


def _header() -> CacheHeader:
    return CacheHeader(key="a" * 64, algorithm="minmax", dataset_version="v1",
                       payload_kind="ranges-json")


def _stored(directory: Path) -> GovernedCalibrationCache:
    cache = GovernedCalibrationCache(directory / "m.0123456789abcdef.int8.minmax.calib")
    with cache.lock():
        cache.store(_header(), b'{"ranges": {}}')
    return cache


def _give_away(path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Make ``path`` another user's: a real chown as root, else seen from another uid
    (then every file of ours, and its directory, belongs to somebody else)."""
    if os.geteuid() == 0:
        os.chown(path, OTHER_UID, OTHER_UID)
    else:
        real = os.geteuid()
        monkeypatch.setattr(os, "geteuid", lambda: real + 1)


def _in_child(code: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a child with a memory limit and a hang guard: a regression that
    blocks on a FIFO or reads /dev/zero fails (TimeoutExpired) instead of hanging."""
    script = "import resource\nresource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n"
    env = dict(os.environ, PYTHONPATH=str(SRC))
    return subprocess.run([sys.executable, "-c", script + textwrap.dedent(code)],
                          capture_output=True, text=True, env=env, timeout=60)


def test_planted_lock_symlink_is_refused_and_its_target_never_created(tmp_path: Path) -> None:
    victim = tmp_path / "victim" / "created-by-us"
    victim.parent.mkdir()
    cache = GovernedCalibrationCache(tmp_path / "cal" / "m.int8.calib")
    cache.path.parent.mkdir()
    cache.lock_path.symlink_to(victim)
    with pytest.raises(CalibrationCacheError, match="lock file is a symlink"), cache.lock():
        pass
    assert not os.path.lexists(victim)


@pytest.mark.tier1
def test_prepare_cache_dir_never_follows_a_planted_lock_symlink(tmp_path: Path) -> None:
    """Through the CLI: ``prepare --cache-dir`` with every lock name planted as a link."""
    model = make_cnn(tmp_path / "cnn.onnx")
    data = tmp_path / "d.npy"
    # Rows enough for a verdict: too few held-out samples is refused before any lock.
    np.save(data, np.random.default_rng(0).standard_normal((10, 40, 3, 8, 8)).astype(np.float32))
    cal = tmp_path / "cal"
    cal.mkdir()
    victims = []
    for kind in ("minmax", "percentile", "entropy", "trt"):
        calib = cache_path_for(cal, "cnn", "int8", model_hash=model_sha256(model), kind=kind)
        victim = tmp_path / f"victim-{kind}"
        calib.with_name(calib.name + ".lock").symlink_to(victim)
        victims.append(victim)
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", "prepare", str(model), "--precision", "int8",
         "--calibration-data", str(data), "--algorithm", "minmax", "--cache-dir", str(cal),
         "-o", str(tmp_path / "out.onnx")],
        capture_output=True, text=True, timeout=600, env=dict(os.environ, PYTHONPATH=str(SRC)),
    )
    assert proc.returncode == 1, proc.stderr
    assert "lock file is a symlink" in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert not any(os.path.lexists(v) for v in victims)


def test_fifo_as_sha256_sidecar_is_an_error_not_a_hang(tmp_path: Path) -> None:
    cache = _stored(tmp_path)
    cache.sha256_path.unlink()
    os.mkfifo(cache.sha256_path)
    out = _in_child(f"""
        from pathlib import Path
        from trt_provision.calibration.cache import GovernedCalibrationCache
        from trt_provision.errors import CalibrationCacheError
        cache = GovernedCalibrationCache(Path({str(cache.path)!r}))
        try:
            cache.load("a" * 64, "v1")
        except CalibrationCacheError as exc:
            print(exc.message)
    """)
    assert "calibration cache file is not a regular file" in out.stdout, out.stderr


def test_fifo_as_lock_file_is_an_error_not_a_hang(tmp_path: Path) -> None:
    cache = GovernedCalibrationCache(tmp_path / "m.int8.calib")
    os.mkfifo(cache.lock_path)
    out = _in_child(f"""
        from pathlib import Path
        from trt_provision.calibration.cache import GovernedCalibrationCache
        from trt_provision.errors import CalibrationCacheError
        try:
            with GovernedCalibrationCache(Path({str(cache.path)!r})).lock():
                print("locked")
        except CalibrationCacheError as exc:
            print(exc.message)
    """)
    assert "lock file is not a regular file" in out.stdout, out.stdout + out.stderr


def test_blob_symlinked_to_dev_zero_is_refused_unread(tmp_path: Path) -> None:
    cache = _stored(tmp_path)
    cache.path.unlink()
    cache.path.symlink_to("/dev/zero")
    out = _in_child(f"""
        from pathlib import Path
        from trt_provision.calibration.cache import GovernedCalibrationCache
        from trt_provision.errors import CalibrationCacheError
        try:
            GovernedCalibrationCache(Path({str(cache.path)!r})).load("a" * 64, "v1")
        except CalibrationCacheError as exc:
            print(exc.message)
    """)
    assert "symlink pointing outside" in out.stdout, out.stdout + out.stderr


def test_oversize_blob_is_refused(tmp_path: Path) -> None:
    cache = _stored(tmp_path)
    with open(cache.path, "r+b") as fh:
        fh.truncate(MAX_BLOB_BYTES + 1)  # sparse: costs no disk
    with pytest.raises(CalibrationCacheError, match="too large"):
        cache.load("a" * 64, "v1")


def test_sidecar_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = _stored(tmp_path)
    _give_away(cache.sha256_path, monkeypatch)
    with pytest.raises(CalibrationCacheError, match="is owned by uid"):
        cache.load("a" * 64, "v1")


@needs_root
def test_directory_of_another_user_is_refused_and_nothing_written(tmp_path: Path) -> None:
    theirs = tmp_path / "theirs"
    theirs.mkdir()
    os.chown(theirs, OTHER_UID, OTHER_UID)
    cache = GovernedCalibrationCache(theirs / "m.int8.calib")
    with pytest.raises(CalibrationCacheError, match="owned by uid"), cache.lock():
        pass
    with pytest.raises(CalibrationCacheError, match="owned by uid"):
        cache.load("a" * 64, "v1")
    assert list(theirs.iterdir()) == []


@needs_root
def test_lock_file_of_another_user_is_refused(tmp_path: Path) -> None:
    cache = GovernedCalibrationCache(tmp_path / "m.int8.calib")
    cache.lock_path.write_bytes(b"")
    os.chown(cache.lock_path, OTHER_UID, OTHER_UID)
    with pytest.raises(CalibrationCacheError, match="lock file is owned by uid"), cache.lock():
        pass


class _Config:
    """What TimingCacheFile asks of a TensorRT builder config."""

    def __init__(self) -> None:
        self.loaded: list[bytes] = []

    def create_timing_cache(self, data: bytes) -> object:
        self.loaded.append(bytes(data))
        return object()

    def set_timing_cache(self, cache: object, ignore_mismatch: bool) -> bool:
        return True


def test_timing_cache_lock_symlink_is_never_followed(tmp_path: Path) -> None:
    path = tmp_path / "trt-10.3.sm87.timing-cache"
    victim = tmp_path / "victim"
    path.with_name(path.name + ".lock").symlink_to(victim)
    with pytest.raises(StoreError, match="lock file is a symlink"):
        TimingCacheFile(path).attach(_Config())
    assert not os.path.lexists(victim)


def test_timing_cache_that_is_a_fifo_is_an_error_not_a_hang(tmp_path: Path) -> None:
    path = tmp_path / "trt-10.3.sm87.timing-cache"
    os.mkfifo(path)
    out = _in_child(f"""
        from pathlib import Path
        from trt_provision.errors import StoreError
        from trt_provision.runtimes.tensorrt.timing_cache import TimingCacheFile
        class Config:
            def create_timing_cache(self, data):
                return object()
            def set_timing_cache(self, cache, ignore):
                return True
        try:
            TimingCacheFile(Path({str(path)!r})).attach(Config())
        except StoreError as exc:
            print(exc.message)
    """)
    assert "timing cache is not a regular file" in out.stdout, out.stdout + out.stderr


def test_timing_cache_copied_for_trtexec_that_is_a_fifo_is_an_error_not_a_hang(
        tmp_path: Path) -> None:
    """The trtexec path copies the shared cache before a build and brings it back after:
    both reads used a plain read_bytes(), which waits forever on a FIFO."""
    path = tmp_path / "trt-10.3.sm87.timing-cache"
    os.mkfifo(path)
    copy = tmp_path / "work" / "copy.timing-cache"
    out = _in_child(f"""
        from pathlib import Path
        from trt_provision.errors import StoreError
        from trt_provision.runtimes.tensorrt.timing_cache import private_copy, publish_copy
        Path({str(copy.parent)!r}).mkdir()
        try:
            private_copy(Path({str(path)!r}), Path({str(copy)!r}))
        except StoreError as exc:
            print("copy:", exc.message)
        Path({str(copy)!r}).write_bytes(b"tactics")
        try:
            publish_copy(Path({str(path)!r}), b"", Path({str(copy)!r}), None)
        except StoreError as exc:
            print("publish:", exc.message)
    """)
    assert "copy: timing cache is not a regular file" in out.stdout, out.stdout + out.stderr
    assert "publish: timing cache is not a regular file" in out.stdout, out.stdout + out.stderr


def test_timing_cache_of_another_user_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "trt-10.3.sm87.timing-cache"
    path.write_bytes(b"cache")
    config = _Config()
    TimingCacheFile(path).attach(config)
    assert config.loaded == [b"cache"]  # control: our own file is read
    _give_away(path, monkeypatch)
    with pytest.raises(StoreError, match="owned by uid"):
        TimingCacheFile(path).attach(_Config())
