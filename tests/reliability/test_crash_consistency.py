"""Crash consistency: kill -9 `provision` at random moments; the next run finds no engine
accepted with wrong bytes, trusts no half-written calibration cache and finishes with a
verified cache. The full figures come from scripts/reliability_crash.py; this runs a smaller
share of them (the download share is in test_crash_download_s3.py)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reliability._support import engine_of, load_script, sidecars

pytestmark = [pytest.mark.slow, pytest.mark.tier1]


def test_random_kills_never_leave_an_accepted_wrong_engine() -> None:
    driver = load_script("reliability_crash")
    report = driver.run(trials=40, workers=2, seed=20240601)
    assert report["trials"] == 40
    # The kills really land inside runs. How many do depends on machine speed (a kill delay
    # against a run's duration), so the bound is loose: a quarter, where about 3 in 4 land.
    assert report["killed_mid_run"] >= 10
    assert report["failures"] == []


def test_random_kills_during_calibration_never_leave_a_trusted_half_cache() -> None:
    driver = load_script("reliability_crash")
    report = driver.run_precision(trials=12, workers=2, seed=20240602)
    assert report["trials"] == 12
    assert report["killed_mid_run"] >= 2  # about 3 in 4 land; loose, as above
    assert report["failures"] == []


def test_calibration_audit_flags_a_commit_mark_over_other_bytes(tmp_path: Path) -> None:
    """Control: the independent calibration audit tells complete, incomplete and
    inconsistent caches apart (a truncated blob under a matching-looking .sha256)."""
    import hashlib

    common = load_script("reliability_common")
    directory = tmp_path / "cache" / ".calibration"
    directory.mkdir(parents=True)
    key = "ab" * 32
    header = json.dumps({"key": key, "dataset_version": "sha256:x"}).encode()
    blob = b"TRTPCAL\n" + header + b"\n" + b"payload"
    for name, data, mark in (
        ("good.calib", blob, blob),
        ("half.calib", blob[: len(blob) // 2], blob),
        ("unmarked.calib", blob[:5], None),
    ):
        (directory / name).write_bytes(data)
        (directory / f"{name}.dataset_sha256").write_text("sha256:x\n")
        if mark is not None:
            digest = hashlib.sha256(mark).hexdigest()
            (directory / f"{name}.sha256").write_text(f"{digest}  {name}\n")
    (directory / ".good.calib.x1y2.tmp").write_bytes(blob[:3])
    audit = common.audit_calibration(tmp_path / "cache")
    assert audit.complete == {"good.calib": key}
    assert audit.inconsistent == ["half.calib"]
    assert audit.incomplete == ["unmarked.calib"]
    assert audit.temp_files == [".good.calib.x1y2.tmp"]


def test_audit_flags_an_engine_whose_sidecars_were_forged_to_match(
    tmp_path: Path, pristine_cache: Path
) -> None:
    """Control: the independent audit notices a truncated engine that a broken publish
    could have stamped with matching sidecars (the gate then accepts it)."""
    common = load_script("reliability_common")
    cache = tmp_path / "cache"
    shutil.copytree(pristine_cache, cache)
    engine = engine_of(cache, "dynamic_mlp")
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
    import hashlib

    digest = hashlib.sha256(engine.read_bytes()).hexdigest()
    sha, meta = sidecars(engine)
    data = json.loads(meta.read_text())
    data.update(sha256=digest, size_bytes=engine.stat().st_size)
    meta.write_text(json.dumps(data))
    from trt_provision.integrity import sha256_sidecar_bytes

    sha.write_bytes(sha256_sidecar_bytes(digest, engine.name, meta.read_bytes()))
    audit = common.audit_cache(cache)
    assert audit.accepted_wrong_bytes == [engine.name]


def test_gc_removes_calibration_temp_files_left_by_a_kill(tmp_path: Path) -> None:
    """A process dying inside GovernedCalibrationCache.store leaves its temp file behind;
    once the writer is gone, gc plans it for removal and the next provision's clean-up
    removes it."""
    import subprocess
    import sys

    from trt_provision.stores.local import LocalEngineStore
    from trt_provision.stores.maintenance import plan_gc

    cache = tmp_path / "cache"
    directory = cache / ".calibration"
    directory.mkdir(parents=True)
    child = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from trt_provision.calibration.cache import CacheHeader, GovernedCalibrationCache\n"
        "os.replace = lambda *a, **k: os._exit(9)  # die after the temp file is written\n"
        "c = GovernedCalibrationCache(Path(sys.argv[1]) / 'm.0123456789abcdef.int8.calib')\n"
        "c.store(CacheHeader(key='a' * 64, dataset_version='v1', algorithm='minmax',"
        " payload_kind='ranges-json'), b'payload')\n"
    )
    proc = subprocess.run([sys.executable, "-c", child, str(directory)], capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 9, proc.stderr
    leftovers = [p for p in directory.iterdir() if p.name.startswith(".tmp-")]
    assert leftovers, sorted(p.name for p in directory.iterdir())
    planned = {item.path for item in plan_gc(cache).items}
    assert set(leftovers) <= planned
    LocalEngineStore(cache).clean_temp_files()
    assert not [p for p in directory.iterdir() if p.name.startswith(".tmp-")]
