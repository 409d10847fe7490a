"""Validated configuration: the TOML manifest, environment overrides and defaults.

Every bad value raises ManifestError naming the file, the key and what was expected.
"""

from __future__ import annotations

import math
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_provision.config_json import build_config_from_json
from trt_provision.errors import InvalidNameError, ManifestError
from trt_provision.types import BUILD_POLICIES, BackboneSpec

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 (JetPack 6)
    import tomli as tomllib

__all__ = [
    "CACHE_DIR_ENV",
    "CACHE_DIR_ENV_ALIAS",
    "Manifest",
    "Settings",
    "default_cache_dir",
    "load_manifest",
    "resolve_cache_dir",
]

CACHE_DIR_ENV = "TRT_PROVISION_CACHE_DIR"
CACHE_DIR_ENV_ALIAS = "TENSORRT_CACHE_DIR"  # accepted for scripts written before the tool

RUNTIMES = ("auto", "tensorrt", "onnxruntime")
PROVIDERS = ("cpu", "cuda")
TRUST_LEVELS = ("auto", "off", "verify-if-signed", "require")

_TOP_KEYS = {"settings", "defaults", "models", "remote"}
_SETTINGS_KEYS = {
    "cache_dir",
    "private_cache",
    "runtime",
    "ort_provider",
    "max_temperature_c",
    "memory_budget_mib",
    "max_engine_mib",
    "os_memory_reserve_mib",
    "trust",
    "public_key",
    "signing_key",
    "allow_engine_host_code",
    "plugin_namespace",
    "plugin_libraries",
    "build",
}
_BUILD_KEYS = {
    "precision",
    "workspace_mib",
    "profiles",
    "calibration",
    "timing_cache_path",
    "hardware_compatibility",
    "builder_optimization_level",
    "plugins",
    "fp16_pinned_keywords",
    "strict_precision_constraints",
    "strongly_typed",
    "excluded_op_types",
    "min_cosine",
    "max_rel_error",
    "min_top1_agreement",
    "accuracy_metric",
    "allow_inaccurate",
    "dla_core",
    "gpu_fallback",
    "tf32",
}
_MODEL_KEYS = {"name", "path", "version", "outputs"} | _BUILD_KEYS
_CALIBRATION_KEYS = {
    "data",
    "dataset_version",
    "algorithm",
    "num_bins",
    "percentile",
    "governed",
    "max_batches",
    "allow_lossy_cast",
    "evaluation_data",
}


def default_cache_dir() -> Path:
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "trt-provision" / "engines"


def resolve_cache_dir(configured: Path | None = None) -> Path:
    """Environment first (operators override files), then config, then the XDG default."""
    for var in (CACHE_DIR_ENV, CACHE_DIR_ENV_ALIAS):
        value = os.environ.get(var)
        if value:
            return Path(value).expanduser()
    if configured is not None:
        return configured
    return default_cache_dir()


@dataclass(frozen=True)
class Settings:
    """Host-level settings (not build options: none of these enter an engine identity)."""

    cache_dir: Path = field(default_factory=resolve_cache_dir)
    runtime: str = "auto"
    ort_provider: str = "cpu"
    max_temperature_c: float | None = None
    memory_budget_bytes: int = 4 << 30
    max_engine_bytes: int = 64 << 30
    os_memory_reserve_bytes: int = 1 << 30  # Jetson: RAM kept for the OS outside the budget
    # auto: remote pulls require a valid signature once a public key is configured, and
    # local engines are checked when signed.
    trust: str = "auto"
    public_key: Path | None = None
    signing_key: Path | None = None  # private key: sign engines this host builds
    # Version-compatible TensorRT engines embed host code: only with an explicit opt-in.
    allow_engine_host_code: bool = False
    # Cache directories 0700 and files 0600 instead of 0755 / 0644.
    private_cache: bool = False
    # The [remote] table may hold credentials (secret_key): never in a repr or a log line.
    remote: Mapping[str, Any] | None = field(default=None, repr=False)
    # TensorRT plugins: the namespace TensorRT's own plugins register under, and shared
    # libraries with more creators, loaded once per process before any build or load.
    plugin_namespace: str = ""
    plugin_libraries: tuple[Path, ...] = ()
    # Who builds: "fallback" (reuse, fetch, else build), "never" (reuse or fetch only; a
    # missing engine is reported), "always" (reuse or build here, never fetch).
    build: str = "fallback"

    def __post_init__(self) -> None:
        if self.build not in BUILD_POLICIES:
            raise ValueError(f"build must be one of {BUILD_POLICIES}, got {self.build!r}")
        if self.runtime not in RUNTIMES:
            raise ValueError(f"runtime must be one of {RUNTIMES}, got {self.runtime!r}")
        if self.ort_provider not in PROVIDERS:
            raise ValueError(f"ort_provider must be one of {PROVIDERS}, got {self.ort_provider!r}")
        if self.trust not in TRUST_LEVELS:
            raise ValueError(f"trust must be one of {TRUST_LEVELS}, got {self.trust!r}")
        if self.memory_budget_bytes <= 0:
            raise ValueError(f"memory budget must be > 0, got {self.memory_budget_bytes}")
        if self.max_engine_bytes <= 0:
            raise ValueError(f"max engine size must be > 0, got {self.max_engine_bytes}")


@dataclass(frozen=True)
class Manifest:
    path: Path
    settings: Settings
    backbones: tuple[BackboneSpec, ...]


def _real(path: Path) -> Path:
    """The absolute, symlink-free form of a path the manifest names. ``os.path.realpath``,
    not ``Path.resolve``: a symlink loop is left unresolved (its later open or stat fails
    with an error naming it) instead of raising RuntimeError."""
    return Path(os.path.realpath(path))


def _fail(path: Path, key: str, expected: str, found: Any = None) -> ManifestError:
    context: dict[str, Any] = {"file": str(path), "key": key, "expected": expected}
    if found is not None:
        context["found"] = repr(found)[:120]
    return ManifestError("invalid manifest value", **context)


def _check_keys(path: Path, where: str, table: Mapping[str, Any], allowed: set[str]) -> None:
    unknown = sorted(set(table) - allowed)
    if unknown:
        raise ManifestError(
            "unknown manifest key",
            file=str(path),
            key=f"{where}.{unknown[0]}" if where else unknown[0],
            expected=f"one of {sorted(allowed)}",
        )


def _table(path: Path, key: str, value: Any) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise _fail(path, key, "a table", value)
    return value


def _number(path: Path, key: str, value: Any, *, positive: bool = True) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value):
        raise _fail(path, key, "a finite number", value)
    if positive and value <= 0:
        raise _fail(path, key, "a number > 0", value)
    return float(value)


_MAX_MIB = 1 << 43  # bytes stay below 2**63


def _mib_bytes(path: Path, key: str, value: Any) -> int:
    mib = _number(path, key, value)
    if mib >= _MAX_MIB:
        raise _fail(path, key, f"a number of MiB below {_MAX_MIB}", value)
    return int(mib * (1 << 20))


def _settings(path: Path, raw: Mapping[str, Any], remote: Any) -> Settings:
    _check_keys(path, "settings", raw, _SETTINGS_KEYS)
    base = path.parent
    kwargs: dict[str, Any] = {}
    configured = None
    if "cache_dir" in raw:
        if not isinstance(raw["cache_dir"], str) or not raw["cache_dir"]:
            raise _fail(path, "settings.cache_dir", "a non-empty path string", raw["cache_dir"])
        configured = _real(base / Path(raw["cache_dir"]).expanduser())
    kwargs["cache_dir"] = resolve_cache_dir(configured)
    for key, allowed in (
        ("runtime", RUNTIMES),
        ("ort_provider", PROVIDERS),
        ("trust", TRUST_LEVELS),
        ("build", BUILD_POLICIES),
    ):
        if key in raw:
            if raw[key] not in allowed:
                raise _fail(path, f"settings.{key}", f"one of {list(allowed)}", raw[key])
            kwargs[key] = raw[key]
    if "max_temperature_c" in raw:
        kwargs["max_temperature_c"] = _number(
            path, "settings.max_temperature_c", raw["max_temperature_c"]
        )
    for key, target in (
        ("memory_budget_mib", "memory_budget_bytes"),
        ("max_engine_mib", "max_engine_bytes"),
        ("os_memory_reserve_mib", "os_memory_reserve_bytes"),
    ):
        if key in raw:
            kwargs[target] = _mib_bytes(path, f"settings.{key}", raw[key])
    if "allow_engine_host_code" in raw:
        if not isinstance(raw["allow_engine_host_code"], bool):
            raise _fail(
                path,
                "settings.allow_engine_host_code",
                "true or false",
                raw["allow_engine_host_code"],
            )
        kwargs["allow_engine_host_code"] = raw["allow_engine_host_code"]
    if "private_cache" in raw:
        if not isinstance(raw["private_cache"], bool):
            raise _fail(path, "settings.private_cache", "true or false", raw["private_cache"])
        kwargs["private_cache"] = raw["private_cache"]
    for key in ("public_key", "signing_key"):
        if key in raw:
            if not isinstance(raw[key], str) or not raw[key]:
                raise _fail(path, f"settings.{key}", "a path string", raw[key])
            kwargs[key] = _real(base / Path(raw[key]).expanduser())
    if "plugin_namespace" in raw:
        if not isinstance(raw["plugin_namespace"], str):
            raise _fail(path, "settings.plugin_namespace", "a string", raw["plugin_namespace"])
        kwargs["plugin_namespace"] = raw["plugin_namespace"]
    if "plugin_libraries" in raw:
        libraries = raw["plugin_libraries"]
        if not isinstance(libraries, list) or not all(
            isinstance(p, str) and p for p in libraries
        ):
            raise _fail(path, "settings.plugin_libraries", "a list of path strings", libraries)
        kwargs["plugin_libraries"] = tuple(
            _real(base / Path(p).expanduser()) for p in libraries
        )
    if remote is not None:
        kwargs["remote"] = dict(_table(path, "remote", remote))
    return Settings(**kwargs)


def _manifest_relative(path: Path, key: str, value: Any) -> str:
    """A data path or "file.py:function" resolved against the manifest's directory."""
    if not isinstance(value, str) or not value:
        raise _fail(path, key, "a path string", value)
    file_part, sep, func = value.partition(".py:")
    resolved = str((path.parent / (file_part + (".py" if sep else ""))).resolve())
    return resolved + (":" + func if sep else "")


def _build_dict(path: Path, where: str, raw: Mapping[str, Any]) -> dict[str, Any]:
    """Translate manifest build keys into the BuildConfig JSON form."""
    out: dict[str, Any] = {k: v for k, v in raw.items() if k in _BUILD_KEYS}
    if "calibration" in out:
        cal = dict(_table(path, f"{where}.calibration", out["calibration"]))
        _check_keys(path, f"{where}.calibration", cal, _CALIBRATION_KEYS)
        if "data" in cal:
            data = cal.pop("data")
            if not isinstance(data, str) or not data:
                raise _fail(path, f"{where}.calibration.data", "a path string", data)
            # A "file.py:function" loader keeps its function suffix.
            file_part, sep, func = data.partition(".py:")
            resolved = str(_real(path.parent / (file_part + (".py" if sep else ""))))
            cal["source"] = resolved + (":" + func if sep else "")
        if "evaluation_data" in cal:
            cal["evaluation_data"] = _manifest_relative(
                path, f"{where}.calibration.evaluation_data", cal["evaluation_data"])
        out["calibration"] = cal
    if "outputs" in raw:  # [models.outputs.NAME] kind = "...": per-output judging
        kinds: dict[str, Any] = {}
        for name, table in _table(path, f"{where}.outputs", raw["outputs"]).items():
            entry = _table(path, f"{where}.outputs.{name}", table)
            _check_keys(path, f"{where}.outputs.{name}", entry, {"kind"})
            if "kind" not in entry:
                raise _fail(path, f"{where}.outputs.{name}.kind", "a kind for the output")
            kinds[name] = entry["kind"]
        out["output_kinds"] = kinds
    if "accuracy_metric" in out:
        out["accuracy_metric"] = _manifest_relative(
            path, f"{where}.accuracy_metric", out["accuracy_metric"])
    if "timing_cache_path" in out and isinstance(out["timing_cache_path"], str):
        out["timing_cache_path"] = str(_real(path.parent / out["timing_cache_path"]))
    return out


MAX_MANIFEST_BYTES = 16 << 20  # a manifest is a page of TOML; a large file is something else

# Leading bytes of files users hand us by mistake where a manifest is expected.
_BINARY_KINDS: tuple[tuple[bytes, str], ...] = (
    (b"PK\x03\x04", "a zip archive (e.g. a NumPy .npz)"),
    (b"\x93NUMPY", "a NumPy .npy array"),
    (b"\x7fELF", "an executable"),
    (b"TRTPCAL", "a calibration cache"),
)


def describe_binary(head: bytes, path: Path) -> str:
    """What a file that is not text most likely is, for a one-line error."""
    for magic, kind in _BINARY_KINDS:
        if head.startswith(magic):
            return kind
    suffix = path.suffix.lower()
    if suffix == ".onnx":
        return "an ONNX model"
    if suffix in (".engine", ".plan", ".trt"):
        return "an engine"
    return "a binary file"


def read_manifest_text(path: Path) -> str:
    """The manifest's text: bounded in size and refused, naming what it is, when binary."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_MANIFEST_BYTES + 1)
    except FileNotFoundError as exc:
        raise ManifestError("manifest not found", file=str(path)) from exc
    except IsADirectoryError as exc:
        raise ManifestError(
            "manifest is a directory; expected a TOML manifest file", file=str(path)
        ) from exc
    except OSError as exc:
        raise ManifestError(f"cannot read manifest: {exc.strerror}", file=str(path)) from exc
    if len(raw) > MAX_MANIFEST_BYTES:
        raise ManifestError(
            f"file is too large for a manifest (over {MAX_MANIFEST_BYTES >> 20} MiB); "
            "expected a TOML manifest",
            file=str(path),
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ManifestError(
            f"file is {describe_binary(raw[:16], path)}, not a TOML manifest",
            file=str(path),
        ) from exc
    if "\x00" in text:
        raise ManifestError(
            f"file is {describe_binary(raw[:16], path)}, not a TOML manifest", file=str(path)
        )
    return text


def load_manifest(path: Path) -> Manifest:
    path = Path(path)
    text = read_manifest_text(path)
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ManifestError(f"manifest is not valid TOML: {exc}", file=str(path)) from exc
    except RecursionError as exc:  # deeply nested arrays: hostile input, not our bug
        raise ManifestError("manifest is nested too deeply", file=str(path)) from exc
    _check_keys(path, "", data, _TOP_KEYS)
    try:
        settings = _settings(
            path, _table(path, "settings", data.get("settings", {})), data.get("remote")
        )
    except ValueError as exc:
        raise ManifestError(str(exc), file=str(path), key="settings") from exc
    defaults = dict(_table(path, "defaults", data.get("defaults", {})))
    _check_keys(path, "defaults", defaults, _BUILD_KEYS)
    models = data.get("models", [])
    if not isinstance(models, list):
        raise _fail(path, "models", "an array of tables ([[models]])", models)
    if not models:  # an empty run that "succeeds" hides a wrong file or a typo in [[models]]
        raise ManifestError(
            "manifest lists no models", file=str(path), key="models",
            expected="at least one [[models]] table",
        )
    backbones: list[BackboneSpec] = []
    seen: set[str] = set()
    for i, raw_model in enumerate(models):
        where = f"models[{i}]"
        model = _table(path, where, raw_model)
        _check_keys(path, where, model, _MODEL_KEYS)
        name = model.get("name")
        if not isinstance(name, str):
            raise _fail(path, f"{where}.name", "a string", name)
        if name in seen:
            raise ManifestError(
                "duplicate model name", file=str(path), key=f"{where}.name", found=name
            )
        seen.add(name)
        model_path = model.get("path")
        if not isinstance(model_path, str) or not model_path:
            raise _fail(path, f"{where}.path", "a path string to an .onnx file", model_path)
        version = model.get("version")
        if version is not None and not isinstance(version, str | int):
            raise _fail(path, f"{where}.version", "a string", version)
        merged = {**_build_dict(path, "defaults", defaults), **_build_dict(path, where, model)}
        try:
            config = build_config_from_json(merged, source=str(path))
        except ManifestError as exc:
            detail = {k: v for k, v in exc.context.items() if k not in ("file", "key")}
            inner = exc.context.get("key")
            raise ManifestError(
                exc.message,
                file=str(path),
                key=where,
                **({"field": inner} if inner else {}),
                **detail,
            ) from exc
        except (ValueError, TypeError) as exc:
            raise ManifestError(str(exc), file=str(path), key=where) from exc
        try:
            backbones.append(
                BackboneSpec(
                    name=name,
                    model_path=_real(path.parent / model_path),
                    build_config=config,
                    version_label=None if version is None else str(version),
                )
            )
        except InvalidNameError as exc:
            raise ManifestError(
                exc.message, file=str(path), key=f"{where}.name", found=repr(name)
            ) from exc
    return Manifest(path=path, settings=settings, backbones=tuple(backbones))
