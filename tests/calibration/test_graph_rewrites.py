"""Graph rewrites of the ONNX Runtime CPU consumer: outputs kept, TensorRT left alone."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_provision.calibration.graph import (
    fold_affine_into_next_conv,
    fold_conv_affine,
    fuse_hardswish,
    optimize_for_ort_cpu,
)
from trt_provision.calibration.precision import prepare_model_for_precision
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

pytestmark = pytest.mark.tier1

C = 8


def _const(name: str, value: object) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(value, np.float32), name)


def _hardswish_chain(prefix: str, x: str, out: str, *, swapped: bool, mul_by_sixth: bool
                     ) -> tuple[list[onnx.NodeProto], list[onnx.TensorProto]]:
    inits = [_const(f"{prefix}_three", 3.0), _const(f"{prefix}_zero", 0.0),
             _const(f"{prefix}_six", 6.0), _const(f"{prefix}_sixth", 1.0 / 6.0)]
    add_in = [f"{prefix}_three", x] if swapped else [x, f"{prefix}_three"]
    mul_in = [f"{prefix}_clip", x] if swapped else [x, f"{prefix}_clip"]
    last = (helper.make_node("Mul", [f"{prefix}_sixth", f"{prefix}_mul"], [out],
                             name=f"{prefix}_scale") if mul_by_sixth else
            helper.make_node("Div", [f"{prefix}_mul", f"{prefix}_six"], [out],
                             name=f"{prefix}_div"))
    nodes = [
        helper.make_node("Add", add_in, [f"{prefix}_add"], name=f"{prefix}_add"),
        helper.make_node("Clip", [f"{prefix}_add", f"{prefix}_zero", f"{prefix}_six"],
                         [f"{prefix}_clip"], name=f"{prefix}_clip"),
        helper.make_node("Mul", mul_in, [f"{prefix}_mul"], name=f"{prefix}_mul"),
        last,
    ]
    return nodes, inits


def make_hardswish_net(path: Path, *, seed: int = 0, size: int = 12) -> Path:
    """Conv -> Mul/Add (affine) -> hard-swish -> Mul/Add -> 1x1 Conv -> hard-swish -> Conv."""
    rng = np.random.default_rng(seed)
    inits = [
        _const("w0", rng.standard_normal((C, 3, 3, 3)) * 0.4),
        _const("b0", rng.standard_normal(C) * 0.1),
        _const("s0", 1.7), _const("t0", rng.standard_normal((1, C, 1, 1)) * 0.3),
        _const("s1", 0.8), _const("t1", -0.25),
        _const("w1", rng.standard_normal((C, C, 1, 1)) * 0.4),
        _const("w2", rng.standard_normal((4, C, 3, 3)) * 0.3),
    ]
    nodes = [
        helper.make_node("Conv", ["input", "w0", "b0"], ["c0"], name="conv0", pads=[1] * 4),
        helper.make_node("Mul", ["c0", "s0"], ["m0"], name="lab0_scale"),
        helper.make_node("Add", ["m0", "t0"], ["a0"], name="lab0_bias"),
    ]
    chain, chain_inits = _hardswish_chain("hs0", "a0", "h0", swapped=False,
                                          mul_by_sixth=False)
    nodes += chain
    inits += chain_inits
    nodes += [
        helper.make_node("Mul", ["h0", "s1"], ["m1"], name="lab1_scale"),
        helper.make_node("Add", ["t1", "m1"], ["a1"], name="lab1_bias"),
        helper.make_node("Conv", ["a1", "w1"], ["c1"], name="conv1"),
    ]
    chain, chain_inits = _hardswish_chain("hs1", "c1", "h1", swapped=True, mul_by_sixth=True)
    nodes += chain
    inits += chain_inits
    nodes.append(helper.make_node("Conv", ["h1", "w2"], ["output"], name="conv2",
                                  pads=[1] * 4))
    graph = helper.make_graph(
        nodes, "hardswish_net",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, size, size])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 4, size, size])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"input": x})[0])


def _inputs(seed: int = 1) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal((2, 3, 12, 12)) * 3).astype(np.float32) for _ in range(4)]


def test_hardswish_chains_become_hardswish_nodes_with_the_same_outputs(tmp_path: Path) -> None:
    src = make_hardswish_net(tmp_path / "net.onnx")
    model = onnx.load(str(src))
    assert fuse_hardswish(model) == 2
    onnx.checker.check_model(model)
    ops = [n.op_type for n in model.graph.node]
    assert ops.count("HardSwish") == 2 and "Div" not in ops and "Clip" not in ops
    assert next(o.version for o in model.opset_import if o.domain == "") >= 14
    # the fused nodes keep the chains' output names (calibration ranges still apply)
    assert {n.output[0] for n in model.graph.node if n.op_type == "HardSwish"} == {"h0", "h1"}
    dst = tmp_path / "fused.onnx"
    onnx.save(model, str(dst))
    for x in _inputs():
        np.testing.assert_allclose(_run(dst, x), _run(src, x), atol=1e-5, rtol=1e-5)


def test_hardswish_chain_with_other_consumers_or_constants_is_left_alone(
    tmp_path: Path,
) -> None:
    src = make_hardswish_net(tmp_path / "net.onnx")
    model = onnx.load(str(src))
    six = next(t for t in model.graph.initializer if t.name == "hs0_six")
    six.CopyFrom(_const("hs0_six", 5.0))  # Clip(.., 0, 5) / 5 is not hard-swish
    model.graph.output.append(helper.make_tensor_value_info("hs1_mul", TensorProto.FLOAT,
                                                            None))  # intermediate is used
    assert fuse_hardswish(model) == 0
    assert not any(n.op_type == "HardSwish" for n in model.graph.node)


def test_affine_folding_keeps_outputs_and_skips_padded_convs(tmp_path: Path) -> None:
    src = make_hardswish_net(tmp_path / "net.onnx")
    model = onnx.load(str(src))
    assert fold_conv_affine(model) == 1  # conv0 <- lab0 (scalar scale, per-channel bias)
    assert fuse_hardswish(model) == 2
    assert fold_affine_into_next_conv(model) == 1  # lab1 -> unpadded 1x1 conv1
    names = {n.name for n in model.graph.node}
    assert not names & {"lab0_scale", "lab0_bias", "lab1_scale", "lab1_bias"}
    conv0 = next(n for n in model.graph.node if n.name == "conv0")
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    assert conv0.output[0] == "a0" and conv1.input[0] == "h0"
    dst = tmp_path / "folded.onnx"
    onnx.save(model, str(dst))
    for x in _inputs():
        np.testing.assert_allclose(_run(dst, x), _run(src, x), atol=1e-5, rtol=1e-5)

    # an affine step feeding a padded conv is not folded (padding would add 0, not b)
    model = onnx.load(str(src))
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    conv1.attribute.append(helper.make_attribute("pads", [0, 0, 0, 0]))
    assert fold_affine_into_next_conv(model) == 1
    model = onnx.load(str(src))
    conv1 = next(n for n in model.graph.node if n.name == "conv1")
    conv1.attribute.append(helper.make_attribute("pads", [1, 1, 1, 1]))
    assert fold_affine_into_next_conv(model) == 0


def test_optimize_for_ort_cpu_reports_counts(tmp_path: Path) -> None:
    src = make_hardswish_net(tmp_path / "net.onnx")
    counts = optimize_for_ort_cpu(src, tmp_path / "cpu.onnx")
    assert counts == {"conv_affine_folded": 1, "hardswish_fused": 2,
                      "affine_into_next_conv": 1}
    for x in _inputs(2):
        np.testing.assert_allclose(_run(tmp_path / "cpu.onnx", x), _run(src, x),
                                   atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("consumer", ["onnxruntime-cpu", "tensorrt"])
def test_rewrites_apply_to_the_cpu_consumer_only(tmp_path: Path, consumer: str) -> None:
    src = make_hardswish_net(tmp_path / "net.onnx")
    data = tmp_path / "calib.npy"
    rng = np.random.default_rng(3)
    np.save(data, (rng.standard_normal((10, 40, 3, 12, 12)) * 2).astype(np.float32))
    config = BuildConfig(precision=PrecisionMode.INT8,
                         calibration=CalibrationSpec(source=str(data), algorithm="minmax"))
    prepared = prepare_model_for_precision(src, config, tmp_path / "w",
                                           calibration_cache_dir=tmp_path / "c",
                                           consumer=consumer)
    model = onnx.load(str(prepared.model_path))
    ops = [n.op_type for n in model.graph.node]
    quant = prepared.metadata["quantization"]
    if consumer == "onnxruntime-cpu":
        assert ops.count("HardSwish") == 2 and "Div" not in ops
        assert quant["graph_rewrites"] == ["conv_affine_folded", "hardswish_fused",
                                           "affine_into_next_conv"]
        assert quant["rewrites"]["hardswish_fused"] == 2
    else:  # TensorRT fuses pointwise chains itself: its graph stays as calibrated
        assert "HardSwish" not in ops and ops.count("Div") == 1
        assert quant["graph_rewrites"] == [] and quant["rewrites"] == {}
    outputs = prepared.metadata["accuracy"]["outputs"]
    assert min(o["cosine"] for o in outputs.values()) >= 0.98
