"""Small ONNX models built with the onnx helper API for the calibration tests."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

OPSET = 17


def _save(graph: onnx.GraphProto, path: Path) -> Path:
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def make_cnn(path: Path, *, seed: int = 0, channels: int = 8, size: int = 8) -> Path:
    """Conv+BN+Relu, a Conv whose weight is a Constant node, pooling, and a pinned Gemm."""
    rng = np.random.default_rng(seed)
    c = channels
    w1 = rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3
    b1 = rng.standard_normal(c).astype(np.float32) * 0.1
    w2 = rng.standard_normal((c, c, 3, 3)).astype(np.float32) * 0.2
    gw = rng.standard_normal((c, 10)).astype(np.float32) * 0.5
    gb = rng.standard_normal(10).astype(np.float32) * 0.1
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(b1, "b1"),
        numpy_helper.from_array(np.abs(rng.standard_normal(c)).astype(np.float32) + 0.5, "g"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.1, "beta"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.1, "mean"),
        numpy_helper.from_array(np.abs(rng.standard_normal(c)).astype(np.float32) + 0.5, "var"),
        numpy_helper.from_array(gw, "gw"),
        numpy_helper.from_array(gb, "gb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c1", "g", "beta", "mean", "var"], ["bn1"],
                         name="bn1"),
        helper.make_node("Relu", ["bn1"], ["r1"], name="relu1"),
        helper.make_node("Constant", [], ["w2"], name="w2_const",
                         value=numpy_helper.from_array(w2, "w2")),
        helper.make_node("Conv", ["r1", "w2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c2"], ["r2"], name="relu2"),
        helper.make_node("GlobalAveragePool", ["r2"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "gw", "gb"], ["logits"], name="router_gemm"),
    ]
    graph = helper.make_graph(
        nodes, "cnn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", 10])],
        inits,
    )
    return _save(graph, path)


def make_bn_overflow(path: Path) -> Path:
    """BatchNorm running variances far beyond 65504, folded (after Conv) and standalone."""
    rng = np.random.default_rng(1)
    c = 4
    w = rng.standard_normal((c, c, 1, 1)).astype(np.float32) * 300.0
    var = np.full(c, 4.0e9, dtype=np.float32)  # beyond fp16 range (and its square root too)
    inits = [
        numpy_helper.from_array(w, "w"),
        numpy_helper.from_array(np.ones(c, np.float32), "g"),
        numpy_helper.from_array(np.zeros(c, np.float32), "beta"),
        numpy_helper.from_array(np.full(c, 10.0, np.float32), "mean"),
        numpy_helper.from_array(var, "var"),
        numpy_helper.from_array(np.ones(c, np.float32), "g2"),
        numpy_helper.from_array(np.zeros(c, np.float32), "beta2"),
        numpy_helper.from_array(np.zeros(c, np.float32), "mean2"),
        numpy_helper.from_array(np.full(c, 1.0e8, np.float32), "var2"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w"], ["c"], name="conv"),
        helper.make_node("BatchNormalization", ["c", "g", "beta", "mean", "var"], ["bn"],
                         name="bn_after_conv"),
        helper.make_node("Mul", ["x", "x"], ["sq"], name="square"),
        helper.make_node("BatchNormalization", ["sq", "g2", "beta2", "mean2", "var2"],
                         ["bn_alone"], name="bn_standalone"),
        helper.make_node("Add", ["bn", "bn_alone"], ["y"], name="add"),
    ]
    graph = helper.make_graph(
        nodes, "bn_overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, c, 4, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, c, 4, 4])],
        inits,
    )
    return _save(graph, path)


def make_multi_dtype(path: Path) -> Path:
    """Inputs of dtypes float32, int32, int64, bool and float16, summed as float32."""
    specs = [("f32", TensorProto.FLOAT), ("i32", TensorProto.INT32),
             ("i64", TensorProto.INT64), ("flag", TensorProto.BOOL),
             ("f16", TensorProto.FLOAT16)]
    inputs = [helper.make_tensor_value_info(n, t, ["N", 4]) for n, t in specs]
    nodes = []
    last = "f32"
    for name, _ in specs[1:]:
        nodes.append(helper.make_node("Cast", [name], [f"{name}_f"], name=f"cast_{name}",
                                      to=TensorProto.FLOAT))
        nodes.append(helper.make_node("Add", [last, f"{name}_f"], [f"sum_{name}"],
                                      name=f"add_{name}"))
        last = f"sum_{name}"
    nodes.append(helper.make_node("Identity", [last], ["y"], name="out"))
    graph = helper.make_graph(
        nodes, "multi", inputs, [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])]
    )
    return _save(graph, path)


def cnn_batches(count: int, *, batch: int = 2, size: int = 8, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.standard_normal((batch, 3, size, size)).astype(np.float32) for _ in range(count)]


def make_standalone_bn(path: Path, *, seed: int = 0, c: int = 8, size: int = 12) -> Path:
    """Conv -> Add (residual) -> BatchNormalization -> Relu -> ConvTranspose -> Gemm head.

    The BatchNormalization follows an Add, so it cannot be folded into a Conv; ConvTranspose
    weights have their output channels on axis 1 and the Gemm weight is transposed.
    """
    rng = np.random.default_rng(seed)
    inits = [
        numpy_helper.from_array(rng.standard_normal((c, 3, 3, 3)).astype(np.float32) * 0.3,
                                "w1"),
        numpy_helper.from_array(rng.standard_normal((c, 3, 1, 1)).astype(np.float32) * 0.3,
                                "wskip"),
        numpy_helper.from_array(np.abs(rng.standard_normal(c)).astype(np.float32) + 0.5, "g"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.1, "beta"),
        numpy_helper.from_array(rng.standard_normal(c).astype(np.float32) * 0.1, "mean"),
        numpy_helper.from_array(np.abs(rng.standard_normal(c)).astype(np.float32) + 0.5, "var"),
        numpy_helper.from_array(rng.standard_normal((c, 4, 2, 2)).astype(np.float32) * 0.3,
                                "wt"),
        numpy_helper.from_array(rng.standard_normal((6, 4)).astype(np.float32) * 0.5, "gw"),
        numpy_helper.from_array(rng.standard_normal(6).astype(np.float32) * 0.1, "gb"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["x", "wskip"], ["cs"], name="conv_skip"),
        helper.make_node("Add", ["c1", "cs"], ["sum"], name="residual"),
        helper.make_node("BatchNormalization", ["sum", "g", "beta", "mean", "var"], ["bn"],
                         name="bn_standalone"),
        helper.make_node("Relu", ["bn"], ["r"], name="relu"),
        helper.make_node("ConvTranspose", ["r", "wt"], ["up"], name="deconv", strides=[2, 2]),
        helper.make_node("GlobalAveragePool", ["up"], ["gap"], name="gap"),
        helper.make_node("Flatten", ["gap"], ["flat"], name="flatten"),
        helper.make_node("Gemm", ["flat", "gw", "gb"], ["y"], name="head", transB=1),
    ]
    graph = helper.make_graph(
        nodes, "standalone_bn",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 6])],
        inits,
    )
    return _save(graph, path)
