"""Regression tests for what a real TensorRT would refuse but an earlier fake let through.

Each test names the defect it pins down; the fake behaviour it relies on cites the TensorRT
source in tests/fakes/fake_tensorrt.py.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper
from trt_rig import HALF_SPEC, PROFILE, STATIC_PROFILE, RecordingGate, Rig, _entry, _qdq_converter

from fakes.fake_cuda import FakeCudaRuntime
from fakes.fake_tensorrt import (
    ENGINE_MAGIC,
    FakeLayerSpec,
    FakeModelSpec,
    FakeTensorSpec,
    fake_state,
    make_fake_tensorrt,
    write_model,
)
from fakes.fake_trtexec import install_fake_trtexec
from trt_provision.config_json import build_config_from_json, build_config_to_json
from trt_provision.errors import EngineBuildError, InferenceError
from trt_provision.identity import compute_identity, engine_filename, parse_engine_filename
from trt_provision.runtimes.tensorrt import CalibrationInput, TensorrtOptions, TensorrtRuntime
from trt_provision.runtimes.tensorrt.trtexec_build import find_trtexec, parse_trtexec_version
from trt_provision.types import (
    BuildConfig,
    HardwareCompatibility,
    HostCapabilities,
    OptimizationProfile,
    PrecisionMode,
    RuntimeTarget,
)

pytestmark = pytest.mark.tier1


def _blob(path: Path) -> dict[str, Any]:
    data = path.read_bytes()
    assert data.startswith(ENGINE_MAGIC)
    parsed: dict[str, Any] = json.loads(data[len(ENGINE_MAGIC):])
    return parsed


def _options(**kwargs: Any) -> TensorrtOptions:
    return TensorrtOptions(optional_plugins=(), **kwargs)


def _dq_model(path: Path, *, dq_dtype: int = TensorProto.INT8, zero_point: int = 0) -> Path:
    """A conv whose bias is dequantized: ``dq_dtype`` INT32 is what quantize_static writes."""
    x = helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 8, 8])
    y = helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 10])
    q = helper.make_tensor("bias_q", dq_dtype, [1], [3])
    scale = helper.make_tensor("bias_scale", TensorProto.FLOAT, [], [0.5])
    zp = helper.make_tensor("bias_zp", dq_dtype, [], [zero_point])
    nodes = [
        helper.make_node("DequantizeLinear", ["bias_q", "bias_scale", "bias_zp"], ["bias"],
                         name="conv1_bias_DequantizeLinear"),
        helper.make_node("Add", ["input", "bias"], ["output"], name="conv1"),
    ]
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=[q, scale, zp])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def _converter_to(path_spec: FakeModelSpec) -> Callable[..., tuple[Path, dict[str, Any]]]:
    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        return write_model(path_spec, workdir / "prepared.onnx"), {}
    return convert


# --------------------------------------------------------------------------- defect 1


@pytest.mark.parametrize(("dq_dtype", "zero_point", "match"), [
    (TensorProto.INT32, 0, "INT32 input"),
    (TensorProto.INT8, 3, "non-zero zero point"),
    (TensorProto.UINT8, 0, "UINT8 input"),
])
def test_dequantize_input_not_int8_or_zero_point_not_zero_is_refused_before_building(
    make_rig: Callable[..., Rig], dq_dtype: int, zero_point: int, match: str,
) -> None:
    rig = make_rig("11.4.0.106")
    model = _dq_model(rig.tmp / "q.onnx", dq_dtype=dq_dtype, zero_point=zero_point)
    with pytest.raises(EngineBuildError, match=match) as info:
        rig.runtime.compile_engine(model, BuildConfig(precision=PrecisionMode.INT8,
                                                      profiles=(PROFILE,)),
                                   rig.tmp / "e.engine")
    assert info.value.context["node"] == "conv1_bias_DequantizeLinear"
    assert "Builder" not in rig.cuda.recorder.names  # nothing built


def test_an_int8_dequantize_graph_builds(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("11.4.0.106")
    model = _dq_model(rig.tmp / "q.onnx")
    art = rig.runtime.compile_engine(model, BuildConfig(precision=PrecisionMode.INT8,
                                                        profiles=(PROFILE,)),
                                     rig.tmp / "e.engine")
    assert art.metadata["trt_path"] == "strong"


def test_fake_parser_refuses_a_non_int8_dequantize(tmp_path: Path) -> None:
    trt = make_fake_tensorrt("11.4.0.106")
    logger = trt.Logger(trt.Logger.WARNING)
    network = trt.Builder(logger).create_network(0)
    parser = trt.OnnxParser(network, logger)
    assert not parser.parse_from_file(str(_dq_model(tmp_path / "q.onnx",
                                                    dq_dtype=TensorProto.INT32)))
    assert "INT32" in parser.get_error(0).desc()
    assert parser.get_error(0).node_name() == "conv1_bias_DequantizeLinear"


# --------------------------------------------------------------------------- defect 2

PLUGIN_SPEC = FakeModelSpec(layers=(FakeLayerSpec("conv1"),
                                    FakeLayerSpec("scan", "PLUGIN_V2", op_type="TileSSMScan")))


def test_plugins_are_registered_before_deserializing_in_a_fresh_process(
    make_rig: Callable[..., Rig],
) -> None:
    builder_rig = make_rig("10.16.1.11")
    builder_rig.state.plugins = [("TileSSMScan", "1", "")]
    builder_rig.state.model = PLUGIN_SPEC
    cfg = BuildConfig(profiles=(PROFILE,))
    builder_rig.build(cfg)
    assert _blob(builder_rig.tmp / "e.engine")["plugins"] == ["TileSSMScan"]

    # Another process: the same TensorRT, nothing registered yet.
    cuda = FakeCudaRuntime()
    trt = make_fake_tensorrt("10.16.1.11", cuda=cuda, recorder=cuda.recorder)
    fake_state(trt).plugins = [("TileSSMScan", "1", "")]
    runtime = TensorrtRuntime(gate=RecordingGate(), host=HostCapabilities(sm="sm87"),
                              options=_options(plugin_namespace=""), trt_module=trt,
                              cuda_module=cuda)
    target = runtime.runtime_target(cfg)
    handle = runtime.deserialize_engine(_entry(builder_rig.tmp / "e.engine", target, cfg))
    names = cuda.recorder.names
    assert names.index("init_libnvinfer_plugins") < names.index("Runtime.deserialize_cuda_engine")
    runtime.release_engine(handle)
    runtime.release_engine(runtime.deserialize_engine(
        _entry(builder_rig.tmp / "e.engine", target, cfg)))
    assert names.count("init_libnvinfer_plugins") == 1  # once per process


def test_fake_refuses_to_deserialize_a_plugin_engine_without_registration(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig("10.16.1.11")
    rig.state.plugins = [("TileSSMScan", "1", "")]
    rig.state.model = PLUGIN_SPEC
    rig.build()
    fresh = make_fake_tensorrt("10.16.1.11")
    runtime = fresh.Runtime(fresh.Logger(fresh.Logger.WARNING))
    assert runtime.deserialize_cuda_engine((rig.tmp / "e.engine").read_bytes()) is None


def test_plugin_libraries_and_namespace_are_registered(make_rig: Callable[..., Rig]) -> None:
    library = Path("/opt/plugins/libscan.so")
    rig = make_rig(options=_options(plugin_namespace="acme", plugin_libraries=(library,)))
    rig.state.plugin_libraries = {str(library): [("TileSSMScan", "1", "")]}
    rig.state.model = PLUGIN_SPEC
    rig.build()
    rec = rig.cuda.recorder
    assert rec.calls_to("init_libnvinfer_plugins")[0].args == ("acme",)
    assert rec.calls_to("IPluginRegistry.load_library")[0].args == (str(library),)
    missing = make_rig(options=_options(plugin_libraries=(Path("/nope/lib.so"),)))
    with pytest.raises(EngineBuildError, match="plugin library"):
        missing.build()


# --------------------------------------------------------------------------- defect 3

CONVERTED_FP16 = FakeModelSpec(layers=(
    FakeLayerSpec("conv1", output_dtypes=("HALF",)),
    # what an FP16 converter inserts around a node: named after it, FLOAT on one side
    FakeLayerSpec("router_gate_input_cast", "CAST", ("FLOAT",)),
    FakeLayerSpec("router_gate", "MATRIX_MULTIPLY", ("HALF",)),
    FakeLayerSpec("router_shape", "SHAPE", ("INT64",)),
))


def test_keywords_match_only_the_models_own_nodes(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("11.4.0.106", options=_options(
        precision_converter=_converter_to(CONVERTED_FP16)))
    rig.state.model = FakeModelSpec(layers=(
        FakeLayerSpec("conv1"), FakeLayerSpec("router_gate", "MATRIX_MULTIPLY"),
        FakeLayerSpec("router_shape", "SHAPE", ("INT64",))))
    meta = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,))).metadata
    evidence = {e["layer"]: e for e in meta["layer_precision"]}
    assert set(evidence) == {"router_gate", "router_shape"}
    assert evidence["router_gate"]["applied"]


def test_strong_int8_refuses_a_pinned_node_that_is_quantized(
    make_rig: Callable[..., Rig],
) -> None:
    quantized_router = FakeModelSpec(layers=(
        FakeLayerSpec("router_gate_w_dq", "DEQUANTIZE", op_type="DequantizeLinear"),
        FakeLayerSpec("router_gate", "MATRIX_MULTIPLY", ("HALF",)),
    ))
    rig = make_rig("11.4.0.106", options=_options(
        precision_converter=_converter_to(quantized_router)))
    rig.state.model = FakeModelSpec(layers=(FakeLayerSpec("router_gate", "MATRIX_MULTIPLY"),))
    with pytest.raises(EngineBuildError, match="does not carry FP16") as info:
        rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,)))
    assert "quantizes" in info.value.context["layers"][0]
    # the pipeline's graph (pinned node FP16, not quantized) is accepted
    ok = make_rig("11.4.0.106", options=_options(precision_converter=_qdq_converter()))
    meta = ok.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,))).metadata
    assert {e["layer"]: e["applied"] for e in meta["layer_precision"]}["router_gate"]


# --------------------------------------------------------------------------- defect 4


def test_deprecated_layer_precision_warnings_go_to_the_build_log(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig("10.16.1.11")
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # what our pytest config does anyway
        meta = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,))).metadata
    assert any("ILayer.precision" in line for line in meta["build_log"])
    quiet = make_rig("10.3.0").build(BuildConfig(precision=PrecisionMode.FP16,
                                                 profiles=(PROFILE,))).metadata
    assert quiet["build_log"] == []  # 10.3 does not deprecate per-layer precision


@pytest.mark.parametrize("version", ["10.3.0", "10.16.1.11"])
def test_int8_prefers_explicit_quantization_from_10_1(
    make_rig: Callable[..., Rig], version: str,
) -> None:
    calls: list[str] = []
    rig = make_rig(version, options=_options(precision_converter=_qdq_converter(calls)))
    meta = rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,))).metadata
    assert calls == ["int8"] and meta["int8_quantization"] == "explicit"
    # The judged Q/DQ graph is built strongly typed on 10.x too (no INT8/FP16 flags).
    assert meta["trt_path"] == "strong" and "INT8" not in meta["builder_flags"]
    assert not rig.cuda.recorder.calls_to("IBuilderConfig.int8_calibrator")
    assert "calibration" not in meta
    weak = rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,),
                                 strongly_typed=False), name="weak.engine").metadata
    assert weak["trt_path"] == "weak" and "INT8" in weak["builder_flags"]
    assert weak["int8_quantization"] == "explicit"


def test_implicit_calibrator_on_request_logs_its_deprecation(
    make_rig: Callable[..., Rig],
) -> None:
    batches = [{"input": np.zeros((2, 3, 8, 8), np.float32)}]
    rig = make_rig("10.3.0", options=_options(
        int8_quantization="implicit",
        calibration=lambda m, c, v: CalibrationInput(batches, lambda: None, lambda d: None)))
    meta = rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,))).metadata
    assert meta["int8_quantization"] == "implicit" and meta["calibration"] == {"batches": 1}
    assert any("int8_calibrator" in line for line in meta["build_log"])


def test_int8_without_a_qdq_graph_or_calibrator_is_refused(make_rig: Callable[..., Rig]) -> None:
    with pytest.raises(EngineBuildError, match="Q/DQ"):
        make_rig("10.16.1.11").build(BuildConfig(precision=PrecisionMode.INT8,
                                                 profiles=(PROFILE,)))


# --------------------------------------------------------------------------- defect 5

NO_HALF = FakeModelSpec(layers=(FakeLayerSpec("conv1"),
                                FakeLayerSpec("router_gate", "MATRIX_MULTIPLY",
                                              half_kernel=False)))


def test_not_strict_prefers_constraints_and_strict_obeys(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig("10.3.0")
    rig.state.model = NO_HALF
    meta = rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,),
                                 strict_precision_constraints=False)).metadata
    assert "PREFER_PRECISION_CONSTRAINTS" in meta["builder_flags"]
    assert "OBEY_PRECISION_CONSTRAINTS" not in meta["builder_flags"]
    strict = make_rig("10.3.0")
    strict.state.model = NO_HALF
    with pytest.raises(EngineBuildError, match="no engine"):  # OBEY cannot be honoured
        strict.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,)))


# --------------------------------------------------------------------------- defect 6


@pytest.mark.parametrize("version", ["10.3.0", "11.4.0.106"])
def test_fp32_clears_tf32_unless_asked(make_rig: Callable[..., Rig], version: str) -> None:
    rig = make_rig(version)
    rig.build(BuildConfig(profiles=(PROFILE,)))
    assert "TF32" not in _blob(rig.tmp / "e.engine")["flags"]
    meta = rig.build(BuildConfig(profiles=(PROFILE,), tf32=True), name="t.engine").metadata
    assert "TF32" in _blob(rig.tmp / "t.engine")["flags"] and "TF32" in meta["builder_flags"]


def test_tf32_is_part_of_the_identity() -> None:
    target = RuntimeTarget("trt", "10.3.0", "sm87", "dgpu")

    def digest(config: BuildConfig) -> str:
        return compute_identity(model_name="m", model_hash="ab" * 32, config=config,
                                target=target).options_digest

    assert digest(BuildConfig(tf32=True)) != digest(BuildConfig())


# --------------------------------------------------------------------------- trtexec (7, 10)



@pytest.fixture
def trtexec_rig(make_rig: Callable[..., Rig], tmp_path: Path,
                monkeypatch: pytest.MonkeyPatch) -> Iterator[Callable[..., Rig]]:
    binary = install_fake_trtexec(tmp_path / "bin")  # one fake trtexec for every test
    monkeypatch.setenv("FAKE_TRTEXEC_ARGV", str(tmp_path / "argv"))
    monkeypatch.setenv("FAKE_TRTEXEC_TRT", "101601")
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "ok")

    def make(version: str = "10.16.1.11", **options: Any) -> Rig:
        rig = make_rig(version, options=_options(builder="trtexec", trtexec_path=binary,
                                                 **options))
        python = TensorrtRuntime(gate=RecordingGate(), host=HostCapabilities(sm="sm87"),
                                 options=_options(), trt_module=rig.trt, cuda_module=rig.cuda)
        reference = python.compile_engine(rig.model, BuildConfig(profiles=(PROFILE,)),
                                          tmp_path / "ref.engine")
        monkeypatch.setenv("FAKE_TRTEXEC_ENGINE", str(reference.staged_path))
        return rig

    yield make


def _argv(rig: Rig) -> list[str]:
    return (rig.tmp / "argv").read_text().splitlines()


def test_trtexec_gets_no_tf32_dla_flags_and_explicit_int8(
    trtexec_rig: Callable[..., Rig],
) -> None:
    rig = trtexec_rig()
    meta = rig.build(BuildConfig(profiles=(PROFILE,))).metadata
    assert "--noTF32" in _argv(rig) and meta["trtexec_version"] == "10.16.1"
    assert meta["trtexec_binary"].endswith("trtexec")
    rig.build(BuildConfig(profiles=(PROFILE,), tf32=True))
    assert "--noTF32" not in _argv(rig)
    qdq = trtexec_rig(precision_converter=_qdq_converter())
    meta = qdq.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,),
                                 fp16_pinned_keywords=())).metadata
    argv = _argv(qdq)
    assert "--stronglyTyped" in argv and "--int8" not in argv
    assert not any(a.startswith("--calib") for a in argv)
    assert meta["int8_quantization"] == "explicit"


def test_trtexec_refuses_a_dynamic_input_without_profile(trtexec_rig: Callable[..., Rig]) -> None:
    rig = trtexec_rig()
    (rig.tmp / "argv").unlink(missing_ok=True)
    with pytest.raises(EngineBuildError, match="dynamic inputs need"):
        rig.build(BuildConfig())
    assert not (rig.tmp / "argv").exists()  # trtexec never ran the build


def test_trtexec_of_another_tensorrt_is_refused(
    trtexec_rig: Callable[..., Rig], monkeypatch: pytest.MonkeyPatch,
) -> None:
    rig = trtexec_rig()
    monkeypatch.setenv("FAKE_TRTEXEC_TRT", "100300")
    with pytest.raises(EngineBuildError, match="another TensorRT") as info:
        rig.build(BuildConfig(profiles=(PROFILE,)))
    assert info.value.context["trtexec_version"] == "10.3.0"


def test_one_tensorrt_version_for_the_whole_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    cuda = FakeCudaRuntime()
    trt = make_fake_tensorrt("10.16.1.11", cuda=cuda, recorder=cuda.recorder)
    monkeypatch.setattr("trt_provision.runtimes.tensorrt._context.import_optional",
                        lambda module, extra=None: trt)
    runtime = TensorrtRuntime(gate=RecordingGate(),
                              host=HostCapabilities(sm="sm87", trt_version="10.3.0"),
                              options=_options(timing_cache_dir=tmp_path / "tc"),
                              cuda_module=cuda)
    cfg = BuildConfig(profiles=(PROFILE,))
    before = runtime.runtime_target(cfg).runtime_version
    meta = runtime.compile_engine(write_model(FakeModelSpec(), tmp_path / "m.onnx"), cfg,
                                  tmp_path / "e.engine").metadata
    assert before == meta["trt_version"] == "10.16.1.11"
    assert "10.16.1.11" in meta["timing_cache"]


def test_trtexec_version_banner_and_jetpack_location(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v101600] [b72]"
                                 ) == "10.16.0"
    assert parse_trtexec_version("&&&& RUNNING TensorRT.trtexec [TensorRT v8601]") == "8.6.1"
    assert parse_trtexec_version("no banner") is None
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))
    jetpack = tmp_path / "usr" / "src" / "tensorrt" / "bin" / "trtexec"
    assert find_trtexec(jetpack_path=jetpack) is None
    jetpack.parent.mkdir(parents=True)
    jetpack.write_text("#!/bin/sh\n")
    jetpack.chmod(0o755)
    assert find_trtexec(jetpack_path=jetpack) == jetpack


# --------------------------------------------------------------------------- defect 10


def test_timing_cache_refusals_leave_the_file_alone(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(options=_options(timing_cache_dir=None))
    cfg = BuildConfig(profiles=(PROFILE,), timing_cache_path=rig.tmp / "tc")
    first = rig.build(cfg).metadata["timing_cache"]
    saved = Path(first).read_bytes()
    rig.state.timing_cache_combines = False
    rig.state.model = HALF_SPEC  # another network: a merge would change the file
    rig.build(cfg, name="b.engine")
    assert Path(first).read_bytes() == saved
    rig.state.timing_cache_accepted = False
    meta = rig.build(cfg, name="c.engine").metadata
    assert meta["timing_cache"] is None and Path(first).read_bytes() == saved


def test_one_logger_for_builds_and_loads(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    handle = rig.load()
    rig.build(name="again.engine")
    rig.runtime.release_engine(handle)
    assert not [w for w in rig.state.warnings_logged if "logger" in w]
    assert rig.cuda.recorder.calls_to("Logger") == []  # none created after the first build


def test_calibrator_reads_no_data_when_the_cache_is_used(make_rig: Callable[..., Rig]) -> None:
    def batches() -> Iterator[dict[str, Any]]:
        raise AssertionError("calibration data read although the cache was used")
        yield {}  # pragma: no cover

    rig = make_rig("10.3.0", options=_options(
        int8_quantization="implicit",
        calibration=lambda m, c, v: CalibrationInput(batches(), lambda: b"table", lambda d: None)))
    meta = rig.build(BuildConfig(precision=PrecisionMode.INT8, profiles=(PROFILE,))).metadata
    assert meta["calibration"] == {"batches": 0}


def test_bf16_io_and_shape_tensor_inputs_are_refused_clearly(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.state.model = FakeModelSpec(outputs=(FakeTensorSpec("output", (-1, 10), "BF16"),))
    with pytest.raises(EngineBuildError, match="BF16") as info:
        rig.build()
    assert info.value.context["tensor"] == "output"
    shaped = make_rig()
    shaped.state.shape_tensors = frozenset({"input"})
    with pytest.raises(EngineBuildError, match="shape tensor"):
        shaped.build()


def test_loader_refuses_an_engine_with_bf16_io(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig()
    cfg = BuildConfig(profiles=(PROFILE,))
    rig.build(cfg)
    blob = _blob(rig.tmp / "e.engine")
    blob["outputs"][0][2] = "BF16"
    (rig.tmp / "e.engine").write_bytes(ENGINE_MAGIC + json.dumps(blob).encode())
    with pytest.raises(InferenceError, match="is BF16, which has no numpy type") as info:
        rig.runtime.deserialize_engine(_entry(rig.tmp / "e.engine",
                                              rig.runtime.runtime_target(cfg), cfg))
    assert info.value.context["tensor"] == "output"
    assert rig.budget.reserved == {}


def test_ampere_plus_refused_on_a_pre_ampere_build_gpu(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(host=HostCapabilities(sm="sm75"))
    with pytest.raises(EngineBuildError, match="Ampere"):
        rig.build(BuildConfig(profiles=(PROFILE,),
                              hardware_compatibility=HardwareCompatibility.AMPERE_PLUS))
    assert not rig.cuda.recorder.calls_to("Builder.build_serialized_network")


def test_jetson_memory_estimate_counts_pinned_host_copies(make_rig: Callable[..., Rig]) -> None:
    io = (4 * 3 * 8 * 8 + 4 * 10) * 4
    dgpu = make_rig().build().metadata
    jetson = make_rig(host=HostCapabilities(sm="sm87", jetpack="6.2",
                                            gpu_integrated=True)).build().metadata
    assert dgpu["io_bytes_at_max_shapes"] == io and not dgpu["pinned_host_counted"]
    assert jetson["io_bytes_at_max_shapes"] == 2 * io and jetson["pinned_host_bytes"] == io


# --------------------------------------------------------------------------- DLA


def test_dla_build_sets_device_core_and_fallback(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(host=HostCapabilities(sm="sm87", jetpack="6.2"))
    rig.state.dla_cores = 2
    cfg = BuildConfig(precision=PrecisionMode.FP16, profiles=(STATIC_PROFILE,), dla_core=1,
                      gpu_fallback=True, fp16_pinned_keywords=())
    meta = rig.build(cfg).metadata
    blob = _blob(rig.tmp / "e.engine")
    assert (blob["device_type"], blob["dla_core"]) == ("DLA", 1)
    assert "GPU_FALLBACK" in meta["builder_flags"] and meta["dla"] == {"core": 1,
                                                                       "gpu_fallback": True}
    assert rig.runtime.runtime_target(cfg).target == "sm87-dla1"
    handle = rig.runtime.deserialize_engine(_entry(rig.tmp / "e.engine",
                                                   rig.runtime.runtime_target(cfg), cfg))
    assert rig.gate.calls[-1][1].target == "sm87-dla1"
    rig.runtime.release_engine(handle)


def test_dla_refused_without_cores_or_at_fp32(make_rig: Callable[..., Rig]) -> None:
    rig = make_rig(host=HostCapabilities(sm="sm87"))
    with pytest.raises(EngineBuildError, match="no DLA cores"):
        rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(PROFILE,), dla_core=0))
    with pytest.raises(ValueError, match="FP32"):
        BuildConfig(dla_core=0)
    with pytest.raises(ValueError, match="gpu_fallback"):
        BuildConfig(precision=PrecisionMode.FP16, gpu_fallback=True)


def test_fake_dla_build_fails_on_an_unsupported_layer_without_fallback(
    make_rig: Callable[..., Rig],
) -> None:
    rig = make_rig()
    rig.state.dla_cores = 1
    rig.state.model = FakeModelSpec(layers=(FakeLayerSpec("conv1", dla_capable=False),))
    static = OptimizationProfile("input", (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))
    with pytest.raises(EngineBuildError, match="no engine"):
        rig.build(BuildConfig(precision=PrecisionMode.FP16, profiles=(static,), dla_core=0))


def test_dla_identity_filename_and_config_round_trip() -> None:
    cfg = BuildConfig(precision=PrecisionMode.INT8, dla_core=0, gpu_fallback=True, tf32=True)
    assert build_config_from_json(json.loads(json.dumps(build_config_to_json(cfg)))) == cfg
    target = RuntimeTarget("trt", "10.3.0", "sm87-dla0", "jp6.2")
    ident = compute_identity(model_name="m", model_hash="ab" * 32, config=cfg, target=target)
    parsed = parse_engine_filename(engine_filename(ident))
    assert parsed.target == "sm87-dla0" and ident.dla_core == 0
    gpu = compute_identity(model_name="m", model_hash="ab" * 32,
                           config=BuildConfig(precision=PrecisionMode.INT8, tf32=True),
                           target=RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2"))
    assert gpu.options_digest != ident.options_digest and gpu.dla_core is None


def test_manifest_accepts_the_new_build_keys(tmp_path: Path) -> None:
    from trt_provision.config import load_manifest

    model = write_model(FakeModelSpec(), tmp_path / "m.onnx")
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'[[models]]\nname = "m"\npath = "{os.path.basename(model)}"\nprecision = "fp16"\n'
        "dla_core = 1\ngpu_fallback = true\ntf32 = false\n")
    loaded = load_manifest(manifest)
    cfg = loaded.backbones[0].build_config
    assert (cfg.dla_core, cfg.gpu_fallback, cfg.tf32) == (1, True, False)



def test_fake_parser_reads_the_demo_models(demo_models: dict[str, Path]) -> None:
    """Every node of the bundled models becomes a layer named after it, dtypes from the graph."""
    if not demo_models:
        pytest.skip("no demo models")
    for path in demo_models.values():
        trt = make_fake_tensorrt("10.16.1.11")
        logger = trt.Logger(trt.Logger.WARNING)
        network = trt.Builder(logger).create_network(0)
        parser = trt.OnnxParser(network, logger)
        assert parser.parse_from_file(str(path)), [parser.get_error(i).desc()
                                                   for i in range(parser.num_errors)]
        graph = onnx.load(str(path), load_external_data=False).graph
        names = [n.name for n in graph.node if n.op_type != "Constant"]
        assert [network.get_layer(i).name for i in range(network.num_layers)] == names
        inputs = {i.name for i in graph.input} - {t.name for t in graph.initializer}
        assert {network.get_input(i).name for i in range(network.num_inputs)} == inputs


def test_manifest_configures_plugin_namespace_and_libraries(tmp_path: Path) -> None:
    from trt_provision.config import load_manifest
    from trt_provision.errors import ManifestError

    write_model(FakeModelSpec(), tmp_path / "m.onnx")
    models = '[[models]]\nname = "m"\npath = "m.onnx"\n'
    manifest = tmp_path / "m.toml"
    manifest.write_text('[settings]\nplugin_namespace = "acme"\n'
                        'plugin_libraries = ["plugins/libscan.so"]\n' + models)
    settings = load_manifest(manifest).settings
    assert settings.plugin_namespace == "acme"
    assert settings.plugin_libraries == ((tmp_path / "plugins" / "libscan.so").resolve(),)
    manifest.write_text("[settings]\nplugin_libraries = \"libscan.so\"\n" + models)
    with pytest.raises(ManifestError, match="plugin_libraries"):
        load_manifest(manifest)
