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
             features=rng.standard_normal((3008, 64)).astype(np.float32) * 2.0)
    third = _provision(manifest, cache)
    (rebuilt,) = third["results"]  # type: ignore[misc]
    assert rebuilt["outcome"] == "built" and rebuilt["filename"] != result["filename"]
    new_meta = _meta(rebuilt)
    assert new_meta["calibration_key"] != meta["calibration_key"]
    assert new_meta["dataset_version"] != meta["dataset_version"]
    assert new_meta["calibration_cache_reused"] is False
    subprocess.run([sys.executable, "-m", "trt_provision", "verify", "--cache-dir", str(cache)],
                   check=True, capture_output=True)


def _run_cli(manifest: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--json"], capture_output=True, text=True, env=env, timeout=600)


def _mlp_manifest(work: Path, data: str, extra: str = "", *, hard: bool = False) -> Path:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from calibration.models import make_mlp_classifier

    make_mlp_classifier(work / "mlp.onnx", outlier_reaches_fc2=hard)
    manifest = work / "m.toml"
    manifest.write_text(f"""
[[models]]
name = "mlp"
path = "mlp.onnx"
precision = "int8"
calibration = {{ data = "{data}", algorithm = "minmax" }}
{extra}
[[models.profiles]]
input = "x"
min = [1, 16]
opt = [8, 16]
max = [8, 16]
""")
    return manifest


def test_zero_sample_calibration_file_is_refused_through_the_cli(tmp_path: Path) -> None:
    np.savez(tmp_path / "empty.npz", x=np.zeros((0, 16), np.float32))
    proc = _run_cli(_mlp_manifest(tmp_path, "empty.npz"), tmp_path / "cache")
    assert proc.returncode == 1, proc.stderr
    assert "zero samples" in proc.stderr and "empty.npz" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_label_flipping_int8_is_refused_then_built_with_allow_inaccurate(tmp_path: Path) -> None:
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    from calibration.models import outlier_batches

    np.save(tmp_path / "d.npy", np.stack(outlier_batches(50)))  # 80 test samples
    refused = _run_cli(_mlp_manifest(tmp_path, "d.npy", hard=True), tmp_path / "cache")
    assert refused.returncode == 1
    assert "AccuracyGateError" in refused.stderr and "top-1 agreement" in refused.stderr
    assert not list((tmp_path / "cache").rglob("*.engine"))  # nothing published
    built = _run_cli(_mlp_manifest(tmp_path, "d.npy", "allow_inaccurate = true", hard=True),
                     tmp_path / "cache")
    assert built.returncode == 0, built.stderr
    meta = _meta(json.loads(built.stdout)["results"][0])
    accuracy = meta["accuracy"]
    assert accuracy["verdict"] == "failed (allow_inaccurate)"  # type: ignore[index]
    assert "fails the accuracy gate" in accuracy["warning"]  # type: ignore[index]
    assert meta["quantization"]["sensitivity"]["steps"]  # type: ignore[index]
