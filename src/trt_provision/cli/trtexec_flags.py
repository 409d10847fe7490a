"""trtexec's spellings of the ``compile`` options, parsed in one place.

Each trtexec flag is an alias of our own flag (same argparse ``dest``), so both spellings
land in one option set and the last one given wins, as in trtexec. What needs parsing
(trtexec's shape lists, ``--memPoolSize``) is parsed here. The syntax follows trtexec's
``--help`` (NVIDIA/TensorRT, samples/common/sampleOptions.cpp, tag v10.3.0):

- ``--minShapes/--optShapes/--maxShapes/--shapes=spec``, ``spec ::= name:shape[,spec]``,
  ``shape ::= N[xN]*``; a name holding ``:`` or ``,`` is single-quoted (``'in:0':1x3``).
  Given ``--optShapes`` alone, min and max equal opt (a static profile), as trtexec does.
- ``--memPoolSize=poolspec``, ``poolspec ::= pool:size[,poolspec]``, sizes with the base-2
  suffixes B, K, M, G (no suffix: MiB).
"""

from __future__ import annotations

import argparse
import logging
import math
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trt_provision.errors import UsageError

__all__ = [
    "add_compile_flags",
    "build_options",
    "parse_mem_pool_size",
    "parse_shapes",
    "profiles_from_shapes",
    "tensorrt_only_flags",
    "warn_tensorrt_only",
    "warn_tensorrt_only_keys",
]

_MIB = 1 << 20
_SIZE_RE = re.compile(r"([0-9]+(?:\.[0-9]+)?)([BKMG]?)", re.IGNORECASE)
_UNITS = {"B": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "": 1 << 20}
# Pools trtexec knows; trt-provision sets the workspace only, so the others are refused
# by name rather than silently ignored.
_POOLS = ("workspace", "dlaSRAM", "dlaLocalDRAM", "dlaGlobalDRAM", "tacticSharedMem")


def _split_top(text: str, sep: str) -> list[str]:
    """Split on ``sep`` outside single quotes."""
    parts: list[str] = []
    current: list[str] = []
    quoted = False
    for ch in text:
        if ch == "'":
            quoted = not quoted
        if ch == sep and not quoted:
            parts.append("".join(current))
            current = []
        else:
            current.append(ch)
    if quoted:
        raise ValueError("unbalanced single quote")
    parts.append("".join(current))
    return parts


def parse_shapes(text: str, flag: str) -> dict[str, tuple[int, ...]]:
    """``name:1x3x224x224[,name2:...]`` -> {name: dims}; a typed error names the flag."""
    from trt_provision.types import MAX_SHAPE_DIM

    expected = "name:1x3x224x224[,name2:...]"
    try:
        items = _split_top(text, ",")
    except ValueError as exc:
        raise UsageError(f"{flag}: {exc} in {text[:80]!r} (expected {expected})") from exc
    shapes: dict[str, tuple[int, ...]] = {}
    for item in items:
        part = item.strip()
        name, sep, dims_text = part.rpartition(":")
        if len(name) >= 2 and name[0] == name[-1] == "'":
            name = name[1:-1]
        if not sep or not name or not re.fullmatch(r"[0-9]+(?:x[0-9]+)*", dims_text):
            raise UsageError(f"{flag}: bad shape {part[:80]!r} (expected {expected})")
        # Length first: int() of thousands of digits is slow and then refused by Python.
        dims = tuple(
            int(d) if len(d) <= 12 else MAX_SHAPE_DIM + 1 for d in dims_text.split("x")
        )
        if not all(1 <= d <= MAX_SHAPE_DIM for d in dims):
            raise UsageError(
                f"{flag}: each dimension must be in 1..{MAX_SHAPE_DIM}, got {part[:80]!r}"
            )
        if name in shapes:
            raise UsageError(f"{flag}: input {name!r} is given twice")
        shapes[name] = dims
    return shapes


def profiles_from_shapes(
    min_text: str | None,
    opt_text: str | None,
    max_text: str | None,
    shapes_text: str | None = None,
) -> list[dict[str, Any]] | None:
    """The profiles the shape flags describe (JSON form), or None when none was given.

    As trtexec: opt alone (or ``--shapes`` alone) is a static profile; min, opt and max
    together a dynamic one. Any other combination is refused naming what is missing.
    """
    given = {"min": min_text, "opt": opt_text, "max": max_text}
    if shapes_text is not None:
        if any(v is not None for v in given.values()):
            raise UsageError(
                "--shapes sets a static profile; it cannot be combined with "
                "--minShapes/--optShapes/--maxShapes (--min-shapes/--opt-shapes/--max-shapes)"
            )
        static = parse_shapes(shapes_text, "--shapes")
        return [_profile(n, d, d, d) for n, d in static.items()]
    if all(v is None for v in given.values()):
        return None
    if opt_text is not None and min_text is None and max_text is None:
        static = parse_shapes(opt_text, "--opt-shapes (--optShapes)")
        return [_profile(n, d, d, d) for n, d in static.items()]
    missing = [k for k, v in given.items() if v is None]
    if missing:
        flags = ", ".join(f"--{k}-shapes (--{k}Shapes)" for k in missing)
        raise UsageError(
            f"{flags}: missing; give min, opt and max shapes together, "
            "or opt alone for a static profile"
        )
    parsed = {k: parse_shapes(str(v), f"--{k}-shapes (--{k}Shapes)") for k, v in given.items()}
    names = list(parsed["min"])
    for k in ("opt", "max"):
        if set(parsed[k]) != set(names):
            raise UsageError(
                f"--min-shapes and --{k}-shapes name different inputs: "
                f"{sorted(names)} vs {sorted(parsed[k])}"
            )
    return [_profile(n, parsed["min"][n], parsed["opt"][n], parsed["max"][n]) for n in names]


def _profile(
    name: str, lo: tuple[int, ...], mid: tuple[int, ...], hi: tuple[int, ...]
) -> dict[str, Any]:
    return {"input": name, "min": list(lo), "opt": list(mid), "max": list(hi)}


def parse_mem_pool_size(text: str) -> int:
    """``workspace:NM`` (K/M/G/B suffixes; none: MiB) -> the workspace in MiB (rounded up)."""
    workspace: int | None = None
    for item in text.split(","):
        pool, sep, size = item.strip().partition(":")
        if not sep:
            raise UsageError(
                f"--memPoolSize: bad pool size {item.strip()[:60]!r} (expected workspace:1024M)"
            )
        if pool not in _POOLS:
            raise UsageError(
                f"--memPoolSize: unknown pool {pool[:40]!r} (trtexec's pools: {', '.join(_POOLS)})"
            )
        if pool != "workspace":
            raise UsageError(
                f"--memPoolSize: pool {pool!r} is not supported; only workspace is set"
            )
        match = _SIZE_RE.fullmatch(size.strip())
        if match is None or len(match.group(1)) > 20:
            raise UsageError(
                f"--memPoolSize: bad size {size.strip()[:40]!r} (a number with an optional "
                "B, K, M or G suffix)"
            )
        number = float(match.group(1)) * _UNITS[match.group(2).upper()]
        mib = math.ceil(number / _MIB)
        if not 1 <= mib < (1 << 43):
            raise UsageError(f"--memPoolSize: workspace {size.strip()!r} is out of range")
        workspace = mib
    if workspace is None:  # pragma: no cover - split always yields one item
        raise UsageError("--memPoolSize: no pool given")
    return workspace


def add_compile_flags(parser: argparse.ArgumentParser) -> None:
    """Our spellings with trtexec's as aliases of the same option."""
    parser.add_argument("--onnx", type=Path, metavar="FILE", help="ONNX model (trtexec spelling "
                        "of MODEL)")
    parser.add_argument(
        "--saveEngine", dest="save_engine", type=Path, metavar="FILE",
        help="also copy the engine to FILE, with FILE.sha256 and FILE.json beside it",
    )
    parser.add_argument("--min-shapes", "--minShapes", dest="min_shapes", metavar="SPEC",
                        help="minimum shapes, e.g. input:1x3x224x224[,other:...]")
    parser.add_argument("--opt-shapes", "--optShapes", dest="opt_shapes", metavar="SPEC",
                        help="optimization shapes, same syntax; alone: a static profile")
    parser.add_argument("--max-shapes", "--maxShapes", dest="max_shapes", metavar="SPEC",
                        help="maximum shapes, same syntax")
    parser.add_argument("--shapes", metavar="SPEC", help="static shapes (min = opt = max)")
    parser.add_argument("--workspace", type=int, metavar="MiB", help="builder workspace in MiB")
    parser.add_argument("--memPoolSize", dest="mem_pool_size", metavar="POOLSPEC",
                        help="trtexec spelling of the workspace: workspace:1024M (K/M/G)")
    parser.add_argument("--timing-cache", "--timingCacheFile", dest="timing_cache", type=Path,
                        metavar="FILE", help="TensorRT timing cache file (created if absent)")
    tf32 = parser.add_mutually_exclusive_group()
    tf32.add_argument("--tf32", dest="tf32", action="store_true", default=None,
                      help="allow TF32 kernels in an fp32 TensorRT build")
    tf32.add_argument("--noTF32", dest="tf32", action="store_false", default=None,
                      help="no TF32 kernels (trtexec spelling)")
    parser.add_argument("--dla-core", "--useDLACore", dest="dla_core", type=int, metavar="N",
                        help="build for this DLA core (Jetson; needs --fp16 or --int8)")
    parser.add_argument("--gpu-fallback", "--allowGPUFallback", dest="gpu_fallback",
                        action="store_true", default=None,
                        help="with a DLA core: run layers the DLA cannot on the GPU")
    parser.add_argument("--builder-optimization-level", "--builderOptimizationLevel",
                        dest="builder_optimization_level", type=int, metavar="0-5",
                        help="TensorRT builder optimization level")
    parser.add_argument("--strongly-typed", "--stronglyTyped", dest="strongly_typed",
                        action="store_true", default=None,
                        help="strongly typed network (precision from the model's types)")
    parser.add_argument("--calibration-data", metavar="SOURCE",
                        help=".npz, a directory of .npy/.npz, or file.py:fn")
    parser.add_argument("--calib", dest="calib_cache", type=Path, metavar="FILE",
                        help="a TensorRT INT8 calibration cache to calibrate from (trtexec)")


def build_options(args: argparse.Namespace) -> Mapping[str, Any]:
    """The BuildConfig JSON keys the flags set (flags override a --config file)."""
    data: dict[str, Any] = {}
    if args.workspace is not None and args.mem_pool_size is not None:
        raise UsageError("--workspace and --memPoolSize both set the workspace; give one")
    if args.workspace is not None:
        if args.workspace < 1:
            raise UsageError(f"--workspace must be >= 1 MiB, got {args.workspace}")
        data["workspace_mib"] = args.workspace
    if args.mem_pool_size is not None:
        data["workspace_mib"] = parse_mem_pool_size(args.mem_pool_size)
    profiles = profiles_from_shapes(args.min_shapes, args.opt_shapes, args.max_shapes,
                                    args.shapes)
    if profiles is not None:
        data["profiles"] = profiles
    if args.timing_cache is not None:
        data["timing_cache_path"] = str(Path(args.timing_cache).expanduser().resolve())
    if args.tf32 is not None:
        data["tf32"] = args.tf32
    if args.dla_core is not None:
        if not 0 <= args.dla_core <= 15:
            raise UsageError(f"--useDLACore must be a DLA core number 0..15, got {args.dla_core}")
        data["dla_core"] = args.dla_core
    if args.gpu_fallback:
        if args.dla_core is None:
            raise UsageError("--allowGPUFallback applies only with --useDLACore")
        data["gpu_fallback"] = True
    if args.builder_optimization_level is not None:
        if not 0 <= args.builder_optimization_level <= 5:
            raise UsageError(
                "--builderOptimizationLevel must be 0..5, got "
                f"{args.builder_optimization_level}"
            )
        data["builder_optimization_level"] = args.builder_optimization_level
    if args.strongly_typed:
        data["strongly_typed"] = True
    return data


# Options only the TensorRT builder reads (argparse dest -> both spellings). ONNX Runtime
# builds without them, so naming them on that runtime is a warning, never silence.
_TENSORRT_ONLY = (
    ("dla_core", "--useDLACore (--dla-core)"),
    ("gpu_fallback", "--allowGPUFallback (--gpu-fallback)"),
    ("timing_cache", "--timingCacheFile (--timing-cache)"),
    ("tf32", "--noTF32/--tf32"),
    ("builder_optimization_level", "--builderOptimizationLevel (--builder-optimization-level)"),
    ("strongly_typed", "--stronglyTyped (--strongly-typed)"),
    ("workspace", "--workspace"),
    ("mem_pool_size", "--memPoolSize"),
)


def tensorrt_only_flags(args: argparse.Namespace) -> list[str]:
    """The TensorRT-only flags given on this command line, as the user may have spelt them."""
    return [flag for dest, flag in _TENSORRT_ONLY if getattr(args, dest, None) is not None]


# Manifest build keys only the TensorRT builder reads: those the flags above set, and the
# hardware-compatibility and precision-constraint options the ONNX Runtime strategy has no
# counterpart for.
TENSORRT_ONLY_KEYS = (
    "dla_core", "gpu_fallback", "timing_cache_path", "tf32", "builder_optimization_level",
    "strongly_typed", "workspace_mib", "hardware_compatibility", "strict_precision_constraints",
)


def warn_tensorrt_only(ignored: str, *, timing_cache: bool, event: str, **extra: Any) -> None:
    """One warning that options were given which the ONNX Runtime runtime does not read."""
    logging.getLogger(__name__).warning(
        "ignored on the ONNX Runtime runtime (TensorRT only): %s%s", ignored,
        "; no timing cache is read or created" if timing_cache else "",
        extra={"event": event, **extra},
    )


def warn_tensorrt_only_keys(given: Mapping[str, frozenset[str]]) -> None:
    """Once per TensorRT-only manifest key (``given``: model name -> build keys it was
    given, its own or from ``[defaults]``), naming the key and the models it was given for."""
    for key in TENSORRT_ONLY_KEYS:
        models = [name for name, keys in given.items() if key in keys]
        if models:
            warn_tensorrt_only(
                f"{key} (model{'s' if len(models) > 1 else ''} {', '.join(models)})",
                timing_cache=key == "timing_cache_path", event="provision.keys.ignored",
                key=key, models=models)
