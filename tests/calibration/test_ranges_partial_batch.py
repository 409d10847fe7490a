"""Histogram calibration over batches of different sizes: a source whose rows are not a
multiple of the profile's opt batch ends in a shorter batch. ONNX Runtime's histogram collector
stacked every batch's activations into one array and failed on it ("inhomogeneous shape"), and
percentile / entropy then fell back to min-max without being asked to."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trt_provision.calibration.ranges import (
    compute_activation_ranges,
    compute_ranges_for_algorithms,
)
from trt_provision.types import CalibrationSpec

from .models import make_mlp_classifier

pytestmark = pytest.mark.tier1


def _batches() -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(3)
    return [{"x": rng.standard_normal((n, 16)).astype(np.float32)} for n in (8, 8, 8, 5)]


@pytest.mark.parametrize("algorithm", ["percentile", "entropy"])
def test_one_pass_statistics_over_batches_of_different_sizes(tmp_path: Path,
                                                             algorithm: str) -> None:
    model = make_mlp_classifier(tmp_path / "mlp.onnx")
    ranges, notes = compute_ranges_for_algorithms(
        model, _batches(), CalibrationSpec(source="d.npy"), ["minmax", algorithm],
        tmp_path / "w")
    assert notes == {}
    assert ranges[algorithm].algorithm == algorithm
    assert "fallback_from" not in ranges[algorithm].params
    assert set(ranges[algorithm].ranges) == set(ranges["minmax"].ranges)


@pytest.mark.parametrize("algorithm", ["percentile", "entropy"])
def test_one_algorithm_over_batches_of_different_sizes(tmp_path: Path, algorithm: str) -> None:
    model = make_mlp_classifier(tmp_path / "mlp.onnx")
    ranges = compute_activation_ranges(
        model, _batches(), CalibrationSpec(source="d.npy", algorithm=algorithm), tmp_path / "w")
    assert ranges.algorithm == algorithm and ranges.params["batches"] == 4
    assert {"x", "logits"} <= set(ranges.ranges)


def test_provision_records_the_algorithm_asked_for(tmp_path: Path) -> None:
    make_mlp_classifier(tmp_path / "mlp.onnx")
    # 1003 rows cut into opt batches of 8: the last batch holds 3 (and calibrates)
    np.save(tmp_path / "d.npy",
            np.random.default_rng(0).standard_normal((1003, 16)).astype(np.float32))
    manifest = tmp_path / "m.toml"
    manifest.write_text("""
[settings]
runtime = "onnxruntime"

[[models]]
name = "mlp"
path = "mlp.onnx"
precision = "int8"
calibration = { data = "d.npy", algorithm = "percentile" }
[[models.profiles]]
input = "x"
min = [1, 16]
opt = [8, 16]
max = [8, 16]
""")
    cache = tmp_path / "cache"
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--json", "--no-remote"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert "falling back to min-max" not in proc.stderr
    meta = next(json.loads(p.read_text()) for p in cache.rglob("*.json")
                if '"calibration"' in p.read_text())
    calibration = meta["calibration"]
    assert calibration["algorithm"] == "percentile", calibration
    assert "fallback_from" not in calibration["params"]
