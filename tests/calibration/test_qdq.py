"""Q/DQ placement: op types, per-channel axes, and the two consumers' option sets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_provision.calibration.precision import prepare_model_for_precision
from trt_provision.calibration.qdq import _check_per_channel_axes, qdq_option_set
from trt_provision.errors import EngineBuildError
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

from .models import cnn_batches, make_standalone_bn

pytestmark = pytest.mark.tier1


def _config(source: Path, **kwargs: object) -> BuildConfig:
    spec = CalibrationSpec(source=str(source), algorithm="minmax")
    return BuildConfig(precision=PrecisionMode.INT8, calibration=spec, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def standalone_bn(tmp_path: Path) -> tuple[Path, Path]:
    model = make_standalone_bn(tmp_path / "bn.onnx")
    data = tmp_path / "calib.npy"
    np.save(data, np.stack(cnn_batches(10, batch=40, size=12)))
    return model, data


def _dq_inputs(model: onnx.ModelProto) -> dict[str, onnx.NodeProto]:
    return {n.output[0]: n for n in model.graph.node if n.op_type == "DequantizeLinear"}


@pytest.mark.parametrize("consumer", ["onnxruntime-cpu", "tensorrt"])
def test_standalone_batchnorm_stays_float_and_the_model_stays_accurate(
    standalone_bn: tuple[Path, Path], tmp_path: Path, consumer: str
) -> None:
    model_path, data = standalone_bn
    prepared = prepare_model_for_precision(model_path, _config(data), tmp_path / "w",
                                           calibration_cache_dir=tmp_path / "c",
                                           consumer=consumer)
    model = onnx.load(str(prepared.model_path))
    dq = _dq_inputs(model)
    bn = next(n for n in model.graph.node if n.op_type == "BatchNormalization")
    assert not any(name in dq for name in bn.input[1:])  # its parameters are not quantized
    # weights are per channel on each op's output-channel axis
    by_op = {n.op_type: n for n in model.graph.node}
    for op, axis, channels in (("Conv", 0, 8), ("ConvTranspose", 1, 4), ("Gemm", 0, 6)):
        weight_dq = dq[by_op[op].input[1]]
        assert next(a.i for a in weight_dq.attribute if a.name == "axis") == axis
        scale = next(t for t in model.graph.initializer if t.name == weight_dq.input[1])
        assert list(scale.dims) == [channels]
    outputs = prepared.metadata["accuracy"]["outputs"]
    assert min(o["cosine"] for o in outputs.values()) >= 0.99


def test_the_two_consumers_get_different_recorded_option_sets(
    standalone_bn: tuple[Path, Path], tmp_path: Path
) -> None:
    model_path, data = standalone_bn
    meta = {}
    zero_points = {}
    for consumer in ("onnxruntime-cpu", "tensorrt"):
        prepared = prepare_model_for_precision(model_path, _config(data), tmp_path / consumer,
                                               calibration_cache_dir=tmp_path / "c",
                                               consumer=consumer)
        meta[consumer] = prepared.metadata["quantization"]
        model = onnx.load(str(prepared.model_path))
        q = next(n for n in model.graph.node if n.op_type == "QuantizeLinear")
        zp = next(t for t in model.graph.initializer if t.name == q.input[2])
        zero_points[consumer] = (zp.data_type, numpy_helper.to_array(zp))
    ort_meta, trt_meta = meta["onnxruntime-cpu"], meta["tensorrt"]
    assert ort_meta["consumer"] == "onnxruntime-cpu" and trt_meta["consumer"] == "tensorrt"
    assert ort_meta["activations"] == "uint8-asymmetric"
    assert trt_meta["activations"] == "int8-symmetric"
    assert trt_meta["dedicated_qdq_pair"] and trt_meta["keep_removable_activations"]
    assert not ort_meta["dedicated_qdq_pair"] and not ort_meta["keep_removable_activations"]
    assert "BatchNormalization" not in ort_meta["op_types"] + trt_meta["op_types"]
    assert zero_points["onnxruntime-cpu"][0] == TensorProto.UINT8
    assert zero_points["tensorrt"][0] == TensorProto.INT8
    assert not np.any(zero_points["tensorrt"][1])  # symmetric: zero point 0
    # one calibration feeds both: the second consumer reused the governed ranges
    assert prepared.metadata["calibration_cache_reused"] is True


def test_unknown_consumer_is_refused(standalone_bn: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="consumer"):
        prepare_model_for_precision(standalone_bn[0], _config(standalone_bn[1]), tmp_path,
                                    calibration_cache_dir=None, consumer="gpu")
    with pytest.raises(ValueError, match="consumer"):
        qdq_option_set("gpu").to_metadata()


def test_option_sets_are_what_each_consumer_needs() -> None:
    ort_set, trt_set = qdq_option_set("onnxruntime-cpu"), qdq_option_set("tensorrt")
    assert ort_set.extra_options()["ActivationSymmetric"] is False
    assert trt_set.extra_options()["ActivationSymmetric"] is True
    for options in (ort_set, trt_set):
        assert {"Conv", "ConvTranspose", "Gemm", "MatMul"} <= set(options.op_types)
        assert options.extra_options()["WeightSymmetric"] is True


def test_a_per_channel_scale_on_the_wrong_axis_is_caught(tmp_path: Path) -> None:
    weight = numpy_helper.from_array(np.zeros((4, 2, 3, 3), np.int8), "w_q")
    scale = numpy_helper.from_array(np.ones(2, np.float32), "w_s")  # 2 scales, axis 0 has 4
    zp = numpy_helper.from_array(np.zeros(2, np.int8), "w_zp")
    node = helper.make_node("DequantizeLinear", ["w_q", "w_s", "w_zp"], ["w"], axis=0,
                            name="dq")
    graph = helper.make_graph([node], "g", [],
                              [helper.make_tensor_value_info("w", TensorProto.FLOAT, None)],
                              [weight, scale, zp])
    with pytest.raises(EngineBuildError, match="wrong axis"):
        _check_per_channel_axes(helper.make_model(graph), tmp_path / "m.onnx")
