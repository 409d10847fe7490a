"""TensorrtRuntime against the recording fake tensorrt and fake CUDA runtime."""

from __future__ import annotations

import time
from collections.abc import Callable
from ctypes import c_char as ctypes_char
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from trt_rig import (
    HALF_SPEC,
    PROFILE,
    QDQ_SPEC,
    TRT10,
    FakeTrtexec,
    RecordingGate,
    Rig,
    _entry,
    _qdq_converter,
    trtexec_rig,
)

from fakes.fake_cuda import FakeCudaRuntime, cudaError_t
from fakes.fake_tensorrt import (
    SUPPORTED_VERSIONS,
    FakeLayerSpec,
    FakeModelSpec,
    FakeTensorSpec,
    fake_output,
    fake_state,
    make_fake_tensorrt,
    write_model,
)
from trt_provision.errors import (
    CalibrationCacheError,
    EngineBuildError,
    EngineGateError,
    InferenceError,
    MissingDependencyError,
    OutOfMemoryError,
)
from trt_provision.runtimes.tensorrt import (
    CalibrationInput,
    NetworkSource,
    TensorrtOptions,
    TensorrtRuntime,
)
from trt_provision.types import (
    BuildConfig,
    HardwareCompatibility,
    HostCapabilities,
    OptimizationProfile,
    PluginSpec,
    PrecisionMode,
    ThermalState,
)

pytestmark = pytest.mark.tier1


# --------------------------------------------------------------------------- identity


def test_label_and_targets(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("10.3.0")
    assert rig.runtime.current_runtime_label() == "tensorrt"
    t = rig.runtime.runtime_target(BuildConfig())
    assert (t.runtime, t.runtime_version, t.target, t.platform) == ("trt", "10.3.0", "sm87", "dgpu")
    amp = BuildConfig(hardware_compatibility=HardwareCompatibility.AMPERE_PLUS)
    assert rig.runtime.runtime_target(amp).target == "sm80+"
    scc = BuildConfig(hardware_compatibility=HardwareCompatibility.SAME_COMPUTE_CAPABILITY)
    assert rig.runtime.runtime_target(scc).target == "sm87cc"
    jetson = make_rig("10.3.0", host=HostCapabilities(sm="sm87", jetpack="6.2"))
    assert jetson.runtime.runtime_target(BuildConfig()).platform == "jp6.2"


def test_sm_is_probed_through_cuda_when_the_host_does_not_say(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(host=HostCapabilities())
    rig.cuda.compute_capability = (9, 0)
    assert rig.runtime.runtime_target(BuildConfig()).target == "sm90"


def test_thermal_state_default_and_delegation(make_rig: Callable[..., Rig]) -> None:
    assert make_rig().runtime.thermal_state() == ThermalState()
    hot = ThermalState(temperatures_c={"gpu": 91.0}, is_telemetry_available=True, source="t")

    class Publisher:
        def thermal_state(self) -> ThermalState:
            return hot

    assert make_rig(thermal=Publisher()).runtime.thermal_state() is hot


# --------------------------------------------------------------------------- build paths


@pytest.mark.parametrize("version", TRT10)
def test_trt10_fp16_takes_the_weak_path(make_rig: Callable[..., Rig], version: str) -> None:
    rig = make_rig(version)
    art = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,)))
    flags = [c.args[0] for c in rig.cuda.recorder.calls_to("IBuilderConfig.set_flag")]
    assert "FP16" in flags and "OBEY_PRECISION_CONSTRAINTS" in flags
    assert rig.cuda.recorder.calls_to("Builder.create_network")[0].args == (0,)
    assert art.metadata["trt_path"] == "weak"
    assert (rig.tmp / "e.engine").read_bytes().startswith(b"FAKETRT")


def test_trt11_takes_the_strong_path(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("11.4.0.106")
    art = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,)))
    strongly = 1 << int(rig.trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    assert rig.cuda.recorder.calls_to("Builder.create_network")[0].args == (strongly,)
    assert not rig.cuda.recorder.calls_to("IBuilderConfig.set_flag")
    assert art.metadata["trt_path"] == "strong"
    evidence = {e["layer"]: e for e in art.metadata["layer_precision"]}
    assert evidence["router_gate"]["applied"] and evidence["router_gate"]["precision"] == "HALF"
    assert not evidence["router_shape"]["applicable"]


def test_trt11_strict_fails_when_the_graph_lacks_fp16_on_pinned_layers(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig("11.4.0.106")
    rig.state.model = FakeModelSpec(layers=(  # an FP16 graph whose router layer is FLOAT
        FakeLayerSpec("conv1", output_dtypes=("HALF",)),
        FakeLayerSpec("router_gate", "MATRIX_MULTIPLY")))
    with pytest.raises(EngineBuildError, match="does not carry FP16"):
        rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,)))


def test_strongly_typed_can_be_forced_on_trt10(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("10.16.1.11")
    rig.state.model = HALF_SPEC
    art = rig.build(BuildConfig(precision=PrecisionMode.FP16, strongly_typed=True,
                                profiles=(PROFILE,)))
    assert art.metadata["trt_path"] == "strong"


def test_weak_path_refused_on_trt11(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("11.4.0.106")
    with pytest.raises(EngineBuildError, match="weakly typed"):
        rig.build(BuildConfig(precision=PrecisionMode.FP16, strongly_typed=False,
                              profiles=(PROFILE,)))
    assert not rig.cuda.recorder.calls_to("Builder")


def test_int8_on_trt11_goes_strong_without_a_calibrator(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("11.4.0.106", options=TensorrtOptions(optional_plugins=(),
                                                         precision_converter=_qdq_converter()))
    art = rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,)))
    assert art.metadata["trt_path"] == "strong"
    assert "calibration" not in art.metadata


def test_pool_level_profile_and_hardware_calls(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("10.16.1.11")
    rig.build(BuildConfig(workspace_mib=256, builder_optimization_level=5, profiles=(PROFILE,),
                          hardware_compatibility=HardwareCompatibility.AMPERE_PLUS))
    rec = rig.cuda.recorder
    assert rec.calls_to("IBuilderConfig.set_memory_pool_limit")[0].args == ("WORKSPACE", 256 << 20)
    assert rec.calls_to("IBuilderConfig.builder_optimization_level")[0].args == (5,)
    assert rec.calls_to("IOptimizationProfile.set_shape")[0].args == (
        "input", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    assert len(rec.calls_to("IBuilderConfig.add_optimization_profile")) == 1
    assert rec.calls_to("IBuilderConfig.hardware_compatibility_level")[0].args == ("AMPERE_PLUS",)


def test_same_compute_capability_only_where_it_exists(make_rig: Callable[..., Rig]) -> None:
    scc = BuildConfig(profiles=(PROFILE,),
                      hardware_compatibility=HardwareCompatibility.SAME_COMPUTE_CAPABILITY)
    with pytest.raises(EngineBuildError, match="SAME_COMPUTE_CAPABILITY"):
        make_rig("10.3.0").build(scc)
    rig = make_rig("11.4.0.106")
    rig.build(scc)
    assert rig.cuda.recorder.calls_to("IBuilderConfig.hardware_compatibility_level")[0].args == (
        "SAME_COMPUTE_CAPABILITY",)


def test_dynamic_input_without_profile_and_unknown_profile_input(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    with pytest.raises(EngineBuildError, match="dynamic inputs"):
        rig.build(BuildConfig())
    bad = OptimizationProfile("nope", (1,), (1,), (1,))
    with pytest.raises(EngineBuildError, match="does not have"):
        rig.build(BuildConfig(profiles=(PROFILE, bad)))


def test_parser_errors_are_all_surfaced(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.state.model = FakeModelSpec(parser_errors=("bad op A", "bad op B"))
    with pytest.raises(EngineBuildError) as info:
        rig.build()
    assert len(info.value.context["errors"]) == 2
    assert "bad op B" in info.value.context["errors"][1]


def test_build_returning_none_is_an_error(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.state.build_returns_none = True
    with pytest.raises(EngineBuildError, match="no engine"):
        rig.build()
    assert not (rig.tmp / "e.engine").exists()


def test_build_exception_is_rewrapped(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.cuda.recorder.fail("Builder.build_serialized_network", RuntimeError("boom"))
    with pytest.raises(EngineBuildError) as info:
        rig.build()
    assert isinstance(info.value.__cause__, RuntimeError)


def test_memory_stamp_in_metadata(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.state.device_memory_bytes = 12345
    meta = rig.build().metadata
    assert meta["device_memory_bytes"] == 12345
    assert meta["device_memory_bytes_per_profile"] == [12345]
    # input 4x3x8x8 fp32 + output 4x10 fp32 at the max shapes
    assert meta["io_bytes_at_max_shapes"] == (4 * 3 * 8 * 8 + 4 * 10) * 4


# --------------------------------------------------------------------------- pinned layers


@pytest.mark.parametrize("version", TRT10)
def test_pinned_layers_get_half_with_evidence(make_rig: Callable[..., Rig], version: str) -> None:
    rig = make_rig(version)
    meta = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,))).metadata
    evidence = {e["layer"]: e for e in meta["layer_precision"]}
    assert set(evidence) == {"router_gate", "kan_mix", "router_shape"}
    assert evidence["router_gate"] == {
        "layer": "router_gate", "keyword": "router", "precision": "HALF",
        "output_constraint": True, "applied": True, "applicable": True, "reason": "",
    }
    assert not evidence["router_shape"]["applicable"]
    pinned = {c.args[0] for c in rig.cuda.recorder.calls_to("ILayer.precision")}
    assert pinned == {"router_gate", "kan_mix"}
    assert {c.args[0] for c in rig.cuda.recorder.calls_to("ILayer.set_output_type")} == pinned


def test_fp32_pins_nothing(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("10.3.0")
    meta = rig.build().metadata
    assert meta["layer_precision"] == [] and meta["builder_flags"] == []


def _unconstrainable() -> FakeModelSpec:
    return FakeModelSpec(layers=(FakeLayerSpec("conv"), FakeLayerSpec("kan_block",
                                                                        constrainable=False)))


def test_strict_failure_when_a_pinned_layer_cannot_be_constrained(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig("10.3.0")
    rig.state.model = _unconstrainable()
    with pytest.raises(EngineBuildError, match="cannot be constrained") as info:
        rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,)))
    assert "kan_block" in info.value.context["layers"][0]
    assert not rig.cuda.recorder.calls_to("Builder.build_serialized_network")


def test_non_strict_builds_and_records_the_failure(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("10.3.0")
    rig.state.model = _unconstrainable()
    meta = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,),
                                 strict_precision_constraints=False)).metadata
    (ev,) = meta["layer_precision"]
    assert ev["layer"] == "kan_block" and not ev["applied"] and ev["reason"]


# --------------------------------------------------------------------------- INT8 calibrator


def _calibration(batches: list[dict[str, np.ndarray[Any, Any]]], cache: dict[str, bytes]
                 ) -> Callable[[Path, BuildConfig, str], CalibrationInput]:
    def provide(model: Path, config: BuildConfig, trt_version: str) -> CalibrationInput:
        return CalibrationInput(
            batches=batches, read_cache=lambda: cache.get("data"),
            write_cache=lambda data: cache.__setitem__("data", data),
        )
    return provide


@pytest.mark.parametrize("version", TRT10)
def test_int8_weak_path_feeds_batches_and_writes_the_cache(
    make_rig: Callable[..., Rig], version: str,
) -> None:
    cache: dict[str, bytes] = {}
    batches = [{"input": np.full((2, 3, 8, 8), i, np.float32)} for i in range(3)]
    rig = make_rig(version, options=TensorrtOptions(optional_plugins=(),
                                                    int8_quantization="implicit", calibration=_calibration(batches, cache)))
    meta = rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,))).metadata
    assert meta["calibration"] == {"batches": 3}
    assert [b["input"][0, 0, 0, 0] for b in rig.state.calibration_fed] == [0, 1, 2]
    assert cache["data"] == b"fake-calibration-table"
    assert {"INT8", "FP16"} <= set(meta["builder_flags"])
    assert len(rig.cuda.recorder.calls_to("cudaMemcpyAsync.cudaMemcpyHostToDevice")) == 3
    assert rig.cuda.live == {} and rig.cuda.live_streams == set()


@pytest.mark.parametrize("version", TRT10)
def test_int8_calibrates_at_the_opt_shapes_of_the_calibration_profile(
    make_rig: Callable[..., Rig], version: str, caplog: pytest.LogCaptureFixture,
) -> None:
    # 1 + 3 + 2 + 1 = 7 samples; opt batch 2: three full batches, one sample left over
    sizes, start, batches = (1, 3, 2, 1), 0, []
    for n in sizes:
        batches.append({"input": np.arange(start * 192, (start + n) * 192,
                                           dtype=np.float32).reshape(n, 3, 8, 8)})
        start += n
    rig = make_rig(version, options=TensorrtOptions(optional_plugins=(),
                                                    int8_quantization="implicit", calibration=_calibration(batches, {})))
    with caplog.at_level("INFO", logger="trt_provision"):
        meta = rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,))).metadata
    (call,) = rig.cuda.recorder.calls_to("IBuilderConfig.set_calibration_profile")
    assert call.args[0]["input"][1] == PROFILE.opt_shape
    assert meta["calibration"] == {"batches": 3}
    every = np.concatenate([b["input"] for b in batches])
    fed = [b["input"] for b in rig.state.calibration_fed]
    assert [f.shape for f in fed] == [PROFILE.opt_shape] * 3
    for i, got in enumerate(fed):  # what reached the device is exactly the data, re-batched
        np.testing.assert_array_equal(got, every[2 * i:2 * i + 2])
    leftover = [r for r in caplog.records if getattr(r, "event", "") == "trt.calibration.leftover"]
    assert len(leftover) == 1 and leftover[0].samples == 1 and leftover[0].levelname == "INFO"
    assert rig.cuda.live == {}


def test_calibration_batch_with_other_inner_dims_is_refused(make_rig: Callable[..., Rig]) -> None:
    batches = [{"input": np.zeros((2, 3, 8, 8), np.float32)},
               {"input": np.zeros((2, 3, 4, 4), np.float32)}]
    rig = make_rig("10.3.0", options=TensorrtOptions(optional_plugins=(),
                                                     int8_quantization="implicit", calibration=_calibration(batches, {})))
    with pytest.raises(CalibrationCacheError, match="opt") as info:
        rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,)))
    ctx = info.value.context
    assert ctx["input"] == "input" and ctx["batch"] == 1
    assert ctx["expected"] == [2, 3, 8, 8] and ctx["found"] == [2, 3, 4, 4]
    assert rig.cuda.live == {}


def test_calibration_needs_one_opt_batch_size_for_all_inputs(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig("10.3.0", options=TensorrtOptions(optional_plugins=(),
                                                     int8_quantization="implicit", calibration=_calibration([], {})))
    rig.state.model = FakeModelSpec(inputs=(FakeTensorSpec("a", (-1, 4)),
                                            FakeTensorSpec("b", (-1, 4))))
    profiles = (OptimizationProfile("a", (1, 4), (2, 4), (4, 4)),
                OptimizationProfile("b", (1, 4), (3, 4), (4, 4)))
    with pytest.raises(EngineBuildError, match="one batch size") as info:
        rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=profiles))
    assert info.value.context["batch_sizes"] == {"a": 2, "b": 3}
    assert not rig.cuda.recorder.calls_to("Builder.build_serialized_network")


class _RawCalibrator:
    """Hands the fake builder one device buffer as it is, to show what the builder checks."""

    def __init__(self, cuda: FakeCudaRuntime, data: np.ndarray[Any, Any]) -> None:
        self.cuda, self.data, self.sent = cuda, data, False

    def read_calibration_cache(self) -> None:
        return None

    def get_batch_size(self) -> int:
        return int(self.data.shape[0])

    def get_batch(self, names: list[str]) -> list[int] | None:
        if self.sent:
            return None
        self.sent = True
        _err, ptr = self.cuda.cudaMalloc(self.data.nbytes)
        self.cuda.write_device(ptr, self.data.tobytes())
        return [ptr]

    def write_calibration_cache(self, cache: Any) -> None:
        pass


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # the calibrator API on 10.3
@pytest.mark.parametrize("case", ["exact", "short", "no_profile"])
def test_fake_builder_checks_what_the_calibrator_feeds(case: str, tmp_path: Path) -> None:
    cuda = FakeCudaRuntime()
    trt = make_fake_tensorrt("10.3.0", cuda=cuda)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    model = write_model(FakeModelSpec(), tmp_path / "m.onnx")
    assert trt.OnnxParser(network, logger).parse_from_file(str(model))
    config = builder.create_builder_config()
    config.set_flag(trt.BuilderFlag.INT8)
    profile = builder.create_optimization_profile()
    profile.set_shape("input", PROFILE.min_shape, PROFILE.opt_shape, PROFILE.max_shape)
    config.add_optimization_profile(profile)
    if case != "no_profile":
        assert config.set_calibration_profile(profile)
    n = 1 if case == "short" else 2
    data = np.random.default_rng(0).random((n, 3, 8, 8), dtype=np.float32)
    config.int8_calibrator = _RawCalibrator(cuda, data)
    if case == "exact":
        assert builder.build_serialized_network(network, config) is not None
        np.testing.assert_array_equal(fake_state(trt).calibration_fed[0]["input"], data)
    else:
        with pytest.raises(RuntimeError, match="needs" if case == "short" else "profile"):
            builder.build_serialized_network(network, config)


def test_int8_cache_hit_feeds_no_batches(make_rig: Callable[..., Rig]) -> None:
    cache = {"data": b"table"}
    rig = make_rig("10.3.0", options=TensorrtOptions(
        optional_plugins=(), int8_quantization="implicit", calibration=_calibration([{"input": np.zeros((1, 3, 8, 8), np.float32)}],
                                                      cache)))
    meta = rig.build(BuildConfig(precision=PrecisionMode.MIXED, profiles=(PROFILE,))).metadata
    assert meta["calibration"] == {"batches": 0}
    assert not rig.cuda.recorder.calls_to("cudaMalloc")


def test_int8_without_calibration_data_fails(make_rig: Callable[..., Rig]) -> None:
    with pytest.raises(EngineBuildError, match="calibration"):
        make_rig("10.3.0").build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,)))


def test_calibration_batch_error_surfaces_after_the_build(make_rig: Callable[..., Rig]) -> None:
    batches = [{"wrong_name": np.zeros((1, 3, 8, 8), np.float32)}]
    rig = make_rig("10.3.0", options=TensorrtOptions(optional_plugins=(),
                                                     int8_quantization="implicit", calibration=_calibration(batches, {})))
    with pytest.raises(CalibrationCacheError, match="lacks network inputs"):
        rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,)))
    assert rig.cuda.live == {}


# --------------------------------------------------------------------------- plugins


def test_required_plugin_missing_fails_before_building(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    cfg = BuildConfig(profiles=(PROFILE,), plugins=(PluginSpec("TilePack"),))
    with pytest.raises(EngineBuildError, match="plugins") as info:
        rig.build(cfg)
    assert info.value.context["missing"] == ["TilePack v1 ns=''"]
    assert not rig.cuda.recorder.calls_to("Builder")


def test_plugins_found_and_optional_absent_are_reported(make_rig: Callable[..., Rig]) -> None:
    library = Path("/opt/plugins/libtile.so")
    rig = make_rig(options=TensorrtOptions(plugin_libraries=(library,),
                                           optional_plugins=("EfficientNMS_TRT",)))
    rig.state.plugins = [("TilePack", "1", "")]  # libnvinfer_plugin's own
    rig.state.plugin_libraries = {str(library): [("TileSSMScan", "2", "tile")]}
    cfg = BuildConfig(profiles=(PROFILE,), plugins=(
        PluginSpec("TilePack"), PluginSpec("TileSSMScan", "2", "tile")))
    report = {p["name"]: p for p in rig.build(cfg).metadata["plugins"]}
    assert report["TilePack"]["found"] and report["TileSSMScan"]["found"]
    assert report["EfficientNMS_TRT"] == {"name": "EfficientNMS_TRT", "version": "1",
                                          "namespace": "", "required": False, "found": False}


def test_non_strict_plugins_build_anyway(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(options=TensorrtOptions(optional_plugins=(), strict_plugins=False))
    art = rig.build(BuildConfig(profiles=(PROFILE,), plugins=(PluginSpec("TilePack"),)))
    assert art.metadata["plugins"][0]["found"] is False


# --------------------------------------------------------------------------- network callback


def _identity_net(weights: str = "w1") -> NetworkSource:
    def build(network: Any, trt: Any) -> None:
        x = network.add_input("x", trt.float32, (1, 4))
        layer = network.add_identity(x)
        network.mark_output(layer.get_output(0))

    return NetworkSource(name="ident", build=build, weights_sha256=weights)


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_network_callback_builds_and_signs(make_rig: Callable[..., Rig], version: str) -> None:
    rig = make_rig(version)
    meta = rig.runtime.compile_network(_identity_net(), BuildConfig(), rig.tmp / "n.engine").metadata
    sig = meta["network_signature"]
    assert len(sig) == 64 and meta["network"] == "ident"
    again = rig.runtime.compile_network(_identity_net(), BuildConfig(), rig.tmp / "n2.engine")
    assert again.metadata["network_signature"] == sig
    other = rig.runtime.compile_network(_identity_net("w2"), BuildConfig(), rig.tmp / "n3.engine")
    assert other.metadata["network_signature"] != sig


def test_network_callback_error_is_a_build_error(make_rig: Callable[..., Rig]) -> None:
    def broken(network: Any, trt: Any) -> None:
        raise ValueError("bad graph")

    with pytest.raises(EngineBuildError, match="bad graph") as info:
        make_rig().runtime.compile_network(NetworkSource("x", broken), BuildConfig(),
                                           Path("unused"))
    assert isinstance(info.value.__cause__, ValueError)


# --------------------------------------------------------------------------- timing cache


def test_timing_cache_is_per_version_and_sm_and_merged(make_rig: Callable[..., Rig],
                                                       tmp_path: Path) -> None:
    cache_dir = tmp_path / "tc"
    rig = make_rig("10.3.0")
    cfg = BuildConfig(profiles=(PROFILE,), timing_cache_path=cache_dir)
    meta = rig.build(cfg).metadata
    path = Path(meta["timing_cache"])
    assert path.name == "trt-10.3.0.sm87.timing-cache" and path.exists()
    first = path.read_bytes()
    rig.state.model = FakeModelSpec(layers=(FakeLayerSpec("only"),))
    rig.build(cfg, name="e2.engine")
    merged = path.read_bytes().split(b"\n")
    assert set(first.split(b"\n")) < set(merged)
    assert rig.cuda.recorder.calls_to("ITimingCache.combine")


# --------------------------------------------------------------------------- deserialize


def test_gate_refusal_touches_no_trt_or_cuda(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.build()
    rig.cuda.recorder.clear()
    rig.gate.refuse = True
    with pytest.raises(EngineGateError):
        rig.runtime.deserialize_engine(
            _entry(rig.tmp / "e.engine", rig.runtime.runtime_target(BuildConfig())))
    assert rig.calls == []
    assert rig.budget.reserved == {}


def test_gate_gets_the_expected_target_of_the_entry(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    cfg = BuildConfig(profiles=(PROFILE,), hardware_compatibility=HardwareCompatibility.AMPERE_PLUS)
    rig.load(cfg)
    assert rig.gate.calls[-1][1].target == "sm80+"


def test_budget_refusal_before_any_trt_call(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.build()
    rig.cuda.recorder.clear()
    rig.budget.capacity = 10
    with pytest.raises(OutOfMemoryError):
        rig.runtime.deserialize_engine(
            _entry(rig.tmp / "e.engine", rig.runtime.runtime_target(BuildConfig())))
    assert rig.calls == [] and rig.budget.reserved == {}


@pytest.mark.parametrize(
    "step",
    ["Runtime.deserialize_cuda_engine", "ICudaEngine.create_execution_context",
     "cudaStreamCreate", "cudaMallocHost", "cudaMalloc", "IExecutionContext.set_tensor_address"],
)
def test_rollback_on_failure_in_each_deserialize_step(make_rig: Callable[..., Rig],
                                                      step: str) -> None:
    rig = make_rig()
    rig.build()
    rig.cuda.recorder.fail(step, RuntimeError(f"fail {step}"))
    with pytest.raises(InferenceError) as info:
        rig.runtime.deserialize_engine(
            _entry(rig.tmp / "e.engine", rig.runtime.runtime_target(BuildConfig())))
    assert isinstance(info.value.__cause__, RuntimeError)
    assert rig.budget.reserved == {}
    assert rig.cuda.live == {} and rig.cuda.live_streams == set()


@pytest.mark.parametrize("what", ["engine", "context", "cuda_error"])
def test_rollback_when_a_step_returns_failure(make_rig: Callable[..., Rig], what: str) -> None:
    rig = make_rig()
    rig.build()
    target = rig.runtime.runtime_target(BuildConfig())
    if what == "engine":
        (rig.tmp / "e.engine").write_bytes(b"garbage")
    elif what == "context":
        rig.state.context_returns_none = True
    else:
        rig.cuda.fail("cudaMalloc", cudaError_t.cudaErrorMemoryAllocation)
    with pytest.raises(InferenceError):
        rig.runtime.deserialize_engine(_entry(rig.tmp / "e.engine", target))
    assert rig.budget.reserved == {}
    assert rig.cuda.live == {}


@pytest.mark.parametrize("what", ["set_input_shape", "set_tensor_address"])
def test_load_refused_when_tensorrt_refuses_a_shape_or_address(
    make_rig: Callable[..., Rig], what: str,
) -> None:
    rig = make_rig()
    rig.build()
    setattr(rig.state, f"{what}_returns", False)
    with pytest.raises(InferenceError, match="refused the " + what.split("_", 1)[1].replace(
            "_", " ")) as info:
        rig.runtime.deserialize_engine(
            _entry(rig.tmp / "e.engine", rig.runtime.runtime_target(BuildConfig())))
    assert info.value.context["name"] in ("input", "output")
    assert rig.budget.reserved == {}
    assert rig.cuda.live == {} and rig.cuda.live_streams == set()


def test_infer_refused_when_tensorrt_refuses_the_input_shape(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    handle = rig.load()
    rig.state.set_input_shape_returns = False
    rig.cuda.recorder.clear()
    with pytest.raises(InferenceError, match="refused the input shape") as info:
        rig.runtime.infer(handle, {"input": np.zeros((1, 3, 8, 8), np.float32)})
    assert info.value.context["shape"] == (1, 3, 8, 8)
    assert not rig.cuda.recorder.calls_to("IExecutionContext.execute_async_v3")


def test_engine_with_data_dependent_output_shapes_is_refused_at_load(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.build()
    rig.state.data_dependent_outputs = frozenset({"output"})
    rig.cuda.recorder.clear()
    with pytest.raises(InferenceError, match="depends on the data") as info:
        rig.runtime.deserialize_engine(
            _entry(rig.tmp / "e.engine", rig.runtime.runtime_target(BuildConfig())))
    assert info.value.context["output"] == "output" and -1 in info.value.context["shape"]
    assert not rig.cuda.recorder.calls_to("IExecutionContext.set_tensor_address") or all(
        c.args[0] != "output"
        for c in rig.cuda.recorder.calls_to("IExecutionContext.set_tensor_address"))
    assert rig.budget.reserved == {} and rig.cuda.live == {}


def test_host_code_stays_off_unless_allowed(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.load()
    assert rig.cuda.recorder.calls_to("Runtime.engine_host_code_allowed")[0].args == (False,)
    trusted = make_rig(options=TensorrtOptions(optional_plugins=(), allow_engine_host_code=True))
    trusted.load()
    assert trusted.cuda.recorder.calls_to("Runtime.engine_host_code_allowed")[0].args == (True,)


# --------------------------------------------------------------------------- infer / release


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_infer_orders_h2d_execute_d2h_sync(make_rig: Callable[..., Rig], version: str) -> None:
    rig = make_rig(version)
    handle = rig.load()
    rig.cuda.recorder.clear()
    rig.cuda.copy_streams.clear()
    data = np.arange(3 * 3 * 8 * 8, dtype=np.float32).reshape(3, 3, 8, 8)
    out = rig.runtime.infer(handle, {"input": data})
    # the fake engine's output row i is the sum of input sample i: the bytes reached the device
    expected = np.repeat(data.reshape(3, -1).sum(axis=1)[:, None], 10, axis=1)
    np.testing.assert_array_equal(out["output"], expected)
    np.testing.assert_array_equal(
        out["output"], fake_output({"input": data}, (3, 10), np.float32))
    order = [n for n in rig.calls if n in (
        "cudaMemcpyAsync.cudaMemcpyHostToDevice", "IExecutionContext.execute_async_v3",
        "cudaMemcpyAsync.cudaMemcpyDeviceToHost", "cudaStreamSynchronize")]
    assert order == ["cudaMemcpyAsync.cudaMemcpyHostToDevice",
                     "IExecutionContext.execute_async_v3",
                     "cudaMemcpyAsync.cudaMemcpyDeviceToHost", "cudaStreamSynchronize"]
    # copies, execute and the sync all run on the handle's own stream
    stream = handle._buffers.stream_handle
    assert stream in rig.cuda.live_streams
    assert rig.cuda.copy_streams == [("cudaMemcpyAsync.cudaMemcpyHostToDevice", stream),
                                     ("cudaMemcpyAsync.cudaMemcpyDeviceToHost", stream)]
    (execute,) = rig.cuda.recorder.calls_to("IExecutionContext.execute_async_v3")
    assert execute.args == (stream,)
    (sync,) = rig.cuda.recorder.calls_to("cudaStreamSynchronize")
    assert sync.args == (stream,)
    assert rig.cuda.recorder.calls_to("IExecutionContext.set_input_shape")[0].args == (
        "input", (3, 3, 8, 8))
    assert rig.budget.reserved  # still resident
    rig.runtime.release_engine(handle)


@pytest.mark.parametrize(
    ("inputs", "match"),
    [
        ({"other": np.zeros((1, 3, 8, 8), np.float32)}, "names"),
        ({"input": np.zeros((1, 3, 8, 8), np.float64)}, "dtype"),
        ({"input": np.zeros((5, 3, 8, 8), np.float32)}, "profile"),
        ({"input": np.zeros((3, 8, 8), np.float32)}, "profile"),
    ],
)
def test_infer_checks_inputs(make_rig: Callable[..., Rig], inputs: dict[str, Any],
                             match: str) -> None:
    rig = make_rig()
    handle = rig.load()
    rig.cuda.recorder.clear()
    with pytest.raises(InferenceError, match=match):
        rig.runtime.infer(handle, inputs)
    assert not rig.cuda.recorder.calls_to("IExecutionContext.execute_async_v3")


def test_infer_rewraps_third_party_errors(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    handle = rig.load()
    rig.cuda.recorder.fail("IExecutionContext.execute_async_v3", RuntimeError("xid 79"))
    with pytest.raises(InferenceError, match="xid 79") as info:
        rig.runtime.infer(handle, {"input": np.zeros((1, 3, 8, 8), np.float32)})
    assert isinstance(info.value.__cause__, RuntimeError)


def test_execute_returning_false_is_an_inference_error(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    handle = rig.load()
    rig.state.execute_returns = False
    with pytest.raises(InferenceError, match="execute_async_v3"):
        rig.runtime.infer(handle, {"input": np.zeros((1, 3, 8, 8), np.float32)})


def test_release_is_idempotent_and_refuses_later_use(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    handle = rig.load()
    assert rig.budget.reserved and rig.cuda.live
    rig.runtime.release_engine(handle)
    rig.runtime.release_engine(handle)
    assert handle.released and rig.budget.reserved == {} and rig.cuda.live == {}
    assert rig.cuda.live_streams == set()
    with pytest.raises(InferenceError, match="released"):
        rig.runtime.infer(handle, {"input": np.zeros((1, 3, 8, 8), np.float32)})


def test_foreign_handles_are_refused(make_rig: Callable[..., Rig]) -> None:
    a, b = make_rig(), make_rig()
    handle = a.load()
    with pytest.raises(InferenceError, match="does not belong"):
        b.runtime.infer(handle, {"input": np.zeros((1, 3, 8, 8), np.float32)})
    with pytest.raises(InferenceError, match="does not belong"):
        b.runtime.release_engine(handle)
    a.runtime.release_engine(handle)


def test_multiple_inputs_and_outputs(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.state.model = FakeModelSpec(
        inputs=(FakeTensorSpec("a", (-1, 4)), FakeTensorSpec("b", (-1, 2), "INT32")),
        outputs=(FakeTensorSpec("y", (-1, 4)), FakeTensorSpec("z", (-1,), "HALF")),
    )
    cfg = BuildConfig(profiles=(OptimizationProfile("a", (1, 4), (2, 4), (8, 4)),
                                OptimizationProfile("b", (1, 2), (2, 2), (8, 2))))
    handle = rig.load(cfg)
    a = np.arange(8, dtype=np.float32).reshape(2, 4)
    b = np.array([[10, 20], [30, 40]], np.int32)
    out = rig.runtime.infer(handle, {"a": a, "b": b})
    assert out["y"].shape == (2, 4) and out["z"].dtype == np.float16
    np.testing.assert_array_equal(out["y"], a)  # y has a's shape and dtype: a copy of it
    np.testing.assert_array_equal(out["z"], [0 + 1 + 2 + 3 + 30, 4 + 5 + 6 + 7 + 70])
    rig.runtime.release_engine(handle)


# --------------------------------------------------------------------------- zero-copy inputs

_ORDER = ["cudaMemcpyAsync.cudaMemcpyHostToDevice", "IExecutionContext.execute_async_v3",
          "cudaMemcpyAsync.cudaMemcpyDeviceToHost", "cudaStreamSynchronize"]


def _address(arr: np.ndarray[Any, Any]) -> int:
    return int(arr.__array_interface__["data"][0])


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_staged_inputs_are_uploaded_without_a_host_copy(make_rig: Callable[..., Rig],
                                                        version: str) -> None:
    rig = make_rig(version)
    handle = rig.load()
    views = rig.runtime.input_views(handle, {"input": (2, 3, 8, 8)})
    view = views["input"]
    assert view.shape == (2, 3, 8, 8) and view.dtype == np.float32 and view.flags.writeable
    view[:] = 7.0
    buffers = handle._buffers
    rig.cuda.recorder.clear()
    out = rig.runtime.infer_staged(handle, copy_outputs=False)
    assert buffers.host_copies == 0 and buffers.host_copy_bytes == 0
    assert [n for n in rig.calls if n in _ORDER] == _ORDER
    (h2d,) = rig.cuda.recorder.calls_to("cudaMemcpyAsync.cudaMemcpyHostToDevice")
    assert h2d.args[1] == _address(view) and h2d.args[2] == view.nbytes
    device = np.frombuffer(bytes((ctypes_char * view.nbytes).from_address(h2d.args[0])),
                           np.float32)
    assert np.all(device == 7.0)  # what the caller wrote reached the "device" unchanged
    assert rig.cuda.recorder.calls_to("IExecutionContext.set_input_shape")[0].args == (
        "input", (2, 3, 8, 8))
    output = out["output"]
    assert output.shape == (2, 10) and np.all(output == 7.0 * 3 * 8 * 8)
    assert _address(output) == buffers.buffers["output"].host_ptr  # a view, not a copy
    rig.runtime.release_engine(handle)


def test_infer_recognises_the_views_and_copies_anything_else(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    handle = rig.load()
    buffers = handle._buffers
    views = rig.runtime.input_views(handle, {"input": (1, 3, 8, 8)})
    views["input"][:] = 2.0
    out = rig.runtime.infer(handle, views)  # copy_outputs defaults to True
    assert buffers.host_copies == 1  # the output copy only
    assert _address(out["output"]) != buffers.buffers["output"].host_ptr
    assert np.all(out["output"] == 2.0 * 192)
    pageable = np.full((1, 3, 8, 8), 3.0, np.float32)
    staged_out = rig.runtime.infer(handle, {"input": pageable}, copy_outputs=False)
    assert np.all(staged_out["output"] == 3.0 * 192)
    assert buffers.host_copies == 2 and buffers.host_copy_bytes == pageable.nbytes + 1 * 10 * 4
    # the staging copy landed in the same pinned memory the views expose
    assert np.all(views["input"] == 3.0)
    # a view that starts elsewhere in the buffer is staged like any foreign array
    big = rig.runtime.input_views(handle, {"input": (4, 3, 8, 8)})["input"]
    big[:] = np.arange(4, dtype=np.float32)[:, None, None, None]
    moved = rig.runtime.infer(handle, {"input": big[2:]}, copy_outputs=False)["output"]
    assert buffers.host_copies == 3
    np.testing.assert_array_equal(moved[:, 0], [2.0 * 192, 3.0 * 192])  # samples 2 and 3
    assert np.all(big[0] == 2.0) and np.all(big[1] == 3.0)
    rig.runtime.release_engine(handle)


def test_output_views_are_overwritten_by_the_next_inference(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    handle = rig.load()
    view = rig.runtime.input_views(handle, {"input": (1, 3, 8, 8)})["input"]
    view[:] = 1.0
    first = rig.runtime.infer_staged(handle, copy_outputs=False)["output"]
    kept = rig.runtime.infer_staged(handle)["output"]
    assert np.all(first == 192.0) and np.all(kept == 192.0)
    first[:] = 5.0  # the caller may scribble on the view; the next run overwrites it
    view[:] = 2.0
    rig.runtime.infer_staged(handle, copy_outputs=False)
    assert np.all(first == 384.0) and np.all(kept == 192.0)  # the copy is the caller's
    rig.runtime.release_engine(handle)


@pytest.mark.parametrize(
    ("shapes", "match"),
    [({"other": (1, 3, 8, 8)}, "names"), ({"input": (5, 3, 8, 8)}, "profile"),
     ({"input": (3, 8, 8)}, "profile")],
)
def test_input_views_check_names_and_profile(make_rig: Callable[..., Rig],
                                             shapes: dict[str, tuple[int, ...]],
                                             match: str) -> None:
    rig = make_rig()
    handle = rig.load()
    with pytest.raises(InferenceError, match=match):
        rig.runtime.input_views(handle, shapes)
    rig.runtime.release_engine(handle)


def test_staged_path_refusals_and_rewrap(make_rig: Callable[..., Rig]) -> None:
    rig, other = make_rig(), make_rig()
    handle = rig.load()
    with pytest.raises(InferenceError, match="input_views first"):
        rig.runtime.infer_staged(handle)
    with pytest.raises(InferenceError, match="does not belong"):
        other.runtime.input_views(handle, {"input": (1, 3, 8, 8)})
    with pytest.raises(InferenceError, match="does not belong"):
        other.runtime.infer_staged(handle)
    rig.runtime.input_views(handle, {"input": (1, 3, 8, 8)})
    rig.cuda.recorder.fail("IExecutionContext.execute_async_v3", RuntimeError("xid 13"))
    with pytest.raises(InferenceError, match="xid 13") as info:
        rig.runtime.infer_staged(handle)
    assert isinstance(info.value.__cause__, RuntimeError)
    rig.runtime.release_engine(handle)
    with pytest.raises(InferenceError, match="released"):
        rig.runtime.infer_staged(handle)
    with pytest.raises(InferenceError, match="released"):
        rig.runtime.input_views(handle, {"input": (1, 3, 8, 8)})


def test_staged_views_with_several_inputs(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.state.model = FakeModelSpec(
        inputs=(FakeTensorSpec("a", (-1, 4)), FakeTensorSpec("b", (-1, 2), "INT32")),
        outputs=(FakeTensorSpec("y", (-1, 4)), FakeTensorSpec("z", (-1,), "HALF")),
    )
    cfg = BuildConfig(profiles=(OptimizationProfile("a", (1, 4), (2, 4), (8, 4)),
                                OptimizationProfile("b", (1, 2), (2, 2), (8, 2))))
    handle = rig.load(cfg)
    views = rig.runtime.input_views(handle, {"a": (3, 4), "b": [3, 2]})
    assert views["b"].dtype == np.int32 and views["b"].shape == (3, 2)
    views["a"][:], views["b"][:] = 1.0, 2
    out = rig.runtime.infer_staged(handle, copy_outputs=False)
    assert handle._buffers.host_copies == 0
    assert out["y"].shape == (3, 4) and out["z"].dtype == np.float16
    rig.runtime.release_engine(handle)


# --------------------------------------------------------------------------- trtexec builder



def test_trtexec_flags_follow_the_build_config(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig(make_rig, monkeypatch, builder="trtexec")
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), workspace_mib=256,
                      builder_optimization_level=5, fp16_pinned_keywords=(),
                      hardware_compatibility=HardwareCompatibility.AMPERE_PLUS,
                      timing_cache_path=rig.tmp / "tc")
    art = rig.build(cfg)
    argv = fake_trtexec.argv
    assert f"--onnx={rig.tmp / 'm.onnx'}" in argv
    assert f"--saveEngine={rig.tmp / 'e.engine'}" in argv
    assert "--fp16" in argv and "--skipInference" in argv
    assert not {"--int8", "--best", "--stronglyTyped"} & set(argv)
    assert "--minShapes=input:1x3x8x8" in argv and "--optShapes=input:2x3x8x8" in argv
    assert "--maxShapes=input:4x3x8x8" in argv
    assert "--memPoolSize=workspace:256" in argv
    assert "--builderOptimizationLevel=5" in argv
    assert "--hardwareCompatibilityLevel=ampere+" in argv
    cache = rig.tmp / "tc" / "trt-10.16.1.11.sm87.timing-cache"
    [copy] = [a.split("=", 1)[1] for a in argv if a.startswith("--timingCacheFile=")]
    assert Path(copy) != cache and not Path(copy).exists()  # trtexec's own copy, gone
    assert cache.read_bytes() == b"tc"  # ...published back
    meta = art.metadata
    assert meta["builder"] == "trtexec" and meta["builder_command"][1:] == argv
    assert meta["trt_path"] == "weak" and meta["builder_flags"] == ["--fp16"]
    assert meta["device_memory_bytes"] >= 0 and meta["engine_bytes"] > 0
    assert (rig.tmp / "e.engine").read_bytes().startswith(b"FAKETRT")
    assert not rig.cuda.recorder.calls_to("Builder.build_serialized_network")


def test_trtexec_strong_path_and_same_compute_capability(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig(make_rig, monkeypatch, "11.4.0.106", builder="trtexec")
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,),
                      hardware_compatibility=HardwareCompatibility.SAME_COMPUTE_CAPABILITY)
    meta = rig.build(cfg).metadata
    argv = fake_trtexec.argv
    assert "--stronglyTyped" in argv and "--fp16" not in argv
    assert "--hardwareCompatibilityLevel=sameComputeCapability" in argv
    assert "--memPoolSize=workspace:1024" in argv
    assert meta["trt_path"] == "strong" and meta["builder"] == "trtexec"


def test_trtexec_int8_reads_the_calibration_cache(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cache = {"data": b"calibration-table"}
    rig = trtexec_rig(make_rig, monkeypatch, "10.3.0", builder="trtexec",
                       int8_quantization="implicit", calibration=_calibration([], cache))
    cfg = BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,), fp16_pinned_keywords=())
    meta = rig.build(cfg).metadata
    argv = fake_trtexec.argv
    calib = [a for a in argv if a.startswith("--calib=")]
    # the Python builder sets FP16 with INT8: trtexec gets the same flags, one engine semantics
    assert "--int8" in argv and "--fp16" in argv and len(calib) == 1
    assert meta["builder_flags"] == ["--fp16", "--int8", "--calib"]
    assert not Path(calib[0].split("=", 1)[1]).exists()  # the temporary cache file is gone
    assert meta["calibration"] == {"batches": 0, "from_cache": True}


def test_trtexec_mixed_passes_fp16_and_int8(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig(make_rig, monkeypatch, "10.3.0", builder="trtexec",
                       int8_quantization="implicit", calibration=_calibration([], {"data": b"table"}))
    rig.build(BuildConfig(precision=PrecisionMode.MIXED, profiles=(PROFILE,),
                          fp16_pinned_keywords=()))
    assert {"--fp16", "--int8"} <= set(fake_trtexec.argv)


def test_trtexec_weak_request_refused_where_tensorrt_has_no_weak_path(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig(make_rig, monkeypatch, "11.4.0.106", builder="trtexec")
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), strongly_typed=False,
                      fp16_pinned_keywords=())
    with pytest.raises(EngineBuildError, match="weakly typed"):
        rig.build(cfg)
    assert not fake_trtexec.argv_file.exists()  # refused before trtexec ran
    auto = trtexec_rig(make_rig, monkeypatch, "11.4.0.106", builder="auto")
    with pytest.raises(EngineBuildError, match="weakly typed"):
        auto.build(cfg)


def test_trtexec_with_converter_needs_no_tensorrt_module(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    reference = trtexec_rig(make_rig, monkeypatch, "11.4.0.106")
    seen: list[Path] = []

    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        converted = write_model(HALF_SPEC, workdir / "m.fp16.onnx")
        seen.append(converted)
        return converted, {"converted": True}

    def no_tensorrt(module: str, extra: str | None = None) -> Any:
        raise MissingDependencyError(module, extra or "tensorrt")

    monkeypatch.setattr("trt_provision.runtimes.tensorrt._context.import_optional", no_tensorrt)
    runtime = TensorrtRuntime(
        gate=RecordingGate(), host=HostCapabilities(sm="sm87", trt_version="11.4.0.106"),
        options=TensorrtOptions(optional_plugins=(), builder="trtexec",
                                precision_converter=convert),
        cuda_module=FakeCudaRuntime(),
    )
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), strongly_typed=True)
    art = runtime.compile_engine(reference.model, cfg, reference.tmp / "x.engine")
    argv = fake_trtexec.argv
    assert len(seen) == 1 and f"--onnx={seen[0]}" in argv and "--stronglyTyped" in argv
    assert art.metadata["converted"] is True and art.metadata["builder"] == "trtexec"
    assert art.metadata["memory_stamp"].startswith("unavailable")


def test_trtexec_failure_carries_its_error_lines(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig(make_rig, monkeypatch, builder="trtexec")
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "fail")
    with pytest.raises(EngineBuildError, match="exit code 1") as info:
        rig.build(BuildConfig(profiles=(PROFILE,)))
    errors = info.value.context["errors"]
    assert any("FancyOp" in e for e in errors) and not any("parsing" in e for e in errors)
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "noengine")
    with pytest.raises(EngineBuildError, match="without writing the engine"):
        rig.build(BuildConfig(profiles=(PROFILE,)), name="other.engine")


def test_trtexec_timeout_kills_its_process_group(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig(make_rig, monkeypatch, builder="trtexec", trtexec_timeout_s=1.0)
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "hang")
    with pytest.raises(EngineBuildError, match="timed out") as info:
        rig.build(BuildConfig(profiles=(PROFILE,)))
    assert info.value.context["timeout_s"] == 1.0
    child = int(Path(str(fake_trtexec.argv_file) + ".child").read_text())
    assert not _alive(child)


def _alive(pid: int, within_s: float = 60.0) -> bool:
    """Whether ``pid`` still runs after up to ``within_s`` (signals land asynchronously; the
    bound is only a hang guard: a dead process returns at once)."""
    deadline = time.monotonic() + within_s
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0]
        except OSError:
            return False
        if state in ("Z", "X"):
            return False
        if time.monotonic() > deadline:
            return True
        time.sleep(0.05)


def test_builder_selection(
    make_rig: Callable[..., Rig], fake_trtexec: FakeTrtexec, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    with pytest.raises(ValueError, match="builder"):
        TensorrtOptions(builder="bogus")
    # auto: pinned layers on a weakly typed FP16 build need the Python builder
    rig = trtexec_rig(make_rig, monkeypatch, builder="auto")
    meta = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,))).metadata
    assert meta["builder"] == "python" and not fake_trtexec.argv_file.exists()
    # ...and explicit trtexec refuses it instead of silently dropping the pins
    strict = trtexec_rig(make_rig, monkeypatch, builder="trtexec")
    with pytest.raises(EngineBuildError, match="cannot be delegated"):
        strict.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,)))
    # auto with an expressible build uses trtexec
    assert rig.build(BuildConfig(profiles=(PROFILE,)), name="a.engine").metadata[
        "builder"] == "trtexec"
    # a configured binary wins over PATH; a missing one is an error in trtexec mode
    configured = trtexec_rig(make_rig, monkeypatch, builder="trtexec",
                              trtexec_path=fake_trtexec.binary)
    assert configured.build(BuildConfig(profiles=(PROFILE,))).metadata["builder"] == "trtexec"
    missing = trtexec_rig(make_rig, monkeypatch, builder="trtexec",
                           trtexec_path=tmp_path / "nope" / "trtexec")
    with pytest.raises(EngineBuildError, match="no executable trtexec"):
        missing.build(BuildConfig(profiles=(PROFILE,)))
    fallback = trtexec_rig(make_rig, monkeypatch, builder="auto",
                            trtexec_path=tmp_path / "nope" / "trtexec")
    assert fallback.build(BuildConfig(profiles=(PROFILE,))).metadata["builder"] == "python"


# --------------------------------------------------------------------------- strong-path conversion


def test_strong_path_parses_the_precision_carrying_graph(make_rig: Callable[..., Rig]) -> None:
    seen: list[tuple[Path, str, Path]] = []

    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        converted = write_model(QDQ_SPEC, workdir / "m.qdq.onnx")
        seen.append((model, cfg.precision.value, workdir))
        return converted, {"calibration_key": "k" * 64, "accuracy": {"outputs": {}}}

    rig = make_rig("11.4.0.106", options=TensorrtOptions(optional_plugins=(),
                                                         precision_converter=convert))
    art = rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,)))
    assert [(m.name, p) for m, p, _ in seen] == [("m.onnx", "int8")]
    parsed = rig.cuda.recorder.calls_to("OnnxParser.parse_from_file")[0].args[0]
    assert parsed.endswith("m.qdq.onnx")
    assert art.metadata["calibration_key"] == "k" * 64 and art.metadata["trt_path"] == "strong"
    assert art.metadata["model"] == str(rig.tmp / "m.onnx")
    assert not seen[0][2].exists()  # the work dir is gone after the build


def test_no_conversion_for_fp32_or_the_weak_path(make_rig: Callable[..., Rig]) -> None:
    calls: list[str] = []

    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        calls.append(cfg.precision.value)
        return model, {}

    options = TensorrtOptions(optional_plugins=(), precision_converter=convert)
    make_rig("11.4.0.106", options=options).build(BuildConfig(profiles=(PROFILE,)))
    make_rig("10.16.1.11", options=options).build(
        BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), strongly_typed=False))
    assert calls == []
