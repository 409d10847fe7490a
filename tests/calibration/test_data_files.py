"""Calibration files the user names are opened only when they are regular files: a FIFO
named as ``d.npy`` (or one inside a data directory) blocked the whole run on open()."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .models import make_mlp_classifier

pytestmark = pytest.mark.tier1


@pytest.mark.parametrize("data", ["d.npy", "d.npz", "dir"])
def test_a_fifo_as_calibration_data_fails_that_model_without_hanging(
    tmp_path: Path, data: str
) -> None:
    make_mlp_classifier(tmp_path / "mlp.onnx")
    if data == "dir":
        (tmp_path / "dir").mkdir()
        fifo = tmp_path / "dir" / "a.npy"
    else:
        fifo = tmp_path / data
    os.mkfifo(fifo)
    manifest = tmp_path / "m.toml"
    manifest.write_text(f"""
[settings]
runtime = "onnxruntime"

[[models]]
name = "mlp"
path = "mlp.onnx"
precision = "int8"
calibration = {{ data = "{data}", algorithm = "minmax" }}
[[models.profiles]]
input = "x"
min = [1, 16]
opt = [8, 16]
max = [8, 16]
""")
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--json", "--no-remote"], capture_output=True, text=True, env=env,
                          timeout=120)
    assert proc.returncode == 1, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert result["error_type"] == "CalibrationCacheError"
    assert result["error"] == f"calibration file is not a regular file (path={fifo})"
