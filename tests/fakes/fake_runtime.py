"""An honest fake InferenceRuntime: writes deterministic engine bytes, records every call,
keeps state (loaded handles, released flags) and fails on demand.

Its engines run: ``infer`` evaluates the ONNX model the engine was built from with ONNX's
reference evaluator (deterministic, numpy), an fp16 engine storing its outputs in float16
as a half-precision engine's output tensors are; ``nan_outputs`` makes every float output
NaN and ``negate_outputs`` negates it (broken kernels). An engine of a file that is not ONNX echoes its inputs."""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trt_provision.errors import EngineBuildError, InferenceError
from trt_provision.seams import EngineGate, MemoryBudget
from trt_provision.types import (
    BuildArtifact,
    BuildConfig,
    EngineCacheEntry,
    RuntimeTarget,
    ThermalState,
)


@dataclass(eq=False)
class FakeHandle:
    entry: EngineCacheEntry
    reservation: int | None = None
    released: bool = False


@dataclass
class FakeRuntime:
    gate: EngineGate | None = None
    budget: MemoryBudget | None = None
    target: RuntimeTarget = field(default_factory=lambda: RuntimeTarget("fake", "1.0", "sm90", "dgpu"))
    thermal: ThermalState = field(default_factory=ThermalState)
    fail_compile_with: Exception | None = None
    fail_deserialize_with: Exception | None = None
    nan_outputs: bool = False
    negate_outputs: bool = False  # a wrong kernel: finite, and far from the model
    calls: list[tuple[str, Any]] = field(default_factory=list)
    # engine sha256 -> (the model it was built from, its precision)
    built: dict[str, tuple[Path, str]] = field(default_factory=dict)

    def graph_consumer(self, build_config: BuildConfig) -> str | None:
        return None  # builds the model as it is; the precision is the engine's storage


    def current_runtime_label(self) -> str:
        return "fake"

    def runtime_target(self, build_config: BuildConfig) -> RuntimeTarget:
        return self.target

    def compile_engine(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path,
        prepared: Any = None,
    ) -> BuildArtifact:
        self.calls.append(("compile_engine", Path(model_path).name))
        if self.fail_compile_with is not None:
            # A real builder may have written a partial file before failing.
            staged_path.write_bytes(b"partial")
            raise self.fail_compile_with
        if not Path(model_path).is_file():
            raise EngineBuildError("model missing", model=str(model_path))
        payload = hashlib.sha256(Path(model_path).read_bytes()).digest()
        staged_path.write_bytes(b"FAKEENGINE" + payload + build_config.precision.value.encode())
        self.built[hashlib.sha256(staged_path.read_bytes()).hexdigest()] = (
            Path(model_path), build_config.precision.value)
        return BuildArtifact(staged_path, 0.01, {"device_memory_bytes": 1024})

    def deserialize_engine(self, entry: EngineCacheEntry) -> FakeHandle:
        self.calls.append(("deserialize_engine", entry.engine_path.name))
        verified = self.gate.validate(entry.engine_path, self.target) if self.gate else entry
        reservation = self.budget.reserve(verified) if self.budget else None
        if self.fail_deserialize_with is not None:
            if reservation is not None and self.budget is not None:
                self.budget.release(reservation)
            raise self.fail_deserialize_with
        return FakeHandle(verified, reservation)

    def infer(self, handle: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.calls.append(("infer", sorted(inputs)))
        if not isinstance(handle, FakeHandle) or handle.released:
            raise InferenceError("bad handle")
        model, precision = self.built.get(handle.entry.sha256, (None, ""))
        if model is None or not _is_onnx(model):
            return {k: np.asarray(v) for k, v in inputs.items()}
        from onnx.reference import ReferenceEvaluator

        names, values = _evaluator(model, ReferenceEvaluator)
        out: dict[str, Any] = {}
        for name, value in zip(names, values.run(None, dict(inputs)), strict=True):
            value = np.asarray(value)
            if value.dtype.kind == "f":
                if precision == "fp16":
                    with np.errstate(over="ignore"):
                        value = value.astype(np.float16).astype(value.dtype)
                if self.nan_outputs:
                    value = np.full_like(value, np.nan)
                if self.negate_outputs:
                    value = -value
            out[name] = value
        return out

    def release_engine(self, handle: Any) -> None:
        self.calls.append(("release_engine", None))
        if handle.released:
            return
        handle.released = True
        if handle.reservation is not None and self.budget is not None:
            self.budget.release(handle.reservation)

    def thermal_state(self) -> ThermalState:
        return self.thermal

    def count(self, name: str) -> int:
        return sum(1 for call, _ in self.calls if call == name)


def _is_onnx(path: Path) -> bool:
    try:
        import onnx

        onnx.load(str(path), load_external_data=False)
    except Exception:
        return False
    return True


def _evaluator(model: Path, factory: Any) -> tuple[list[str], Any]:
    import onnx

    loaded = onnx.load(str(model))
    return [o.name for o in loaded.graph.output], factory(loaded)
