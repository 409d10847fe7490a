"""Shape of the precision pipeline: strategies receive a prepared graph and never import
the calibration package (the composition root wires the converter into them)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from trt_provision.errors import EngineBuildError
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.host import probe_host
from trt_provision.runtimes.onnxruntime import OnnxRuntimeRuntime
from trt_provision.types import BuildConfig, PrecisionMode

pytestmark = pytest.mark.tier1

RUNTIMES = Path(__file__).resolve().parents[2] / "src" / "trt_provision" / "runtimes"


def _imports(path: Path) -> set[str]:
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def test_no_strategy_imports_the_calibration_package() -> None:
    files = sorted(RUNTIMES.rglob("*.py"))
    assert files
    for path in files:
        bad = [m for m in _imports(path) if m.startswith("trt_provision.calibration")]
        assert not bad, f"{path.name} imports {bad}"


def test_onnxruntime_strategy_without_a_converter_refuses_reduced_precision(
    tmp_path: Path
) -> None:
    runtime = OnnxRuntimeRuntime(host=probe_host(), gate=DefaultEngineGate())
    with pytest.raises(EngineBuildError, match="precision converter"):
        runtime.compile_engine(tmp_path / "m.onnx", BuildConfig(precision=PrecisionMode.FP16),
                               tmp_path / "staged")
