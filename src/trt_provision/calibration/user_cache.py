"""A user's TensorRT calibration cache (trtexec ``--calib=FILE``) as the INT8 ranges of a build.

The file is TensorRT's text format (a ``TRT-<version>-<algorithm>`` header, then one
``tensor: <hex float32 scale>`` line per tensor, as ``write_trt_calibration_cache`` writes
it). It is read bounded and validated before use; its sha256 enters the calibration key, so a
different cache never reuses an engine. The precision stages quantize with these ranges; they
are not judged against data unless calibration data is given as well, and the build records
that plainly.
"""

from __future__ import annotations

import hashlib
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.calibration.ranges import TensorRanges, parse_trt_calibration_cache
from trt_provision.errors import CalibrationCacheError

__all__ = [
    "MAX_USER_CACHE_BYTES",
    "UserTrtCache",
    "known_ranges",
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

