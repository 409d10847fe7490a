"""BuildConfig <-> JSON, shared by the ``compile`` subprocess entry and its parent."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trt_provision.errors import ManifestError
from trt_provision.types import (
    MAX_SHAPE_DIM,
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
    "excluded_op_types", "min_cosine", "max_rel_error", "dla_core", "gpu_fallback", "tf32",
    "min_top1_agreement", "accuracy_metric", "allow_inaccurate", "output_kinds",
})
_CALIBRATION_FIELDS = frozenset({
    "source", "dataset_version", "algorithm", "num_bins", "percentile", "governed", "max_batches",
    "allow_lossy_cast", "evaluation_data", "trt_cache",
})


def build_config_to_json(config: BuildConfig) -> dict[str, Any]:
    calibration = None
    if config.calibration is not None:
        c = config.calibration
        calibration = {
            "source": c.source, "dataset_version": c.dataset_version, "algorithm": c.algorithm,
            "num_bins": c.num_bins, "percentile": c.percentile, "governed": c.governed,
            "max_batches": c.max_batches, "allow_lossy_cast": c.allow_lossy_cast,
            "evaluation_data": c.evaluation_data,
            **({"trt_cache": c.trt_cache} if c.trt_cache is not None else {}),
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
        "min_top1_agreement": config.min_top1_agreement,
        "accuracy_metric": config.accuracy_metric,
        "allow_inaccurate": config.allow_inaccurate,
        **({"output_kinds": dict(config.output_kinds)} if config.output_kinds else {}),
        "dla_core": config.dla_core,
        "gpu_fallback": config.gpu_fallback,
        "tf32": config.tf32,
    }


_PROFILE_FIELDS = frozenset({"input", "min", "opt", "max"})
_PLUGIN_FIELDS = frozenset({"name", "version", "namespace", "required"})


def _bad(source: str, key: str, expected: str, value: Any) -> ManifestError:
    return ManifestError(
        "invalid build config value",
        file=source,
        key=key,
        expected=expected,
        found=repr(value)[:120],
    )


def _int(source: str, key: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _bad(source, key, "an integer", value)
    return value


def _bool(source: str, key: str, value: Any) -> bool:
    if not isinstance(value, bool):
        raise _bad(source, key, "true or false", value)
    return value


def _finite(source: str, key: str, value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _bad(source, key, "a finite number", value)
    return float(value)


def _str(source: str, key: str, value: Any, *, empty: bool = False) -> str:
    if not isinstance(value, str) or (not empty and not value):
        raise _bad(source, key, "a string" if empty else "a non-empty string", value)
    return value


def _strings(source: str, key: str, value: Any) -> tuple[str, ...]:
    if not isinstance(value, list | tuple):
        raise _bad(source, key, "a list of non-empty strings", value)
    return tuple(_str(source, f"{key}[{i}]", v) for i, v in enumerate(value))


def _object(source: str, key: str, value: Any, allowed: frozenset[str]) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _bad(source, key, "an object", value)
    unknown = sorted(set(value) - allowed)
    if unknown:
        raise ManifestError(
            "unknown build config key",
            file=source,
            key=f"{key}.{unknown[0]}",
            expected=f"one of {sorted(allowed)}",
        )
    return value


def _shape(value: Any, where: str, source: str = "<json>") -> tuple[int, ...]:
    if (
        not isinstance(value, list | tuple)
        or not value
        or not all(
            not isinstance(d, bool) and isinstance(d, int) and 1 <= d <= MAX_SHAPE_DIM
            for d in value
        )
    ):
        raise ManifestError(
            "shape must be a non-empty list of integers",
            file=source,
            key=where,
            expected=f"each dimension in 1..{MAX_SHAPE_DIM}",
            found=repr(value)[:120],
        )
    return tuple(value)


def _profile(source: str, i: int, raw: Any) -> OptimizationProfile:
    key = f"profiles[{i}]"
    p = _object(source, key, raw, _PROFILE_FIELDS)
    missing = sorted(_PROFILE_FIELDS - set(p))
    if missing:
        raise ManifestError("profile key missing", file=source, key=f"{key}.{missing[0]}")
    name = _str(source, f"{key}.input", p["input"])
    shapes = {k: _shape(p[k], f"{key}.{k}", source) for k in ("min", "opt", "max")}
    try:
        return OptimizationProfile(
            input_name=name,
            min_shape=shapes["min"],
            opt_shape=shapes["opt"],
            max_shape=shapes["max"],
        )
    except ValueError as exc:
        raise ManifestError(f"invalid profile: {exc}", file=source, key=key) from exc


def _plugin(source: str, i: int, raw: Any) -> PluginSpec:
    key = f"plugins[{i}]"
    p = _object(source, key, raw, _PLUGIN_FIELDS)
    if "name" not in p:
        raise ManifestError("plugin key missing", file=source, key=f"{key}.name")
    kwargs: dict[str, Any] = {"name": _str(source, f"{key}.name", p["name"])}
    for field in ("version", "namespace"):
        if field in p:
            kwargs[field] = _str(source, f"{key}.{field}", p[field], empty=field == "namespace")
    if "required" in p:
        kwargs["required"] = _bool(source, f"{key}.required", p["required"])
    return PluginSpec(**kwargs)


def _calibration(source: str, raw: Any) -> CalibrationSpec:
    cal = _object(source, "calibration", raw, _CALIBRATION_FIELDS)
    kwargs: dict[str, Any] = {}
    for field in ("source", "dataset_version", "evaluation_data", "trt_cache"):
        if cal.get(field) is not None:
            kwargs[field] = _str(source, f"calibration.{field}", cal[field])
    if "algorithm" in cal:
        kwargs["algorithm"] = _str(source, "calibration.algorithm", cal["algorithm"])
    if "num_bins" in cal:
        kwargs["num_bins"] = _int(source, "calibration.num_bins", cal["num_bins"])
    if "percentile" in cal:
        kwargs["percentile"] = _finite(source, "calibration.percentile", cal["percentile"])
    if cal.get("max_batches") is not None:
        kwargs["max_batches"] = _int(source, "calibration.max_batches", cal["max_batches"])
    for field in ("governed", "allow_lossy_cast"):
        if field in cal:
            kwargs[field] = _bool(source, f"calibration.{field}", cal[field])
    try:
        return CalibrationSpec(**kwargs)
    except ValueError as exc:
        raise ManifestError(f"invalid calibration: {exc}", file=source, key="calibration") from exc


def _output_kinds(source: str, value: Any) -> tuple[tuple[str, str], ...]:
    """``{output name: kind}``; a kind outside OUTPUT_KINDS is refused naming the output."""
    from trt_provision.types import OUTPUT_KINDS

    if not isinstance(value, Mapping):
        raise _bad(source, "output_kinds", "a table of output name -> kind", value)
    out = []
    for name, kind in value.items():
        if not isinstance(name, str) or not name:
            raise _bad(source, "output_kinds", "non-empty output names", name)
        if not isinstance(kind, str) or kind not in OUTPUT_KINDS:
            raise _bad(source, f"outputs.{name}.kind", f"one of {list(OUTPUT_KINDS)}", kind)
        out.append((name, kind))
    return tuple(sorted(out))


def _enum(source: str, key: str, value: Any, kind: type[enum.Enum]) -> Any:
    allowed = [m.value for m in kind]
    if not isinstance(value, str) or value not in allowed:
        raise _bad(source, key, f"one of {allowed}", value)
    return kind(value)


def build_config_from_json(data: Mapping[str, Any], *, source: str = "<json>") -> BuildConfig:
    """Validate and convert; every problem is a ManifestError naming the key.

    Nothing is coerced: lists must hold strings, integers must be integers (not booleans or
    floats), switches must be booleans and thresholds finite numbers.
    """
    if not isinstance(data, Mapping):
        raise ManifestError("build config must be a JSON object", file=source)
    unknown = sorted(set(data) - _FIELDS)
    if unknown:
        raise ManifestError("unknown build config keys", file=source, keys=unknown)
    kwargs: dict[str, Any] = {}
    if "precision" in data:
        kwargs["precision"] = _enum(source, "precision", data["precision"], PrecisionMode)
    if "hardware_compatibility" in data:
        kwargs["hardware_compatibility"] = _enum(
            source, "hardware_compatibility", data["hardware_compatibility"], HardwareCompatibility
        )
    for key in ("workspace_mib", "builder_optimization_level"):
        if key in data:
            kwargs[key] = _int(source, key, data[key])
    if "strict_precision_constraints" in data:
        kwargs["strict_precision_constraints"] = _bool(
            source, "strict_precision_constraints", data["strict_precision_constraints"]
        )
    if data.get("strongly_typed") is not None:
        kwargs["strongly_typed"] = _bool(source, "strongly_typed", data["strongly_typed"])
    if data.get("dla_core") is not None:
        kwargs["dla_core"] = _int(source, "dla_core", data["dla_core"])
    for key in ("gpu_fallback", "tf32"):
        if key in data:
            kwargs[key] = _bool(source, key, data[key])
    for key in ("min_cosine", "max_rel_error", "min_top1_agreement"):
        if data.get(key) is not None:
            kwargs[key] = _finite(source, key, data[key])
    if data.get("accuracy_metric") is not None:
        kwargs["accuracy_metric"] = _str(source, "accuracy_metric", data["accuracy_metric"])
    if "allow_inaccurate" in data:
        kwargs["allow_inaccurate"] = _bool(source, "allow_inaccurate", data["allow_inaccurate"])
    if data.get("output_kinds") is not None:
        kwargs["output_kinds"] = _output_kinds(source, data["output_kinds"])
    if data.get("timing_cache_path") is not None:
        kwargs["timing_cache_path"] = Path(
            _str(source, "timing_cache_path", data["timing_cache_path"])
        )
    for key in ("fp16_pinned_keywords", "excluded_op_types"):
        if key in data:
            kwargs[key] = _strings(source, key, data[key])
    if "profiles" in data:
        if not isinstance(data["profiles"], list | tuple):
            raise _bad(source, "profiles", "a list of profiles", data["profiles"])
        kwargs["profiles"] = tuple(_profile(source, i, p) for i, p in enumerate(data["profiles"]))
    if "plugins" in data:
        if not isinstance(data["plugins"], list | tuple):
            raise _bad(source, "plugins", "a list of plugins", data["plugins"])
        kwargs["plugins"] = tuple(_plugin(source, i, p) for i, p in enumerate(data["plugins"]))
    if data.get("calibration") is not None:
        kwargs["calibration"] = _calibration(source, data["calibration"])
    try:
        return BuildConfig(**kwargs)
    except ValueError as exc:
        raise ManifestError(f"invalid build config: {exc}", file=source) from exc
