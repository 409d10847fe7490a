"""Persistent TensorRT timing cache per (TensorRT version, sm), merged under a file lock.

Builds are long, so the lock is held only to read the cache before a build and to merge the
build's cache back into whatever is on disk afterwards (another process may have written in
between); ``ITimingCache.combine`` does the merge and the file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trt_provision._fs import atomic_write_bytes, locked_file, make_dirs, read_checked_file
from trt_provision.errors import StoreError

__all__ = ["TimingCacheFile", "locked_timing_cache", "timing_cache_path"]

log = logging.getLogger(__name__)

# Timing caches hold a few MiB per model family; a larger file is not one of ours.
MAX_TIMING_CACHE_BYTES = 1 << 30


def timing_cache_path(directory: Path, trt_version: str, sm: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"trt-{trt_version}.{sm}")
    return Path(directory) / f"{safe}.timing-cache"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    try:
        make_dirs(path.parent)
    except OSError as exc:
        raise StoreError(
            f"cannot create timing cache directory: {exc.strerror}", path=str(path.parent)
        ) from exc
    # O_NOFOLLOW | O_NONBLOCK, fstat, owner: a planted symlink or FIFO is refused.
    with locked_file(path.with_name(path.name + ".lock")):
        yield


def _read(path: Path) -> bytes:
    """The cache file's bytes (empty when absent), read like every file we own."""
    if not os.path.lexists(path):
        return b""
    return read_checked_file(path, MAX_TIMING_CACHE_BYTES, what="timing cache")


def locked_timing_cache(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the cache file's inter-process lock (for a builder that rewrites it itself)."""
    return _locked(path)


class TimingCacheFile:
    """Load into a builder config before a build; merge back after it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.loaded_bytes = 0

    def attach(self, config: Any) -> Any | None:
        """Create the config's timing cache from disk (empty if absent) and set it.

        None when TensorRT refuses it (``set_timing_cache`` returns False, e.g. a cache from
        another device or version: NvInfer.h, ``IBuilderConfig::setTimingCache``): the build
        then runs without a cache and the file on disk is left as it is.
        """
        with _locked(self.path):
            data = _read(self.path)
        self.loaded_bytes = len(data)
        timing_cache = config.create_timing_cache(data)
        if timing_cache is None or not config.set_timing_cache(timing_cache, False):
            log.warning(
                "TensorRT refused the timing cache; building without it",
                extra={"event": "trt.timing_cache.refused", "path": str(self.path)},
            )
            return None
        return timing_cache

    def merge_back(self, config: Any, timing_cache: Any) -> int:
        """Combine the build's cache with the file's current content; return bytes written."""
        with _locked(self.path):
            on_disk = _read(self.path)
            merged = config.create_timing_cache(on_disk)
            if merged is None or not merged.combine(timing_cache, False):
                # combine returns False on a mismatched cache (NvInfer.h,
                # ITimingCache::combine): keep what is on disk rather than overwrite it.
                log.warning(
                    "TensorRT could not merge the timing cache; the file is left as it is",
                    extra={"event": "trt.timing_cache.merge_failed", "path": str(self.path)},
                )
                return 0
            data = bytes(merged.serialize())
            atomic_write_bytes(self.path, data)
        log.info(
            "timing cache merged",
            extra={"event": "trt.timing_cache.merged", "path": str(self.path), "bytes": len(data)},
        )
        return len(data)
