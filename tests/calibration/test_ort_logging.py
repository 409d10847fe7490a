"""ONNX Runtime sessions the precision pipeline creates log fatal errors only, as the runtime's
do: ORT logs each error (coloured, on stderr) before raising it, and the CLI reports the
raised error once, as ours, in one line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.tier1


def _gather_out_of_bounds(path: Path) -> Path:
    """idx -> Gather(data[1, 4]) -> MatMul: the synthetic smoke input (integers 1) indexes
    past the one row, so ORT fails while running it (and logs an ERROR line first)."""
    inits = [numpy_helper.from_array(np.ones((1, 4), np.float32), "data"),
             numpy_helper.from_array(np.ones((4, 4), np.float32), "w")]
    nodes = [helper.make_node("Gather", ["data", "idx"], ["g"], axis=0, name="gather"),
             helper.make_node("MatMul", ["g", "w"], ["y"], name="mm")]
    graph = helper.make_graph(
        nodes, "gather", [helper.make_tensor_value_info("idx", TensorProto.INT64, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_a_model_failing_in_the_fp16_pipeline_prints_one_line_and_no_ort_log(
        tmp_path: Path) -> None:
    model = _gather_out_of_bounds(tmp_path / "gather.onnx")
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", "prepare", str(model), "--precision", "fp16",
         "-o", str(tmp_path / "out.onnx")], capture_output=True, text=True, timeout=300,
        env={**os.environ, "NO_COLOR": "1"})
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: EngineBuildError: cannot run the model on synthetic")
    assert "onnxruntime:" not in proc.stderr.split("error:")[0]
    assert not (tmp_path / "out.onnx").exists()


def test_accuracy_sessions_log_fatal_only(tmp_path: Path) -> None:
    from trt_provision.calibration.accuracy import _session

    session = _session(_gather_out_of_bounds(tmp_path / "gather.onnx"))
    assert session.get_session_options().log_severity_level == 4
