"""The Protocols the compiler and the CLI depend on; concrete strategies live elsewhere.

Only ``compose.py`` (and tests) construct concrete strategies. Each seam has an honest fake
under ``tests/fakes/``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from trt_provision.types import (
    BackboneSpec,
    BuildArtifact,
    BuildConfig,
    EngineCacheEntry,
    EngineIdentity,
    PreparedGraph,
    RuntimeTarget,
    ThermalState,
)

__all__ = [
    "CalibrationPlanner",
    "EngineGate",
    "EngineHandle",
    "EngineStore",
    "EngineVerifier",
    "InferenceRuntime",
    "MemoryBudget",
    "PrecisionPipeline",
    "RemoteEngineStore",
    "ThermalStatePublisher",
    "TimingCacheOwner",
]


@runtime_checkable
class EngineHandle(Protocol):
    """A deserialized engine ready for ``infer``; opaque outside its runtime."""

    @property
    def entry(self) -> EngineCacheEntry: ...

    @property
    def released(self) -> bool: ...


@runtime_checkable
class ThermalStatePublisher(Protocol):
    def thermal_state(self) -> ThermalState: ...


@runtime_checkable
class EngineGate(Protocol):
    """Decides, before any runtime import or call, whether an engine file may be loaded."""

    def validate(
        self, engine_path: Path, expected: RuntimeTarget, *, known_sha256: str | None = None
    ) -> EngineCacheEntry:
        """Return the verified entry or raise EngineGateError (reason, path, expected/found).

        ``known_sha256``: a digest computed while the caller wrote this file (no re-read)."""
        ...


@runtime_checkable
class MemoryBudget(Protocol):
    """Resident accounting of (GPU) memory; reserve before deserialize, release after."""

    def predicted_bytes(self, entry: EngineCacheEntry) -> int: ...

    def reserve(self, entry: EngineCacheEntry) -> int:
        """Reserve the predicted bytes or raise OutOfMemoryError; returns a reservation id."""
        ...

    def release(self, reservation: int) -> None: ...


@runtime_checkable
class InferenceRuntime(Protocol):
    """One engine-building and engine-running strategy (TensorRT, ONNX Runtime...)."""

    def current_runtime_label(self) -> str:
        """ "tensorrt", "onnxruntime", ..."""
        ...

    def runtime_target(self, build_config: BuildConfig) -> RuntimeTarget:
        """What an engine built here with this config is bound to (cheap, no build)."""
        ...

    def graph_consumer(self, build_config: BuildConfig) -> str | None:
        """Whose prepared graph this strategy builds ``build_config`` from: "tensorrt" or
        "onnxruntime-cpu" (the Q/DQ option set of the graph), None for the model as it is."""
        ...

    def compile_engine(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path,
        prepared: PreparedGraph | None = None,
    ) -> BuildArtifact:
        """Build the engine into ``staged_path``; the store publishes it afterwards.
        ``prepared``: the precision pipeline's graph of ``model_path`` to build from."""
        ...

    def deserialize_engine(self, entry: EngineCacheEntry) -> EngineHandle:
        """Gate first, then the memory budget, only then any runtime call."""
        ...

    def infer(self, handle: EngineHandle, inputs: Mapping[str, Any]) -> dict[str, Any]: ...

    def release_engine(self, handle: EngineHandle) -> None:
        """Idempotent: releasing twice is a no-op."""
        ...

    def thermal_state(self) -> ThermalState: ...


@runtime_checkable
class EngineStore(Protocol):
    """A local engine cache directory: lookup, per-identity lock, atomic publish."""

    @property
    def root(self) -> Path: ...

    def path_for(self, identity: EngineIdentity) -> Path: ...

    def lock(self, identity: EngineIdentity) -> AbstractContextManager[None]: ...

    def staging_path(self, identity: EngineIdentity) -> Path: ...

    def publish(
        self, identity: EngineIdentity, staged_path: Path, metadata: Mapping[str, Any]
    ) -> EngineCacheEntry:
        """Move a staged engine into place, then write its sidecars (each atomically)."""
        ...

    def iter_engines(self) -> Iterator[Path]: ...

    def staged_entry(
        self, identity: EngineIdentity, staged_path: Path, metadata: Mapping[str, Any]
    ) -> AbstractContextManager[EngineCacheEntry]:
        """The staged engine with its sidecars, where the engine gate can check it before
        anything is published (the check after a build loads it through the gate)."""
        ...

    def record_refusal(self, identity: EngineIdentity, record: Mapping[str, Any]) -> None:
        """Remember that the engine of ``identity`` was refused (``record["reason"]``)."""
        ...

    def refusal(self, identity: EngineIdentity) -> Mapping[str, Any] | None:
        """The refusal remembered for ``identity``; None when there is none to trust."""
        ...

    def forget_refusal(self, identity: EngineIdentity) -> None:
        """Drop the refusal of ``identity`` (an engine of it has just been published)."""
        ...


@runtime_checkable
class RemoteEngineStore(Protocol):
    """A store shared by a fleet (S3-compatible). Failures are reported, never fatal."""

    def fetch(
        self,
        identity: EngineIdentity,
        local: EngineStore,
        gate: EngineGate,
        expected: RuntimeTarget,
    ) -> EngineCacheEntry | None:
        """Download, verify and publish locally; None when absent or untrusted."""
        ...

    def upload(self, entry: EngineCacheEntry) -> bool:
        """Conditional put; False when another device won the race or upload is off."""
        ...

    def exists(self, identity: EngineIdentity) -> bool:
        """Whether the store has the engine (nothing downloaded); StoreError when it
        cannot tell."""
        ...

    def fetch_timing_cache(self, name: str, dest: Path) -> bool:
        """Download the fleet's timing cache ``name``, verify it (sha256, and the signature
        where the trust policy asks for one) and write it to ``dest`` only when no file is
        there; False (logged) when absent, refused or not needed. Never raises."""
        ...

    def upload_timing_cache(self, name: str, source: Path) -> bool:
        """Publish the local timing cache ``source`` as the fleet's ``name`` (signed like
        engines); False when unchanged, refused or not uploaded. Never raises."""
        ...


@runtime_checkable
class TimingCacheOwner(Protocol):
    """A runtime whose builds read and grow a timing cache that devices of the same type
    can share (TensorRT). Optional: a runtime without it shares nothing."""

    def timing_cache_file(self, build_config: BuildConfig) -> Path | None:
        """The local timing cache a build of ``build_config`` reads and merges into, when
        its name keys it to this device type (TensorRT version, sm, device name); None
        when the build keeps none or the device's name is unknown."""
        ...


@runtime_checkable
class PrecisionPipeline(Protocol):
    """Applies a precision to a model for one consumer (spec, splits, ranges, graph,
    verdict): the graph the strategy builds from, or a refusal (AccuracyGateError)."""

    def prepare(
        self, model_path: Path, build_config: BuildConfig, workdir: Path, *, consumer: str,
        model_hash: str | None = None,
    ) -> PreparedGraph: ...

    def preview(
        self, model_path: Path, build_config: BuildConfig, workdir: Path, *, consumer: str,
        model_hash: str | None = None,
    ) -> PreparedGraph:
        """The same graph, cheaply and unjudged (one algorithm, no search, no verdict):
        for timing a candidate before judging it (``precision = "auto"``), never served."""
        ...


@runtime_checkable
class EngineVerifier(Protocol):
    """Judges a BUILT engine against the FP32 source model on its own runtime, before it is
    published: the same split and gate as the graph (synthetic inputs without data), every
    output checked for NaN / Inf. Returns the sidecar's engine record, or raises
    AccuracyGateError (outcome ``refused``)."""

    def verify(
        self, model_path: Path, build_config: BuildConfig, prepared: PreparedGraph | None,
        run_engine: Callable[[Mapping[str, Any]], Mapping[str, Any]], *, runtime: str,
        workdir: Path, model_hash: str | None = None,
    ) -> Mapping[str, Any]: ...


@runtime_checkable
class CalibrationPlanner(Protocol):
    """Resolves the calibration key of a backbone (enters the engine identity)."""

    def calibration_key(self, backbone: BackboneSpec, model_hash: str) -> str | None: ...
