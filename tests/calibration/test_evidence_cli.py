"""Through the real provision CLI: a verdict on too few held-out samples is a refusal
(exit 1, outcome ``refused``, "not enough evidence"), nothing is published, and the same model
with enough data is built with its sample count and bound in the sidecar."""

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


def _manifest(tmp_path: Path, rows: int) -> Path:
    make_mlp_classifier(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "d.npy", rng.standard_normal((10, rows, 16)).astype(np.float32))
    path = tmp_path / "m.toml"
    path.write_text(f"""
[settings]
runtime = "onnxruntime"

[[models]]
name = "mlp"
path = "mlp.onnx"
precision = "int8"
calibration = {{ data = "d.npy", algorithm = "minmax" }}
[[models.profiles]]
input = "x"
min = [1, 16]
opt = [{rows}, 16]
max = [{rows}, 16]
""")
    return path


def _provision(manifest: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--json", "--no-remote"], capture_output=True, text=True, env=env,
                          timeout=600)


def test_few_held_out_samples_are_refused_not_published(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = _provision(_manifest(tmp_path, rows=8), cache)  # 16 test samples
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert result["outcome"] == "refused"
    assert result["error_type"] == "AccuracyGateError"
    assert result["error"].startswith(
        "not enough evidence: 16 test samples, need 73 for this gate; give more calibration "
        "data or `evaluation_data`")
    assert "bound=0.8064" in result["error"] and "threshold=0.95" in result["error"]
    assert not list(cache.rglob("*.onnx")) and not list(cache.rglob("*.engine"))
    assert "mlp (refused)" in proc.stderr


def test_enough_samples_build_and_record_the_evidence(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    proc = _provision(_manifest(tmp_path, rows=200), cache)  # 400 test samples
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["outcome"] == "built"
    sidecars = [json.loads(p.read_text()) for p in cache.rglob("*.json")
                if "accuracy" in p.read_text()]
    accuracy = next(s["accuracy"] for s in sidecars if isinstance(s.get("accuracy"), dict))
    assert accuracy["verdict"] == "passed"
    assert accuracy["samples"] == 400 and accuracy["gate"]["required_samples"] == 73
    assert accuracy["bound"] >= accuracy["gate"]["agreement_bar"] == 0.95
    assert accuracy["outputs"]["logits"]["kind"] == "classes"
