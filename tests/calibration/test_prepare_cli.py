"""``trt-provision prepare``: the graph the strongly typed TensorRT path parses, on any machine."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from .models import make_cnn, make_mlp_classifier, outlier_batches

pytestmark = pytest.mark.tier1


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "trt_provision", "prepare", *args],
                          capture_output=True, text=True, timeout=600)


@pytest.fixture
def cnn(tmp_path: Path) -> tuple[Path, Path]:
    model = make_cnn(tmp_path / "cnn.onnx")
    rng = np.random.default_rng(0)
    data = tmp_path / "d.npy"
    np.save(data, rng.standard_normal((10, 200, 3, 8, 8)).astype(np.float32))
    return model, data


def test_int8_for_tensorrt_is_symmetric_int8_with_float_biases(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    out = tmp_path / "out.onnx"
    proc = _cli(str(model), "--precision", "int8", "--calibration-data", str(data),
                "--for", "tensorrt", "-o", str(out), "--json")
    assert proc.returncode == 0, proc.stderr
    meta = json.loads(proc.stdout)
    assert meta["accuracy"]["verdict"] == "passed"
    assert meta["quantization"]["consumer"] == "tensorrt"
    graph = onnx.load(str(out)).graph
    inits = {t.name: t for t in graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in graph.value_info}
    dq = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    assert dq
    for node in dq:
        src = node.input[0]
        dtype = inits[src].data_type if src in inits else types.get(src, TensorProto.INT8)
        assert dtype == TensorProto.INT8
        zero = onnx.numpy_helper.to_array(inits[node.input[2]])
        assert not zero.any()
    conv1 = next(n for n in graph.node if n.op_type == "Conv")
    assert inits[conv1.input[2]].data_type == TensorProto.FLOAT
    # pinned router layer computes in FP16 in a TensorRT int8 graph
    pinned = {p["node"]: p["precision"] for p in meta["pinned_layers"]}
    assert pinned == {"router_gemm": "fp16"}


def test_fp16_for_tensorrt_keeps_io_types(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    out = tmp_path / "fp16.onnx"
    proc = _cli(str(model), "--precision", "fp16", "--calibration-data", str(data),
                "-o", str(out))
    assert proc.returncode == 0, proc.stderr
    assert "wrote" in proc.stdout and "passed" in proc.stdout
    graph = onnx.load(str(out)).graph
    assert graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT
    assert any(t.data_type == TensorProto.FLOAT16 for t in graph.initializer)


def test_user_errors_are_one_line_exit_1(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, _ = cnn
    missing = _cli(str(model), "--precision", "int8", "--calibration-data",
                   str(tmp_path / "absent.npz"), "-o", str(tmp_path / "o.onnx"))
    assert missing.returncode == 1 and "absent.npz" in missing.stderr
    assert len(missing.stderr.strip().splitlines()) == 1
    no_data = _cli(str(model), "--precision", "int8", "-o", str(tmp_path / "o.onnx"))
    assert no_data.returncode == 1 and "needs calibration data" in no_data.stderr
    abbreviated = _cli(str(model), "--precision", "int8", "--calib", "x",
                       "-o", str(tmp_path / "o.onnx"))
    assert abbreviated.returncode == 2


def test_a_graph_failing_the_gate_is_not_written(tmp_path: Path) -> None:
    model = make_mlp_classifier(tmp_path / "mlp.onnx", outlier_reaches_fc2=True)
    data = tmp_path / "d.npy"
    np.save(data, np.stack(outlier_batches(10, rows=40)))
    out = tmp_path / "o.onnx"
    proc = _cli(str(model), "--precision", "int8", "--algorithm", "minmax",
                "--calibration-data", str(data), "--for", "onnxruntime", "-o", str(out))
    assert proc.returncode == 1 and "AccuracyGateError" in proc.stderr
    assert "not enough evidence" not in proc.stderr  # refused on its accuracy, not its size
    assert not out.exists()
