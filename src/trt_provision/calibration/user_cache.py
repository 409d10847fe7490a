"""A user's TensorRT calibration cache (trtexec ``--calib=FILE``) as the INT8 ranges of a build.

The file is TensorRT's text format (a ``TRT-<version>-<algorithm>`` header, then one
``tensor: <hex float32 scale>`` line per tensor, as ``write_trt_calibration_cache`` writes
it). It is read bounded and validated before use; its sha256 enters the calibration key, so a
different cache never reuses an engine. The ranges are not judged against data unless
calibration data is given as well: the build records that plainly.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.calibration.ranges import TensorRanges, parse_trt_calibration_cache
from trt_provision.errors import CalibrationCacheError
from trt_provision.types import BuildConfig, PrecisionMode

__all__ = [
    "MAX_USER_CACHE_BYTES",
    "NOT_JUDGED_NOTE",
    "UserTrtCache",
    "prepare_int8_from_user_cache",
    "read_user_trt_cache",
]

logger = logging.getLogger(__name__)

# A calibration table has one short line per tensor: 4 MiB (some 50,000 tensors) is far
# beyond any real model.
MAX_USER_CACHE_BYTES = 4 << 20
# Scales TensorRT could use: a normal float32 (zero or a denormal scale divides by nothing
# usable) whose range (scale * 127) is below 1e10; FLT_MAX made an engine of NaN/inf only.
MIN_SCALE = 1.1754943508222875e-38  # FLT_MIN, the smallest normal float32
MAX_AMAX = 1e10
NOT_JUDGED_NOTE = "ranges from a user calibration cache; not judged"


@dataclass(frozen=True)
class UserTrtCache:
    path: Path
    blob: bytes
    sha256: str
    ranges: TensorRanges


def read_user_trt_cache(path: str | Path) -> UserTrtCache:
    """Read, bound and parse a TensorRT calibration cache; CalibrationCacheError if it is not."""
    from trt_provision._fs import read_named_file

    path = Path(path)
    try:  # bounded and non-blocking: a FIFO or /dev/zero is refused, not waited on
        blob = read_named_file(path, MAX_USER_CACHE_BYTES, what="TensorRT calibration cache",
                               error=CalibrationCacheError)
    except CalibrationCacheError as exc:
        if "too large" not in exc.message:
            raise
        raise CalibrationCacheError(
            f"TensorRT calibration cache is larger than {MAX_USER_CACHE_BYTES >> 20} MiB",
            path=str(path),
        ) from exc
    try:
        ranges = parse_trt_calibration_cache(blob)
    except CalibrationCacheError as exc:
        message, line = exc.message, exc.context.get("line")
        if "scale" in message and isinstance(line, int):
            # Name the tensor too (the parser counts non-empty lines).
            lines = [ln for ln in blob.decode("ascii").splitlines() if ln.strip()]
            message += f" for tensor {lines[line - 1].rpartition(':')[0].strip()!r}"
        raise CalibrationCacheError(message, path=str(path), **exc.context) from exc
    if not ranges.ranges:
        raise CalibrationCacheError(
            "TensorRT calibration cache names no tensor", path=str(path)
        )
    for name, (_, amax) in ranges.ranges.items():
        scale = amax / 127.0
        if not (scale >= MIN_SCALE and amax <= MAX_AMAX):  # NaN fails both
            raise CalibrationCacheError(
                f"TensorRT calibration cache holds an unusable scale for tensor {name!r} "
                f"(expected a normal float32 > 0 with a range below {MAX_AMAX:g})",
                path=str(path), found=scale,
            )
    return UserTrtCache(path, blob, hashlib.sha256(blob).hexdigest(), ranges)


def known_ranges(user: UserTrtCache, model: Any) -> TensorRanges:
    """The user cache's ranges for tensors of ``model`` (a loaded ONNX model).

    TensorRT also names tensors of its own (``(Unnamed Layer* 3) [Constant]_output``), so
    names the model lacks are dropped (and counted in a warning); a cache that names no
    tensor of the model is refused at once, before quantization sees hundreds of
    thousands of names."""
    names: set[str] = set()
    graphs = [model.graph]
    while graphs:  # subgraphs (If/Loop/Scan) too, without recursion
        graph = graphs.pop()
        names.update(i.name for i in graph.input)
        names.update(t.name for t in graph.initializer)
        for node in graph.node:
            names.update(node.output)
            for attribute in node.attribute:
                if attribute.HasField("g"):
                    graphs.append(attribute.g)
                graphs.extend(attribute.graphs)
    kept = {n: r for n, r in user.ranges.ranges.items() if n in names}
    unknown = len(user.ranges.ranges) - len(kept)
    if not kept:
        example = next(iter(user.ranges.ranges))
        raise CalibrationCacheError(
            "TensorRT calibration cache names no tensor of this model (a cache of another "
            f"model?), e.g. {example!r}",
            path=str(user.path), tensors=len(user.ranges.ranges),
        )
    if unknown:
        logger.warning(
            "%s: %d tensor(s) of the calibration cache are not in the model; ignored",
            user.path, unknown,
            extra={"event": "calibration.user_cache.unknown_tensors", "count": unknown},
        )
    return TensorRanges(user.ranges.algorithm, kept, user.ranges.params)


def prepare_int8_from_user_cache(
    model_path: Path, config: BuildConfig, workdir: Path, *, consumer: str, model_hash: str,
) -> Any:
    """The Q/DQ graph of ``model_path`` with the user cache's scales as its ranges
    (range = scale * 127, symmetric). Judged only when calibration data is given too;
    otherwise the metadata says the ranges are not judged."""
    from trt_provision.calibration import precision as p
    from trt_provision.calibration.accuracy import accuracy_gate, compare_models
    from trt_provision.calibration.graph import load_model, match_pinned_nodes, preprocess_model
    from trt_provision.calibration.planner import resolve_calibration_key
    from trt_provision.calibration.qdq import quantize_qdq

    spec = config.calibration
    assert spec is not None and spec.trt_cache is not None
    name = str(model_path)
    user = read_user_trt_cache(spec.trt_cache)
    preprocessed = workdir / "preprocessed.onnx"
    preprocess_model(model_path, preprocessed)
    loaded = load_model(preprocessed)
    pinned = match_pinned_nodes(loaded, config.fp16_pinned_keywords, config.excluded_op_types)
    ranges = known_ranges(user, loaded)
    del loaded
    out = workdir / f"{model_path.stem}.{config.precision.value}.trt-cache.onnx"
    qdq = quantize_qdq(
        preprocessed, ranges, out, excluded=pinned,
        pinned_fp16=consumer == "tensorrt" or config.precision is PrecisionMode.MIXED,
        workdir=workdir / "qdq-trt-cache", consumer=consumer,
    )
    p._check_quantized(qdq, name, config)
    resolved = resolve_calibration_key(config, model_hash, model_path=model_path)
    accuracy: dict[str, Any]
    if spec.source is not None:
        data = p.load_splits(model_path, config, model_hash)
        gate = accuracy_gate(config)
        metric = p._metric(config, name)
        validation = compare_models(model_path, out, data.splits.validation,
                                      data="validation", model=name, metric=metric)
        test = compare_models(model_path, out, data.splits.test, data="test", model=name,
                                metric=metric)
        accuracy = p._judge(name, config, gate, validation, test, data.splits)
    else:
        accuracy = {"verdict": "not judged", "warning": NOT_JUDGED_NOTE}
        logger.warning(
            "%s: %s", name, NOT_JUDGED_NOTE,
            extra={"event": "calibration.user_cache.not_judged", "model": name},
        )
    metadata: dict[str, Any] = {
        "precision": config.precision.value,
        "calibration_key": resolved.key,
        "dataset_version": resolved.dataset_version,
        "calibration": {
            "source": "user TensorRT calibration cache",
            "trt_cache": str(user.path),
            "trt_cache_sha256": user.sha256,
            "algorithm": user.ranges.algorithm,
            "params": dict(user.ranges.params),
            "tensors": len(user.ranges.ranges),
            "note": NOT_JUDGED_NOTE if spec.source is None else
            "ranges from a user calibration cache; judged on the calibration data",
        },
        "quantization": {"format": "qdq",
                         **(qdq.options.to_metadata() if qdq.options is not None else {}),
                         "dequantize_nodes": qdq.quantized_nodes,
                         "quantized_nodes": qdq.quantized_ops,
                         "quantized_in_subgraphs": qdq.quantized_in_subgraphs,
                         "unquantized_without_range": list(qdq.unranged)},
        "pinned_layers": p._pinned_evidence(pinned, qdq.pinned_precision),
        "accuracy": accuracy,
    }
    return p.PreparedModel(model_path=out, metadata=metadata)
