"""The composition root: validated settings → wired strategies. Nothing else constructs them."""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

from trt_provision._lazy import is_available
from trt_provision.calibration.planner import GovernedCalibrationPlanner
from trt_provision.calibration.precision import GovernedPrecisionPipeline
from trt_provision.calibration.stages.verification import GovernedEngineVerifier
from trt_provision.compiler import EngineCompiler
from trt_provision.config import Settings
from trt_provision.gates.budget import GpuMemoryBudget, choose_free_memory_probe
from trt_provision.gates.engine_gate import DefaultEngineGate, TrustCheck
from trt_provision.host import probe_host
from trt_provision.runtimes.onnxruntime import OnnxRuntimeRuntime
from trt_provision.seams import (
    CalibrationPlanner,
    EngineGate,
    InferenceRuntime,
    MemoryBudget,
    RemoteEngineStore,
    ThermalStatePublisher,
)
from trt_provision.stores.local import LocalEngineStore
from trt_provision.thermal import choose_thermal_publisher
from trt_provision.types import BuildConfig, EngineCacheEntry, HostCapabilities

if TYPE_CHECKING:
    from trt_provision.stores.s3 import SignatureVerifier

__all__ = [
    "Wired",
    "build_gate",
    "build_signer",
    "build_store",
    "build_trust",
    "choose_runtime_label",
    "trust_policies",
    "wire",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Wired:
    settings: Settings
    host: HostCapabilities
    store: LocalEngineStore
    gate: EngineGate
    runtime: InferenceRuntime
    compiler: EngineCompiler
    budget: MemoryBudget | None = None
    thermal: ThermalStatePublisher | None = None
    remote: RemoteEngineStore | None = None


def choose_runtime_label(settings: Settings, host: HostCapabilities) -> str:
    """TensorRT when it is importable and a GPU is present, else ONNX Runtime."""
    if settings.runtime != "auto":
        return settings.runtime
    if host.trt_version is not None and host.sm is not None and is_available("tensorrt"):
        return "tensorrt"
    return "onnxruntime"


def trust_policies(settings: Settings) -> tuple[str, str]:
    """(local policy, remote policy). ``auto``: require signed remote engines once a public
    key is configured; locally, check signatures where present."""
    if settings.trust != "auto":
        return settings.trust, settings.trust
    if settings.public_key is None:
        return "off", "off"
    # A device that never builds loads only what a builder of record signed.
    return ("require" if settings.build == "never" else "verify-if-signed"), "require"


def build_trust(settings: Settings, *, remote: bool = False) -> TrustCheck | None:
    local_policy, remote_policy = trust_policies(settings)
    policy = remote_policy if remote else local_policy
    if policy == "off":
        return None
    from trt_provision.trust import trust_from_settings

    keys = [settings.public_key] if settings.public_key is not None else []
    return trust_from_settings(policy, keys)


def build_store(settings: Settings) -> LocalEngineStore:
    return LocalEngineStore(settings.cache_dir, private=settings.private_cache)


def build_gate(settings: Settings) -> EngineGate:
    return DefaultEngineGate(
        cache_root=settings.cache_dir,
        max_engine_bytes=settings.max_engine_bytes,
        trust=build_trust(settings),
        allow_host_code=settings.allow_engine_host_code,
    )


def build_signer(settings: Settings) -> Callable[[EngineCacheEntry], None] | None:
    key = settings.signing_key
    if key is None:
        return None

    def sign(entry: EngineCacheEntry) -> None:
        from trt_provision.trust import sign_engine

        sign_engine(entry.engine_path, key)

    return sign


def _bytes_signer(key: Path | None) -> Callable[[bytes], bytes] | None:
    """Signs a timing cache's ``.sha256`` line with the key engines are signed with."""
    if key is None:
        return None

    def sign(data: bytes) -> bytes:
        from trt_provision.trust import sign_metadata

        return sign_metadata(data, key)

    return sign


def _tensorrt_calibration(cache_dir: Path) -> Callable[[Path, BuildConfig, str], Any]:
    """Weakly typed TensorRT: governed batches and calibration cache for the calibrator
    (the cache is bound to the TensorRT version that will read it, which the strategy
    passes: the imported module's, not the host probe's)."""

    def calibration(model: Path, config: BuildConfig, trt_version: str) -> Any:
        from trt_provision.calibration.tensorrt import tensorrt_calibration_input

        return tensorrt_calibration_input(model, config, cache_dir, trt_version=trt_version)

    return calibration


def wire(
    settings: Settings,
    *,
    host: HostCapabilities | None = None,
    use_remote: bool = True,
) -> Wired:
    host = host or probe_host()
    store = build_store(settings)
    gate = build_gate(settings)
    free_memory = choose_free_memory_probe(host, os_reserve_bytes=settings.os_memory_reserve_bytes)
    budget: MemoryBudget = GpuMemoryBudget(settings.memory_budget_bytes, probe=free_memory)
    thermal: ThermalStatePublisher = choose_thermal_publisher(host)
    label = choose_runtime_label(settings, host)
    calibration_dir = Path(settings.cache_dir) / ".calibration"
    runtime: InferenceRuntime
    if label == "tensorrt":
        from trt_provision.runtimes.tensorrt import TensorrtOptions, TensorrtRuntime

        runtime = TensorrtRuntime(
            host=host,
            gate=gate,
            budget=budget,
            thermal=thermal,
            options=TensorrtOptions(
                timing_cache_dir=Path(settings.cache_dir) / ".timing",
                allow_engine_host_code=settings.allow_engine_host_code,
                plugin_namespace=settings.plugin_namespace,
                plugin_libraries=settings.plugin_libraries,
                calibration=_tensorrt_calibration(calibration_dir),
                # The Jetson workspace is sized from what the budget sees (OS reserve kept).
                free_memory_bytes=free_memory.free_bytes,
            ),
        )
    else:
        runtime = OnnxRuntimeRuntime(
            host=host,
            gate=gate,
            budget=budget,
            thermal=thermal,
            provider="CUDAExecutionProvider"
            if settings.ort_provider == "cuda"
            else "CPUExecutionProvider",
            calibration_cache_dir=calibration_dir,
        )
    remote: RemoteEngineStore | None = None
    if use_remote and (settings.remote is not None or os.environ.get("ARTIFACTS_BUCKET")):
        from trt_provision.stores.s3 import remote_store_from_settings

        remote = remote_store_from_settings(
            settings.remote,
            trust=cast("SignatureVerifier | None", build_trust(settings, remote=True)),
            sign_timing_cache=_bytes_signer(settings.signing_key),
        )
    calibration: CalibrationPlanner = GovernedCalibrationPlanner(calibration_dir)
    compiler = EngineCompiler(
        runtime=runtime,
        store=store,
        gate=gate,
        host=host,
        remote=remote if use_remote else None,
        calibration=calibration,
        precision=GovernedPrecisionPipeline(calibration_dir),
        verifier=GovernedEngineVerifier(calibration_dir),
        max_temperature_c=settings.max_temperature_c,
        sign=build_signer(settings),
    )
    return Wired(
        settings=settings,
        host=host,
        store=store,
        gate=gate,
        runtime=runtime,
        compiler=compiler,
        budget=budget,
        thermal=thermal,
        remote=remote,
    )
