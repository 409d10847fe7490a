"""BuildConfig <-> JSON, shared by the ``compile`` subprocess entry and its parent."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trt_provision.errors import ManifestError
from trt_provision.types import (
    BuildConfig,
    CalibrationSpec,
    HardwareCompatibility,
    OptimizationProfile,
    PluginSpec,
    PrecisionMode,
)

__all__ = ["build_config_from_json", "build_config_to_json"]

_FIELDS = frozenset({
    "precision", "workspace_mib", "profiles", "calibration", "timing_cache_path",
    "hardware_compatibility", "builder_optimization_level", "plugins",
    "fp16_pinned_keywords", "strict_precision_constraints", "strongly_typed",
    "excluded_op_types", "min_cosine", "max_rel_error",
})
_CALIBRATION_FIELDS = frozenset({
    "source", "dataset_version", "algorithm", "num_bins", "percentile", "governed", "max_batches",
    "allow_lossy_cast",
})


def build_config_to_json(config: BuildConfig) -> dict[str, Any]:
    calibration = None
    if config.calibration is not None:
        c = config.calibration
        calibration = {
            "source": c.source, "dataset_version": c.dataset_version, "algorithm": c.algorithm,
            "num_bins": c.num_bins, "percentile": c.percentile, "governed": c.governed,
            "max_batches": c.max_batches, "allow_lossy_cast": c.allow_lossy_cast,
        }
    return {
        "precision": config.precision.value,
        "workspace_mib": config.workspace_mib,
        "profiles": [p.to_dict() for p in config.profiles],
        "calibration": calibration,
        "timing_cache_path": str(config.timing_cache_path) if config.timing_cache_path else None,
        "hardware_compatibility": config.hardware_compatibility.value,
        "builder_optimization_level": config.builder_optimization_level,
        "plugins": [
            {"name": p.name, "version": p.version, "namespace": p.namespace,
             "required": p.required}
            for p in config.plugins
        ],
        "fp16_pinned_keywords": list(config.fp16_pinned_keywords),
        "strict_precision_constraints": config.strict_precision_constraints,
        "strongly_typed": config.strongly_typed,
        "excluded_op_types": list(config.excluded_op_types),
        "min_cosine": config.min_cosine,
        "max_rel_error": config.max_rel_error,
    }


def _shape(value: Any, where: str) -> tuple[int, ...]:
    if not isinstance(value, list) or not all(isinstance(d, int) for d in value):
        raise ManifestError("shape must be a list of integers", key=where, found=repr(value))
    return tuple(value)


def build_config_from_json(data: Mapping[str, Any], *, source: str = "<json>") -> BuildConfig:
    """Validate and convert; every problem is a ManifestError naming the key."""
    if not isinstance(data, Mapping):
        raise ManifestError("build config must be a JSON object", file=source)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ManifestError("unknown build config keys", file=source, keys=unknown)
    kwargs: dict[str, Any] = {}
    try:
        if "precision" in data:
            kwargs["precision"] = PrecisionMode(data["precision"])
        if "hardware_compatibility" in data:
            kwargs["hardware_compatibility"] = HardwareCompatibility(
                data["hardware_compatibility"]
            )
        for key in ("workspace_mib", "builder_optimization_level", "strict_precision_constraints",
                    "strongly_typed", "min_cosine", "max_rel_error"):
            if key in data:
                kwargs[key] = data[key]
        if data.get("timing_cache_path") is not None:
            kwargs["timing_cache_path"] = Path(data["timing_cache_path"])
        for key in ("fp16_pinned_keywords", "excluded_op_types"):
            if key in data:
                kwargs[key] = tuple(data[key])
        if "profiles" in data:
            kwargs["profiles"] = tuple(
                OptimizationProfile(
                    input_name=p["input"],
                    min_shape=_shape(p["min"], f"profiles[{i}].min"),
                    opt_shape=_shape(p["opt"], f"profiles[{i}].opt"),
                    max_shape=_shape(p["max"], f"profiles[{i}].max"),
                )
                for i, p in enumerate(data["profiles"])
            )
        if "plugins" in data:
            kwargs["plugins"] = tuple(PluginSpec(**p) for p in data["plugins"])
        if data.get("calibration") is not None:
            cal = data["calibration"]
            extra = sorted(set(cal) - _CALIBRATION_FIELDS)
            if extra:
                raise ManifestError("unknown calibration keys", file=source, keys=extra)
            kwargs["calibration"] = CalibrationSpec(**cal)
        return BuildConfig(**kwargs)
    except ManifestError:
        raise
    except (KeyError, TypeError, ValueError) as exc:
        raise ManifestError(f"invalid build config: {exc}", file=source) from exc
