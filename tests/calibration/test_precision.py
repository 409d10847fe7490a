"""prepare_model_for_precision end to end on ONNX Runtime: fp16, int8, mixed, governance."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import numpy_helper

from trt_provision.calibration.cache import GovernedCalibrationCache
from trt_provision.calibration.graph import preprocess_model
from trt_provision.calibration.planner import GovernedCalibrationPlanner
from trt_provision.calibration.precision import prepare_model_for_precision
from trt_provision.calibration.ranges import compute_activation_ranges, write_trt_calibration_cache
from trt_provision.errors import AccuracyGateError, CalibrationCacheError
from trt_provision.identity import model_sha256
from trt_provision.types import BackboneSpec, BuildConfig, CalibrationSpec, PrecisionMode

from .models import cnn_batches, make_bn_overflow, make_cnn

pytestmark = pytest.mark.tier1


def _config(precision: str, source: Path, **kwargs: object) -> BuildConfig:
    spec = CalibrationSpec(source=str(source), num_bins=256)
    return BuildConfig(precision=PrecisionMode(precision), calibration=spec, **kwargs)  # type: ignore[arg-type]


@pytest.fixture
def cnn(tmp_path: Path) -> tuple[Path, Path]:
    model = make_cnn(tmp_path / "cnn.onnx")
    data = tmp_path / "calib.npy"
    np.save(data, np.stack(cnn_batches(6, batch=400)))
    return model, data


def _run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def test_fp32_is_the_model_itself(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    prepared = prepare_model_for_precision(cnn[0], BuildConfig(), tmp_path / "w",
                                           calibration_cache_dir=None)
    assert prepared.model_path == cnn[0] and not prepared.metadata


def test_int8_end_to_end_then_reuse_then_recalibrate(
    cnn: tuple[Path, Path], tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    model, data = cnn
    cache_dir = tmp_path / "cache"
    config = _config("int8", data)
    first = prepare_model_for_precision(model, config, tmp_path / "w1",
                                        calibration_cache_dir=cache_dir)
    meta = first.metadata
    assert meta["calibration_cache_reused"] is False
    assert meta["dataset_version"].startswith("sha256:")
    assert len(meta["calibration_key"]) == 64
    assert Path(meta["calibration_cache"]).parent == cache_dir
    assert meta["accuracy"]["data"] == "test"
    assert meta["accuracy"]["verdict"] == "passed"
    assert meta["accuracy"]["validation"]["data"] == "validation"
    assert meta["accuracy"]["outputs"]["logits"]["cosine"] > 0.95
    ops = [n.op_type for n in onnx.load(str(first.model_path)).graph.node]
    assert "QuantizeLinear" in ops and "DequantizeLinear" in ops
    x = cnn_batches(1, seed=5)[0]
    assert _run(first.model_path, x).shape == (2, 10)

    second = prepare_model_for_precision(model, config, tmp_path / "w2",
                                         calibration_cache_dir=cache_dir)
    assert second.metadata["calibration_cache_reused"] is True
    assert second.metadata["calibration_key"] == meta["calibration_key"]

    np.save(data, np.stack(cnn_batches(6, batch=400, seed=9)))  # the dataset changed
    with caplog.at_level(logging.INFO, logger="trt_provision.calibration"):
        third = prepare_model_for_precision(model, config, tmp_path / "w3",
                                            calibration_cache_dir=cache_dir)
    assert third.metadata["calibration_cache_reused"] is False
    assert third.metadata["calibration"]["cache_status"] == "stale"
    assert third.metadata["dataset_version"] != meta["dataset_version"]
    assert any(getattr(r, "event", None) == "calibration.cache.stale" for r in caplog.records)


def test_pinned_layers_are_absent_from_qdq(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    prepared = prepare_model_for_precision(model, _config("int8", data), tmp_path / "w",
                                           calibration_cache_dir=tmp_path / "c")
    graph = onnx.load(str(prepared.model_path)).graph
    producers = {o: n for n in graph.node for o in n.output}
    router = next(n for n in graph.node if n.name == "router_gemm")
    # its weight and bias are the original float initializers, not dequantized int8
    for name in router.input[1:]:
        assert name not in producers or producers[name].op_type != "DequantizeLinear"
    assert not any(n.name.startswith("router") and "Quantize" in n.op_type for n in graph.node)
    evidence = prepared.metadata["pinned_layers"]
    assert evidence == [{"node": "router_gemm", "op_type": "Gemm", "keyword": "router",
                         "precision": "fp32"}]
    # the conv whose weight was a Constant node did get int8 weights
    conv2 = next(n for n in graph.node if n.name == "conv2")
    assert producers[conv2.input[1]].op_type == "DequantizeLinear"


def test_mixed_keeps_pinned_layers_fp16(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    prepared = prepare_model_for_precision(model, _config("mixed", data), tmp_path / "w",
                                           calibration_cache_dir=tmp_path / "c")
    assert prepared.metadata["pinned_layers"][0]["precision"] == "fp16"
    graph = onnx.load(str(prepared.model_path)).graph
    router = next(n for n in graph.node if n.name == "router_gemm")
    inits = {t.name: t for t in graph.initializer}
    assert inits[router.input[1]].data_type == onnx.TensorProto.FLOAT16
    assert graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert prepared.metadata["accuracy"]["outputs"]["logits"]["cosine"] > 0.95


def test_excluded_op_types_are_not_quantized(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    prepared = prepare_model_for_precision(
        model, _config("int8", data, excluded_op_types=("Conv",)), tmp_path / "w",
        calibration_cache_dir=tmp_path / "c",
    )
    keywords = {e["node"]: e["keyword"] for e in prepared.metadata["pinned_layers"]}
    assert keywords == {"conv1": "op:Conv", "conv2": "op:Conv", "router_gemm": "router"}
    graph = onnx.load(str(prepared.model_path)).graph
    producers = {o: n.op_type for n in graph.node for o in n.output}
    for node in graph.node:
        if node.op_type == "Conv":
            assert producers.get(node.input[1]) != "DequantizeLinear"


def test_fp16_overflow_batchnorm_is_converted_correctly(tmp_path: Path) -> None:
    model = make_bn_overflow(tmp_path / "bn.onnx")
    prepared = prepare_model_for_precision(
        model, BuildConfig(precision=PrecisionMode.FP16), tmp_path / "w",
        calibration_cache_dir=None,
    )
    x = np.random.default_rng(3).standard_normal((1, 4, 4, 4)).astype(np.float32) * 2
    expected = _run_named(model, x)
    got = _run_named(prepared.model_path, x)
    assert np.isfinite(got).all()
    np.testing.assert_allclose(got, expected, rtol=2e-2, atol=1e-3)
    fp16 = prepared.metadata["fp16"]
    assert fp16["preprocess"]["batchnorm_folded"] == 1  # the BN after the conv
    assert [b["node"] for b in fp16["kept_fp32"]] == ["bn_standalone"]
    converted = onnx.load(str(prepared.model_path))
    assert converted.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in converted.graph.initializer)
    assert prepared.metadata["accuracy"]["outputs"]["y"]["cosine"] > 0.999


def test_fp16_ignores_a_user_int8_calibration_cache(tmp_path: Path) -> None:
    # A trtexec --calib cache holds INT8 scales: an fp16 build neither reads nor keys it.
    model = make_bn_overflow(tmp_path / "bn.onnx")
    config = BuildConfig(precision=PrecisionMode.FP16,
                         calibration=CalibrationSpec(trt_cache=str(tmp_path / "missing.calib")))
    prepared = prepare_model_for_precision(model, config, tmp_path / "w",
                                           calibration_cache_dir=None)
    assert prepared.metadata["accuracy"]["verdict"] == "smoke only"
    assert "calibration_key" not in prepared.metadata


def test_naive_fp16_of_the_same_model_would_overflow(tmp_path: Path) -> None:
    # Guard for the test above: the variance really is beyond fp16.
    model = onnx.load(str(make_bn_overflow(tmp_path / "bn.onnx")))
    var = numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == "var"))
    with np.errstate(over="ignore"):
        assert np.isinf(var.astype(np.float16)).all()


def _run_named(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return np.asarray(sess.run(None, {"x": x})[0])


def test_fp16_converts_pinned_layers_like_the_rest(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    # One meaning of "pinned": pinned *to FP16* in int8/mixed; in fp16 builds they are FP16
    # like every other layer (the strongly typed TensorRT check demands HALF for them).
    model, data = cnn
    prepared = prepare_model_for_precision(model, _config("fp16", data), tmp_path / "w",
                                           calibration_cache_dir=None)
    assert prepared.metadata["pinned_layers"][0]["precision"] == "fp16"
    graph = onnx.load(str(prepared.model_path)).graph
    router = next(n for n in graph.node if n.name == "router_gemm")
    inits = {t.name: t for t in graph.initializer}
    assert inits[router.input[1]].data_type == onnx.TensorProto.FLOAT16
    assert prepared.metadata["accuracy"]["data"] == "test"
    assert prepared.metadata["accuracy"]["verdict"] == "passed"


def test_accuracy_gate_refuses_naming_the_output(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    config = _config("int8", data, min_cosine=1.0)
    with pytest.raises(AccuracyGateError) as info:
        prepare_model_for_precision(model, config, tmp_path / "w",
                                    calibration_cache_dir=tmp_path / "c")
    assert info.value.context["output"] == "logits"
    with pytest.raises(AccuracyGateError, match="relative error"):
        prepare_model_for_precision(model, _config("int8", data, max_rel_error=0.0),
                                    tmp_path / "w2", calibration_cache_dir=tmp_path / "c")
    # a lenient gate passes
    prepare_model_for_precision(model, _config("int8", data, min_cosine=0.5, max_rel_error=10.0),
                                tmp_path / "w3", calibration_cache_dir=tmp_path / "c")


def test_int8_without_calibration_data_is_refused(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    with pytest.raises(CalibrationCacheError, match="needs calibration data"):
        prepare_model_for_precision(cnn[0], BuildConfig(precision=PrecisionMode.INT8),
                                    tmp_path / "w", calibration_cache_dir=None)


def test_int8_with_an_empty_dataset_is_refused(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "ignored.txt").write_text("x")
    with pytest.raises(CalibrationCacheError):
        prepare_model_for_precision(cnn[0], _config("int8", empty), tmp_path / "w",
                                    calibration_cache_dir=tmp_path / "c")


def test_corrupt_sidecar_stops_the_build_and_is_left_alone(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    cache_dir = tmp_path / "c"
    first = prepare_model_for_precision(model, _config("int8", data), tmp_path / "w1",
                                        calibration_cache_dir=cache_dir)
    cache = GovernedCalibrationCache(Path(first.metadata["calibration_cache"]))
    cache.sha256_path.write_text("garbage\n")
    with pytest.raises(CalibrationCacheError, match="malformed"):
        prepare_model_for_precision(model, _config("int8", data), tmp_path / "w2",
                                    calibration_cache_dir=cache_dir)
    assert cache.sha256_path.read_text() == "garbage\n"


def test_legacy_trt_cache_is_used_when_governance_is_off(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    cache_dir = tmp_path / "c"
    cache_dir.mkdir()
    # A legacy TensorRT cache with a range for every tensor of the preprocessed model.
    pre = tmp_path / "pre.onnx"
    preprocess_model(model, pre)
    ranges = compute_activation_ranges(pre, [{"x": b} for b in np.load(data)],
                                       CalibrationSpec(algorithm="minmax"), tmp_path / "r")
    (cache_dir / "cnn.int8.calib").write_bytes(
        write_trt_calibration_cache(ranges, "10.3.0", "EntropyCalibration2"))
    spec = CalibrationSpec(source=str(data), governed=False, num_bins=256)
    # symmetric TensorRT ranges on the CPU's asymmetric uint8 activations: a lenient gate
    config = BuildConfig(precision=PrecisionMode.INT8, calibration=spec, min_cosine=0.5)
    prepared = prepare_model_for_precision(model, config, tmp_path / "w",
                                           calibration_cache_dir=cache_dir)
    assert prepared.metadata["calibration"]["cache_status"] == "legacy"
    assert prepared.metadata["calibration_cache_reused"] is True
    assert prepared.metadata["calibration"]["algorithm"] == "trt:EntropyCalibration2"


def test_planner_key_matches_the_build_and_follows_the_dataset(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    planner = GovernedCalibrationPlanner(tmp_path / "c")
    model_hash = model_sha256(model)
    fp32 = BackboneSpec("cnn", model, BuildConfig())
    assert planner.calibration_key(fp32, model_hash) is None
    fp16 = BackboneSpec("cnn", model, BuildConfig(precision=PrecisionMode.FP16))
    assert planner.calibration_key(fp16, model_hash) is None
    int8 = BackboneSpec("cnn", model, _config("int8", data))
    key = planner.calibration_key(int8, model_hash)
    built = prepare_model_for_precision(model, int8.build_config, tmp_path / "w",
                                        calibration_cache_dir=tmp_path / "c")
    assert built.metadata["calibration_key"] == key
    np.save(data, np.stack(cnn_batches(6, batch=400, seed=4)))
    assert GovernedCalibrationPlanner(tmp_path / "c").calibration_key(int8, model_hash) != key
    explicit = BackboneSpec("cnn", model, BuildConfig(
        precision=PrecisionMode.INT8,
        calibration=CalibrationSpec(source=str(tmp_path / "absent.npz"), dataset_version="v7"),
    ))
    # an explicit dataset version needs no data to plan
    assert planner.calibration_key(explicit, model_hash) is not None


def test_demo_corpus_int8(tmp_path: Path) -> None:
    root = Path(__file__).resolve().parents[2] / "examples"
    model = root / "models" / "demo_cnn.onnx"
    data = root / "calibration" / "demo_cnn.npz"
    if not (model.is_file() and data.is_file()):
        pytest.skip("demo corpus not generated")
    from trt_provision.types import OptimizationProfile

    config = BuildConfig(
        precision=PrecisionMode.MIXED,
        profiles=(OptimizationProfile("image", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)),),
        calibration=CalibrationSpec(source=str(data), num_bins=512),
    )
    prepared = prepare_model_for_precision(model, config, tmp_path / "w",
                                           calibration_cache_dir=tmp_path / "c")
    # 1040 samples cut by opt batch 4 into 260 batches: 156 calibrate, 52 validate, 52 test -
    # 208 test samples, enough for a verdict at the 0.95 bar (73 all agreeing)
    assert prepared.metadata["accuracy"]["splits"]["source_batches"] == 260
    assert prepared.metadata["calibration"]["batches"] == 156
    assert prepared.metadata["accuracy"]["verdict"] == "passed"
    assert prepared.metadata["accuracy"]["samples"] == 208
    assert {e["node"] for e in prepared.metadata["pinned_layers"]} == {
        "router_gate", "router_softmax"}


def test_models_with_the_same_file_name_keep_separate_caches(tmp_path: Path) -> None:
    first = make_cnn((tmp_path / "a").mkdir() or tmp_path / "a" / "model.onnx", seed=0)
    second = make_cnn((tmp_path / "b").mkdir() or tmp_path / "b" / "model.onnx", seed=1)
    data = tmp_path / "calib.npy"
    np.save(data, np.stack(cnn_batches(6, batch=400)))
    cache_dir = tmp_path / "cache"
    paths = []
    for i, model in enumerate((first, second, first)):
        prepared = prepare_model_for_precision(model, _config("int8", data), tmp_path / f"w{i}",
                                               calibration_cache_dir=cache_dir)
        paths.append(Path(prepared.metadata["calibration_cache"]))
        if i == 2:  # the first model's cache survived the second model's calibration
            assert prepared.metadata["calibration_cache_reused"] is True
    assert paths[0] != paths[1] and paths[0] == paths[2]
    assert paths[0].name.startswith("model.") and paths[1].name.startswith("model.")
    # one governed cache per model and algorithm (auto computes min-max, percentile, entropy)
    assert len(list(cache_dir.glob("*.calib"))) == 6
