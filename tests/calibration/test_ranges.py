"""Activation ranges with ONNX Runtime's calibrators, and the TensorRT cache text."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from trt_provision.calibration.ranges import (
    TensorRanges,
    compute_activation_ranges,
    parse_trt_calibration_cache,
    trt_version_tag,
    write_trt_calibration_cache,
)
from trt_provision.errors import CalibrationCacheError
from trt_provision.types import CalibrationSpec

pytestmark = pytest.mark.tier1


def _relu_model(path: Path) -> Path:
    graph = helper.make_graph(
        [helper.make_node("Relu", ["x"], ["y"], name="relu")], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 256])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def _heavy_tailed(count: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(0)
    batches = []
    for _ in range(count):
        x = rng.standard_normal((8, 256)).astype(np.float32)
        x[0, 0] = 60.0  # one outlier per batch: min-max follows it, entropy should not
        batches.append({"x": x})
    return batches


def test_entropy_uses_a_real_histogram_unlike_minmax(tmp_path: Path) -> None:
    model = _relu_model(tmp_path / "m.onnx")
    entropy = compute_activation_ranges(
        model, _heavy_tailed(4), CalibrationSpec(algorithm="entropy", num_bins=1024),
        tmp_path / "e",
    )
    minmax = compute_activation_ranges(
        model, _heavy_tailed(4), CalibrationSpec(algorithm="minmax"), tmp_path / "m"
    )
    assert minmax.amax("x") == pytest.approx(60.0)
    # a collapsed entropy calibrator would return the min-max range; a real one clips
    assert entropy.amax("x") < 0.5 * minmax.amax("x")
    assert entropy.params["num_bins"] == 1024
    assert entropy.params["batches"] == 4


def test_percentile_clips_the_tail(tmp_path: Path) -> None:
    model = _relu_model(tmp_path / "m.onnx")
    pct = compute_activation_ranges(
        model, _heavy_tailed(2),
        CalibrationSpec(algorithm="percentile", num_bins=512, percentile=99.9), tmp_path / "p",
    )
    assert pct.amax("x") < 60.0


def test_empty_batches_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CalibrationCacheError, match="empty"):
        compute_activation_ranges(_relu_model(tmp_path / "m.onnx"), [],
                                  CalibrationSpec(algorithm="minmax"), tmp_path / "w")


@pytest.mark.parametrize(
    ("version", "tag"), [("8.6.1", "8601"), ("10.3.0", "100300"), ("10.13.2.6", "101302"),
                         ("7.2", "7200")],
)
def test_trt_version_tag(version: str, tag: str) -> None:
    assert trt_version_tag(version) == tag


def test_trt_cache_text_format() -> None:
    ranges = TensorRanges("entropy", {"input": (-1.0, 2.54), "conv/out": (0.0, 1.27)})
    text = write_trt_calibration_cache(ranges, "10.3.0").decode()
    lines = text.splitlines()
    assert lines[0] == "TRT-100300-EntropyCalibration2"
    assert lines[1] == "conv/out: " + struct.pack(">f", 1.27 / 127.0).hex()
    assert lines[2] == "input: " + struct.pack(">f", 2.54 / 127.0).hex()


@settings(max_examples=50, deadline=None)
@given(st.dictionaries(
    st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1, max_size=20)
    .filter(lambda s: ": " not in s),
    st.floats(min_value=0.0, max_value=1e6, allow_nan=False, width=32),
    max_size=10,
))
def test_trt_cache_round_trip_property(amax: dict[str, float]) -> None:
    ranges = TensorRanges("entropy", {k: (-v, v) for k, v in amax.items()})
    back = parse_trt_calibration_cache(write_trt_calibration_cache(ranges, "8.6.1"))
    assert set(back.ranges) == set(amax)
    for name, value in amax.items():
        if struct.unpack(">f", struct.pack(">f", value / 127.0))[0] == 0.0:
            # a zero range is written with scale 1.0, as ONNX Runtime does, never 0
            assert back.amax(name) == pytest.approx(127.0)
        else:
            assert back.amax(name) == pytest.approx(value, rel=1e-6, abs=1e-30)


def test_zero_range_tensor_gets_scale_one_not_zero() -> None:
    ranges = TensorRanges("minmax", {"zeros": (0.0, 0.0), "x": (-1.27, 1.27)})
    text = write_trt_calibration_cache(ranges, "10.3.0").decode()
    lines = dict(line.split(": ") for line in text.splitlines()[1:])
    assert struct.unpack(">f", bytes.fromhex(lines["zeros"]))[0] == 1.0
    assert struct.unpack(">f", bytes.fromhex(lines["x"]))[0] == pytest.approx(0.01)


@pytest.mark.parametrize(
    "blob", [b"", b"hello\n", b"TRT-8601-EntropyCalibration2\nbroken line\n",
             b"TRT-8601-EntropyCalibration2\nx: 7fc00000\n", b"\xff\xfe"],
)
def test_malformed_trt_cache_is_refused(blob: bytes) -> None:
    with pytest.raises(CalibrationCacheError):
        parse_trt_calibration_cache(blob)


def test_ranges_json_round_trip_and_refusal() -> None:
    ranges = TensorRanges("minmax", {"a": (-1.5, 2.0)}, {"num_bins": 3})
    assert TensorRanges.from_json(ranges.to_json()) == ranges
    with pytest.raises(CalibrationCacheError):
        TensorRanges.from_json(b'{"ranges": 3}')


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_entropy_search_matches_onnxruntime(seed: int) -> None:
    import contextlib
    import io

    from onnxruntime.quantization.calibrate import HistogramCollector

    from trt_provision.calibration.ranges import entropy_threshold

    rng = np.random.default_rng(seed)
    data = [rng.standard_normal(4096).astype(np.float32) * (1 + seed),
            rng.laplace(size=4096).astype(np.float32)]
    collector = HistogramCollector("entropy", False, 512, 255, 99.99, "same")
    with contextlib.redirect_stdout(io.StringIO()):
        collector.collect({"t": data})
    hist = collector.histogram_dict["t"]
    expected = collector.get_entropy_threshold(hist, 255)
    got = entropy_threshold(hist[0], hist[1], float(hist[2]), float(hist[3]))
    assert got == pytest.approx((float(expected[0]), float(expected[1])), rel=1e-6)
