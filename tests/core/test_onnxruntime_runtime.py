from __future__ import annotations

from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from trt_provision.compiler import EngineCompiler
from trt_provision.config import load_manifest
from trt_provision.errors import EngineBuildError, EngineGateError, InferenceError
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.host import probe_host
from trt_provision.runtimes.onnxruntime import OnnxRuntimeRuntime
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import (
    BackboneSpec,
    BuildConfig,
    EngineCacheEntry,
    EngineCompileRequest,
    PrecisionMode,
)

pytestmark = pytest.mark.tier1


@pytest.fixture
def runtime(cache_dir: Path) -> OnnxRuntimeRuntime:
    return OnnxRuntimeRuntime(host=probe_host(), gate=DefaultEngineGate(cache_root=cache_dir))


_DEMO_CONFIGS = {
    b.name: b.build_config
    for b in load_manifest(Path(__file__).resolve().parents[2] / "examples" / "demo.toml").backbones
}


def _provision(
    runtime: OnnxRuntimeRuntime, cache: Path, models: dict[str, Path]
) -> dict[str, EngineCacheEntry]:
    compiler = EngineCompiler(
        runtime=runtime,
        store=LocalEngineStore(cache),
        gate=DefaultEngineGate(cache_root=cache),
        host=probe_host(),
    )
    summary = compiler.compile_engines_for_corpus(
        EngineCompileRequest(tuple(BackboneSpec(n, p, _DEMO_CONFIGS[n]) for n, p in models.items()))
    )
    return {r.name: r.entry for r in summary.results if r.entry is not None}


def _feeds(name: str, batch: int) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(batch)
    if name == "demo_cnn":
        return {"image": rng.standard_normal((batch, 3, 32, 32)).astype(np.float32)}
    if name == "two_inputs":
        return {
            "token_ids": rng.integers(0, 100, (batch, 16), dtype=np.int64),
            "mask": rng.random((batch, 16)) > 0.3,
        }
    return {"features": rng.standard_normal((batch, 64)).astype(np.float32)}


def test_engines_match_the_original_model(
    runtime: OnnxRuntimeRuntime, cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    entries = _provision(runtime, cache_dir, demo_models)
    assert entries["demo_cnn"].identity.runtime == "ortcpu"
    assert entries["demo_cnn"].identity.target.startswith("cpu-")
    for name, entry in entries.items():
        handle = runtime.deserialize_engine(entry)
        reference = ort.InferenceSession(str(demo_models[name]), providers=["CPUExecutionProvider"])
        for batch in (1, 5):
            feeds = _feeds(name, batch)
            got = runtime.infer(handle, feeds)
            want = reference.run(None, feeds)
            for (out_name, value), ref in zip(got.items(), want, strict=True):
                np.testing.assert_allclose(value, ref, rtol=1e-5, atol=1e-5, err_msg=out_name)
        runtime.release_engine(handle)
        runtime.release_engine(handle)  # idempotent
        with pytest.raises(InferenceError, match="released"):
            runtime.infer(handle, _feeds(name, 1))


def test_infer_checks_names_dtypes_and_shapes(
    runtime: OnnxRuntimeRuntime, cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    entry = _provision(runtime, cache_dir, {"two_inputs": demo_models["two_inputs"]})["two_inputs"]
    handle = runtime.deserialize_engine(entry)
    good = _feeds("two_inputs", 2)
    with pytest.raises(InferenceError, match="missing input") as missing:
        runtime.infer(handle, {"token_ids": good["token_ids"]})
    assert missing.value.context["input"] == "mask"
    with pytest.raises(InferenceError, match="dtype mismatch") as dtype:
        runtime.infer(handle, {**good, "token_ids": good["token_ids"].astype(np.int32)})
    assert dtype.value.context == {"input": "token_ids", "expected": "int64", "found": "int32"}
    with pytest.raises(InferenceError, match="shape mismatch"):
        runtime.infer(handle, {**good, "mask": good["mask"][:, :8]})
    with pytest.raises(InferenceError, match="unknown input"):
        runtime.infer(handle, {**good, "extra": good["mask"]})
    with pytest.raises(InferenceError, match="numpy array"):
        runtime.infer(handle, {**good, "mask": [[True] * 16] * 2})
    other = OnnxRuntimeRuntime(host=probe_host(), gate=DefaultEngineGate())
    with pytest.raises(InferenceError, match="does not belong"):
        other.infer(handle, good)


def test_deserialize_runs_the_gate_first(
    runtime: OnnxRuntimeRuntime, cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    entry = _provision(runtime, cache_dir, {"dynamic_mlp": demo_models["dynamic_mlp"]})[
        "dynamic_mlp"
    ]
    entry.sha256_path.write_text("0" * 64 + "  " + entry.engine_path.name + "\n")
    with pytest.raises(EngineGateError, match="sha256"):
        runtime.deserialize_engine(entry)


def test_precision_not_yet_supported_is_a_typed_error(
    runtime: OnnxRuntimeRuntime, cache_dir: Path, demo_models: dict[str, Path], tmp_path: Path
) -> None:
    # Until calibration lands for a precision, the strategy must refuse, not pretend.
    config = BuildConfig(precision=PrecisionMode.FP16)
    try:
        artifact = runtime.compile_engine(demo_models["dynamic_mlp"], config, tmp_path / "x.engine")
    except EngineBuildError:
        return
    assert artifact.staged_path.stat().st_size > 0


def test_malformed_graph_is_an_engine_build_error(
    runtime: OnnxRuntimeRuntime, tmp_path: Path
) -> None:
    import onnx
    from onnx import TensorProto, helper

    node = helper.make_node("Add", ["x", "y"], ["z"])
    graph = helper.make_graph(
        [node],
        "bad",
        [
            helper.make_tensor_value_info("x", TensorProto.FLOAT, [2]),
            helper.make_tensor_value_info("y", TensorProto.INT64, [2]),
        ],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [2])],
    )
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    with pytest.raises(EngineBuildError, match="could not build"):
        runtime.compile_engine(path, BuildConfig(), tmp_path / "bad.engine")
