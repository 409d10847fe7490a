"""Honest judging: empty data, splits, the default gate, allow_inaccurate, algorithm choice,
sensitivity search, truth in labels and Q/DQ graphs TensorRT accepts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto

from trt_provision.calibration.accuracy import compare_models, synthetic_batches
from trt_provision.calibration.data import InputSpec
from trt_provision.calibration.precision import prepare_model_for_precision
from trt_provision.calibration.qdq import check_tensorrt_qdq
from trt_provision.calibration.splits import split_for_judging
from trt_provision.calibration.stages import search
from trt_provision.errors import AccuracyGateError, CalibrationCacheError, EngineBuildError
from trt_provision.types import BuildConfig, CalibrationSpec, OptimizationProfile, PrecisionMode

from .models import (
    make_huge_constant,
    make_if_model,
    make_mlp_classifier,
    make_one_channel_conv,
    outlier_batches,
)

pytestmark = pytest.mark.tier1


def _config(precision: str, source: Path, *, algorithm: str = "auto", num_bins: int = 256,
            **kwargs: Any) -> BuildConfig:
    spec = CalibrationSpec(source=str(source), num_bins=num_bins, algorithm=algorithm)
    return BuildConfig(precision=PrecisionMode(precision), calibration=spec, **kwargs)


def _prepare(model: Path, config: BuildConfig, tmp: Path, consumer: str = "onnxruntime-cpu"
             ) -> Any:
    return prepare_model_for_precision(model, config, tmp / "w", calibration_cache_dir=tmp / "c",
                                       consumer=consumer)


@pytest.fixture
def mlp(tmp_path: Path) -> Path:
    return make_mlp_classifier(tmp_path / "mlp.onnx")


def _save_batches(path: Path, batches: list[np.ndarray]) -> Path:
    np.save(path, np.stack(batches))
    return path


# ------------------------------------------------------------------ empty data


def test_zero_samples_are_refused_naming_the_file(mlp: Path, tmp_path: Path) -> None:
    data = tmp_path / "empty.npz"
    np.savez(data, x=np.zeros((0, 16), np.float32))
    with pytest.raises(CalibrationCacheError, match="zero samples") as info:
        _prepare(mlp, _config("int8", data), tmp_path)
    assert info.value.context["source"] == str(data)


def test_an_accuracy_check_over_zero_elements_is_an_error(mlp: Path) -> None:
    with pytest.raises(AccuracyGateError, match="zero elements"):
        compare_models(mlp, mlp, [], data="test")
    with pytest.raises(AccuracyGateError, match="zero elements"):
        compare_models(mlp, mlp, [{"x": np.zeros((0, 16), np.float32)}], data="test")


# ------------------------------------------------------------------ splits


def _batches(n: int, rows: int = 4) -> list[dict[str, np.ndarray]]:
    return [{"x": np.full((rows, 16), i, np.float32)} for i in range(n)]


SPECS = (InputSpec("x", "float32", (None, 16)),)


def test_splits_by_batch_are_spread_over_the_source() -> None:
    splits = split_for_judging(_batches(10, rows=40), SPECS,
                               BuildConfig(precision=PrecisionMode.INT8))
    ids = {name: [int(b["x"][0, 0]) for b in getattr(splits, name)]
           for name in ("calibration", "validation", "test")}
    assert ids == {"calibration": [0, 2, 4, 5, 7, 9], "validation": [1, 6], "test": [3, 8]}
    assert splits.method == "batches" and splits.judged


def test_few_batches_are_split_by_rows_of_every_batch() -> None:
    splits = split_for_judging(_batches(2, rows=200), SPECS,
                               BuildConfig(precision=PrecisionMode.INT8))
    assert splits.method == "rows"
    assert [b["x"].shape[0] for b in splits.validation] == [40, 40]  # rows 1, 6, 11, ...
    assert [b["x"].shape[0] for b in splits.test] == [40, 40]
    assert [b["x"].shape[0] for b in splits.calibration] == [120, 120]


def test_too_little_data_refuses_to_judge_unless_allowed() -> None:
    config = BuildConfig(precision=PrecisionMode.INT8)
    with pytest.raises(AccuracyGateError, match="too little data to judge"):
        split_for_judging(_batches(2, rows=2), SPECS, config)
    relaxed = BuildConfig(precision=PrecisionMode.INT8, allow_inaccurate=True)
    splits = split_for_judging(_batches(2, rows=2), SPECS, relaxed)
    assert not splits.judged and "not judged" in splits.note


def test_profile_min_batch_is_respected_by_row_splits() -> None:
    profile = OptimizationProfile("x", (4, 16), (8, 16), (16, 16))
    config = BuildConfig(precision=PrecisionMode.INT8, profiles=(profile,))
    with pytest.raises(AccuracyGateError, match="too little data"):
        split_for_judging(_batches(1, rows=10), SPECS, config)  # 2-row splits < min 4


# ------------------------------------------------------------------ gate, choice, search


def test_good_int8_passes_the_default_gate_and_records_both_splits(
    mlp: Path, tmp_path: Path
) -> None:
    rng = np.random.default_rng(1)
    data = _save_batches(tmp_path / "d.npy",
                         [rng.standard_normal((200, 16)).astype(np.float32) for _ in range(10)])
    meta = _prepare(mlp, _config("int8", data), tmp_path).metadata
    acc = meta["accuracy"]
    assert acc["verdict"] == "passed"
    assert acc["gate"]["origin"] == "default for int8"
    assert acc["validation"]["data"] == "validation" and acc["test"]["data"] == "test"
    assert acc["splits"]["validation"]["batches"] == 2 and acc["splits"]["test"]["batches"] == 2
    assert acc["test"]["outputs"]["logits"]["top1_agreement"] >= 0.95
    cal = meta["calibration"]
    assert set(cal["algorithms"]) == {"minmax", "percentile", "entropy"}
    assert cal["chosen_on"] == "validation" and cal["chosen_algorithm"] in cal["algorithms"]
    assert meta["quantization"]["quantized_nodes"] >= 2


def test_label_flipping_int8_is_refused_by_default(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "SENSITIVITY_MAX_LAYERS", 0)
    data = _save_batches(tmp_path / "d.npy", outlier_batches(10, rows=40))
    with pytest.raises(AccuracyGateError, match="refused by the accuracy gate") as info:
        _prepare(mlp, _config("int8", data, algorithm="minmax"), tmp_path)
    assert "top-1 agreement" in str(info.value) or "cosine" in str(info.value)


def test_allow_inaccurate_builds_with_a_warning_in_the_metadata(
    mlp: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(search, "SENSITIVITY_MAX_LAYERS", 0)
    data = _save_batches(tmp_path / "d.npy", outlier_batches(10, rows=40))
    meta = _prepare(mlp, _config("int8", data, algorithm="minmax", allow_inaccurate=True),
                    tmp_path).metadata
    assert meta["accuracy"]["verdict"] == "failed (allow_inaccurate)"
    assert "fails the accuracy gate" in meta["accuracy"]["warning"]


def test_auto_picks_a_clipping_algorithm_over_min_max_on_outliers(
    mlp: Path, tmp_path: Path
) -> None:
    # one outlier in ~200k calibration values: beyond the 99.999th percentile
    data = _save_batches(tmp_path / "d.npy", outlier_batches(10, rows=2048))
    meta = _prepare(mlp, _config("int8", data, num_bins=2048), tmp_path).metadata
    scores = meta["calibration"]["algorithms"]
    assert not scores["minmax"]["passes_gate"]
    assert meta["calibration"]["chosen_algorithm"] == "percentile"
    assert scores[meta["calibration"]["chosen_algorithm"]]["passes_gate"]
    assert meta["accuracy"]["verdict"] == "passed"


def test_sensitivity_search_keeps_the_sensitive_layer_float(mlp: Path, tmp_path: Path) -> None:
    data = _save_batches(tmp_path / "d.npy", outlier_batches(10, rows=40))
    meta = _prepare(mlp, _config("int8", data, algorithm="minmax"), tmp_path).metadata
    sens = meta["quantization"]["sensitivity"]
    assert sens["measured_on"] == "validation" and sens["passes_gate"]
    assert sens["kept"] == ["fc1"]  # the layer fed by the outlier-ranged input
    assert meta["accuracy"]["verdict"] == "passed"


def test_switching_algorithm_keeps_the_other_algorithms_cache(mlp: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = _save_batches(tmp_path / "d.npy",
                         [rng.standard_normal((200, 16)).astype(np.float32) for _ in range(10)])
    first = _prepare(mlp, _config("int8", data, algorithm="minmax"), tmp_path).metadata
    _prepare(mlp, _config("int8", data, algorithm="entropy"), tmp_path)
    again = _prepare(mlp, _config("int8", data, algorithm="minmax"), tmp_path).metadata
    assert first["calibration_cache_reused"] is False
    assert again["calibration_cache_reused"] is True
    assert again["calibration_cache"] == first["calibration_cache"]


def test_entropy_failure_on_a_huge_constant_falls_back_with_a_note(tmp_path: Path) -> None:
    model = make_huge_constant(tmp_path / "huge.onnx")
    rng = np.random.default_rng(0)
    data = _save_batches(tmp_path / "d.npy",
                         [rng.standard_normal((4, 8)).astype(np.float32) for _ in range(10)])
    meta = _prepare(model, _config("int8", data, allow_inaccurate=True), tmp_path).metadata
    algorithms = meta["calibration"]["algorithms"]
    assert "min-max used instead" in algorithms["entropy"]["note"]
    assert "min-max used instead" in algorithms["percentile"]["note"]


def test_task_metric_judges_and_is_recorded(mlp: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = _save_batches(tmp_path / "d.npy",
                         [rng.standard_normal((200, 16)).astype(np.float32) for _ in range(10)])
    script = tmp_path / "metric.py"
    script.write_text(
        "import numpy as np\n"
        "def labels(ref, cand, inputs):\n"
        "    same = [float(np.mean(r['logits'].argmax(1) == c['logits'].argmax(1)))\n"
        "            for r, c in zip(ref, cand)]\n"
        "    return float(np.mean(same)), True\n"
        "def never(ref, cand, inputs):\n"
        "    return {'score': 0.0, 'passed': False}\n")
    meta = _prepare(mlp, _config("int8", data, accuracy_metric=f"{script}:labels"),
                    tmp_path).metadata
    assert meta["accuracy"]["task_metric"]["passed"] is True
    with pytest.raises(AccuracyGateError, match="task metric"):
        _prepare(mlp, _config("int8", data, accuracy_metric=f"{script}:never"), tmp_path / "n")


# ------------------------------------------------------------------ truth in labels


def test_one_channel_conv_bias_gets_a_valid_axis(tmp_path: Path) -> None:
    model = make_one_channel_conv(tmp_path / "one.onnx")
    rng = np.random.default_rng(0)
    data = _save_batches(tmp_path / "d.npy",
                         [rng.standard_normal((40, 3, 8, 8)).astype(np.float32) for _ in range(10)])
    prepared = _prepare(model, _config("int8", data, allow_inaccurate=True), tmp_path)
    graph = onnx.load(str(prepared.model_path)).graph
    assert prepared.metadata["quantization"]["quantized_nodes"] >= 2
    import onnxruntime as ort

    ort.InferenceSession(str(prepared.model_path), providers=["CPUExecutionProvider"])
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)


def test_all_compute_inside_if_is_nothing_to_quantize(tmp_path: Path) -> None:
    model = make_if_model(tmp_path / "if.onnx")
    rng = np.random.default_rng(0)
    data = _save_batches(tmp_path / "d.npy",
                         [rng.standard_normal((40, 8)).astype(np.float32) for _ in range(10)])
    with pytest.raises(EngineBuildError, match=r"nothing to quantize.*If/Loop/Scan"):
        _prepare(model, _config("int8", data, allow_inaccurate=True), tmp_path)


# ------------------------------------------------------------------ TensorRT-bound graphs


def test_tensorrt_graph_has_float_biases_and_symmetric_int8(tmp_path: Path) -> None:
    model = make_one_channel_conv(tmp_path / "one.onnx")
    rng = np.random.default_rng(0)
    data = _save_batches(tmp_path / "d.npy",
                         [rng.standard_normal((40, 3, 8, 8)).astype(np.float32) for _ in range(10)])
    prepared = _prepare(model, _config("int8", data, allow_inaccurate=True), tmp_path,
                        consumer="tensorrt")
    graph = onnx.load(str(prepared.model_path)).graph
    inits = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "DequantizeLinear" and node.input[0] in inits:
            assert inits[node.input[0]].data_type == TensorProto.INT8
    for conv in (n for n in graph.node if n.op_type == "Conv"):
        assert inits[conv.input[2]].data_type == TensorProto.FLOAT  # bias stays float


def test_int32_dequantize_is_refused_for_tensorrt(tmp_path: Path) -> None:
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("DequantizeLinear", ["b", "s", "z"], ["y"], name="dq")], "g", [],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2])],
        [numpy_helper.from_array(np.array([1, 2], np.int32), "b"),
         numpy_helper.from_array(np.array(0.1, np.float32), "s"),
         numpy_helper.from_array(np.array(0, np.int32), "z")])
    with pytest.raises(EngineBuildError, match="INT8 only"):
        check_tensorrt_qdq(helper.make_model(graph), tmp_path / "m.onnx")


# ------------------------------------------------------------------ fp16 without data


def test_synthetic_inputs_use_opt_shapes_and_sane_integers() -> None:
    specs = (InputSpec("x", "float32", (None, 3, None)), InputSpec("sr", "int64", ()))
    profile = OptimizationProfile("x", (1, 3, 8), (4, 3, 16), (8, 3, 32))
    (batch, *_) = synthetic_batches(specs, BuildConfig(profiles=(profile,)))
    assert batch["x"].shape == (4, 3, 16)
    assert batch["sr"].shape == () and int(batch["sr"]) > 0


def test_fp16_without_data_is_a_smoke_check_not_an_accuracy_figure(
    mlp: Path, tmp_path: Path
) -> None:
    meta = _prepare(mlp, BuildConfig(precision=PrecisionMode.FP16), tmp_path).metadata
    assert meta["accuracy"]["data"] == "synthetic"
    assert meta["accuracy"]["note"] == "smoke, not an accuracy figure (synthetic inputs)"
    assert meta["accuracy"]["verdict"] == "smoke only"


def test_pinned_keywords_match_model_nodes_not_converter_inserted_ones(tmp_path: Path) -> None:
    from onnx import helper

    from trt_provision.calibration.graph import match_pinned_nodes

    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "z"], ["q"], name="router_x_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["q", "s", "z"], ["d"],
                         name="router_x_DequantizeLinear"),
        helper.make_node("Cast", ["d"], ["c"], name="router_cast_to_fp16", to=10),
        helper.make_node("Gemm", ["c", "w"], ["y"], name="router_gate"),
    ]
    graph = helper.make_graph(nodes, "g", [], [])
    pinned = match_pinned_nodes(helper.make_model(graph), ("router",))
    assert [p.node for p in pinned] == ["router_gate"]


def _reshape_model(path: Path) -> Path:
    from onnx import helper, numpy_helper

    graph = helper.make_graph(
        [helper.make_node("Reshape", ["x", "shape"], ["r"], name="reshape"),
         helper.make_node("MatMul", ["r", "w"], ["y"], name="mm"),
         helper.make_node("Cast", ["sr"], ["srf"], name="cast_sr", to=TensorProto.FLOAT),
         helper.make_node("Div", ["y", "srf"], ["out"], name="div")],
        "reshape",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", "T"]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["M", 4])],
        [numpy_helper.from_array(np.array([-1, 4], np.int64), "shape"),
         numpy_helper.from_array(np.eye(4, dtype=np.float32), "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_fp16_smoke_uses_profile_opt_shapes(tmp_path: Path) -> None:
    model = _reshape_model(tmp_path / "r.onnx")
    profile = OptimizationProfile("x", (1, 4), (2, 16), (4, 64))
    meta = _prepare(model, BuildConfig(precision=PrecisionMode.FP16, profiles=(profile,)),
                    tmp_path).metadata
    assert meta["accuracy"]["verdict"] == "smoke only"
    # 4 synthetic batches at the opt shape (2, 16) reshaped to (8, 4); sr is a sane 1, not 0
    assert meta["accuracy"]["outputs"]["out"]["elements"] == 4 * 32
    assert meta["accuracy"]["outputs"]["out"]["cosine"] > 0.999


def test_fp16_smoke_failure_is_a_build_error_naming_the_model(tmp_path: Path) -> None:
    model = _reshape_model(tmp_path / "r.onnx")
    # without a profile a dynamic T becomes 1: the Reshape to (-1, 4) cannot run
    with pytest.raises(EngineBuildError, match="cannot run the model on synthetic inputs") as info:
        _prepare(model, BuildConfig(precision=PrecisionMode.FP16), tmp_path)
    assert info.value.context["model"] == str(model)


def test_evaluation_data_gives_validation_and_test(mlp: Path, tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    data = _save_batches(tmp_path / "d.npy",
                         [rng.standard_normal((8, 16)).astype(np.float32) for _ in range(2)])
    held = _save_batches(tmp_path / "e.npy",
                         [rng.standard_normal((40, 16)).astype(np.float32) for _ in range(4)])
    spec = CalibrationSpec(source=str(data), evaluation_data=str(held), num_bins=256)
    meta = _prepare(mlp, BuildConfig(precision=PrecisionMode.INT8, calibration=spec),
                    tmp_path).metadata
    splits = meta["accuracy"]["splits"]
    assert splits["method"] == "evaluation-batches"
    assert splits["calibration"]["batches"] == 2
    assert splits["validation"]["batches"] == 2 and splits["test"]["batches"] == 2


def test_tensorrt_sensitivity_search_keeps_layers_in_fp16(mlp: Path, tmp_path: Path) -> None:
    data = _save_batches(tmp_path / "d.npy", outlier_batches(10, rows=200))
    prepared = _prepare(mlp, _config("int8", data, algorithm="minmax"), tmp_path,
                        consumer="tensorrt")
    sens = prepared.metadata["quantization"]["sensitivity"]
    assert sens["higher_precision"] == "fp16" and sens["kept"] == ["fc1"]
    assert prepared.metadata["accuracy"]["verdict"] == "passed"
    graph = onnx.load(str(prepared.model_path)).graph
    inits = {t.name: t for t in graph.initializer}
    fc1 = next(n for n in graph.node if n.name == "fc1")
    assert inits[fc1.input[1]].data_type == TensorProto.FLOAT16
    check_tensorrt_qdq(onnx.load(str(prepared.model_path)), prepared.model_path)
