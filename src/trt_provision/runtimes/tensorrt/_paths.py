"""Code-path tags: which TensorRT versions a piece of this package is written for.

TensorRT 10 and 11 differ in what they offer (TRT 11 dropped the weakly typed precision
flags, the INT8 calibrators and per-layer precision). Code that uses a version-specific
API is tagged with the *feature* it needs, never with a version number:

* a function or class: decorate it with ``@trt_path("weak")``;
* a whole module: set ``TRT_PATH = "int8_calibrator"`` at module level.

Untagged code is ``"common"`` and must work on every supported TensorRT. At run time the
same table drives feature detection (:func:`path_available`), so the path the runtime takes
and the versions the conformance scanner checks it against cannot drift apart: the scanner
evaluates each tag's features against every recorded API surface and checks the code under
that tag only against the versions where the features exist.

The scanner also reads :data:`TRT_VARIABLES`: inside this package these local names always
hold the named TensorRT object, so ``layer.precision`` is checked against ``ILayer``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["PATH_FEATURES", "TRT_VARIABLES", "path_available", "trt_path"]

# tag -> (class-or-enum, member-or-None) pairs that must all exist for the path to be taken.
PATH_FEATURES: dict[str, tuple[tuple[str, str | None], ...]] = {
    "common": (),
    # FP16/INT8 builder flags, per-layer precision, OBEY_PRECISION_CONSTRAINTS.
    "weak": (
        ("BuilderFlag", "FP16"),
        ("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"),
        ("BuilderFlag", "PREFER_PRECISION_CONSTRAINTS"),
        ("ILayer", "precision"),
        ("ILayer", "set_output_type"),
    ),
    # INT8 on the weak path from an explicitly quantized (Q/DQ) graph: the flag alone.
    "weak_int8_flag": (("BuilderFlag", "INT8"),),
    # INT8 on the weak path through a calibrator (implicit quantization).
    "weak_int8": (("BuilderFlag", "INT8"), ("IBuilderConfig", "int8_calibrator")),
    "int8_calibrator": (("IInt8EntropyCalibrator2", None),),
    "strong": (("NetworkDefinitionCreationFlag", "STRONGLY_TYPED"),),
    "same_compute_capability": (("HardwareCompatibilityLevel", "SAME_COMPUTE_CAPABILITY"),),
}

# Local variable name -> the TensorRT class it holds everywhere in this package.
TRT_VARIABLES: dict[str, str] = {
    "builder": "Builder",
    "config": "IBuilderConfig",
    "network": "INetworkDefinition",
    "layer": "ILayer",
    "tensor": "ITensor",
    "parser": "OnnxParser",
    "parser_error": "ParserError",
    "profile": "IOptimizationProfile",
    "serialized": "IHostMemory",
    "runtime": "Runtime",
    "engine": "ICudaEngine",
    "context": "IExecutionContext",
    "registry": "IPluginRegistry",
    "creator": "IPluginCreator",
    "timing_cache": "ITimingCache",
}

_F = TypeVar("_F", bound=Callable[..., Any])


def trt_path(*tags: str) -> Callable[[_F], _F]:
    """Mark a function or class as written for the TensorRT feature path(s) ``tags``."""
    unknown = [t for t in tags if t not in PATH_FEATURES]
    if unknown or not tags:
        raise ValueError(f"unknown TensorRT path tag(s) {unknown or tags!r}")

    def mark(obj: _F) -> _F:
        obj.__trt_path__ = tags  # type: ignore[attr-defined]
        return obj

    return mark


def path_available(trt: Any, tag: str) -> bool:
    """Whether the loaded TensorRT module offers every feature the path ``tag`` needs."""
    for owner, member in PATH_FEATURES[tag]:
        holder = getattr(trt, owner, None)
        if holder is None or (member is not None and not hasattr(holder, member)):
            return False
    return True
