"""Helpers shared by the subcommands: common flags, settings from flags, output."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision.errors import UsageError

if TYPE_CHECKING:  # config (and the DTOs under it) loads when a command runs, not for --help
    from trt_provision.config import Settings

__all__ = [
    "add_settings_args",
    "finite_float",
    "path_arg",
    "print_json",
    "require_dir",
    "require_nonempty",
    "require_paths",
    "require_runtime",
    "runtime_problems",
    "saved_copy_name",
    "settings_from_args",
    "verify_saved_copy",
]


def finite_float(value: Any, flag: str) -> float:
    """A flag's number; nan and infinities are refused as a user error naming the flag."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise UsageError(f"{flag} expects a number, got {str(value)[:40]!r}") from exc
    if not math.isfinite(number):
        raise UsageError(f"{flag} expects a finite number, got {str(value)[:40]!r}")
    return number


def require_paths(*named: tuple[Path | str | None, str]) -> None:
    """Every input path the user typed must exist: a typo is an error, never a silent
    fallback. ``named`` pairs a path with the argument that named it (None: not given)."""
    for path, flag in named:
        if path is None:
            continue
        p = Path(path).expanduser()
        if not p.exists():
            raise UsageError(f"{flag}: not found: {path}")
        # A FIFO or socket would block the read for ever; character devices (/dev/null as an
        # empty file) are left to the bounded readers.
        if p.is_fifo() or p.is_socket() or p.is_block_device():
            raise UsageError(f"{flag}: not a regular file or directory: {path}")


def path_arg(text: str) -> Path | str:
    """argparse type of a path flag: a Path, but ``''`` stays ``''`` so that it can be
    refused (Path('') is the current directory: an empty ``--cache-dir $UNSET`` would
    silently fill it with engines)."""
    return Path(text) if text else ""


def require_nonempty(value: Path | str | None, flag: str) -> None:
    if value is not None and str(value) == "":
        raise UsageError(f"{flag}: empty path")


def require_dir(path: Path, flag: str) -> None:
    """An existing directory (e.g. a cache to verify): a missing one or a file is an error."""
    if not path.exists():
        raise UsageError(f"{flag}: directory not found: {path}")
    if not path.is_dir():
        raise UsageError(f"{flag}: not a directory: {path}")


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=path_arg,
        help="engine cache directory (default: $TRT_PROVISION_CACHE_DIR or the XDG cache)",
    )
    parser.add_argument(
        "--runtime",
        choices=("auto", "tensorrt", "onnxruntime"),
        help="runtime strategy (default: TensorRT when available with a GPU, else ONNX Runtime)",
    )


def settings_from_args(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    """Flags override the manifest's settings, which override the defaults."""
    from trt_provision.config import Settings, resolve_cache_dir

    settings = base or Settings(cache_dir=resolve_cache_dir())
    changes: dict[str, Any] = {}
    if getattr(args, "cache_dir", None) is not None:
        require_nonempty(args.cache_dir, "--cache-dir")
        # realpath, not resolve(): a symlink loop must reach the cache checks (exit 1), not raise.
        changes["cache_dir"] = Path(os.path.realpath(Path(args.cache_dir).expanduser()))
    if getattr(args, "runtime", None) is not None:
        changes["runtime"] = args.runtime
    if getattr(args, "max_temp", None) is not None:
        celsius = finite_float(args.max_temp, "--max-temp")
        if not 0 < celsius <= 200:  # -500 would refuse every build, 1e9 would disable the gate
            raise UsageError(f"--max-temp expects degrees Celsius in (0, 200], got {celsius:g}")
        changes["max_temperature_c"] = celsius
    return dataclasses.replace(settings, **changes) if changes else settings


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")


# What the TensorRT strategy imports, the package that provides it and the extra that
# brings it (pyproject.toml: tensorrt = ["tensorrt", "cuda-python"]).
_TENSORRT_NEEDS = (("tensorrt", "tensorrt"), ("cuda", "cuda-python"))


def runtime_problems(settings: Settings) -> list[str]:
    """What keeps the configured runtime from loading here (empty when nothing does)."""
    from trt_provision._lazy import is_available

    if settings.runtime != "tensorrt":
        return []
    return [
        f"{package} is not installed (no module '{module}')"
        for module, package in _TENSORRT_NEEDS
        if not is_available(module)
    ]


def require_runtime(settings: Settings) -> None:
    """Refuse ``runtime = tensorrt`` up front, naming what is missing and the extra."""
    from trt_provision.errors import MissingDependencyError

    problems = runtime_problems(settings)
    if problems:
        missing = next(m for m, _ in _TENSORRT_NEEDS if any(f"'{m}'" in p for p in problems))
        from trt_provision._lazy import extra_for, install_line

        exc = MissingDependencyError(missing, extra_for("tensorrt"))
        exc.message = (
            "runtime 'tensorrt' (--runtime or the manifest's settings.runtime) cannot load: "
            + "; ".join(problems)
            + "; install both with: " + install_line("tensorrt")
        )
        exc.args = (exc.message,)
        exc.context = {}
        raise exc


def saved_copy_name(path: Path) -> str | None:
    """The cached engine's filename when ``path`` is a ``compile --saveEngine`` copy (its
    ``FILE.json`` describes an engine of another name); None otherwise. Not yet proven:
    :func:`verify_saved_copy` checks the bytes."""
    from trt_provision.errors import EngineGateError, InvalidNameError
    from trt_provision.identity import parse_engine_filename
    from trt_provision.integrity import MAX_METADATA_BYTES, loads_bounded, read_cache_file

    sidecar = path.with_name(path.name + ".json")
    if not (path.is_file() and sidecar.is_file()):
        return None
    try:
        data = loads_bounded(
            read_cache_file(sidecar, MAX_METADATA_BYTES, what="metadata sidecar"), str(sidecar)
        )
    except EngineGateError:
        return None
    name = data.get("engine") if isinstance(data, dict) else None
    if not isinstance(name, str) or name == path.name or "/" in name or "\\" in name:
        return None
    try:
        parse_engine_filename(name)
    except InvalidNameError:
        return None
    return name


def verify_saved_copy(path: Path, name: str) -> tuple[dict[str, Any], str, bytes]:
    """(metadata, sha256, the checked ``.json`` bytes) of a --saveEngine copy whose sidecars
    prove it: ``FILE.sha256`` names FILE, matches its bytes and covers ``FILE.json``, which
    describes the engine of that sha256. EngineGateError naming what does not hold."""
    from trt_provision._fs import untrusted_reason
    from trt_provision.errors import EngineGateError
    from trt_provision.integrity import (
        MAX_METADATA_BYTES,
        parse_metadata_bytes,
        parse_sha256_sidecar,
        read_cache_file,
        sha256_file,
    )

    try:
        untrusted = untrusted_reason(path, os.stat(path))
    except OSError as exc:
        raise EngineGateError(f"engine copy unreadable: {exc.strerror}", path=str(path)) from exc
    if untrusted is not None:  # what the gate would refuse, refused before it is staged
        raise EngineGateError(f"engine copy {untrusted[0]}", path=str(path), fix=untrusted[1])
    sidecar = path.with_name(path.name + ".json")
    raw = read_cache_file(sidecar, MAX_METADATA_BYTES, what="metadata sidecar")
    metadata = parse_metadata_bytes(raw, sidecar, name)
    # The copy's .sha256 covers its .json too (two lines), as a cached engine's does.
    claimed = parse_sha256_sidecar(path.with_name(path.name + ".sha256"), path.name,
                                   metadata=raw)
    if metadata["sha256"] != claimed:
        raise EngineGateError(
            "engine copy: its .json and .sha256 sidecars describe different engines",
            path=str(path), expected=claimed, found=metadata["sha256"],
        )
    try:
        actual, _size = sha256_file(path)
    except OSError as exc:
        raise EngineGateError(f"engine copy unreadable: {exc.strerror}", path=str(path)) from exc
    if actual != claimed:
        raise EngineGateError(
            "engine copy: its bytes do not match its .sha256 sidecar",
            path=str(path), expected=claimed, found=actual,
        )
    return metadata, claimed, raw
