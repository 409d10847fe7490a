"""Adversarial models and data against the accuracy gate: each case once produced a wrong
engine that the gate passed (exit 0, no warning)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trt_provision.calibration.accuracy import AccuracyGate, compare_models
from trt_provision.calibration.data import InputSpec
from trt_provision.calibration.precision import prepare_model_for_precision
from trt_provision.calibration.splits import split_for_judging
from trt_provision.errors import AccuracyGateError, EngineBuildError
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

from .models import make_int_pair, make_offset_regressor, outlier_batches

pytestmark = pytest.mark.tier1


def _config(precision: str, source: Path, **kwargs: Any) -> BuildConfig:
    spec = CalibrationSpec(source=str(source), algorithm=kwargs.pop("algorithm", "minmax"))
    return BuildConfig(precision=PrecisionMode(precision), calibration=spec, **kwargs)


def _prepare(model: Path, config: BuildConfig, tmp: Path) -> Any:
    return prepare_model_for_precision(model, config, tmp / "w", calibration_cache_dir=tmp / "c")


def test_an_output_dominated_by_a_constant_offset_is_judged_on_its_varying_part(
    tmp_path: Path,
) -> None:
    # INT8 garbage + 1000: plain cosine 0.99998 on validation and test, centered cosine < 0.3
    model = make_offset_regressor(tmp_path / "offset.onnx")
    data = tmp_path / "d.npy"
    np.save(data, np.stack(outlier_batches(10, rows=40)))
    with pytest.raises(AccuracyGateError, match="centered cosine"):
        _prepare(model, _config("int8", data), tmp_path)


def test_centered_cosine_is_recorded_and_equals_cosine_for_zero_mean_outputs(
    tmp_path: Path,
) -> None:
    model = make_offset_regressor(tmp_path / "m.onnx", offset=0.0)
    rng = np.random.default_rng(3)
    batches = [{"x": rng.standard_normal((8, 16)).astype(np.float32)} for _ in range(3)]
    out = compare_models(model, model, batches).outputs[0]
    assert out.cosine == pytest.approx(1.0) and out.centered_cosine == pytest.approx(1.0)
    assert out.to_dict()["centered_cosine"] == pytest.approx(1.0)


def test_a_constant_reference_output_has_no_centered_cosine(tmp_path: Path) -> None:
    model = make_offset_regressor(tmp_path / "m.onnx")
    batches = [{"x": np.zeros((80, 16), np.float32)}]  # every row gives the same output
    out = compare_models(model, model, batches).outputs[0]
    assert out.centered_cosine is None and out.cosine == pytest.approx(1.0)
    assert AccuracyGate(min_cosine=0.99).passes(compare_models(model, model, batches))


def test_integer_outputs_are_judged_by_exact_agreement_not_cosine(tmp_path: Path) -> None:
    # labels around 500 with one in five read as its neighbour: cosine 0.99999
    ref, cand = make_int_pair(tmp_path / "ref.onnx", tmp_path / "cand.onnx")
    batches = [{"x": np.full((40, 5), 500, np.int64)} for _ in range(2)]  # 80 samples
    report = compare_models(ref, cand, batches, data="test")
    out = report.outputs[0]
    assert out.cosine > 0.9999
    assert out.exact_agreement == pytest.approx(0.8)
    assert report.worst_top1 == pytest.approx(0.8)
    gate = AccuracyGate(min_cosine=0.99, min_top1_agreement=0.95)
    assert any("exact agreement 0.8000" in f for f in gate.failures(report))
    same = compare_models(ref, ref, batches, data="test")
    assert same.outputs[0].exact_agreement == 1.0 and gate.passes(same)


def test_held_out_rows_identical_to_calibration_rows_are_flagged(
    caplog: pytest.LogCaptureFixture,
) -> None:
    # a constant source: every "held-out" row is a calibration row
    specs = (InputSpec("x", "float32", (None, 16)),)
    config = BuildConfig(precision=PrecisionMode.INT8)
    same = [{"x": np.ones((40, 16), np.float32)} for _ in range(10)]
    with caplog.at_level("WARNING"):
        splits = split_for_judging(same, specs, config)
    meta = splits.to_metadata()
    assert meta["identical_to_calibration_rows"] == {"validation": 80, "test": 80}
    assert "not measured on held-out data" in caplog.text
    rows = split_for_judging([{"x": np.ones((400, 16), np.float32)}], specs, config)
    assert rows.to_metadata()["identical_to_calibration_rows"] == {"validation": 80, "test": 80}
    rng = np.random.default_rng(0)
    fresh = [{"x": rng.standard_normal((40, 16)).astype(np.float32)} for _ in range(10)]
    assert "identical_to_calibration_rows" not in split_for_judging(
        fresh, specs, config).to_metadata()


def test_fp16_with_nothing_converted_is_refused_not_labelled_fp16(tmp_path: Path) -> None:
    # inputs near 1e37: every activation is beyond the FP16 range, every node stays FP32
    from .models import make_mlp_classifier

    model = make_mlp_classifier(tmp_path / "mlp.onnx")
    rng = np.random.default_rng(0)
    data = tmp_path / "huge.npy"
    np.save(data, (rng.standard_normal((10, 200, 16)) * 1e37).astype(np.float32))
    with pytest.raises(EngineBuildError, match=r"nothing to convert.*beyond fp16 range"):
        _prepare(model, _config("fp16", data), tmp_path)
    normal = tmp_path / "normal.npy"
    # fp16's 0.99 bar needs 381 test samples: 10 batches of 200 rows give 400
    np.save(normal, rng.standard_normal((10, 200, 16)).astype(np.float32))
    meta = _prepare(model, _config("fp16", normal), tmp_path / "ok").metadata
    assert meta["fp16"]["converted_nodes"] >= 2 and meta["accuracy"]["verdict"] == "passed"
