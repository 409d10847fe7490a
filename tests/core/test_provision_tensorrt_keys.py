"""``provision`` on the ONNX Runtime runtime warns about manifest keys only TensorRT reads,
once per key, naming the key and the models it was given for (``compile`` does the same for
its TensorRT-only flags); keys ONNX Runtime honours warn about nothing."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from calibration.models import make_mlp_classifier

pytestmark = pytest.mark.tier1


def _provision(manifest: Path, cache: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)}
    return subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--no-remote", "--json"], capture_output=True, text=True, env=env,
                          timeout=300)


_PROFILE = """[[models.profiles]]
input = "x"
min = [1, 16]
opt = [4, 16]
max = [8, 16]
"""


def _manifest(tmp_path: Path, defaults: str, first: str) -> Path:
    make_mlp_classifier(tmp_path / "mlp.onnx")
    path = tmp_path / "m.toml"
    path.write_text(f"""
[settings]
runtime = "onnxruntime"

[defaults]
{defaults}

[[models]]
name = "a"
path = "mlp.onnx"
{first}
{_PROFILE}
[[models]]
name = "b"
path = "mlp.onnx"
{_PROFILE}""")
    return path


def test_tensorrt_only_keys_warn_once_per_key_naming_the_models(tmp_path: Path) -> None:
    timing = tmp_path / "timing.cache"
    manifest = _manifest(tmp_path, 'precision = "fp16"\ndla_core = 0\ngpu_fallback = true',
                         f'workspace_mib = 2048\ntiming_cache_path = "{timing}"\ntf32 = false')
    proc = _provision(manifest, tmp_path / "cache")
    assert proc.returncode == 0, proc.stderr
    warnings = [x for x in proc.stderr.splitlines() if x.startswith("WARNING")]
    assert all("ignored on the ONNX Runtime runtime (TensorRT only)" in w for w in warnings)
    by_key = {key: [w for w in warnings if f": {key} (" in w]
              for key in ("dla_core", "gpu_fallback", "workspace_mib", "timing_cache_path",
                          "tf32")}
    assert all(len(lines) == 1 for lines in by_key.values()), warnings
    assert len(warnings) == 5, warnings
    assert "dla_core (models a, b)" in by_key["dla_core"][0]
    assert "workspace_mib (model a)" in by_key["workspace_mib"][0]
    assert "no timing cache is read or created" in by_key["timing_cache_path"][0]
    assert not timing.exists()


def test_keys_onnx_runtime_reads_warn_about_nothing(tmp_path: Path) -> None:
    manifest = _manifest(tmp_path, 'precision = "fp32"', 'version = "1"')
    proc = _provision(manifest, tmp_path / "cache")
    assert proc.returncode == 0 and "WARNING" not in proc.stderr, proc.stderr
