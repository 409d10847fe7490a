"""Issue-level flow: an INT8 engine with a calibration source on a machine without a GPU."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

pytestmark = pytest.mark.tier1


def _provision(manifest: Path, cache: Path) -> dict[str, object]:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)}
    proc = subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr
    data: dict[str, object] = json.loads(proc.stdout)
    return data


def _meta(result: dict[str, object]) -> dict[str, object]:
    engine = Path(str(result["engine"]))
    data: dict[str, object] = json.loads(engine.with_name(engine.name + ".json").read_text())
    return data


def test_int8_build_reuse_and_recalibration_on_a_dataset_change(
    tmp_path: Path, demo_dir: Path
) -> None:
    work = tmp_path / "corpus"
    shutil.copytree(demo_dir / "models", work / "models")
    shutil.copytree(demo_dir / "calibration", work / "calibration")
    manifest = work / "int8.toml"
    manifest.write_text("""
[[models]]
name = "dynamic_mlp"
path = "models/dynamic_mlp.onnx"
precision = "int8"
calibration = { data = "calibration/dynamic_mlp.npz", algorithm = "minmax" }
[[models.profiles]]
input = "features"
min = [1, 64]
opt = [8, 64]
max = [32, 64]
""")
    cache = tmp_path / "cache"
    first = _provision(manifest, cache)
    (result,) = first["results"]  # type: ignore[misc]
    assert result["outcome"] == "built" and ".int8." in result["filename"]
    meta = _meta(result)
    assert meta["calibration_key"] and str(meta["dataset_version"]).startswith("sha256:")
    assert meta["calibration_cache_reused"] is False
    accuracy = meta["accuracy"]["outputs"]["scores"]  # type: ignore[index]
    assert accuracy["cosine"] > 0.95

    second = _provision(manifest, cache)
    assert second["results"][0]["outcome"] == "reused"  # type: ignore[index]

    # A changed dataset changes the calibration key, hence the engine identity: recalibrate.
    rng = np.random.default_rng(1)
    np.savez(work / "calibration" / "dynamic_mlp.npz",
             features=rng.standard_normal((32, 64)).astype(np.float32) * 2.0)
    third = _provision(manifest, cache)
    (rebuilt,) = third["results"]  # type: ignore[misc]
    assert rebuilt["outcome"] == "built" and rebuilt["filename"] != result["filename"]
    new_meta = _meta(rebuilt)
    assert new_meta["calibration_key"] != meta["calibration_key"]
    assert new_meta["dataset_version"] != meta["dataset_version"]
    assert new_meta["calibration_cache_reused"] is False
    subprocess.run([sys.executable, "-m", "trt_provision", "verify", "--cache-dir", str(cache)],
                   check=True, capture_output=True)
