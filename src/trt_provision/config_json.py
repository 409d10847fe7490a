"""BuildConfig ⇄ JSON-compatible dict, shared by metadata sidecars and the compile subprocess."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trt_provision.types import (
    BuildConfig,
    CalibrationSpec,
    HardwareCompatibility,
    OptimizationProfile,
    PluginSpec,
    PrecisionMode,
)

__all__ = ["build_config_from_json", "build_config_to_json"]


def build_config_to_json(config: BuildConfig) -> dict[str, Any]:
    cal = config.calibration
    return {
        "precision": config.precision.value,
        "workspace_mib": config.workspace_mib,
        "profiles": [p.to_dict() for p in config.profiles],
        "calibration": None
        if cal is None
        else {
            "source": cal.source,
            "dataset_version": cal.dataset_version,
            "algorithm": cal.algorithm,
            "num_bins": cal.num_bins,
            "percentile": cal.percentile,
            "governed": cal.governed,
            "max_batches": cal.max_batches,
        },
        "timing_cache_path": str(config.timing_cache_path) if config.timing_cache_path else None,
        "hardware_compatibility": config.hardware_compatibility.value,
        "builder_optimization_level": config.builder_optimization_level,
        "plugins": [
            {"name": p.name, "version": p.version, "namespace": p.namespace, "required": p.required}
            for p in config.plugins
        ],
        "fp16_pinned_keywords": list(config.fp16_pinned_keywords),
        "strict_precision_constraints": config.strict_precision_constraints,
        "strongly_typed": config.strongly_typed,
        "excluded_op_types": list(config.excluded_op_types),
        "min_cosine": config.min_cosine,
        "max_rel_error": config.max_rel_error,
    }


def _shape(value: Any, what: str) -> tuple[int, ...]:
    if not isinstance(value, list | tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) for d in value
    ):
        raise ValueError(f"{what} must be a list of ints, got {value!r}")
    return tuple(value)


def build_config_from_json(data: Mapping[str, Any]) -> BuildConfig:
    """Inverse of :func:`build_config_to_json`; raises ValueError naming the bad key."""
    known = set(build_config_to_json(BuildConfig()))
    unknown = sorted(set(data) - known)
    if unknown:
        raise ValueError(f"unknown build config keys: {unknown}")
    kwargs: dict[str, Any] = {}
    try:
        if "precision" in data:
            kwargs["precision"] = PrecisionMode(data["precision"])
        if "hardware_compatibility" in data:
            kwargs["hardware_compatibility"] = HardwareCompatibility(data["hardware_compatibility"])
    except ValueError as exc:
        raise ValueError(f"bad enum value: {exc}") from exc
    for key in ("workspace_mib", "builder_optimization_level"):
        if key in data:
            if not isinstance(data[key], int) or isinstance(data[key], bool):
                raise ValueError(f"{key} must be an int, got {data[key]!r}")
            kwargs[key] = data[key]
    for key in ("strict_precision_constraints",):
        if key in data:
            if not isinstance(data[key], bool):
                raise ValueError(f"{key} must be a bool, got {data[key]!r}")
            kwargs[key] = data[key]
    if data.get("strongly_typed") is not None:
        if not isinstance(data["strongly_typed"], bool):
            raise ValueError(f"strongly_typed must be a bool, got {data['strongly_typed']!r}")
        kwargs["strongly_typed"] = data["strongly_typed"]
    for key in ("min_cosine", "max_rel_error"):
        if data.get(key) is not None:
            if not isinstance(data[key], int | float) or isinstance(data[key], bool):
                raise ValueError(f"{key} must be a number, got {data[key]!r}")
            kwargs[key] = float(data[key])
    for key in ("fp16_pinned_keywords", "excluded_op_types"):
        if key in data:
            value = data[key]
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ValueError(f"{key} must be a list of strings, got {value!r}")
            kwargs[key] = tuple(value)
    if data.get("timing_cache_path") is not None:
        kwargs["timing_cache_path"] = Path(str(data["timing_cache_path"]))
    if "profiles" in data:
        profiles = []
        for i, p in enumerate(data["profiles"] or []):
            if not isinstance(p, Mapping) or set(p) != {"input", "min", "opt", "max"}:
                raise ValueError(f"profiles[{i}] needs exactly input/min/opt/max, got {p!r}")
            profiles.append(
                OptimizationProfile(
                    str(p["input"]),
                    _shape(p["min"], f"profiles[{i}].min"),
                    _shape(p["opt"], f"profiles[{i}].opt"),
                    _shape(p["max"], f"profiles[{i}].max"),
                )
            )
        kwargs["profiles"] = tuple(profiles)
    if "plugins" in data:
        plugins = []
        for i, p in enumerate(data["plugins"] or []):
            if not isinstance(p, Mapping) or "name" not in p:
                raise ValueError(f"plugins[{i}] needs a name, got {p!r}")
            plugins.append(
                PluginSpec(
                    name=str(p["name"]),
                    version=str(p.get("version", "1")),
                    namespace=str(p.get("namespace", "")),
                    required=bool(p.get("required", True)),
                )
            )
        kwargs["plugins"] = tuple(plugins)
    if data.get("calibration") is not None:
        cal = data["calibration"]
        if not isinstance(cal, Mapping):
            raise ValueError(f"calibration must be an object, got {cal!r}")
        cal_known = {
            "source",
            "dataset_version",
            "algorithm",
            "num_bins",
            "percentile",
            "governed",
            "max_batches",
        }
        if set(cal) - cal_known:
            raise ValueError(f"unknown calibration keys: {sorted(set(cal) - cal_known)}")
        kwargs["calibration"] = CalibrationSpec(**dict(cal))
    return BuildConfig(**kwargs)
