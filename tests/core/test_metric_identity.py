"""The task metric's script (``accuracy_metric = "file.py:fn"``) is part of the engine's
identity by its bytes: editing it rebuilds, leaving it alone reuses, a missing one is exit 1."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from calibration.models import make_mlp_classifier
from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1

_METRIC = "def score(ref, cand, inputs):\n    return {score}, True\n"


def _setup(tmp_path: Path) -> tuple[list[str], Path]:
    model = make_mlp_classifier(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    np.save(tmp_path / "d.npy", rng.standard_normal((250, 8, 16)).astype(np.float32))
    metric = tmp_path / "metric.py"
    metric.write_text(_METRIC.format(score=1.0))
    config = tmp_path / "build.json"
    config.write_text(json.dumps({
        "precision": "int8", "accuracy_metric": f"{metric}:score",
        "calibration": {"source": str(tmp_path / "d.npy"), "algorithm": "minmax"},
        "profiles": [{"input": "x", "min": [1, 16], "opt": [8, 16], "max": [8, 16]}],
    }))
    argv = ["compile", str(model), "--config", str(config), "--json",
            "--cache-dir", str(tmp_path / "cache")]
    return argv, metric


def _compile(argv: list[str], capsys: pytest.CaptureFixture[str]) -> dict[str, str]:
    assert main(argv) == 0, capsys.readouterr().err
    out: dict[str, str] = json.loads(capsys.readouterr().out)
    return out


def test_editing_the_metric_script_rebuilds(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, metric = _setup(tmp_path)
    first = _compile(argv, capsys)
    assert first["outcome"] == "built"
    again = _compile(argv, capsys)
    assert again["outcome"] == "reused" and again["filename"] == first["filename"]
    metric.write_text(_METRIC.format(score=0.5))  # same name and function, other code
    edited = _compile(argv, capsys)
    assert edited["outcome"] == "built" and edited["filename"] != first["filename"]
    meta = json.loads(Path(edited["engine"] + ".json").read_text())
    assert meta["accuracy"]["verdict"] == "passed"


def test_missing_metric_script_is_one_line_exit_1(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    argv, metric = _setup(tmp_path)
    metric.unlink()
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "accuracy metric script" in err[0], err
    assert not list((tmp_path / "cache").rglob("*.engine"))


def test_metric_script_is_not_run_to_plan(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Hashing reads the script's bytes; it never imports it (planning, --dry-run)."""
    from trt_provision.calibration.metric import metric_file_sha256

    marker = tmp_path / "executed"
    script = tmp_path / "m.py"
    script.write_text(f"open({str(marker)!r}, 'w').write('x')\n")
    assert len(metric_file_sha256(f"{script}:fn")) == 64
    assert not marker.exists()
