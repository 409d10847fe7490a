"""Manifest and JSON keys of the accuracy gate; they enter the identity; the task metric is
never executed to plan or under --dry-run."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from trt_provision.config import load_manifest
from trt_provision.config_json import build_config_from_json, build_config_to_json
from trt_provision.errors import ManifestError
from trt_provision.identity import build_option_digest
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

from .models import make_mlp_classifier

pytestmark = pytest.mark.tier1


def _manifest(tmp_path: Path, extra: str) -> Path:
    make_mlp_classifier(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "d.npy", rng.standard_normal((10, 200, 16)).astype(np.float32))
    np.save(tmp_path / "e.npy", rng.standard_normal((4, 200, 16)).astype(np.float32))
    path = tmp_path / "m.toml"
    path.write_text(f"""
[[models]]
name = "mlp"
path = "mlp.onnx"
precision = "int8"
calibration = {{ data = "d.npy", evaluation_data = "e.npy" }}
{extra}
[[models.profiles]]
input = "x"
min = [1, 16]
opt = [8, 16]
max = [200, 16]
""")
    return path


def test_manifest_gate_keys_resolve_relative_to_the_manifest(tmp_path: Path) -> None:
    manifest = load_manifest(_manifest(tmp_path, 'allow_inaccurate = true\n'
                                       'min_top1_agreement = 0.9\n'
                                       'accuracy_metric = "metric.py:score"'))
    config = manifest.backbones[0].build_config
    assert config.allow_inaccurate is True and config.min_top1_agreement == 0.9
    assert config.accuracy_metric == f"{(tmp_path / 'metric.py').resolve()}:score"
    assert config.calibration is not None
    assert config.calibration.algorithm == "auto"
    assert config.calibration.evaluation_data == str((tmp_path / "e.npy").resolve())
    again = build_config_from_json(build_config_to_json(config))
    assert again == config


@pytest.mark.parametrize("extra", ['allow_inaccurate = "yes"', "min_top1_agreement = 2.0",
                                   'accuracy_metric = "metric.txt"'])
def test_bad_gate_keys_are_manifest_errors(tmp_path: Path, extra: str) -> None:
    with pytest.raises(ManifestError):
        load_manifest(_manifest(tmp_path, extra))


def test_gate_options_enter_the_identity_only_when_set(tmp_path: Path) -> None:
    metric = tmp_path / "m.py"
    metric.write_text("def f(ref, cand, inputs):\n    return 1.0, True\n")
    spec = CalibrationSpec(source="d.npy")
    base = BuildConfig(precision=PrecisionMode.INT8, calibration=spec)
    digest = build_option_digest(base, calibration_key="k")
    for changed in (BuildConfig(precision=PrecisionMode.INT8, calibration=spec,
                                allow_inaccurate=True),
                    BuildConfig(precision=PrecisionMode.INT8, calibration=spec,
                                min_top1_agreement=0.5),
                    BuildConfig(precision=PrecisionMode.INT8, calibration=spec,
                                accuracy_metric=f"{metric}:f")):
        assert build_option_digest(changed, calibration_key="k") != digest


def test_task_metric_is_never_executed_under_dry_run(tmp_path: Path) -> None:
    marker = tmp_path / "executed"
    (tmp_path / "metric.py").write_text(
        f"open({str(marker)!r}, 'w').write('x')\n"
        "def score(ref, cand, inputs):\n    return 1.0, True\n")
    manifest = _manifest(tmp_path, 'accuracy_metric = "metric.py:score"')
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--dry-run", "--json"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    assert not marker.exists()
    built = subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                            "--json"], capture_output=True, text=True, env=env, timeout=600)
    assert built.returncode == 0, built.stderr
    assert marker.exists()  # the same metric does run when a graph is judged
