"""An honest fake InferenceRuntime: writes deterministic engine bytes, records every call,
keeps state (loaded handles, released flags) and fails on demand."""

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
    calls: list[tuple[str, Any]] = field(default_factory=list)

    def current_runtime_label(self) -> str:
        return "fake"

    def runtime_target(self, build_config: BuildConfig) -> RuntimeTarget:
        return self.target

    def compile_engine(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path
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
        return {k: np.asarray(v) for k, v in inputs.items()}

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
