"""Helpers shared by the subcommands: common flags, settings from flags, output."""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Any

from trt_provision.config import Settings, resolve_cache_dir
from trt_provision.errors import ManifestError

__all__ = ["add_settings_args", "finite_float", "print_json", "settings_from_args"]


def finite_float(value: Any, flag: str) -> float:
    """A flag's number; nan and infinities are refused as a user error naming the flag."""
    try:
        number = float(value)
    except (TypeError, ValueError) as exc:
        raise ManifestError("expected a number", key=flag, found=repr(value)[:40]) from exc
    if not math.isfinite(number):
        raise ManifestError("expected a finite number", key=flag, found=repr(value)[:40])
    return number


def add_settings_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--cache-dir",
        type=Path,
        help="engine cache directory (default: $TRT_PROVISION_CACHE_DIR or the XDG cache)",
    )
    parser.add_argument(
        "--runtime",
        choices=("auto", "tensorrt", "onnxruntime"),
        help="runtime strategy (default: TensorRT when available with a GPU, else ONNX Runtime)",
    )


def settings_from_args(args: argparse.Namespace, base: Settings | None = None) -> Settings:
    """Flags override the manifest's settings, which override the defaults."""
    settings = base or Settings(cache_dir=resolve_cache_dir())
    changes: dict[str, Any] = {}
    if getattr(args, "cache_dir", None) is not None:
        changes["cache_dir"] = Path(args.cache_dir).expanduser().resolve()
    if getattr(args, "runtime", None) is not None:
        changes["runtime"] = args.runtime
    if getattr(args, "max_temp", None) is not None:
        changes["max_temperature_c"] = finite_float(args.max_temp, "--max-temp")
    return dataclasses.replace(settings, **changes) if changes else settings


def print_json(data: Any) -> None:
    json.dump(data, sys.stdout, indent=2, sort_keys=True, default=str)
    sys.stdout.write("\n")
