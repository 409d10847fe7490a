"""Regression tests of the second TensorRT review: each fails on the code before its fix.

The fake behaviours they rely on cite TensorRT's sources in tests/fakes/fake_tensorrt.py
and tests/fakes/fake_trtexec.py.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trt_rig import PROFILE, STATIC_PROFILE, FakeTrtexec, Rig, trtexec_rig

from fakes.fake_tensorrt import FakeLayerSpec, FakeModelSpec, FakeTensorSpec, write_model
from trt_provision.errors import EngineBuildError
from trt_provision.runtimes.tensorrt import CalibrationInput, TensorrtOptions
from trt_provision.types import (
    BuildConfig,
    HostCapabilities,
    OptimizationProfile,
    PrecisionMode,
)

pytestmark = pytest.mark.tier1

# A pinned node ("router_*") whose op the FP16 graph keeps FP32 (types.FP16_KEPT_FP32_OPS).
EXP_SPEC = FakeModelSpec(layers=(
    FakeLayerSpec("conv1", output_dtypes=("HALF",)),
    FakeLayerSpec("router_exp", "UNARY", ("FLOAT",), op_type="Exp"),
    FakeLayerSpec("router_gate", "MATRIX_MULTIPLY", ("HALF",)),
))


def _fp16_graph(spec: FakeModelSpec) -> Callable[..., tuple[Path, dict[str, Any]]]:
    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        return write_model(spec, workdir / "m.fp16.onnx"), {"prepared": True}
    return convert


# --------------------------------------------------------------------------- 2: crashes


def test_trtexec_loads_plugin_libraries_with_static_plugins(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    library = tmp_path / "libfancy.so"
    library.write_text("FancyOp\n")  # the fake library registers this creator
    rig = trtexec_rig(make_rig, monkeypatch, builder="trtexec", plugin_libraries=(library,),
                      plugin_libraries_on_disk={str(library): [("FancyOp", "1", "")]})
    rig.state.model = FakeModelSpec(layers=(FakeLayerSpec("fancy", "PLUGIN_V2",
                                                          op_type="FancyOp"),))
    meta = rig.build(BuildConfig(profiles=(PROFILE,))).metadata
    assert f"--staticPlugins={library}" in fake_trtexec.argv
    assert meta["builder"] == "trtexec"


def test_trtexec_without_the_plugin_library_fails_like_trtexec(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The fake trtexec has no importer for an op no loaded library provides."""
    rig = trtexec_rig(make_rig, monkeypatch, builder="trtexec")
    rig.state.model = FakeModelSpec(layers=(FakeLayerSpec("fancy", "PLUGIN_V2",
                                                          op_type="FancyOp"),))
    with pytest.raises(EngineBuildError, match="exit code 1") as info:
        rig.build(BuildConfig(profiles=(PROFILE,)))
    assert any("No importer registered for op: FancyOp" in e
               for e in info.value.context["errors"])


def test_plugin_namespace_is_not_expressible_for_trtexec(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    strict = trtexec_rig(make_rig, monkeypatch, builder="trtexec", plugin_namespace="mine")
    with pytest.raises(EngineBuildError, match="empty namespace"):
        strict.build(BuildConfig(profiles=(PROFILE,)))
    assert not fake_trtexec.argv_file.exists()
    auto = trtexec_rig(make_rig, monkeypatch, builder="auto", plugin_namespace="mine")
    assert auto.build(BuildConfig(profiles=(PROFILE,))).metadata["builder"] == "python"
    assert not fake_trtexec.argv_file.exists()


def test_pinned_node_the_fp16_graph_keeps_fp32_builds_strongly_typed(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig("11.4.0.106", options=TensorrtOptions(
        optional_plugins=(), precision_converter=_fp16_graph(EXP_SPEC)))
    rig.state.model = EXP_SPEC
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,),
                      strict_precision_constraints=True)
    evidence = {e["layer"]: e for e in rig.build(cfg).metadata["layer_precision"]}
    assert evidence["router_exp"]["reason"] == "kept FP32: op Exp kept fp32"
    assert evidence["router_exp"]["applicable"] is False
    assert evidence["router_gate"]["applied"] is True


def test_pinned_node_kept_fp32_by_the_converter_is_recorded(
    make_rig: Callable[..., Rig],
) -> None:
    spec = FakeModelSpec(layers=(FakeLayerSpec("conv1", output_dtypes=("HALF",)),
                                 FakeLayerSpec("router_big", "MATRIX_MULTIPLY")))

    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        return write_model(spec, workdir / "m.fp16.onnx"), {"pinned_layers": [
            {"node": "router_big", "precision": "fp32 (activation y beyond fp16 range)"}]}

    rig = make_rig("11.4.0.106", options=TensorrtOptions(optional_plugins=(),
                                                         precision_converter=convert))
    rig.state.model = spec
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,),
                      strict_precision_constraints=True)
    [record] = rig.build(cfg).metadata["layer_precision"]
    assert record["reason"] == "kept FP32: activation y beyond fp16 range"


def test_weak_path_keeps_the_same_pinned_node_fp32(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("10.16.1.11")
    rig.state.model = FakeModelSpec(layers=(
        FakeLayerSpec("conv1"),
        FakeLayerSpec("router_exp", "UNARY", op_type="Exp"),
        FakeLayerSpec("router_gate", "MATRIX_MULTIPLY"),
    ))
    meta = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,),
                                 strict_precision_constraints=True)).metadata
    evidence = {e["layer"]: e for e in meta["layer_precision"]}
    assert evidence["router_exp"]["precision"] == "FLOAT"
    assert evidence["router_exp"]["reason"] == "kept FP32: op Exp kept fp32"
    assert evidence["router_gate"]["precision"] == "HALF"


def test_tier2_tests_use_only_members_the_runtime_has() -> None:
    """Tier-2 tests skip here, so a call of a removed member (``probe._trt()``) only shows on
    a TensorRT host: every attribute read on a name bound to ``TensorrtRuntime(...)`` must
    exist on the class."""
    import ast

    from trt_provision.runtimes.tensorrt import TensorrtRuntime

    here = Path(__file__).resolve().parent
    missing: list[str] = []
    for path in (here / "test_trt_real_gpu.py", *sorted((here.parents[1] / "tier2").glob(
            "test_*.py"))):
        tree = ast.parse(path.read_text())
        runtimes = {
            target.id for node in ast.walk(tree) if isinstance(node, ast.Assign)
            and isinstance(node.value, ast.Call) and isinstance(node.value.func, ast.Name)
            and node.value.func.id == "TensorrtRuntime"
            for target in node.targets if isinstance(target, ast.Name)
        }
        missing += [
            f"{path.name}:{node.lineno} {node.value.id}.{node.attr}"
            for node in ast.walk(tree) if isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name) and node.value.id in runtimes
            and not hasattr(TensorrtRuntime, node.attr)
        ]
    assert missing == []


@pytest.mark.parametrize("version", ["10.3.0", "10.16.1.11"])
def test_dla_int8_resolves_to_implicit_calibration(
    make_rig: Callable[..., Rig], version: str,
) -> None:
    """NVIDIA's DLA INT8 route is calibration with Q/DQ stripped (Deep-Learning-Accelerator-SW
    qdq-translator): a DLA INT8 build takes the calibrator, never the Q/DQ graph."""
    converted: list[str] = []

    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        converted.append(cfg.precision.value)
        return write_model(FakeModelSpec(), workdir / "m.qdq.onnx"), {}

    cache = {"data": b"governed-table"}
    rig = make_rig(version, options=TensorrtOptions(
        optional_plugins=(), precision_converter=convert,
        calibration=lambda m, c, v: CalibrationInput(
            batches=[], read_cache=lambda: cache["data"], write_cache=lambda _: None)))
    rig.state.dla_cores = 1
    cfg = BuildConfig(precision=PrecisionMode.INT8, profiles=(STATIC_PROFILE,), dla_core=0,
                      gpu_fallback=True, fp16_pinned_keywords=())
    meta = rig.build(cfg).metadata
    assert meta["int8_quantization"] == "implicit" and meta["trt_path"] == "weak"
    assert converted == []  # no Q/DQ graph was prepared
    assert dict(rig.runtime.runtime_target(cfg).build_options)["int8_quantization"] == \
        "implicit"


def test_dla_int8_through_qdq_is_refused_where_tensorrt_calibrates(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig("10.16.1.11", options=TensorrtOptions(
        optional_plugins=(), int8_quantization="explicit", precision_converter=_fp16_graph(
            FakeModelSpec())))
    rig.state.dla_cores = 1
    cfg = BuildConfig(precision=PrecisionMode.INT8, profiles=(STATIC_PROFILE,), dla_core=0,
                      gpu_fallback=True, fp16_pinned_keywords=())
    with pytest.raises(EngineBuildError, match="calibration, not from a Q/DQ graph"):
        rig.build(cfg)
    strong = make_rig("10.16.1.11", options=TensorrtOptions(
        optional_plugins=(), precision_converter=_fp16_graph(FakeModelSpec())))
    strong.state.dla_cores = 1
    with pytest.raises(EngineBuildError, match="strongly typed Q/DQ graph"):
        strong.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(STATIC_PROFILE,),
                                 dla_core=0, gpu_fallback=True, strongly_typed=True,
                                 fp16_pinned_keywords=()))
    assert strong.state.recorder.calls_to("Builder.build_serialized_network") == []


@pytest.mark.parametrize("builder", ["python", "trtexec"])
def test_dla_with_gpu_fallback_refuses_a_shape_range(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
    builder: str,
) -> None:
    """A ranged profile with GPU fallback ran on the GPU under an ``smNN-dlaK`` name."""
    rig = trtexec_rig(make_rig, monkeypatch, "10.3.0", builder=builder)
    rig.state.dla_cores = 1
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), dla_core=0,
                      gpu_fallback=True, fp16_pinned_keywords=())
    with pytest.raises(EngineBuildError, match="min == opt == max"):
        rig.build(cfg)
    assert not fake_trtexec.argv_file.exists()
    assert rig.state.recorder.calls_to("Builder.build_serialized_network") == []


# --------------------------------------------------------------------------- 3: wrong results


@pytest.mark.parametrize("converter", [False, True])
def test_strong_fp16_of_an_fp32_graph_is_refused(
    make_rig: Callable[..., Rig], converter: bool,
) -> None:
    """No converter (or one that converted nothing): the strongly typed network would be the
    FP32 engine under an fp16 label."""
    fp32 = FakeModelSpec(layers=(FakeLayerSpec("conv1"), FakeLayerSpec("fc", "MATRIX_MULTIPLY")))
    options = TensorrtOptions(optional_plugins=(),
                              precision_converter=_fp16_graph(fp32) if converter else None)
    rig = make_rig("11.4.0.106", options=options)
    rig.state.model = fp32
    with pytest.raises(EngineBuildError, match="no tensor below FP32"):
        rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,),
                              fp16_pinned_keywords=()))
    assert rig.state.recorder.calls_to("Builder.build_serialized_network") == []
    # a graph that carries FP16 builds
    rig.state.model = FakeModelSpec(layers=(FakeLayerSpec("conv1", output_dtypes=("HALF",)),))
    fp16 = make_rig("11.4.0.106", options=TensorrtOptions(
        optional_plugins=(), precision_converter=_fp16_graph(rig.state.model)))
    fp16.state.model = rig.state.model
    assert fp16.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,),
                                  fp16_pinned_keywords=())).metadata["trt_path"] == "strong"


def test_default_optional_plugins_name_no_missing_creator() -> None:
    """TensorRT has no "DecodeNMS" creator (plugin/ of NVIDIA/TensorRT v10.16): asking for it
    by default reported a plugin that can never be found."""
    assert TensorrtOptions().optional_plugins == ()


def test_trtexec_refuses_an_engine_it_calibrated_on_random_data(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig(make_rig, monkeypatch, "10.3.0", builder="trtexec",
                      int8_quantization="implicit", calibration=lambda m, c, v: CalibrationInput(
                          batches=[], read_cache=lambda: b"rejected-table",
                          write_cache=lambda _: None))
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "calibrates")
    with pytest.raises(EngineBuildError, match="calibrated instead of reading") as info:
        rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,),
                              fp16_pinned_keywords=()))
    assert "[I] [TRT] Starting Calibration." in info.value.context["calibration_log"]
    assert not (rig.tmp / "e.engine").exists()


def test_trtexec_input_name_with_a_comma_is_not_expressible(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    spec = FakeModelSpec(inputs=(FakeTensorSpec("a,b", (-1, 3, 8, 8)),))
    profile = OptimizationProfile("a,b", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    strict = trtexec_rig(make_rig, monkeypatch, builder="trtexec")
    strict.state.model = spec
    with pytest.raises(EngineBuildError, match="containing ','"):
        strict.build(BuildConfig(profiles=(profile,)))
    auto = trtexec_rig(make_rig, monkeypatch, builder="auto")
    auto.state.model = spec
    assert auto.build(BuildConfig(profiles=(profile,))).metadata["builder"] == "python"
    assert not fake_trtexec.argv_file.exists()


def test_trtexec_builds_weak_fp16_when_no_node_matches_a_keyword(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig(make_rig, monkeypatch, builder="trtexec")
    rig.state.model = FakeModelSpec(layers=(FakeLayerSpec("conv1"),
                                            FakeLayerSpec("fc", "MATRIX_MULTIPLY")))
    meta = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,))).metadata
    assert meta["builder"] == "trtexec" and "--fp16" in fake_trtexec.argv


def test_timing_cache_is_keyed_by_the_device_name(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Tactic timings belong to a device model (an A30 and an A100 are both sm80)."""
    host = HostCapabilities(sm="sm87", gpu_name="Orin (nvgpu)")
    rig = make_rig(host=host, options=TensorrtOptions(optional_plugins=(),
                                                      timing_cache_dir=Path("tc")))
    meta = rig.build(BuildConfig(profiles=(PROFILE,),
                                 timing_cache_path=rig.tmp / "tc")).metadata
    assert Path(meta["timing_cache"]).name == "trt-10.16.1.11.sm87.Orin__nvgpu_.timing-cache"


def test_trtexec_gets_its_own_timing_cache_copy(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trtexec rewrites the file it is given: a failed run must leave the shared cache as it
    was, and a good one publishes its copy back."""
    rig = trtexec_rig(make_rig, monkeypatch, builder="trtexec")
    shared = rig.tmp / "tc" / "trt-10.16.1.11.sm87.timing-cache"
    shared.parent.mkdir()
    shared.write_bytes(b"old")
    cfg = BuildConfig(profiles=(PROFILE,), timing_cache_path=rig.tmp / "tc")
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "fail")
    with pytest.raises(EngineBuildError):
        rig.build(cfg)
    assert shared.read_bytes() == b"old"
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "ok")
    rig.build(cfg, name="ok.engine")
    assert shared.read_bytes() == b"oldtc"
    assert sorted(p.name for p in rig.tmp.glob("*.timing-cache")) == []


def test_trtexec_fp32_on_tensorrt_11_is_the_strong_path_without_the_module(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    from trt_rig import RecordingGate

    from fakes.fake_cuda import FakeCudaRuntime
    from trt_provision.errors import MissingDependencyError
    from trt_provision.runtimes.tensorrt import TensorrtRuntime

    reference = trtexec_rig(make_rig, monkeypatch, "11.4.0.106")

    def no_tensorrt(module: str, extra: str | None = None) -> Any:
        raise MissingDependencyError(module, extra or "tensorrt")

    monkeypatch.setattr("trt_provision.runtimes.tensorrt._context.import_optional", no_tensorrt)
    runtime = TensorrtRuntime(
        gate=RecordingGate(), host=HostCapabilities(sm="sm87", trt_version="11.4.0.106"),
        options=TensorrtOptions(optional_plugins=(), builder="trtexec"),
        cuda_module=FakeCudaRuntime())
    meta = runtime.compile_engine(reference.model, BuildConfig(profiles=(PROFILE,)),
                                  reference.tmp / "x.engine").metadata
    assert meta["trt_path"] == "strong" and "--stronglyTyped" in fake_trtexec.argv


@pytest.mark.parametrize("precision", [PrecisionMode.FP16, PrecisionMode.INT8])
def test_prepared_graph_is_built_strongly_typed_on_tensorrt_10(
    make_rig: Callable[..., Rig], precision: PrecisionMode,
) -> None:
    """What was judged is what is built: the converter's FP16 / Q/DQ graph is gated in its
    own types; weakly typed, the FP16/INT8 flags let TensorRT pick other precisions for the
    layers the graph keeps FP32 (and weak FP16 ran no gate at all)."""
    from trt_rig import _qdq_converter

    calls: list[str] = []
    rig = make_rig("10.16.1.11", options=TensorrtOptions(
        optional_plugins=(), precision_converter=_qdq_converter(calls)))
    meta = rig.build(BuildConfig(precision=precision, profiles=(PROFILE,))).metadata
    assert calls == [precision.value]
    assert meta["trt_path"] == "strong"
    assert not {"FP16", "INT8"} & set(meta["builder_flags"])
    flags = rig.state.recorder.calls_to("Builder.create_network")[-1].args
    assert flags and flags[0] != 0  # the STRONGLY_TYPED creation flag


def test_qdq_for_tensorrt_quantizes_no_weighted_op_output() -> None:
    from trt_provision.calibration.qdq import WEIGHTED_OPS, qdq_option_set

    options = qdq_option_set("tensorrt").extra_options()
    assert options["OpTypesToExcludeOutputQuantization"] == list(WEIGHTED_OPS)
    assert qdq_option_set("onnxruntime-cpu").extra_options()[
        "OpTypesToExcludeOutputQuantization"] == []


def _user_qdq_model(path: Path, weight_type: int) -> Path:
    """A user's Q/DQ model: a QuantizeLinear without zero point (TensorRT's importer makes it
    INT8) and a weight DequantizeLinear of ``weight_type``."""
    import onnx
    from onnx import TensorProto, helper

    scale = helper.make_tensor("s", TensorProto.FLOAT, [], [0.1])
    weight = helper.make_tensor("w_q", weight_type, [1], [1])
    nodes = [
        helper.make_node("QuantizeLinear", ["input", "s"], ["q"], name="q_in"),
        helper.make_node("DequantizeLinear", ["q", "s"], ["x"], name="dq_in"),
        helper.make_node("DequantizeLinear", ["w_q", "s"], ["w"], name="dq_w"),
        helper.make_node("Mul", ["x", "w"], ["output"], name="mul"),
    ]
    graph = helper.make_graph(
        nodes, "user_qdq",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 3, 8, 8])],
        initializer=[scale, weight])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21)])
    onnx.save(model, str(path))
    return path


@pytest.mark.parametrize("weight_type", [3, 17, 22])  # INT8, FLOAT8E4M3FN, INT4
def test_user_qdq_models_tensorrt_imports_are_accepted(
    make_rig: Callable[..., Rig], weight_type: int, tmp_path: Path,
) -> None:
    rig = make_rig("11.4.0.106")
    model = _user_qdq_model(tmp_path / "user.onnx", weight_type)
    meta = rig.runtime.compile_engine(model, BuildConfig(
        precision=PrecisionMode.INT8, profiles=(PROFILE,), fp16_pinned_keywords=()),
        tmp_path / "u.engine").metadata
    assert meta["trt_path"] == "strong"


def test_our_qdq_graph_keeps_the_int8_only_rule(
    make_rig: Callable[..., Rig], tmp_path: Path,
) -> None:
    fp8 = _user_qdq_model(tmp_path / "fp8.onnx", 17)

    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        return fp8, {}

    rig = make_rig("11.4.0.106", options=TensorrtOptions(optional_plugins=(),
                                                         precision_converter=convert))
    with pytest.raises(EngineBuildError, match="only INT8 in a graph we prepared"):
        rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,),
                              fp16_pinned_keywords=()))


def test_static_engine_without_a_profile_loads_and_runs(make_rig: Callable[..., Rig]) -> None:
    """A static network has no profile: getProfileShape returns Dims{-1, {}}; the input's
    shape comes from get_tensor_shape."""
    import numpy as np
    from trt_rig import _entry, identity_net

    rig = make_rig()
    art = rig.runtime.compile_network(identity_net(), BuildConfig(), rig.tmp / "s.engine")
    assert art.metadata["io_device_bytes"] == 2 * 4 * 4  # x and its copy, (1, 4) float32
    handle = rig.runtime.deserialize_engine(
        _entry(art.staged_path, rig.runtime.runtime_target(BuildConfig()), BuildConfig()))
    try:
        x = np.arange(4, dtype=np.float32).reshape(1, 4)
        [out] = rig.runtime.infer(handle, {"x": x}).values()
        np.testing.assert_array_equal(out, x)
    finally:
        rig.runtime.release_engine(handle)


def test_dla_engine_is_refused_before_loading_on_a_host_without_that_core(
    make_rig: Callable[..., Rig],
) -> None:
    from trt_rig import _entry

    from trt_provision.errors import EngineGateError

    rig = make_rig("10.3.0")
    rig.state.dla_cores = 2
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(STATIC_PROFILE,), dla_core=1,
                      gpu_fallback=True, fp16_pinned_keywords=())
    rig.build(cfg)
    rig.state.dla_cores = 1  # the engine goes to a host with one core
    rig.state.recorder.clear()
    with pytest.raises(EngineGateError, match="DLA core this host does not have"):
        rig.runtime.deserialize_engine(
            _entry(rig.tmp / "e.engine", rig.runtime.runtime_target(cfg), cfg))
    assert rig.state.recorder.calls_to("Runtime.deserialize_cuda_engine") == []
    assert rig.gate.calls == [] and rig.budget.reserved == {}


# --------------------------------------------------------------------------- 5: long builds


def test_build_phases_are_logged_with_elapsed_time(
    make_rig: Callable[..., Rig], caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    rig = make_rig()
    with caplog.at_level(logging.DEBUG, logger="trt_provision.runtimes.tensorrt.progress"):
        rig.build()
    events = [(r.event, r.phase) for r in caplog.records  # type: ignore[attr-defined]
              if getattr(r, "event", "").startswith("trt.build.phase.")]
    assert events[0] == ("trt.build.phase.start", "Building engine")
    assert ("trt.build.phase.finish", "Building engine") in events
    assert ("trt.build.phase.step", "Optimizing layers") in events
    starts = [r for r in caplog.records if getattr(r, "event", "") == "trt.build.phase.start"]
    assert starts[1].parent == "Building engine"  # type: ignore[attr-defined]
    assert all(r.elapsed_s >= 0 for r in starts)  # type: ignore[attr-defined]
    assert rig.state.recorder.calls_to("IBuilderConfig.progress_monitor")


def test_jetson_workspace_is_capped_to_free_memory(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(host=HostCapabilities(sm="sm87", jetpack="6.2", gpu_integrated=True),
                   options=TensorrtOptions(optional_plugins=(),
                                           free_memory_bytes=lambda: 512 << 20))
    meta = rig.build(BuildConfig(profiles=(PROFILE,), workspace_mib=1024)).metadata
    assert meta["workspace_bytes"] == 256 << 20 and meta["workspace_requested_bytes"] == 1 << 30
    [call] = rig.state.recorder.calls_to("IBuilderConfig.set_memory_pool_limit")
    assert call.args[-1] == 256 << 20


def test_a_failed_jetson_build_is_named_out_of_memory(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(host=HostCapabilities(sm="sm87", jetpack="6.2", gpu_integrated=True),
                   options=TensorrtOptions(optional_plugins=(),
                                           free_memory_bytes=lambda: 300 << 20))
    rig.state.build_returns_none = True
    # What a Jetson NX build said (open-mmlab/mmdeploy#1059).
    rig.state.build_messages = [
        ("WARNING", "Tactic Device request: 4364MB Available: 3788MB. Device memory is "
                    "insufficient to use tactic."),
        ("ERROR", "10: [optimizer.cpp::computeCosts::3728] Error Code 10: Internal Error "
                  "(Could not find any implementation for node MaxPool.)"),
    ]
    with pytest.raises(EngineBuildError, match="ran out of memory") as info:
        rig.build()
    assert info.value.context["out_of_memory"] is True
    assert info.value.context["free_bytes_at_start"] == 300 << 20
    assert any("Could not find" in m for m in info.value.context["tensorrt_said"])
    # Another failure on the same device is not called out of memory.
    rig.state.build_messages = [("ERROR", "Network validation failed.")]
    with pytest.raises(EngineBuildError, match="returned no engine") as other:
        rig.build(name="other.engine")
    assert "out_of_memory" not in other.value.context
    assert other.value.context["tensorrt_said"] == ["Network validation failed."]


# --------------------------------------------------------------------------- 4: fakes


def test_fake_builder_cancels_when_the_monitor_says_stop(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    trt = rig.trt

    class Stop(trt.IProgressMonitor):  # type: ignore[misc, name-defined]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)

        def phase_start(self, phase_name: str, parent_phase: Any, num_steps: int) -> None:
            pass

        def step_complete(self, phase_name: str, step: int) -> bool:
            return False

        def phase_finish(self, phase_name: str) -> None:
            pass

    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (1, 4))
    network.mark_output(network.add_identity(x).get_output(0))
    config = builder.create_builder_config()
    config.progress_monitor = Stop()
    assert builder.build_serialized_network(network, config) is None


@pytest.mark.parametrize(("banner", "flag", "known"), [
    ("110400", "--fp16", False), ("110400", "--calib=x", False), ("110400", "--best", False),
    ("101601", "--fp16", True), ("100300", "--stronglyTyped", True), ("101601", "--bogus", False),
])
def test_fake_trtexec_parses_its_argv_per_version(
    fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    banner: str, flag: str, known: bool,
) -> None:
    import subprocess

    monkeypatch.setenv("FAKE_TRTEXEC_TRT", banner)
    monkeypatch.setenv("FAKE_TRTEXEC_ENGINE", str(tmp_path / "src.engine"))
    (tmp_path / "src.engine").write_bytes(b"x")
    done = subprocess.run([str(fake_trtexec.binary), flag, f"--saveEngine={tmp_path / 'e'}"],
                          capture_output=True, text=True, check=False, timeout=120)
    assert (done.returncode == 0) is known
    if not known:
        assert f"Unknown option: {flag.partition('=')[0]}" in done.stdout


def test_weak_fp16_claims_no_accuracy_gate_in_its_identity(make_rig: Callable[..., Rig]) -> None:
    """The weakly typed FP16 flag builds no prepared graph, so no gate judges the engine: its
    digest must not change with gate thresholds it never met; a gated (strong) one must."""
    from trt_rig import _qdq_converter

    from trt_provision.identity import compute_identity

    def digest(rig: Rig, cfg: BuildConfig) -> str:
        return compute_identity(model_name="m", model_hash="ab" * 32, config=cfg,
                                target=rig.runtime.runtime_target(cfg)).options_digest

    loose = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), min_cosine=0.9)
    tight = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), min_cosine=0.999)
    weak = make_rig("10.16.1.11")
    assert dict(weak.runtime.runtime_target(loose).build_options)["accuracy_gate"] == "not run"
    assert digest(weak, loose) == digest(weak, tight)
    gated = make_rig("10.16.1.11", options=TensorrtOptions(
        optional_plugins=(), precision_converter=_qdq_converter()))
    assert gated.runtime.runtime_target(loose).build_options == ()
    assert digest(gated, loose) != digest(gated, tight)


def test_auto_builds_with_python_when_the_trtexec_found_is_another_tensorrt(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """``auto`` means trtexec when it can build this run, else Python: a trtexec of another
    TensorRT (say on PATH from another install) must not fail the build."""
    auto = trtexec_rig(make_rig, monkeypatch, builder="auto")
    monkeypatch.setenv("FAKE_TRTEXEC_TRT", "100300")
    assert auto.build(BuildConfig(profiles=(PROFILE,))).metadata["builder"] == "python"
    assert not fake_trtexec.argv_file.exists()
    strict = trtexec_rig(make_rig, monkeypatch, builder="trtexec")
    monkeypatch.setenv("FAKE_TRTEXEC_TRT", "100300")
    with pytest.raises(EngineBuildError, match="another TensorRT") as info:
        strict.build(BuildConfig(profiles=(PROFILE,)))
    assert info.value.context["trtexec_version"] == "10.3.0"


@pytest.mark.parametrize("version", ["10.3.0", "10.16.1.11"])
def test_calibration_cache_is_keyed_by_the_imported_tensorrt(
    make_rig: Callable[..., Rig], version: str,
) -> None:
    """The calibration cache binds to the TensorRT that reads it: the strategy passes the
    imported module's version to the provider, never the host probe's guess."""
    asked: list[str] = []

    def provide(model: Path, cfg: BuildConfig, trt_version: str) -> CalibrationInput:
        asked.append(trt_version)
        return CalibrationInput(batches=[], read_cache=lambda: b"governed-table",
                                write_cache=lambda _: None)

    rig = make_rig(version, options=TensorrtOptions(optional_plugins=(), calibration=provide))
    rig.state.dla_cores = 1
    cfg = BuildConfig(precision=PrecisionMode.INT8, profiles=(STATIC_PROFILE,), dla_core=0,
                      gpu_fallback=True, fp16_pinned_keywords=())
    rig.build(cfg)
    assert asked == [version]
