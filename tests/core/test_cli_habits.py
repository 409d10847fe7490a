"""Habits users bring from trtexec and Polygraphy, and user code that misbehaves, through
the real CLI: a calibration loader that exits or parses arguments, profiles whose shared
dimensions disagree, TensorRT-only flags on ONNX Runtime, dynamic inputs without a profile,
``--saveEngine`` copies run and inspected like cached engines."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tier1


def _run(*argv: str, cache: Path, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trt_provision", *argv],
        capture_output=True, text=True, timeout=300, cwd=cwd,
        env={**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)},
    )


def _loader_manifest(tmp_path: Path, demo_dir: Path, loader_body: str) -> Path:
    """demo_cnn at fp32, then dynamic_mlp at fp16 calibrated from ``loader.py:load``."""
    (tmp_path / "loader.py").write_text(loader_body)
    models = demo_dir / "models"
    manifest = tmp_path / "corpus.toml"
    manifest.write_text(f"""
[[models]]
name = "demo_cnn"
path = "{models / 'demo_cnn.onnx'}"
profiles = [{{ input = "image", min = [1, 3, 32, 32], opt = [4, 3, 32, 32], max = [8, 3, 32, 32] }}]

[[models]]
name = "dynamic_mlp"
path = "{models / 'dynamic_mlp.onnx'}"
precision = "fp16"
calibration = {{ data = "loader.py:load" }}
profiles = [{{ input = "features", min = [1, 64], opt = [16, 64], max = [64, 64] }}]
""")
    return manifest


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("import sys\nsys.exit(0)\n", "exited (sys.exit(0))"),
        ("import sys\nsys.exit(3)\n", "exited (sys.exit(3))"),
        # A loader written as a script: argparse on sys.argv at import. It must see its own
        # (empty) command line, not provision's, and its usage error is the model's failure.
        ("import argparse\np = argparse.ArgumentParser()\np.add_argument('--data', required=True)"
         "\np.parse_args()\n", "exited (sys.exit(2))"),
        ("def load():\n    import sys\n    sys.exit(0)\n", "exited (sys.exit(0))"),
        ("def load():\n    import sys\n    yield from ()\n    sys.exit(5)\n",
         "exited (sys.exit(5))"),
    ],
    ids=["exit0-at-import", "exit3-at-import", "argparse-at-import", "exit-in-call",
         "exit-in-generator"],
)
def test_a_calibration_loader_that_exits_fails_its_model_only(
    tmp_path: Path, demo_dir: Path, cache_dir: Path, body: str, said: str
) -> None:
    manifest = _loader_manifest(tmp_path, demo_dir, body)
    proc = _run("provision", str(manifest), "--json", cache=cache_dir)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    outcomes = {r["name"]: r for r in doc["results"]}
    assert outcomes["demo_cnn"]["outcome"] == "built"
    failed = outcomes["dynamic_mlp"]
    assert failed["outcome"] == "failed" and failed["error_type"] == "CalibrationCacheError"
    assert f"loader.py:load {said}" in failed["error"]
    assert "not provisioned: dynamic_mlp (failed)" in proc.stderr


def test_a_loader_sees_a_neutral_command_line(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    seen = tmp_path / "argv.json"
    body = (f"import json, sys\nopen({str(seen)!r}, 'w').write(json.dumps(sys.argv))\n"
            "import numpy as np\n"
            "def load():\n"
            "    return {'features': np.ones((16, 64), np.float32)}\n")
    manifest = _loader_manifest(tmp_path, demo_dir, body)
    proc = _run("provision", str(manifest), "--json", "--dry-run", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert not seen.exists()  # a dry run never executes the loader
    _run("provision", str(manifest), "--json", cache=cache_dir)
    assert json.loads(seen.read_text()) == [str(tmp_path / "loader.py")]
