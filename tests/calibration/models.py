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


def make_mlp_classifier(path: Path, *, features: int = 16, hidden: int = 32,
                        classes: int = 10, seed: int = 0, outlier_reaches_fc2: bool = False
                        ) -> Path:
    """x[N, features] -> MatMul -> Relu -> MatMul -> logits[N, classes].

    Feature 0 carries the outliers of ``outlier_batches``: by default it has no weight, so
    only fc1's input range suffers; with ``outlier_reaches_fc2`` it feeds the hidden layer
    too, so no single layer kept float can rescue INT8.
    """
    rng = np.random.default_rng(seed)
    w1 = rng.standard_normal((features, hidden)).astype(np.float32) * 0.5
    if not outlier_reaches_fc2:
        w1[0] = 0.0
    inits = [
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(rng.standard_normal((hidden, classes)).astype(np.float32)
                                * 0.5, "w2"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w1"], ["h"], name="fc1"),
        helper.make_node("Relu", ["h"], ["hr"], name="relu"),
        helper.make_node("MatMul", ["hr", "w2"], ["logits"], name="fc2"),
    ]
    graph = helper.make_graph(
        nodes, "mlp",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["N", classes])],
        inits,
    )
    return _save(graph, path)


def outlier_batches(count: int, *, rows: int = 8, features: int = 16, seed: int = 0,
                    outlier: float = 3.0e3) -> list[np.ndarray]:
    """Normal features, plus one huge value in the first batch: a min-max range built on it
    quantizes every ordinary input to zero, so INT8 logits lose their labels. A verdict needs
    ``rows=40`` or more: ten batches then give validation and test 80 samples each, above the
    73 a 0.95 bar needs."""
    rng = np.random.default_rng(seed)
    batches = [rng.standard_normal((rows, features)).astype(np.float32) for _ in range(count)]
    batches[0][0, 0] = outlier
    return batches


def make_huge_constant(path: Path, *, features: int = 8) -> Path:
    """A mask-like ``Relu(x) * -3.4e38`` added to a MatMul before a Softmax: activations span
    most of the float32 range, so histograms cannot be built ("Too many bins")."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((features, features)).astype(np.float32),
                                "w"),
        numpy_helper.from_array(np.array(-3.4e38, dtype=np.float32), "big"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
        helper.make_node("Relu", ["x"], ["xr"], name="relu"),
        helper.make_node("Mul", ["xr", "big"], ["mask"], name="mask"),
        helper.make_node("Add", ["h", "mask"], ["scores"], name="add"),
        helper.make_node("Softmax", ["scores"], ["probs"], name="softmax", axis=-1),
    ]
    graph = helper.make_graph(
        nodes, "huge",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("probs", TensorProto.FLOAT, ["N", features])],
        inits,
    )
    return _save(graph, path)


def make_one_channel_conv(path: Path) -> Path:
    """A Conv with one output channel and a bias (per-channel scale of size 1)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), "w0"),
        numpy_helper.from_array(rng.standard_normal(4).astype(np.float32), "b0"),
        numpy_helper.from_array(rng.standard_normal((1, 4, 3, 3)).astype(np.float32), "w1"),
        numpy_helper.from_array(np.array([0.3], dtype=np.float32), "b1"),
    ]
    nodes = [
        helper.make_node("Conv", ["x", "w0", "b0"], ["c0"], name="conv0", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c0"], ["r0"], name="relu0"),
        helper.make_node("Conv", ["r0", "w1", "b1"], ["y"], name="conv1", pads=[1, 1, 1, 1]),
    ]
    graph = helper.make_graph(
        nodes, "onechan",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1, 8, 8])],
        inits,
    )
    return _save(graph, path)


def make_if_model(path: Path, *, features: int = 8) -> Path:
    """All compute inside an If: both branches hold a MatMul (the top graph has none)."""
    rng = np.random.default_rng(0)

    def branch(name: str, scale: float) -> onnx.GraphProto:
        w = numpy_helper.from_array(
            rng.standard_normal((features, features)).astype(np.float32) * scale, f"w_{name}")
        return helper.make_graph(
            [helper.make_node("MatMul", ["x", f"w_{name}"], [f"y_{name}"], name=f"mm_{name}")],
            name, [], [helper.make_tensor_value_info(f"y_{name}", TensorProto.FLOAT,
                                                     ["N", features])], [w])

    nodes = [
        helper.make_node("ReduceSum", ["x"], ["s"], name="sum", keepdims=0),
        helper.make_node("Greater", ["s", "zero"], ["cond"], name="gt"),
        helper.make_node("If", ["cond"], ["y"], name="branch",
                         then_branch=branch("then", 1.0), else_branch=branch("else", 2.0)),
    ]
    graph = helper.make_graph(
        nodes, "if_model",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", features])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", features])],
        [numpy_helper.from_array(np.array(0.0, dtype=np.float32), "zero")],
    )
    return _save(graph, path)


def make_offset_regressor(path: Path, *, offset: float = 1000.0) -> Path:
    """``make_mlp_classifier(outlier_reaches_fc2=True)`` followed by a one-value regression
    head plus a large constant: the output's plain cosine stays 0.9999 whatever the varying
    part does, so INT8 noise hides behind the offset."""
    make_mlp_classifier(path, outlier_reaches_fc2=True)
    model = onnx.load(str(path))
    rng = np.random.default_rng(0)
    model.graph.initializer.extend([
        numpy_helper.from_array(rng.standard_normal((10, 1)).astype(np.float32), "w3"),
        numpy_helper.from_array(np.array([offset], np.float32), "offset"),
    ])
    model.graph.node.extend([
        helper.make_node("MatMul", ["logits", "w3"], ["r"], name="fc3"),
        helper.make_node("Add", ["r", "offset"], ["y"], name="add_offset"),
    ])
    del model.graph.output[:]
    model.graph.output.append(helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1]))
    onnx.save(model, str(path))
    return path


def make_int_pair(ref_path: Path, cand_path: Path, *, shift_every: int = 5) -> tuple[Path, Path]:
    """Two int64 "label" models: the reference passes its labels through, the candidate adds
    1 to one label in ``shift_every`` (a neighbouring class)."""
    shift = np.zeros(shift_every, np.int64)
    shift[0] = 1
    x = helper.make_tensor_value_info("x", TensorProto.INT64, ["N", shift_every])
    y = helper.make_tensor_value_info("y", TensorProto.INT64, ["N", shift_every])
    _save(helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "ref", [x], [y]),
          ref_path)
    _save(helper.make_graph([helper.make_node("Add", ["x", "shift"], ["y"])], "cand", [x], [y],
                            [numpy_helper.from_array(shift, "shift")]), cand_path)
    return ref_path, cand_path
