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

from trt_provision.calibration.ranges import TensorRanges, parse_trt_calibration_cache
from trt_provision.errors import CalibrationCacheError

__all__ = [
    "MAX_USER_CACHE_BYTES",
    "UserTrtCache",
    "read_user_trt_cache",
]

logger = logging.getLogger(__name__)

# A calibration table has one short line per tensor: 16 MiB is far beyond any real model.
MAX_USER_CACHE_BYTES = 16 << 20


@dataclass(frozen=True)
class UserTrtCache:
    path: Path
    blob: bytes
    sha256: str
    ranges: TensorRanges


def read_user_trt_cache(path: str | Path) -> UserTrtCache:
    """Read, bound and parse a TensorRT calibration cache; CalibrationCacheError if it is not."""
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            blob = fh.read(MAX_USER_CACHE_BYTES + 1)
    except OSError as exc:
        raise CalibrationCacheError(
            f"cannot read TensorRT calibration cache: {exc.strerror}", path=str(path)
        ) from exc
    if len(blob) > MAX_USER_CACHE_BYTES:
        raise CalibrationCacheError(
            f"TensorRT calibration cache is larger than {MAX_USER_CACHE_BYTES >> 20} MiB",
            path=str(path),
        )
    try:
        ranges = parse_trt_calibration_cache(blob)
    except CalibrationCacheError as exc:
        raise CalibrationCacheError(exc.message, path=str(path), **exc.context) from exc
    if not ranges.ranges:
        raise CalibrationCacheError(
            "TensorRT calibration cache names no tensor", path=str(path)
        )
    return UserTrtCache(path, blob, hashlib.sha256(blob).hexdigest(), ranges)
