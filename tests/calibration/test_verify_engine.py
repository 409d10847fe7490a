"""EngineVerdictFromOutputs on real ONNX Runtime: a built engine judged against the FP32 model
per sample, with the Wilson-bounded gate and a NaN/Inf check (FP16 overflow is refused)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_provision.calibration.accuracy import AccuracyGate
from trt_provision.calibration.fp16 import convert_to_fp16
from trt_provision.calibration.verify_engine import EngineVerdict, engine_verdict_from_outputs
from trt_provision.errors import AccuracyGateError, EngineBuildError
from trt_provision.types import BuildConfig, OptimizationProfile

from .models import make_mlp_classifier

pytestmark = pytest.mark.tier1

GATE = AccuracyGate(min_cosine=0.99, min_top1_agreement=0.95, origin="default for int8")


def _ort(path: Path) -> Any:
    import onnxruntime as ort

    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    names = [o.name for o in session.get_outputs()]

    def run(feed: Mapping[str, Any]) -> Mapping[str, Any]:
        return dict(zip(names, session.run(names, dict(feed)), strict=True))

    return run


def _rows(rows: int, batches: int = 1, seed: int = 0) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"x": rng.standard_normal((rows, 16)).astype(np.float32)} for _ in range(batches)]


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return make_mlp_classifier(tmp_path / "mlp.onnx")


def test_an_engine_that_matches_on_enough_samples_passes(mlp: Path) -> None:
    verdict = engine_verdict_from_outputs(_ort(mlp), mlp, runtime="onnxruntime-cpu",
                                          batches=_rows(40, 2), gate=GATE)
    assert verdict.verdict == "passed" and not verdict.refused and verdict.reason == ""
    record = verdict.to_dict()
    assert record["inputs"] == "data" and record["samples"] == 80 and record["batches"] == 2
    assert record["runtime"] == "onnxruntime-cpu"
    assert record["reference"] == "onnxruntime cpu fp32"
    assert record["outputs"]["logits"]["kind"] == "classes"
    assert record["outputs"]["logits"]["agreeing"] == 80
    assert record["evidence"]["enough"] and record["evidence"]["required_samples"] == 73
    verdict.raise_if_refused(model="mlp")  # passes: nothing raised


def test_four_samples_are_no_verdict_on_an_engine_either(mlp: Path) -> None:
    verdict = engine_verdict_from_outputs(_ort(mlp), mlp, runtime="tensorrt 10.3",
                                          batches=_rows(4), gate=GATE)
    assert verdict.refused and verdict.samples == 4
    assert verdict.reason.startswith("not enough evidence: 4 test samples, need 73")
    with pytest.raises(AccuracyGateError, match=r"engine refused on tensorrt 10\.3: not enough "
                       "evidence") as info:
        verdict.raise_if_refused(model="mlp")
    assert info.value.context["samples"] == 4 and info.value.context["required_samples"] == 73


def test_flipped_labels_in_a_tenth_of_the_samples_are_refused(mlp: Path) -> None:
    exact = _ort(mlp)

    def engine(feed: Mapping[str, Any]) -> Mapping[str, Any]:
        out = {k: np.array(v) for k, v in exact(feed).items()}
        logits = out["logits"]
        for row in range(0, logits.shape[0], 10):  # every tenth row: runner-up wins
            top2 = np.argsort(logits[row])[-2:]
            logits[row, top2[0]] = logits[row, top2[1]] + 0.5
        return out

    verdict = engine_verdict_from_outputs(engine, mlp, runtime="fake", batches=_rows(100),
                                          gate=GATE)
    assert verdict.refused
    assert "output 'logits': 90 of 100 samples agree (top-1)" in verdict.reason


def test_without_data_it_is_a_smoke_check_on_synthetic_inputs(mlp: Path) -> None:
    config = BuildConfig(profiles=(OptimizationProfile("x", (1, 16), (8, 16), (16, 16)),))
    verdict = engine_verdict_from_outputs(_ort(mlp), mlp, runtime="onnxruntime-cpu",
                                          batches=None, gate=GATE, config=config)
    assert verdict.inputs == "synthetic" and verdict.verdict == "smoke only"
    record = verdict.to_dict()
    assert record["note"] == "smoke, not an accuracy figure (synthetic inputs)"
    assert "evidence" not in record
    assert verdict.samples == 4 * 8  # four synthetic batches at the opt shape


_SCALE_UP, _SCALE_MORE = 1e4, 10.0


def _overflowing(path: Path) -> Path:
    """y = (x @ I) * 1e4 * 10 + b: about 1e5 * x, fine in FP32, beyond FP16's 65504 wherever
    |x| > 0.66."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"], name="fc"),
         helper.make_node("Mul", ["h", "big"], ["h1"], name="scale_up"),
         helper.make_node("Mul", ["h1", "ten"], ["h2"], name="scale_more"),
         helper.make_node("Add", ["h2", "b"], ["y"], name="bias")],
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(np.eye(16, dtype=np.float32), "w"),
         numpy_helper.from_array(np.array(_SCALE_UP, np.float32), "big"),
         numpy_helper.from_array(np.array(_SCALE_MORE, np.float32), "ten"),
         numpy_helper.from_array(np.full(16, 0.5, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _fp16_engine(fp16_model: onnx.ModelProto) -> Any:
    """The converted graph run in float16 arithmetic, as an FP16 engine's kernels run it.
    (ONNX Runtime's CPU provider computes float16 nodes in float32 and drops the casts in
    between, so an ORT session on this graph never overflows.)"""
    inits = {t.name: numpy_helper.to_array(t) for t in fp16_model.graph.initializer}
    assert {a.dtype for a in inits.values()} == {np.dtype(np.float16)}

    def run(feed: Mapping[str, Any]) -> Mapping[str, Any]:
        with np.errstate(over="ignore", invalid="ignore"):
            h = np.asarray(feed["x"]).astype(np.float16) @ inits["w"]
            y = h * inits["big"] * inits["ten"] + inits["b"]
        return {"y": y.astype(np.float32)}

    return run


def test_an_fp16_engine_that_overflows_is_refused_naming_the_output(tmp_path: Path) -> None:
    source = _overflowing(tmp_path / "overflow.onnx")
    fp16, conversion = convert_to_fp16(onnx.load(str(source)))  # no observed extremes
    assert set(conversion.converted) == {"fc", "scale_up", "scale_more", "bias"}
    engine = _fp16_engine(fp16)
    assert not np.isfinite(engine(_rows(8)[0])["y"]).all()  # the engine really overflows
    for batches in (None, _rows(40, 2)):
        verdict = engine_verdict_from_outputs(engine, source, runtime="fp16 engine",
                                              batches=batches, gate=GATE)
        assert verdict.refused
        count = dict(verdict.nonfinite)["y"]
        assert count > 0
        assert verdict.reason.startswith(
            f"output 'y': {count} NaN/Inf values where the FP32 reference is finite")
        assert verdict.to_dict()["nonfinite"] == {"y": count}
    # without a gate the NaN/Inf check still refuses
    ungated = engine_verdict_from_outputs(engine, source, runtime="fp16 engine",
                                          batches=_rows(8), gate=None)
    assert ungated.refused
    # the FP32 model itself is fine on the same inputs: the check is not refusing everything
    clean = engine_verdict_from_outputs(_ort(source), source, runtime="fp32",
                                        batches=_rows(40, 2), gate=GATE)
    assert clean.verdict == "passed" and clean.nonfinite == ()


def test_nan_where_the_reference_is_nan_too_is_not_blamed_on_the_engine(tmp_path: Path) -> None:
    graph = helper.make_graph(
        [helper.make_node("Sqrt", ["x"], ["y"], name="sqrt")], "sqrt",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / "sqrt.onnx"
    onnx.save(model, str(path))
    verdict = engine_verdict_from_outputs(_ort(path), path, runtime="same", batches=_rows(8),
                                          gate=None)
    assert verdict.nonfinite == () and verdict.verdict == "not gated"


def test_an_engine_that_fails_or_loses_an_output_is_a_build_error(mlp: Path) -> None:
    def broken(feed: Mapping[str, Any]) -> Mapping[str, Any]:
        raise RuntimeError("enqueue failed")

    with pytest.raises(EngineBuildError, match="tensorrt engine model failed on test batch 0: "
                       "RuntimeError: enqueue failed"):
        engine_verdict_from_outputs(broken, mlp, runtime="tensorrt", batches=_rows(4),
                                    gate=GATE)

    def empty(feed: Mapping[str, Any]) -> Mapping[str, Any]:
        return {}

    with pytest.raises(EngineBuildError, match="lost an output"):
        engine_verdict_from_outputs(empty, mlp, runtime="tensorrt", batches=_rows(4),
                                    gate=GATE)


def test_the_verdict_dto_is_frozen_and_validated(mlp: Path) -> None:
    verdict = engine_verdict_from_outputs(_ort(mlp), mlp, runtime="x", batches=_rows(80),
                                          gate=GATE)
    with pytest.raises(AttributeError):
        verdict.verdict = "passed"  # type: ignore[misc]
    with pytest.raises(ValueError, match="inputs must be"):
        EngineVerdict("x", "random", 1, 1, "passed", "", verdict.report)
