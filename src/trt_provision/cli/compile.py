"""``trt-provision compile MODEL [OUT_DIR]``: one model, flags in the style of trtexec.

Also the subprocess entry for isolated builds: ``--config build.json`` in, ``--json`` result
on stdout, typed exit codes.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import shutil
from pathlib import Path
from typing import Any

from trt_provision.cli._common import add_settings_args, print_json, settings_from_args
from trt_provision.errors import ManifestError, StoreError, TrtProvisionError

__all__ = ["parse_shapes", "register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "compile",
        help="compile (or reuse) the engine of one ONNX model",
        description="Compile, or reuse from the cache, the engine of one ONNX model.",
    )
    parser.add_argument("model", type=Path, help="ONNX model file")
    parser.add_argument(
        "out",
        type=Path,
        nargs="?",
        help="also copy the engine and its sidecars into this directory",
    )
    parser.add_argument("--name", help="model name in the cache (default: from the file name)")
    parser.add_argument("--config", type=Path, help="build config JSON (flags below override it)")
    precision = parser.add_mutually_exclusive_group()
    for flag in ("fp32", "fp16", "int8", "mixed"):
        precision.add_argument(
            f"--{flag}", dest="precision", action="store_const", const=flag, help=f"{flag} engine"
        )
    precision.add_argument("--precision", choices=("fp32", "fp16", "int8", "mixed", "auto"),
                           help="engine precision; auto: the fastest candidate that passes")
    parser.add_argument("--min-shapes", help="e.g. input:1x3x224x224[,other:...]")
    parser.add_argument("--opt-shapes", help="optimization shapes, same syntax")
    parser.add_argument("--max-shapes", help="maximum shapes, same syntax")
    parser.add_argument("--workspace", type=int, metavar="MiB", help="builder workspace in MiB")
    parser.add_argument("--calibration-data", help=".npz, a directory of .npy/.npz, or file.py:fn")
    parser.add_argument("--force-rebuild", action="store_true", help="ignore a cached engine")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_settings_args(parser)
    parser.set_defaults(func=run)


_SHAPE_RE = re.compile(r"([^:,]+):([0-9]+(?:x[0-9]+)*)")


def parse_shapes(text: str, flag: str) -> dict[str, tuple[int, ...]]:
    from trt_provision.types import MAX_SHAPE_DIM

    shapes: dict[str, tuple[int, ...]] = {}
    for part in text.split(","):
        match = _SHAPE_RE.fullmatch(part.strip())
        if match is None:
            raise ManifestError(
                "bad shape specification", key=flag, expected="name:1x3x224x224", found=part
            )
        digits = match.group(2).split("x")
        # Length first: int() of thousands of digits is slow and then refused by Python.
        dims = tuple(int(d) if len(d) <= 12 else MAX_SHAPE_DIM + 1 for d in digits)
        if not all(1 <= d <= MAX_SHAPE_DIM for d in dims):
            raise ManifestError(
                "shape dimension out of range",
                key=flag,
                expected=f"each dimension in 1..{MAX_SHAPE_DIM}",
                found=part.strip()[:80],
            )
        shapes[match.group(1)] = dims
    return shapes


def _default_name(model: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.stem).strip("_-") or "model"
    return name[:64]


def _config_dict(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            data = json.loads(Path(args.config).read_bytes().decode("utf-8"))
        except OSError as exc:
            raise ManifestError(
                f"cannot read build config: {exc.strerror}", file=str(args.config)
            ) from exc
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"build config is not UTF-8 text: {exc.reason} at byte {exc.start}",
                file=str(args.config),
            ) from exc
        except (json.JSONDecodeError, RecursionError) as exc:
            raise ManifestError(
                f"build config is not valid JSON: {exc}", file=str(args.config)
            ) from exc
        if not isinstance(data, dict):
            raise ManifestError("build config must be a JSON object", file=str(args.config))
    if args.precision:
        data["precision"] = args.precision
    if args.workspace is not None:
        data["workspace_mib"] = args.workspace
    given = {k: getattr(args, f"{k}_shapes") for k in ("min", "opt", "max")}
    if any(given.values()):
        if not all(given.values()):
            raise ManifestError(
                "--min-shapes, --opt-shapes and --max-shapes must be given together",
                key="--min-shapes",
            )
        parsed = {k: parse_shapes(v, f"--{k}-shapes") for k, v in given.items()}
        names = set(parsed["min"])
        if names != set(parsed["opt"]) or names != set(parsed["max"]):
            raise ManifestError("shape flags name different inputs", key="--opt-shapes")
        data["profiles"] = [
            {
                "input": n,
                "min": list(parsed["min"][n]),
                "opt": list(parsed["opt"][n]),
                "max": list(parsed["max"][n]),
            }
            for n in sorted(names)
        ]
    if args.calibration_data:
        cal = dict(data.get("calibration") or {})
        source = args.calibration_data
        file_part, sep, func = source.partition(".py:")
        cal["source"] = str(Path(file_part + (".py" if sep else "")).resolve()) + (
            ":" + func if sep else ""
        )
        data["calibration"] = cal
    return data


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except TrtProvisionError as exc:
        if args.json:  # the subprocess parent reads the reason from stdout
            print_json({"error": str(exc), "error_type": type(exc).__name__})
        raise


def _run(args: argparse.Namespace) -> int:
    from trt_provision.compose import wire
    from trt_provision.config_json import build_config_from_json
    from trt_provision.types import BackboneSpec, EngineCompileRequest

    config = build_config_from_json(
        _config_dict(args), source=str(args.config) if args.config else "command line"
    )
    backbone = BackboneSpec(
        name=args.name or _default_name(args.model),
        model_path=Path(args.model).resolve(),
        build_config=config,
    )
    settings = settings_from_args(args)
    wired = wire(settings, use_remote=False)
    wired.store.ensure_writable()
    summary = wired.compiler.compile_engines_for_corpus(
        EngineCompileRequest(backbones=(backbone,), force_rebuild=args.force_rebuild)
    )
    result = summary.results[0]
    assert result.entry is not None
    copied: list[str] = []
    if args.out is not None:
        copied = _copy_out(result.entry.engine_path, Path(args.out))
    if args.json:
        data = result.to_dict()
        data["copied_to"] = copied
        data["runtime"] = wired.runtime.current_runtime_label()
        print_json(data)
    else:
        print(f"{result.outcome.value.upper()} {result.entry.engine_path}")
        for path in copied:
            print(f"copied {path}")
    return 0


def _copy_out(engine: Path, out_dir: Path) -> list[str]:
    from trt_provision._fs import publish_file, temp_path_for

    try:
        out_dir.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ManifestError(
            f"cannot create output directory: {exc.strerror}", path=str(out_dir)
        ) from exc
    copied = []
    # Engine first, sidecars after, each atomically: the same order as a cache publish.
    for src in (engine, *(engine.with_name(engine.name + s) for s in (".sha256", ".json"))):
        final = out_dir / src.name
        tmp = temp_path_for(final)
        try:
            shutil.copyfile(src, tmp)
            publish_file(tmp, final)
        except (OSError, StoreError) as exc:  # full or read-only OUT_DIR: no temp left behind
            with contextlib.suppress(OSError):
                tmp.unlink(missing_ok=True)
            if isinstance(exc, StoreError):
                raise
            raise StoreError(
                f"cannot copy the engine to the output directory: {exc.strerror or exc}",
                path=str(final),
            ) from exc
        copied.append(str(final))
    return copied
