"""The ONNX Runtime strategy's `infer` hot path: same results and errors as `session.run`,
with the checks resolved at load (speed is measured by scripts/bench_ort_infer.py)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from trt_provision.compiler import EngineCompiler
from trt_provision.errors import InferenceError
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.host import probe_host
from trt_provision.runtimes.onnxruntime import OnnxRuntimeRuntime
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import (
    BackboneSpec,
    BuildConfig,
    EngineCacheEntry,
    EngineCompileRequest,
    OptimizationProfile,
)

pytestmark = pytest.mark.tier1


@pytest.fixture
def runtime(cache_dir: Path) -> OnnxRuntimeRuntime:
    return OnnxRuntimeRuntime(host=probe_host(), gate=DefaultEngineGate(cache_root=cache_dir))


def _entry(runtime: OnnxRuntimeRuntime, cache: Path, name: str, model: Path) -> EngineCacheEntry:
    compiler = EngineCompiler(runtime=runtime, store=LocalEngineStore(cache),
                              gate=DefaultEngineGate(cache_root=cache), host=probe_host())
    inputs = ("token_ids", "mask") if name == "two_inputs" else ("features",)
    width = 16 if name == "two_inputs" else 64
    config = BuildConfig(profiles=tuple(
        OptimizationProfile(i, (1, width), (2, width), (8, width)) for i in inputs
    ))
    result = compiler.compile_engines_for_corpus(
        EngineCompileRequest((BackboneSpec(name, model, config),))
    ).results[0]
    assert result.entry is not None
    return result.entry


def test_fast_path_equals_session_run(
    runtime: OnnxRuntimeRuntime, cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    entry = _entry(runtime, cache_dir, "two_inputs", demo_models["two_inputs"])
    handle = runtime.deserialize_engine(entry)
    raw = ort.InferenceSession(str(entry.engine_path), providers=["CPUExecutionProvider"])
    rng = np.random.default_rng(3)
    feed = {"token_ids": rng.integers(0, 100, (3, 16), dtype=np.int64),
            "mask": rng.random((3, 16)) > 0.3}
    got = runtime.infer(handle, feed)
    want = raw.run(None, feed)
    assert list(got) == [o.name for o in raw.get_outputs()]
    for g, w in zip(got.values(), want, strict=True):
        assert np.array_equal(g, w)
    runtime.release_engine(handle)


class _Impostor:
    """Not an ndarray; its attributes must never be evaluated by the input check."""

    touched = False

    @property
    def dtype(self) -> Any:
        _Impostor.touched = True
        raise RuntimeError("dtype property evaluated")

    @property
    def ndim(self) -> int:
        _Impostor.touched = True
        raise RuntimeError("ndim property evaluated")


def test_non_arrays_are_refused_before_their_attributes_run(
    runtime: OnnxRuntimeRuntime, cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    entry = _entry(runtime, cache_dir, "dynamic_mlp", demo_models["dynamic_mlp"])
    handle = runtime.deserialize_engine(entry)
    with pytest.raises(InferenceError, match="numpy array"):
        runtime.infer(handle, {"features": _Impostor()})
    assert not _Impostor.touched
    # Non-native byte order is the same dtype name but not the same dtype: refused, typed.
    swapped = np.zeros((2, 64), dtype=np.dtype(np.float32).newbyteorder())
    with pytest.raises(InferenceError, match="dtype mismatch"):
        runtime.infer(handle, {"features": swapped})
    runtime.release_engine(handle)


def test_release_lets_the_session_go(
    runtime: OnnxRuntimeRuntime, cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    entry = _entry(runtime, cache_dir, "dynamic_mlp", demo_models["dynamic_mlp"])
    handle = runtime.deserialize_engine(entry)
    inner = weakref.ref(handle.session._sess)
    runtime.infer(handle, {"features": np.zeros((1, 64), np.float32)})
    runtime.release_engine(handle)
    gc.collect()
    assert inner() is None, "a released handle must not keep its session alive"
    with pytest.raises(InferenceError, match="released"):
        runtime.infer(handle, {"features": np.zeros((1, 64), np.float32)})


def test_profile_bounds_are_checked_per_input_in_the_same_pass(
    runtime: OnnxRuntimeRuntime, cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    entry = _entry(runtime, cache_dir, "two_inputs", demo_models["two_inputs"])
    handle = runtime.deserialize_engine(entry)
    ok = {"token_ids": np.zeros((8, 16), np.int64), "mask": np.ones((8, 16), bool)}
    runtime.infer(handle, ok)  # the profile's max: fine
    with pytest.raises(InferenceError, match="outside the engine's optimization profile") as info:
        runtime.infer(handle, {**ok, "mask": np.ones((9, 16), bool)})
    assert info.value.context == {"input": "mask", "found": [9, 16], "min": [1, 16],
                                  "max": [8, 16]}
    # A wrong dtype is still named as such, whatever the shape.
    with pytest.raises(InferenceError, match="dtype mismatch"):
        runtime.infer(handle, {**ok, "token_ids": np.zeros((9, 16), np.int32)})
    runtime.release_engine(handle)
