"""Evidence behind a verdict: the Wilson bound, the samples a bar needs, per-sample metrics by
output kind (a CTC line reader that agrees on 99.7 % of frames but changes 10 % of its lines is
refused), kind inference, the manifest's ``[models.outputs.NAME] kind`` and a task metric
that reports a pass rate."""

from __future__ import annotations

import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from trt_provision.calibration.accuracy import (
    AccuracyGate,
    AccuracyReport,
    OutputAccuracy,
    compare_outputs,
    output_kinds,
    required_samples,
    wilson_lower_bound,
)
from trt_provision.calibration.data import InputSpec
from trt_provision.calibration.metric import run_metric
from trt_provision.calibration.splits import split_for_judging
from trt_provision.config import load_manifest
from trt_provision.config_json import build_config_from_json, build_config_to_json
from trt_provision.errors import AccuracyGateError, EngineBuildError, ManifestError
from trt_provision.identity import build_option_digest
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

pytestmark = pytest.mark.tier0

GATE = AccuracyGate(min_cosine=0.99, min_top1_agreement=0.95, origin="default for int8")

# ------------------------------------------------------------------ Wilson


def test_wilson_known_values() -> None:
    # 50 of 100: the textbook 95 % Wilson interval is (0.4038, 0.5962)
    assert wilson_lower_bound(50, 100) == pytest.approx(0.4038, abs=1e-4)
    # all agreeing: n / (n + z^2)
    assert wilson_lower_bound(4, 4) == pytest.approx(4 / (4 + 1.96 ** 2))
    assert wilson_lower_bound(4, 4) == pytest.approx(0.5101, abs=1e-4)
    assert wilson_lower_bound(73, 73) >= 0.95 > wilson_lower_bound(72, 72)
    assert wilson_lower_bound(0, 10) == 0.0
    assert wilson_lower_bound(0, 0) == 0.0
    with pytest.raises(ValueError):
        wilson_lower_bound(5, 4)


@pytest.mark.parametrize(("bar", "needed"), [
    (0.5, 4), (0.8, 16), (0.9, 35), (0.95, 73), (0.98, 189), (0.99, 381), (0.995, 765),
    (0.999, 3838),
])
def test_required_samples_is_the_fewest_that_all_agreeing_clear(bar: float, needed: int) -> None:
    assert required_samples(bar) == needed
    assert wilson_lower_bound(needed, needed) >= bar
    assert wilson_lower_bound(needed - 1, needed - 1) < bar


def test_the_bound_grows_with_agreement_and_with_samples() -> None:
    bounds = [wilson_lower_bound(k, 100) for k in range(101)]
    assert all(a < b for a, b in itertools.pairwise(bounds))
    all_agree = [wilson_lower_bound(n, n) for n in range(1, 500)]
    assert all(a < b for a, b in itertools.pairwise(all_agree))


@settings(max_examples=300, deadline=None, database=None)
@given(st.integers(min_value=1, max_value=100_000), st.data())
def test_the_bound_never_exceeds_the_observed_rate(samples: int, data: st.DataObject) -> None:
    agreeing = data.draw(st.integers(min_value=0, max_value=samples))
    bound = wilson_lower_bound(agreeing, samples)
    assert 0.0 <= bound <= agreeing / samples + 1e-12


# ------------------------------------------------------------------ models for kind inference


def _model(path: Path, out_shape: Sequence[Any], *, op: str = "Identity",
           elem: int = TensorProto.FLOAT, in_shape: Sequence[Any] | None = None) -> Path:
    """x -> op -> y. The comparisons below feed crafted outputs through runners; the graph
    only has to say what the output is (its producer, shape and type)."""
    attrs = {"axis": -1} if op == "Softmax" else {}
    graph = helper.make_graph(
        [helper.make_node(op, ["x"], ["y"], name="head", **attrs)], "g",
        [helper.make_tensor_value_info("x", elem, list(in_shape or out_shape))],
        [helper.make_tensor_value_info("y", elem, list(out_shape))])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, str(path))
    return path


def _compare(model: Path, ref: Sequence[np.ndarray], cand: Sequence[np.ndarray],
             rows: Sequence[int], *, gate: AccuracyGate | None = GATE,
             kinds: Sequence[tuple[str, str]] = ()) -> AccuracyReport:
    refs, cands = iter(ref), iter(cand)

    def run_ref(feed: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"y": next(refs)}

    def run_cand(feed: Mapping[str, Any]) -> Mapping[str, Any]:
        return {"y": next(cands)}

    batches = [{"x": np.zeros((r, 1), np.float32)} for r in rows]
    return compare_outputs(model, ["y"], batches, run_ref, run_cand, data="test",
                           kinds=kinds, gate=gate)


def _softmax(z: np.ndarray) -> np.ndarray:
    e = np.exp(z - z.max(axis=-1, keepdims=True))
    return (e / e.sum(axis=-1, keepdims=True)).astype(np.float32)


def _ctc(n: int = 100, t: int = 30, c: int = 500, changed: int = 10, seed: int = 0
         ) -> tuple[np.ndarray, np.ndarray]:
    """Confident per-frame scores; ``changed`` lines get one frame whose label changes."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, c, size=(n, t))
    logits = rng.standard_normal((n, t, c)).astype(np.float32)
    np.put_along_axis(logits, labels[..., None], 12.0, axis=-1)
    ref = _softmax(logits)
    cand_logits = logits.copy()
    for line in range(changed):
        frame, wrong = line % t, (labels[line, line % t] + 1) % c
        cand_logits[line, frame, wrong] = 13.0
    return ref, _softmax(cand_logits)


# ------------------------------------------------------------------ per-sample metrics


def test_ctc_lines_changed_behind_a_high_frame_agreement_are_refused(tmp_path: Path) -> None:
    ref, cand = _ctc()
    model = _model(tmp_path / "ctc.onnx", ["N", 30, 500], op="Softmax")
    report = _compare(model, [ref], [cand], [100])
    out = report.outputs[0]
    assert out.kind == "sequence" and out.samples == 100
    # the whole-tensor figures the old gate looked at all pass
    assert out.top1_agreement == pytest.approx(1 - 10 / 3000)  # 99.7 % of frames
    assert out.cosine > 0.99 and out.top1_agreement >= 0.95
    assert out.agreeing() == 90
    failures = GATE.failures(report)
    assert failures == [
        "output 'y': 90 of 100 samples agree (arg-max sequence); n=100, "
        f"bound={wilson_lower_bound(90, 100):.4f} < 0.95"]
    record = report.to_dict()
    assert record["samples"] == 100 and record["threshold"] == 0.95
    assert record["outputs"]["y"]["agreeing"] == 90
    assert record["evidence"]["bound"] == pytest.approx(wilson_lower_bound(90, 100), abs=1e-8)


def test_time_major_ctc_output_is_judged_per_line_too(tmp_path: Path) -> None:
    ref, cand = _ctc()
    ref_t, cand_t = ref.transpose(1, 0, 2).copy(), cand.transpose(1, 0, 2).copy()  # [T, N, C]
    model = _model(tmp_path / "ctc_t.onnx", [30, "N", 500], op="Softmax",
                   in_shape=[30, "N", 500])
    out = _compare(model, [ref_t], [cand_t], [100]).outputs[0]
    assert out.kind == "sequence" and out.samples == 100 and out.agreeing() == 90


def test_identical_lines_pass_once_there_are_enough(tmp_path: Path) -> None:
    ref, _ = _ctc(n=80, changed=0)
    model = _model(tmp_path / "ctc.onnx", ["N", 30, 500], op="Softmax")
    report = _compare(model, [ref], [ref.copy()], [80])
    assert GATE.failures(report) == []
    assert GATE.summary(report) == f"n=80, bound={80 / (80 + 1.96 ** 2):.4f} >= 0.95"


def test_four_agreeing_samples_are_not_enough_evidence(tmp_path: Path) -> None:
    model = _model(tmp_path / "cls.onnx", ["N", 10])
    logits = np.random.default_rng(0).standard_normal((4, 10)).astype(np.float32)
    report = _compare(model, [logits], [logits.copy()], [4])
    assert report.outputs[0].kind == "classes"
    assert GATE.failures(report) == [
        "not enough evidence: 4 test samples, need 73 for this gate; give more calibration "
        "data or `evaluation_data`"]
    evidence = GATE.evidence(report)
    assert evidence["samples"] == 4 and evidence["required_samples"] == 73
    assert evidence["bound"] == pytest.approx(0.5101, abs=1e-4) and not evidence["enough"]
    assert GATE.summary(report).startswith("n=4, bound=0.5101") and "< 0.95" in GATE.summary(
        report)


def test_detection_maps_are_judged_by_the_iou_of_their_thresholded_masks(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ref = rng.uniform(0, 1, (100, 1, 16, 16)).astype(np.float32)
    cand = ref.copy()
    # ten pages lose a band of their text mask: IoU < 0.95 there, cosine barely moves
    cand[:10, :, :3, :] = np.minimum(cand[:10, :, :3, :], 0.45)
    model = _model(tmp_path / "det.onnx", ["N", 1, 16, 16], op="Sigmoid")
    report = _compare(model, [ref], [cand], [100])
    out = report.outputs[0]
    assert out.kind == "map" and out.samples == 100 and out.agreeing() == 90
    assert out.sample_iou_min is not None and out.sample_iou_min < 0.95
    assert any("90 of 100 samples agree (map IoU >= 0.95)" in f for f in GATE.failures(report))


def test_an_embedding_with_one_bad_sample_in_a_hundred_is_refused(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ref = rng.standard_normal((100, 64)).astype(np.float32)
    cand = ref + 1e-4 * rng.standard_normal(ref.shape).astype(np.float32)
    cand[7] = rng.standard_normal(64)  # one sample is noise
    model = _model(tmp_path / "emb.onnx", ["N", 64])
    report = _compare(model, [ref], [cand], [100], kinds=[("y", "embedding")])
    out = report.outputs[0]
    assert out.kind == "embedding" and out.cosine > 0.99
    assert out.sample_cosine_min is not None and out.sample_cosine_min < 0.5
    assert out.sample_cosine_p05 is not None and out.sample_cosine_p05 > 0.999
    assert out.agreeing(0.99) == 99  # 99/100: bound 0.9455 < 0.95
    assert any("99 of 100 samples agree (per-sample cosine)" in f for f in GATE.failures(report))


def test_regression_samples_are_judged_by_their_relative_error(tmp_path: Path) -> None:
    rng = np.random.default_rng(3)
    ref = rng.uniform(1, 2, (120, 1)).astype(np.float32)
    cand = ref * 1.01  # 1 % error: cosine-equivalent 1 - 0.01^2 / 2
    model = _model(tmp_path / "reg.onnx", ["N", 1])
    out = _compare(model, [ref], [cand], [120]).outputs[0]
    assert out.kind == "regression"
    assert min(out.sample_scores) == pytest.approx(1 - 0.01 ** 2 / 2, rel=1e-4)
    bad = cand.copy()
    bad[:20] *= 1.5  # 50 % off on a sixth of the samples
    out = _compare(model, [ref], [bad], [120]).outputs[0]
    assert out.agreeing(0.99) == 100


def test_nan_in_a_sample_never_counts_as_agreeing(tmp_path: Path) -> None:
    logits = np.random.default_rng(4).standard_normal((80, 10)).astype(np.float32)
    cand = logits.copy()
    cand[3, 2] = np.nan
    out = _compare(_model(tmp_path / "c.onnx", ["N", 10]), [logits], [cand], [80]).outputs[0]
    assert out.agreeing() == 79


def test_centered_bar_tests_keep_their_meaning_with_samples() -> None:
    out = OutputAccuracy("y", 0.1, 0.01, 0.9999, 64, top1_agreement=1.0, rows=80,
                         centered_cosine=0.98, kind="classes", samples=80,
                         sample_scores=(1.0,) * 80)
    assert GATE.failures(AccuracyReport((out,), batches=2, data="test")) == []


# ------------------------------------------------------------------ kind inference


def test_kinds_are_inferred_from_the_graph(tmp_path: Path) -> None:
    cases = {
        "seq": (["N", 30, 500], "Softmax", TensorProto.FLOAT, "sequence"),
        "logits": (["N", 10], "Identity", TensorProto.FLOAT, "classes"),
        "probs4": (["N", 3, 4, 5], "Softmax", TensorProto.FLOAT, "classes"),
        "mask": (["N", 1, 8, 8], "Sigmoid", TensorProto.FLOAT, "map"),
        "labels": (["N", 30], "Identity", TensorProto.INT64, "classes"),
        "small_logits": (["N", 64], "Identity", TensorProto.FLOAT, "classes"),
        "open": (["N", 4, 16], "Identity", TensorProto.FLOAT, None),  # decided on the data
        "wide": (["N", 5000], "Identity", TensorProto.FLOAT, None),
    }
    for name, (shape, op, elem, kind) in cases.items():
        info = output_kinds(_model(tmp_path / f"{name}.onnx", shape, op=op, elem=elem))["y"]
        assert info.kind == kind, name
        assert info.batch_axis == 0
    override = output_kinds(_model(tmp_path / "o.onnx", ["N", 10]), [("y", "embedding")])
    assert override["y"].kind == "embedding"
    time_major = output_kinds(_model(tmp_path / "t.onnx", [30, "N", 500], op="Softmax",
                                     in_shape=["N", 30, 500]))["y"]
    assert time_major.kind == "sequence" and time_major.batch_axis == 1


def test_kinds_left_open_are_decided_on_the_reference_values(tmp_path: Path) -> None:
    rng = np.random.default_rng(5)
    probs = _softmax(rng.standard_normal((8, 6, 7)).astype(np.float32))
    cases = [
        (["N", 6, 7], probs, "sequence"),  # a softmax behind a Transpose: rows sum to 1
        (["N", 1, 4, 4], rng.uniform(0, 1, (8, 1, 4, 4)).astype(np.float32), "map"),
        (["N", 1, 4, 4], rng.standard_normal((8, 1, 4, 4)).astype(np.float32), "embedding"),
        (["N", 6, 7], rng.standard_normal((8, 6, 7)).astype(np.float32), "embedding"),
        (["N", 1], rng.standard_normal((8, 1)).astype(np.float32), "regression"),
    ]
    for i, (shape, ref, kind) in enumerate(cases):
        model = _model(tmp_path / f"m{i}.onnx", shape)
        out = _compare(model, [ref], [ref.copy()], [8], gate=None).outputs[0]
        assert out.kind == kind, (shape, kind)
        assert out.samples == 8


# ------------------------------------------------------------------ manifest


def _manifest(tmp_path: Path, outputs: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(f"""
[[models]]
name = "ocr"
path = "rec.onnx"
precision = "int8"
calibration = {{ data = "d.npy" }}
{outputs}
""")
    return path


def test_the_manifest_names_output_kinds_and_they_round_trip(tmp_path: Path) -> None:
    manifest = load_manifest(_manifest(tmp_path, '[models.outputs.softmax_0]\nkind = "sequence"'
                                       '\n[models.outputs.boxes]\nkind = "regression"'))
    config = manifest.backbones[0].build_config
    assert config.output_kinds == (("boxes", "regression"), ("softmax_0", "sequence"))
    assert build_config_from_json(build_config_to_json(config)) == config


@pytest.mark.parametrize(("outputs", "words"), [
    ('[models.outputs.y]\nkind = "seq"', ["seq", "outputs.y.kind", "sequence"]),
    ('[models.outputs.y]\nkind = 3', ["outputs.y.kind"]),
    ('[models.outputs.y]\nkidn = "map"', ["models[0].outputs.y.kidn"]),
    ('[models.outputs.y]\n', ["models[0].outputs.y.kind"]),
    ('outputs = "map"', ["models[0].outputs"]),
])
def test_a_bad_output_kind_is_a_manifest_error_naming_it(
    tmp_path: Path, outputs: str, words: list[str]
) -> None:
    with pytest.raises(ManifestError) as info:
        load_manifest(_manifest(tmp_path, outputs))
    text = str(info.value)
    assert all(w in text for w in words), text


def test_output_kinds_enter_the_identity_and_are_validated() -> None:
    spec = CalibrationSpec(source="d.npy")
    base = BuildConfig(precision=PrecisionMode.INT8, calibration=spec)
    named = BuildConfig(precision=PrecisionMode.INT8, calibration=spec,
                        output_kinds=(("y", "sequence"),))
    other = BuildConfig(precision=PrecisionMode.INT8, calibration=spec,
                        output_kinds=(("y", "embedding"),))
    digests = {build_option_digest(c, calibration_key="k") for c in (base, named, other)}
    assert len(digests) == 3
    with pytest.raises(ValueError, match="kind must be one of"):
        BuildConfig(output_kinds=(("y", "ctc"),))


def test_judged_precisions_carry_the_evidence_rule_in_their_identity() -> None:
    # an engine accepted on a handful of samples under the earlier rule is not reused
    from trt_provision.identity import build_option_payload

    spec = CalibrationSpec(source="d.npy")
    int8 = build_option_payload(BuildConfig(precision=PrecisionMode.INT8, calibration=spec))
    assert int8["accuracy_gate"]["evidence"].startswith("per-sample-wilson95")
    fp32 = build_option_payload(BuildConfig())
    assert "accuracy_gate" not in fp32


# ------------------------------------------------------------------ task metric as a rate


def test_a_task_metric_pass_rate_is_bounded_like_the_outputs() -> None:
    ref = [{"y": np.ones((4, 3), np.float32)}]

    def lines(r: object, c: object, i: object) -> dict[str, Any]:
        return {"score": 1.0, "passed": True, "samples": 4, "agreeing": np.int64(4)}

    metric = run_metric("lines", lines, ref, ref, [{}])
    assert (metric.samples, metric.agreeing) == (4, 4)
    out = OutputAccuracy("y", 0.0, 0.0, 1.0, 12)  # no per-sample figures: only the metric
    report = AccuracyReport((out,), 1, "test", metric)
    assert GATE.failures(report)[0].startswith("not enough evidence: 4 test samples, need 73")
    assert metric.to_dict()["bound"] == pytest.approx(0.5101, abs=1e-4)

    def many(r: object, c: object, i: object) -> dict[str, Any]:
        return {"score": 0.9, "passed": True, "samples": 400, "agreeing": 360,
                "threshold": 0.8}

    report = AccuracyReport((out,), 1, "test", run_metric("many", many, ref, ref, [{}]))
    assert GATE.failures(report) == []  # 360/400: bound 0.867 >= the metric's own 0.8


@pytest.mark.parametrize("bad", [{"samples": 4, "agreeing": 5}, {"samples": 4.0, "agreeing": 4},
                                 {"samples": 4, "agreeing": True},
                                 {"samples": 4, "agreeing": 4, "threshold": 1.5}])
def test_a_malformed_pass_rate_is_an_error_naming_the_metric(bad: dict[str, Any]) -> None:
    def metric(r: object, c: object, i: object) -> dict[str, Any]:
        return {"score": 1.0, "passed": True, **bad}

    with pytest.raises(EngineBuildError, match="accuracy metric m returned"):
        run_metric("m", metric, [{}], [{}], [{}])


# ------------------------------------------------------------------ splits


SPECS = (InputSpec("x", "float32", (None, 16)),)


def _rows(n: int, rows: int) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(n * 1000 + rows)
    return [{"x": rng.standard_normal((rows, 16)).astype(np.float32)} for _ in range(n)]


def test_too_few_held_out_samples_are_refused_before_calibrating() -> None:
    config = BuildConfig(precision=PrecisionMode.INT8)
    with pytest.raises(AccuracyGateError) as info:
        split_for_judging(_rows(10, 8), SPECS, config, model="m")
    assert str(info.value).startswith(
        "not enough evidence: 16 test samples, need 73 for this gate; give more calibration "
        "data or `evaluation_data`")
    ctx = info.value.context
    assert (ctx["samples"], ctx["required_samples"], ctx["threshold"]) == (16, 73, 0.95)
    assert ctx["bound"] == pytest.approx(16 / (16 + 1.96 ** 2), abs=1e-4)
    fp16 = BuildConfig(precision=PrecisionMode.FP16)
    with pytest.raises(AccuracyGateError, match="80 test samples, need 381"):
        split_for_judging(_rows(10, 40), SPECS, fp16)
    assert split_for_judging(_rows(10, 40), SPECS, config).judged


def test_allow_inaccurate_goes_on_unjudged_when_evidence_is_short() -> None:
    config = BuildConfig(precision=PrecisionMode.INT8, allow_inaccurate=True)
    splits = split_for_judging(_rows(10, 8), SPECS, config)
    assert not splits.judged
    assert splits.note.startswith("not judged: not enough evidence: 16 test samples")


def test_calibration_batches_beyond_max_batches_become_evidence() -> None:
    spec = CalibrationSpec(source="d.npy", max_batches=2)
    config = BuildConfig(precision=PrecisionMode.INT8, calibration=spec)
    splits = split_for_judging(_rows(10, 20), SPECS, config)
    # the pattern gives 6 calibration batches; 2 calibrate, the other 4 are evidence
    assert len(splits.calibration) == 2
    assert len(splits.validation) == 4 and len(splits.test) == 4
    meta = splits.to_metadata()
    assert meta["validation"]["rows"] == 80 and meta["test"]["rows"] == 80


def test_per_sample_metrics_are_the_same_in_chunks(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from trt_provision.calibration import accuracy

    ref, cand = _ctc(n=40, t=10, c=50, changed=7)
    model = _model(tmp_path / "ctc.onnx", ["N", 10, 50], op="Softmax")
    whole = _compare(model, [ref], [cand], [40]).outputs[0]
    monkeypatch.setattr(accuracy, "_CHUNK_ELEMENTS", 1200)  # 2 samples per chunk
    chunked = _compare(model, [ref], [cand], [40]).outputs[0]
    assert chunked.agreeing() == whole.agreeing() == 33
    assert chunked.sample_scores == whole.sample_scores
    assert chunked.sample_cosine_min == pytest.approx(whole.sample_cosine_min)
