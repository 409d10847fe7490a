"""``trt-provision compile MODEL [OUT_DIR]``: one model, flags in the style of trtexec.

Also the subprocess entry for isolated builds: ``--config build.json`` in, ``--json`` result
on stdout, typed exit codes.
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

from trt_provision.cli._common import (
    add_settings_args,
    print_json,
    require_paths,
    require_runtime,
    settings_from_args,
)
from trt_provision.cli.trtexec_flags import (
    add_compile_flags,
    build_options,
    parse_shapes,
    tensorrt_only_flags,
    warn_tensorrt_only,
)
from trt_provision.errors import ManifestError, StoreError, TrtProvisionError, UsageError

__all__ = ["parse_shapes", "register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "compile",
        help="compile (or reuse) the engine of one ONNX model",
        description=(
            "Compile, or reuse from the cache, the engine of one ONNX model. trtexec's "
            "spellings (--onnx, --saveEngine, --minShapes/--optShapes/--maxShapes, --shapes, "
            "--memPoolSize, --timingCacheFile, --noTF32, --useDLACore, "
            "--builderOptimizationLevel, --stronglyTyped, --calib, --verbose) are accepted "
            "beside ours."
        ),
    )
    parser.add_argument("model", type=Path, nargs="?", help="ONNX model file (or --onnx)")
    parser.add_argument(
        "out",
        type=Path,
        nargs="?",
        help="also copy the engine and its sidecars into this directory (anywhere among "
        "the options)",
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
    add_compile_flags(parser)
    parser.add_argument("--force-rebuild", action="store_true", help="ignore a cached engine")
    parser.add_argument("--json", action="store_true", help="print the result as JSON on stdout")
    add_settings_args(parser)
    parser.set_defaults(func=run, late_positional="out")


def _default_name(model: Path) -> str:
    name = re.sub(r"[^A-Za-z0-9_-]", "_", model.stem).strip("_-") or "model"
    return name[:64]


def _config_dict(args: argparse.Namespace) -> dict[str, Any]:
    data: dict[str, Any] = {}
    if args.config is not None:
        try:
            from trt_provision._fs import read_named_file

            # Bounded and non-blocking: /dev/zero as --config is an error, not 4 GB.
            raw = read_named_file(Path(args.config), 16 << 20, what="build config",
                                  error=ManifestError)
            data = json.loads(raw.decode("utf-8"))
        except OSError as exc:
            raise ManifestError(
                f"cannot read build config: {exc.strerror}", file=str(args.config)
            ) from exc
        except UnicodeDecodeError as exc:
            raise ManifestError(
                f"build config is not UTF-8 text: {exc.reason} at byte {exc.start}",
                file=str(args.config),
            ) from exc
        except (ValueError, RecursionError) as exc:  # ValueError: also a 5,000-digit number
            raise ManifestError(
                f"build config is not valid JSON: {str(exc).split(';')[0]}",
                file=str(args.config)
            ) from exc
        if not isinstance(data, dict):
            raise ManifestError("build config must be a JSON object", file=str(args.config))
    if args.precision:
        data["precision"] = args.precision
    data.update(build_options(args))
    if args.calibration_data:
        cal = dict(data.get("calibration") or {})
        source = args.calibration_data
        file_part, sep, func = source.partition(".py:")
        cal["source"] = str(Path(file_part + (".py" if sep else "")).resolve()) + (
            ":" + func if sep else ""
        )
        data["calibration"] = cal
    if args.calib_cache is not None:
        # trtexec --calib: the cache's scales are the INT8 ranges (trtexec builds with them
        # unjudged; --calibration-data as well judges them against the gate).
        cal = dict(data.get("calibration") or {})
        cal["trt_cache"] = str(Path(args.calib_cache).resolve())
        data["calibration"] = cal
        precision = data.setdefault("precision", "int8")
        if precision not in ("int8", "mixed"):
            raise UsageError(f"--calib needs --int8 or --mixed, not --{precision}")
    return data


def run(args: argparse.Namespace) -> int:
    try:
        return _run(args)
    except TrtProvisionError as exc:
        if args.json:  # the subprocess parent reads the reason from stdout
            print_json({"error": str(exc), "error_type": type(exc).__name__})
        raise


def _resolve_paths(args: argparse.Namespace) -> None:
    """MODEL or --onnx (with --onnx the one positional is OUT_DIR); every input exists."""
    if args.onnx is not None:
        if args.model is not None and args.out is None:
            args.model, args.out = None, args.model
        if args.model is not None and Path(args.model) != Path(args.onnx):
            raise UsageError(f"MODEL {args.model} and --onnx {args.onnx} name different models")
        args.model = args.onnx
    if args.model is None:
        raise UsageError("no model given: name MODEL or --onnx=FILE")
    if args.out is not None:
        args.out = Path(args.out)
    calibration = args.calibration_data
    if calibration:
        calibration = calibration.partition(".py:")[0] + (".py" if ".py:" in calibration else "")
    require_paths(
        (args.model, "MODEL" if args.onnx is None else "--onnx"),
        (args.config, "--config"),
        (calibration or None, "--calibration-data"),
        (args.calib_cache, "--calib"),
    )
    if args.save_engine is not None and not Path(args.save_engine).parent.is_dir():
        raise UsageError(
            f"--saveEngine: directory {Path(args.save_engine).parent} does not exist"
        )
    if Path(args.model).is_dir():  # also ``--onnx=``, which names the current directory
        raise UsageError(
            f"{'MODEL' if args.onnx is None else '--onnx'}: is a directory, "
            f"expected an ONNX model file: {args.model}"
        )
    _check_outputs(args)
    if args.calib_cache is not None:
        _check_calib_cache(Path(args.calib_cache))


def _check_outputs(args: argparse.Namespace) -> None:
    """Output paths are checked before anything is built: a trtexec habit
    (``compile m.onnx m.plan``) or a directory as --saveEngine is named, not found late."""
    if args.out is not None and args.out.exists() and not args.out.is_dir():
        raise UsageError(
            f"OUT_DIR: not a directory: {args.out} (to write one engine file use --saveEngine=FILE)"
        )
    if args.save_engine is not None and Path(args.save_engine).is_dir():
        raise UsageError(f"--saveEngine: is a directory, expected a file path: {args.save_engine}")
    if args.save_engine is not None:
        # A device, FIFO or socket (or a link to one) is never replaced by the copy: as
        # root, --saveEngine=/dev/null would otherwise swap the host's /dev/null for a file.
        save = Path(args.save_engine)
        for final in (save, *(save.with_name(save.name + s) for s in (".json", ".sha256", ".sig"))):
            if final.exists() and not final.is_file():
                raise UsageError(
                    f"--saveEngine: {final} exists and is not a regular file (a device, FIFO "
                    "or socket); refusing to replace it"
                )
    # A copy must never land on the source model or inside the cache, where it would replace
    # a verified engine or sidecar with other bytes.
    cache = Path(settings_from_args(args).cache_dir).expanduser().resolve()
    model = Path(args.model).expanduser().resolve()
    for path, flag in ((args.save_engine, "--saveEngine"), (args.out, "OUT_DIR")):
        if path is None:
            continue
        final = Path(path).expanduser().resolve()
        if flag == "--saveEngine" and model in (
            final, *(final.with_name(final.name + s) for s in (".json", ".sha256", ".sig"))
        ):
            raise UsageError(f"{flag}: would overwrite the source model {args.model}")
        if final == cache or cache in final.parents:
            raise UsageError(f"{flag}: {path} is inside the engine cache {cache}; "
                             "copies go elsewhere")
    timing = getattr(args, "timing_cache", None)
    if timing is not None:
        timing = Path(timing).expanduser()
        if timing.is_dir():
            raise UsageError(f"--timingCacheFile: is a directory, expected a file path: {timing}")
        if not timing.parent.is_dir():
            raise UsageError(f"--timingCacheFile: directory {timing.parent} does not exist")


def _check_calib_cache(path: Path) -> None:
    """Validate a TensorRT calibration cache up front: a bad file is one line, exit 1."""
    from trt_provision.calibration.user_cache import read_user_trt_cache
    from trt_provision.errors import CalibrationCacheError

    try:
        read_user_trt_cache(path)
    except CalibrationCacheError as exc:
        line = exc.context.get("line")
        where = f" at line {line}" if line is not None else ""
        raise UsageError(f"--calib: {path}{where}: {exc.message}") from exc


def _run(args: argparse.Namespace) -> int:
    from trt_provision.compose import wire
    from trt_provision.config_json import build_config_from_json
    from trt_provision.types import BackboneSpec, EngineCompileRequest

    _resolve_paths(args)
    try:
        config = build_config_from_json(
            _config_dict(args), source=str(args.config) if args.config else "command line"
        )
    except ManifestError as exc:
        if args.config is not None:
            raise
        # Only flags set these values: name them as flags, not as a manifest key.
        detail = str(exc.context.get("expected") or exc.context.get("found") or "")
        raise UsageError(
            f"compile options: {exc.message}" + (f" ({detail})" if detail else "")
        ) from exc
    backbone = BackboneSpec(
        name=args.name or _default_name(args.model),
        model_path=Path(args.model).resolve(),
        build_config=config,
    )
    settings = settings_from_args(args)
    require_runtime(settings)
    wired = wire(settings, use_remote=False)
    ignored = tensorrt_only_flags(args)
    if ignored and wired.runtime.current_runtime_label() == "onnxruntime":
        warn_tensorrt_only(", ".join(ignored), timing_cache=args.timing_cache is not None,
                           event="compile.flags.ignored", flags=ignored)
    wired.store.ensure_writable()
    summary = wired.compiler.compile_engines_for_corpus(
        EngineCompileRequest(
            backbones=(backbone,), force_rebuild=args.force_rebuild, fail_fast=True
        )
    )
    result = summary.results[0]
    if result.entry is None:  # pragma: no cover - fail_fast raises instead
        raise StoreError("no engine was produced", model=backbone.name)
    copied: list[str] = []
    if args.out is not None:
        copied = _copy_out(result.entry.engine_path, Path(args.out))
    if args.save_engine is not None:
        copied += _save_engine(result.entry.engine_path, Path(args.save_engine))
    if args.json:
        data = result.to_dict()
        data["copied_to"] = copied
        data["runtime"] = wired.runtime.current_runtime_label()
        print_json(data)
    else:
        print(f"{result.outcome.value.upper()} {result.entry.engine_path}")
        if result.identity is not None and result.identity.precision.value == "auto":
            for note in result.notes:  # the choice, then one line per candidate
                print(f"  {note}")
        for path in copied:
            print(f"copied {path}")
    return 0


def _copy_out(engine: Path, out_dir: Path) -> list[str]:
    from trt_provision._fs import copy_file_atomic

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
        try:
            # 0644 whatever the umask; never replaces a device or FIFO; no temp left behind.
            copy_file_atomic(src, final)
        except StoreError as exc:
            raise StoreError(
                "cannot copy the engine to the output directory: "
                + exc.message.removeprefix("cannot write file: "),
                path=str(final),
            ) from exc
        copied.append(str(final))
    return copied


def _save_engine(engine: Path, target: Path) -> list[str]:
    """trtexec's --saveEngine: the engine at FILE, FILE.sha256 naming FILE (so
    ``sha256sum -c`` works there) and the metadata (and signature) beside it."""
    from trt_provision._fs import atomic_write_bytes, copy_file_atomic
    from trt_provision.integrity import (
        MAX_METADATA_BYTES,
        parse_sha256_sidecar,
        read_cache_file,
        sha256_sidecar_bytes,
    )

    meta = read_cache_file(engine.with_name(engine.name + ".json"), MAX_METADATA_BYTES,
                           what="metadata sidecar", check_owner=False)
    digest = parse_sha256_sidecar(engine.with_name(engine.name + ".sha256"), engine.name,
                                  metadata=meta)
    sources = [(engine, target)]
    for suffix in (".json", ".sig"):
        side = engine.with_name(engine.name + suffix)
        if side.exists():
            sources.append((side, target.with_name(target.name + suffix)))
    written = []
    for src, final in sources:
        try:
            # 0644 whatever the umask (trtexec's copies are not group/world-writable either).
            copy_file_atomic(src, final)
        except StoreError as exc:
            raise StoreError(
                "cannot write --saveEngine file: "
                + exc.message.removeprefix("cannot write file: "),
                path=str(final),
            ) from exc
        written.append(str(final))
    sidecar = target.with_name(target.name + ".sha256")
    try:
        # Both lines, as in the cache: sha256sum -c FILE.sha256 checks FILE and FILE.json.
        atomic_write_bytes(sidecar, sha256_sidecar_bytes(digest, target.name, meta))
    except OSError as exc:
        raise StoreError(
            f"cannot write --saveEngine file: {exc.strerror or exc}", path=str(sidecar)
        ) from exc
    written.insert(1, str(sidecar))
    return written
