"""``trt-provision prepare MODEL --precision P -o OUT.onnx``: export the precision-carrying graph.

Writes the graph a build would parse: for ``--for tensorrt`` the Q/DQ graph of the strongly
typed path (INT8-only DequantizeLinear inputs, symmetric, zero point 0, float biases) or the
FP16 graph with its I/O types kept; for ``--for onnxruntime`` the CPU's Q/DQ graph. The same
pipeline, splits and accuracy gate as a build: a graph that fails the gate is not written
(unless ``--allow-inaccurate``). Runs on any machine (ONNX Runtime on the CPU judges it).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

from trt_provision.cli._common import path_arg, require_nonempty

__all__ = ["register"]

_CONSUMERS = {"tensorrt": "tensorrt", "onnxruntime": "onnxruntime-cpu"}


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "prepare",
        help="write the FP16 or Q/DQ graph a build would parse",
        description="Apply a precision to an ONNX model and write the graph TensorRT's "
        "strongly typed path (or ONNX Runtime) parses, judged by the accuracy gate.",
        allow_abbrev=False,
    )
    parser.add_argument("model", type=Path, help="ONNX model")
    parser.add_argument("--precision", required=True, choices=("int8", "fp16", "mixed"))
    parser.add_argument("--calibration-data", metavar="D",
                        help=".npz, .npy, a directory of them, or file.py:function")
    parser.add_argument("--evaluation-data", metavar="D",
                        help="your own held-out data for validation and test")
    parser.add_argument("--algorithm", default="auto",
                        choices=("auto", "minmax", "percentile", "entropy"))
    parser.add_argument("--for", dest="consumer", default="tensorrt",
                        choices=tuple(_CONSUMERS), help="who parses the graph")
    parser.add_argument("-o", "--output", type=Path, required=True, help="OUT.onnx")
    parser.add_argument("--allow-inaccurate", action="store_true",
                        help="write the graph even when it fails the accuracy gate")
    parser.add_argument("--cache-dir", type=path_arg,
                        help="governed calibration cache directory (default: none kept)")
    parser.add_argument("--json", action="store_true", help="print the metadata as JSON")
    parser.set_defaults(func=run)


def _existing(path: str | None, what: str) -> str | None:
    """A path the user named must exist (a loader keeps its ":function" suffix)."""
    from trt_provision.errors import CalibrationCacheError

    if path is None:
        return None
    file_part, sep, func = path.partition(".py:")
    file_path = Path(file_part + ".py") if sep else Path(path)
    if not file_path.exists():
        raise CalibrationCacheError(f"{what} not found", path=str(file_path))
    return str(file_path.resolve()) + (":" + func if sep else "")


def run(args: argparse.Namespace) -> int:
    from trt_provision.calibration.precision import prepare_model_for_precision
    from trt_provision.errors import ModelError
    from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

    require_nonempty(args.cache_dir, "--cache-dir")
    model: Path = args.model
    if not model.is_file():
        what = "is a directory" if model.is_dir() else (
            "is not a regular file" if model.exists() else "not found")
        raise ModelError(f"model {what}", path=str(model))
    output: Path = args.output
    if output.suffix != ".onnx":
        raise ModelError("output must be an .onnx path", path=str(output))
    if not output.parent.is_dir():
        raise ModelError("output directory does not exist", path=str(output.parent))
    if output.is_dir():
        raise ModelError("output is a directory, expected an .onnx file path", path=str(output))
    if output.exists() and output.resolve() == model.resolve():
        # Writing over the source would lose the FP32 model every later build and check needs.
        raise ModelError("output would overwrite the source model; choose another -o",
                         path=str(output))
    source = _existing(args.calibration_data, "calibration data")
    evaluation = _existing(args.evaluation_data, "evaluation data")
    spec = None
    if source is not None:
        spec = CalibrationSpec(source=source, algorithm=args.algorithm, evaluation_data=evaluation)
    config = BuildConfig(precision=PrecisionMode(args.precision), calibration=spec,
                         allow_inaccurate=args.allow_inaccurate)
    with tempfile.TemporaryDirectory(prefix="trtp-prepare-") as tmp:
        prepared = prepare_model_for_precision(
            model.resolve(), config, Path(tmp) / "work",
            calibration_cache_dir=args.cache_dir or Path(tmp) / "calibration",
            consumer=_CONSUMERS[args.consumer],
        )
        # temp -> rename in the output's directory: a reader never sees half a model
        fd, staged = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
        os.close(fd)
        try:
            shutil.copyfile(prepared.model_path, staged)
            os.replace(staged, output)
        except BaseException:
            Path(staged).unlink(missing_ok=True)
            raise
    metadata = {"model": str(model), "output": str(output), "consumer": args.consumer,
                **dict(prepared.metadata)}
    if args.json:
        print(json.dumps(metadata, indent=2, sort_keys=True, default=str))
        return 0
    accuracy = metadata.get("accuracy", {})
    print(f"wrote {output} ({args.precision} for {args.consumer}; accuracy "
          f"{accuracy.get('verdict', 'n/a')} on {accuracy.get('data', 'n/a')} data)")
    return 0
