"""trt-provision: compile, or reuse from a verified cache, one engine per model and host.

Importing this package is cheap: its public names load on first use (PEP 562), and no
numpy, onnx, onnxruntime or tensorrt is imported until a function that needs it runs.
"""

from __future__ import annotations

from trt_provision._version import __version__

# Not `from typing import TYPE_CHECKING`: importing typing alone costs several ms here.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any

    from trt_provision.errors import (
        AccuracyGateError,
        CalibrationCacheError,
        EngineBuildError,
        EngineGateError,
        InferenceError,
        InternalError,
        InvalidNameError,
        ManifestError,
        MissingDependencyError,
        ModelError,
        OutOfMemoryError,
        StoreError,
        ThermalLimitError,
        TrtProvisionError,
    )
    from trt_provision.identity import (
        ParsedEngineName,
        build_option_digest,
        engine_filename,
        model_sha256,
        parse_engine_filename,
    )
    from trt_provision.seams import (
        EngineGate,
        EngineHandle,
        EngineStore,
        InferenceRuntime,
        MemoryBudget,
        RemoteEngineStore,
        ThermalStatePublisher,
    )
    from trt_provision.types import (
        BackboneSpec,
        BuildConfig,
        CalibrationSpec,
        CompileOutcome,
        EngineCacheEntry,
        EngineCompileRequest,
        EngineCompileResult,
        EngineCompileSummary,
        EngineIdentity,
        HardwareCompatibility,
        HostCapabilities,
        OptimizationProfile,
        PluginSpec,
        PrecisionMode,
        RuntimeTarget,
        ThermalState,
    )

# Public name → the module that defines it.
_EXPORTS: dict[str, str] = {
    "AccuracyGateError": "trt_provision.errors",
    "BackboneSpec": "trt_provision.types",
    "BuildConfig": "trt_provision.types",
    "CalibrationCacheError": "trt_provision.errors",
    "CalibrationSpec": "trt_provision.types",
    "CompileOutcome": "trt_provision.types",
    "EngineBuildError": "trt_provision.errors",
    "EngineCacheEntry": "trt_provision.types",
    "EngineCompileRequest": "trt_provision.types",
    "EngineCompileResult": "trt_provision.types",
    "EngineCompileSummary": "trt_provision.types",
    "EngineGate": "trt_provision.seams",
    "EngineGateError": "trt_provision.errors",
    "EngineHandle": "trt_provision.seams",
    "EngineIdentity": "trt_provision.types",
    "EngineStore": "trt_provision.seams",
    "HardwareCompatibility": "trt_provision.types",
    "HostCapabilities": "trt_provision.types",
    "InferenceError": "trt_provision.errors",
    "InferenceRuntime": "trt_provision.seams",
    "InternalError": "trt_provision.errors",
    "InvalidNameError": "trt_provision.errors",
    "ManifestError": "trt_provision.errors",
    "MemoryBudget": "trt_provision.seams",
    "MissingDependencyError": "trt_provision.errors",
    "ModelError": "trt_provision.errors",
    "OptimizationProfile": "trt_provision.types",
    "OutOfMemoryError": "trt_provision.errors",
    "ParsedEngineName": "trt_provision.identity",
    "PluginSpec": "trt_provision.types",
    "PrecisionMode": "trt_provision.types",
    "RemoteEngineStore": "trt_provision.seams",
    "RuntimeTarget": "trt_provision.types",
    "StoreError": "trt_provision.errors",
    "ThermalLimitError": "trt_provision.errors",
    "ThermalState": "trt_provision.types",
    "ThermalStatePublisher": "trt_provision.seams",
    "TrtProvisionError": "trt_provision.errors",
    "build_option_digest": "trt_provision.identity",
    "engine_filename": "trt_provision.identity",
    "model_sha256": "trt_provision.identity",
    "parse_engine_filename": "trt_provision.identity",
}


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'trt_provision' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(module), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_EXPORTS))


__all__ = [
    "AccuracyGateError",
    "BackboneSpec",
    "BuildConfig",
    "CalibrationCacheError",
    "CalibrationSpec",
    "CompileOutcome",
    "EngineBuildError",
    "EngineCacheEntry",
    "EngineCompileRequest",
    "EngineCompileResult",
    "EngineCompileSummary",
    "EngineGate",
    "EngineGateError",
    "EngineHandle",
    "EngineIdentity",
    "EngineStore",
    "HardwareCompatibility",
    "HostCapabilities",
    "InferenceError",
    "InferenceRuntime",
    "InternalError",
    "InvalidNameError",
    "ManifestError",
    "MemoryBudget",
    "MissingDependencyError",
    "ModelError",
    "OptimizationProfile",
    "OutOfMemoryError",
    "ParsedEngineName",
    "PluginSpec",
    "PrecisionMode",
    "RemoteEngineStore",
    "RuntimeTarget",
    "StoreError",
    "ThermalLimitError",
    "ThermalState",
    "ThermalStatePublisher",
    "TrtProvisionError",
    "__version__",
    "build_option_digest",
    "engine_filename",
    "model_sha256",
    "parse_engine_filename",
]
