"""Through the real provision CLI: a source longer than ``calibration.max_batches`` is judged
on the rows after them (they never calibrate), where the first ``max_batches`` alone were
"not enough evidence"; the calibration key and the governed ranges stay those of the first
``max_batches``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from .models import make_mlp_classifier

pytestmark = pytest.mark.tier1

ROWS = 40  # per batch: the first 4 batches give 8 validation and 8 test rows each (row split)


def _manifest(tmp_path: Path, batches: int, *, allow_inaccurate: bool = False) -> Path:
    make_mlp_classifier(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    data = rng.standard_normal((24, ROWS, 16)).astype(np.float32)[:batches]
    np.save(tmp_path / "d.npy", data)
    path = tmp_path / "m.toml"
    path.write_text(f"""
[settings]
runtime = "onnxruntime"

[[models]]
name = "mlp"
path = "mlp.onnx"
precision = "int8"
allow_inaccurate = {str(allow_inaccurate).lower()}
calibration = {{ data = "d.npy", algorithm = "minmax", max_batches = 4 }}
[[models.profiles]]
input = "x"
min = [1, 16]
opt = [{ROWS}, 16]
max = [{ROWS}, 16]
""")
    return path


def _provision(manifest: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--json", "--no-remote"], capture_output=True, text=True, env=env,
                          timeout=600)


def _metadata(cache: Path) -> dict[str, object]:
    for path in cache.rglob("*.json"):
        record = json.loads(path.read_text())
        if isinstance(record, dict) and isinstance(record.get("accuracy"), dict):
            return record
    raise AssertionError("no metadata sidecar with an accuracy record")


def _ranges(cache: Path) -> tuple[str, object]:
    """The governed blob's header (key, dataset version) and its ranges."""
    (blob,) = [p for p in cache.rglob("*.minmax.calib")]
    _magic, header, payload = blob.read_text().splitlines()[:3]
    return header, json.loads(payload)["ranges"]


def test_the_first_max_batches_alone_are_not_enough_evidence(tmp_path: Path) -> None:
    proc = _provision(_manifest(tmp_path, 4), tmp_path / "cache")
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert result["outcome"] == "refused"
    assert result["error"].startswith("not enough evidence: 32 test samples, need 73")


def test_rows_beyond_max_batches_are_the_evidence(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = _provision(_manifest(tmp_path, 24), cache)
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["outcome"] == "built"
    meta = _metadata(cache)
    accuracy = meta["accuracy"]
    assert isinstance(accuracy, dict)
    # 32 rows of the first 4 batches, plus 10 of the 20 batches after them
    assert accuracy["samples"] == 32 + 10 * ROWS
    assert accuracy["verdict"] == "passed"
    splits = accuracy["splits"]
    assert splits["calibration"] == {"batches": 4, "rows": 4 * 24}
    assert splits["beyond_max_batches"] == {"batches": 20, "rows": 20 * ROWS}


def test_the_evidence_beyond_max_batches_changes_no_calibration(tmp_path: Path) -> None:
    short, long_ = tmp_path / "short", tmp_path / "long"
    short.mkdir()
    long_.mkdir()
    # unjudged, the first 4 batches alone build: the same ranges and calibration key
    assert _provision(_manifest(short, 4, allow_inaccurate=True),
                      short / "cache").returncode == 0
    assert _provision(_manifest(long_, 24, allow_inaccurate=True),
                      long_ / "cache").returncode == 0
    assert _ranges(short / "cache") == _ranges(long_ / "cache")
    keys = [_metadata(d / "cache")["calibration"] for d in (short, long_)]
    assert all(isinstance(k, dict) for k in keys)
    assert keys[0]["key"] == keys[1]["key"]  # type: ignore[index]


def test_evidence_beyond_max_batches_stops_at_its_limit_and_the_refusal_says_so(
        tmp_path: Path) -> None:
    from trt_provision.calibration.data import CalibrationDataset, InputSpec
    from trt_provision.calibration.splits import read_source, split_for_judging
    from trt_provision.errors import AccuracyGateError
    from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

    specs = (InputSpec("x", "float32", (None, 16)),)
    rng = np.random.default_rng(1)
    batches = [{"x": rng.standard_normal((ROWS, 16)).astype(np.float32)} for _ in range(24)]
    read = read_source(CalibrationDataset(batches, specs), 4, max_rows=3 * ROWS)
    assert len(read.batches) == 4 and len(read.beyond) == 3
    assert "limit of 120 rows" in read.limit
    config = BuildConfig(precision=PrecisionMode.INT8,
                         calibration=CalibrationSpec(source="d.npy", max_batches=4))
    with pytest.raises(AccuracyGateError) as info:
        split_for_judging(read.batches, specs, config, beyond=read.beyond,
                          evidence_limit=read.limit)
    # 32 held-out rows of the first 4 batches, plus 1 of the 3 batches read after them
    assert str(info.value).startswith("not enough evidence: 72 test samples, need 73")
    assert "limit of 120 rows" in str(info.value)
    whole = read_source(CalibrationDataset(batches, specs), 4)
    assert len(whole.beyond) == 20 and whole.limit == ""


def test_batches_too_few_to_split_calibrate_whole_and_the_rest_is_evidence() -> None:
    from trt_provision.calibration.data import InputSpec
    from trt_provision.calibration.splits import split_for_judging
    from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

    # a static batch of 1: the first 4 batches cannot be split into rows
    specs = (InputSpec("x", "float32", (1, 16)),)
    rng = np.random.default_rng(2)
    batches = [{"x": rng.standard_normal((1, 16)).astype(np.float32)} for _ in range(4 + 200)]
    config = BuildConfig(precision=PrecisionMode.INT8,
                         calibration=CalibrationSpec(source="d.npy", max_batches=4))
    splits = split_for_judging(batches[:4], specs, config, beyond=batches[4:])
    assert splits.method == "beyond-max-batches-batches" and splits.judged
    assert len(splits.calibration) == 4
    assert len(splits.validation) == len(splits.test) == 100
    assert splits.to_metadata()["beyond_max_batches"] == {"batches": 200, "rows": 200}
