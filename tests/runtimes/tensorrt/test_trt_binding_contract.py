"""What the bindings' contract demands beyond the member names: identity, DLA, compatibility.

Each test would fail on the code before its fix; the fake behaviour it relies on cites the
TensorRT source in tests/fakes/fake_tensorrt.py.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from trt_rig import PROFILE, STATIC_PROFILE, RecordingGate, Rig, _entry, _qdq_converter

from fakes.fake_cuda import FakeCudaRuntime
from fakes.fake_tensorrt import FakeModelSpec, make_fake_tensorrt, write_model
from trt_provision.errors import EngineBuildError, InferenceError, MissingDependencyError
from trt_provision.identity import compute_identity
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
    PrecisionMode,
)

pytestmark = pytest.mark.tier1

INT8 = BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,), fp16_pinned_keywords=())


def _cached_calibration(model: Path, config: BuildConfig, trt_version: str) -> CalibrationInput:
    return CalibrationInput(batches=[], read_cache=lambda: b"table", write_cache=lambda _: None)


def _digest(rig: Rig, cfg: BuildConfig) -> str:
    target = rig.runtime.runtime_target(cfg)
    return compute_identity(model_name="m", model_hash="ab" * 32, config=cfg,
                            target=target).options_digest


# --------------------------------------------------------------------------- INT8 mode


@pytest.mark.parametrize("version", ["10.3.0", "10.16.1.11"])
def test_int8_quantization_mode_is_part_of_the_engine_identity(
    make_rig: Callable[..., Rig], version: str,
) -> None:
    """An engine calibrated through the implicit calibrator must not be reused for an explicit
    (Q/DQ) request of the same build config on the same TensorRT, nor the other way round."""
    implicit = make_rig(version, options=TensorrtOptions(
        optional_plugins=(), int8_quantization="implicit", calibration=_cached_calibration))
    explicit = make_rig(version, options=TensorrtOptions(
        optional_plugins=(), int8_quantization="explicit", precision_converter=_qdq_converter()))
    auto = make_rig(version, options=TensorrtOptions(optional_plugins=()))
    assert _digest(implicit, INT8) != _digest(explicit, INT8)
    # "auto" resolves to explicit quantization from 10.1 on: the same engine, the same digest.
    assert _digest(auto, INT8) == _digest(explicit, INT8)
    # What the digest says is what the builder records in the sidecar.
    assert implicit.build(INT8).metadata["int8_quantization"] == "implicit"
    assert explicit.build(INT8, "x.engine").metadata["int8_quantization"] == "explicit"
    # The calibrator's engine is judged by no gate: the identity says so.
    assert dict(implicit.runtime.runtime_target(INT8).build_options) == {
        "int8_quantization": "implicit", "accuracy_gate": "not run"}


def test_int8_mode_leaves_other_digests_and_filenames_alone(
    make_rig: Callable[..., Rig],
) -> None:
    implicit = make_rig(options=TensorrtOptions(optional_plugins=(), int8_quantization="implicit"))
    explicit = make_rig(options=TensorrtOptions(optional_plugins=(), int8_quantization="explicit"))
    fp16 = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,))
    assert _digest(implicit, fp16) == _digest(explicit, fp16)
    # Weakly typed FP16 (the builder flag, no prepared graph) claims no gate.
    assert implicit.runtime.runtime_target(fp16).build_options == (("accuracy_gate", "not run"),)
    # The target compares (gate, filenames) without the options.
    assert implicit.runtime.runtime_target(INT8) == explicit.runtime.runtime_target(INT8)


def test_int8_mode_on_tensorrt_11_is_always_explicit(make_rig: Callable[..., Rig]) -> None:
    """TRT 11 has no calibrator: even a forced "implicit" builds from the Q/DQ graph."""
    rig = make_rig("11.4.0.106", options=TensorrtOptions(optional_plugins=(),
                                                         int8_quantization="implicit"))
    assert dict(rig.runtime.runtime_target(INT8).build_options) == {
        "int8_quantization": "explicit"}


# --------------------------------------------------------------------------- DLA


def test_loader_runs_a_dla_engine_on_the_core_its_identity_names(
    make_rig: Callable[..., Rig],
) -> None:
    """IRuntime::setDLACore picks the core a deserialized engine executes on (trtexec sets it
    before every load); without it the engine named ``-dla1`` would not run on core 1."""
    rig = make_rig(host=HostCapabilities(sm="sm87", jetpack="6.2"))
    rig.state.dla_cores = 2
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(STATIC_PROFILE,), dla_core=1,
                      gpu_fallback=True, fp16_pinned_keywords=())
    rig.build(cfg)
    # The memory stamp read right after the build deserializes on that core too.
    assert [c.args for c in rig.state.recorder.calls_to("Runtime.DLA_core")] == [(1,)]
    rig.state.recorder.clear()
    handle = rig.runtime.deserialize_engine(
        _entry(rig.tmp / "e.engine", rig.runtime.runtime_target(cfg), cfg))
    assert [c.args for c in rig.state.recorder.calls_to("Runtime.DLA_core")] == [(1,)]
    assert handle._engine._runtime_dla_core == 1
    rig.runtime.release_engine(handle)


def test_gpu_engine_load_leaves_the_runtime_dla_core_unset(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    rig.state.dla_cores = 2
    handle = rig.load()
    assert rig.state.recorder.calls_to("Runtime.DLA_core") == []
    assert handle._engine._runtime_dla_core == -1
    rig.runtime.release_engine(handle)


# --------------------------------------------------------------------------- compatibility


@pytest.mark.parametrize("builder", ["python", "trtexec"])
def test_same_compute_capability_refused_below_turing(
    make_rig: Callable[..., Rig], builder: str, monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
) -> None:
    """NvInfer.h (v10.16): SAME_COMPUTE_CAPABILITY is only supported for engines built on
    Turing and later GPUs; refused by name before any build, as AMPERE_PLUS below sm80 is."""
    trtexec = tmp_path / "trtexec"
    trtexec.write_text("#!/bin/sh\nexit 99\n")
    trtexec.chmod(0o755)
    rig = make_rig("10.16.1.11", host=HostCapabilities(sm="sm72"),
                   options=TensorrtOptions(optional_plugins=(), builder=builder,
                                           trtexec_path=trtexec))
    cfg = BuildConfig(profiles=(PROFILE,),
                      hardware_compatibility=HardwareCompatibility.SAME_COMPUTE_CAPABILITY)
    with pytest.raises(EngineBuildError, match="Turing or newer"):
        rig.build(cfg)
    assert rig.state.recorder.calls_to("Builder.build_serialized_network") == []
    ok = make_rig("10.16.1.11", host=HostCapabilities(sm="sm75"))
    assert ok.build(cfg, "ok.engine").metadata["hardware_compatibility"] == (
        HardwareCompatibility.SAME_COMPUTE_CAPABILITY.value)


# --------------------------------------------------------------------------- strong typing


def _strong_network(version: str) -> tuple[Any, Any, Any]:
    trt = make_fake_tensorrt(version)
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    flag = 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flag)
    x = network.add_input("x", trt.float32, (1, 4))
    network.mark_output(network.add_identity(x).get_output(0))
    return trt, builder, network


@pytest.mark.parametrize("version", ["10.3.0", "10.16.1.11"])
def test_fake_refuses_precision_flags_and_layer_precision_on_a_strong_network(
    version: str,
) -> None:
    """The fake must not let a strongly typed build with FP16/INT8 flags or layer precision
    through: TensorRT fails it as an API usage error."""
    trt, builder, network = _strong_network(version)
    config = builder.create_builder_config()
    assert builder.build_serialized_network(network, config) is not None
    config.set_flag(trt.BuilderFlag.FP16)
    assert builder.build_serialized_network(network, config) is None
    config.clear_flag(trt.BuilderFlag.FP16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # deprecated from 10.12 on
        network.get_layer(0).precision = trt.float16
    assert builder.build_serialized_network(network, config) is None


@pytest.mark.parametrize("precision", [PrecisionMode.FP16])
def test_strong_builds_set_no_precision_flag_even_on_dla(
    make_rig: Callable[..., Rig], precision: PrecisionMode,
) -> None:
    rig = make_rig("10.16.1.11", options=TensorrtOptions(
        optional_plugins=(), precision_converter=_qdq_converter()))
    rig.state.dla_cores = 1
    cfg = BuildConfig(precision=precision, profiles=(STATIC_PROFILE,), strongly_typed=True,
                      dla_core=0, gpu_fallback=True)
    meta = rig.build(cfg).metadata
    assert meta["trt_path"] == "strong"
    assert not {"FP16", "INT8"} & set(meta["builder_flags"])


@pytest.mark.parametrize("builder", ["auto", "trtexec"])
def test_strong_dla_build_is_not_delegated_to_trtexec_10(
    make_rig: Callable[..., Rig], builder: str, tmp_path: Path,
) -> None:
    """trtexec 10.x adds kFP16 to every --useDLACore build without --int8, which the strongly
    typed network refuses: "auto" builds with Python instead, "trtexec" says why not."""
    ran = tmp_path / "ran"
    trtexec = tmp_path / "trtexec"
    trtexec.write_text(f"#!/bin/sh\ntouch {ran}\nexit 99\n")
    trtexec.chmod(0o755)
    rig = make_rig("10.16.1.11", options=TensorrtOptions(
        optional_plugins=(), builder=builder, trtexec_path=trtexec,
        precision_converter=_qdq_converter()))
    rig.state.dla_cores = 1
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(STATIC_PROFILE,),
                      strongly_typed=True, dla_core=0, gpu_fallback=True)
    if builder == "auto":
        assert rig.build(cfg).metadata["builder"] == "python"
    else:
        with pytest.raises(EngineBuildError, match=r"cannot be delegated.*typed"):
            rig.build(cfg)
    assert not ran.exists()


@pytest.mark.parametrize("builder", ["python", "trtexec"])
def test_dla_without_fallback_refuses_a_shape_range_before_building(
    make_rig: Callable[..., Rig], builder: str, tmp_path: Path,
) -> None:
    """DLA layers need min == opt == max (NvInferRuntime.h); without GPU fallback a ranged
    profile is refused by name before any build, by both builders."""
    trtexec = tmp_path / "trtexec"
    trtexec.write_text("#!/bin/sh\nexit 99\n")
    trtexec.chmod(0o755)
    rig = make_rig("10.3.0", options=TensorrtOptions(optional_plugins=(), builder=builder,
                                                     trtexec_path=trtexec))
    rig.state.dla_cores = 2
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), dla_core=1,
                      fp16_pinned_keywords=())
    with pytest.raises(EngineBuildError, match="min == opt == max") as err:
        rig.build(cfg)
    assert err.value.context["inputs"] == ["input"]
    assert rig.state.recorder.calls_to("Builder.build_serialized_network") == []


def test_fake_dla_build_fails_on_a_shape_range_without_fallback(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.state.dla_cores = 1
    trt = rig.trt
    logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger)
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (-1, 4))
    network.mark_output(network.add_identity(x).get_output(0))
    config = builder.create_builder_config()
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 4), (2, 4), (4, 4))
    config.add_optimization_profile(profile)
    config.set_flag(trt.BuilderFlag.FP16)
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = 0
    assert builder.build_serialized_network(network, config) is None
    # With GPU fallback the ranged layers would run on the GPU: no DLA engine either.
    config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
    assert builder.build_serialized_network(network, config) is None


def test_memory_stamp_refuses_a_refused_max_shape(make_rig: Callable[..., Rig]) -> None:
    """set_input_shape returns bool (pyCore.cpp): output sizes read after a refused shape are
    not the max-shape sizes the budget must reserve."""
    rig = make_rig()
    rig.state.set_input_shape_returns = False
    with pytest.raises(EngineBuildError, match="refused the max input shape"):
        rig.build()


def test_trtexec_before_10_9_is_not_asked_for_same_compute_capability(
    make_rig: Callable[..., Rig], tmp_path: Path,
) -> None:
    """trtexec 10.3 throws "Unknown hardwareCompatibilityLevel" for sameComputeCapability
    (sampleOptions.cpp v10.3.0: none and ampere+ only): refused by name before it runs."""
    ran = tmp_path / "ran"
    trtexec = tmp_path / "trtexec"
    trtexec.write_text('#!/bin/sh\necho "&&&& RUNNING TensorRT.trtexec [TensorRT v100300]"\n'
                       f'[ "$1" = "--help" ] && exit 0\ntouch {ran}\nexit 99\n')
    trtexec.chmod(0o755)
    rig = make_rig("10.3.0", options=TensorrtOptions(optional_plugins=(), builder="trtexec",
                                                     trtexec_path=trtexec))
    cfg = BuildConfig(profiles=(PROFILE,),
                      hardware_compatibility=HardwareCompatibility.SAME_COMPUTE_CAPABILITY)
    with pytest.raises(EngineBuildError, match="sameComputeCapability"):
        rig.build(cfg)
    assert not ran.exists()


def test_trtexec_11_is_not_given_weak_precision_flags_without_the_module(
    make_rig: Callable[..., Rig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    """trtexec 11 has no --fp16 (sampleOptions.cpp v11.1); without the tensorrt module the
    config alone picks the weak path for strongly_typed=False: refused before it runs."""
    ran = tmp_path / "ran"
    trtexec = tmp_path / "trtexec"
    trtexec.write_text('#!/bin/sh\necho "&&&& RUNNING TensorRT.trtexec [TensorRT v110400]"\n'
                       f'[ "$1" = "--help" ] && exit 0\ntouch {ran}\nexit 99\n')
    trtexec.chmod(0o755)

    def no_tensorrt(module: str, extra: str | None = None) -> Any:
        raise MissingDependencyError(module, extra or "tensorrt")

    monkeypatch.setattr("trt_provision.runtimes.tensorrt._context.import_optional", no_tensorrt)
    runtime = TensorrtRuntime(
        gate=RecordingGate(), host=HostCapabilities(sm="sm87", trt_version="11.4.0.106"),
        options=TensorrtOptions(optional_plugins=(), builder="trtexec", trtexec_path=trtexec),
        cuda_module=FakeCudaRuntime(),
    )
    model = write_model(FakeModelSpec(), tmp_path / "m.onnx")
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), strongly_typed=False,
                      fp16_pinned_keywords=())
    with pytest.raises(EngineBuildError, match="no weakly typed precision flags"):
        runtime.compile_engine(model, cfg, tmp_path / "x.engine")
    assert not ran.exists()


def test_fake_refuses_a_plan_from_another_tensorrt_version(
    make_rig: Callable[..., Rig],
) -> None:
    """A plan deserializes only in the TensorRT that built it; the loader turns the null
    into an InferenceError (after the gate, which checks the version by name first)."""
    old = make_rig("10.3.0")
    old.build()
    new = make_rig("10.16.1.11")
    cfg = BuildConfig(profiles=(PROFILE,))
    with pytest.raises(InferenceError, match="could not deserialize"):
        new.runtime.deserialize_engine(
            _entry(old.tmp / "e.engine", new.runtime.runtime_target(cfg), cfg))
    assert new.budget.reserved == {}


def test_no_dla_cores_refusal_names_the_tensorrt_version(make_rig: Callable[..., Rig]) -> None:
    """TensorRT 10.8..11.3 report no DLA cores even on Orin: the refusal says so."""
    rig = make_rig("10.16.1.11", host=HostCapabilities(sm="sm87", jetpack="6.2"))
    with pytest.raises(EngineBuildError, match="no DLA support") as err:
        rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), dla_core=0,
                              gpu_fallback=True))
    assert err.value.context["trt_version"] == "10.16.1.11"


# --------------------------------------------------------------------------- profiles


def test_profile_against_a_static_network_dimension_is_refused_by_name(
    make_rig: Callable[..., Rig],
) -> None:
    """A network callback is not checked by the compiler's profile rules: the builder says
    which dimension is static before TensorRT's build-time validation fails."""
    def build(network: Any, trt: Any) -> None:
        x = network.add_input("x", trt.float32, (-1, 4))
        network.mark_output(network.add_identity(x).get_output(0))

    rig = make_rig()
    cfg = BuildConfig(profiles=(OptimizationProfile("x", (1, 3), (2, 3), (4, 3)),))
    with pytest.raises(EngineBuildError, match="static dimension") as err:
        rig.runtime.compile_network(NetworkSource("n", build), cfg, rig.tmp / "n.engine")
    assert err.value.context["dims"] == [1]
    assert rig.state.recorder.calls_to("Builder.build_serialized_network") == []


def test_fake_validates_profiles_at_build_time(make_rig: Callable[..., Rig]) -> None:
    trt = make_rig().trt
    builder = trt.Builder(trt.Logger(trt.Logger.WARNING))
    network = builder.create_network(0)
    x = network.add_input("x", trt.float32, (-1, 4))
    network.mark_output(network.add_identity(x).get_output(0))
    config = builder.create_builder_config()
    assert builder.build_serialized_network(network, config) is None  # dynamic, no profile
    profile = builder.create_optimization_profile()
    profile.set_shape("x", (1, 3), (2, 3), (4, 3))
    config.add_optimization_profile(profile)
    assert builder.build_serialized_network(network, config) is None  # 3 is not the static 4
    good = builder.create_builder_config()
    ok = builder.create_optimization_profile()
    ok.set_shape("x", (1, 4), (2, 4), (4, 4))
    good.add_optimization_profile(ok)
    assert builder.build_serialized_network(network, good) is not None
