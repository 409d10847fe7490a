"""Persistent TensorRT timing cache per (TensorRT version, sm), merged under a file lock.

Builds are long, so the lock is held only to read the cache before a build and to merge the
build's cache back into whatever is on disk afterwards (another process may have written in
between); ``ITimingCache.combine`` does the merge and the file is replaced atomically.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trt_provision._fs import atomic_write_bytes

__all__ = ["TimingCacheFile", "locked_timing_cache", "timing_cache_path"]

log = logging.getLogger(__name__)


def timing_cache_path(directory: Path, trt_version: str, sm: str) -> Path:
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", f"trt-{trt_version}.{sm}")
    return Path(directory) / f"{safe}.timing-cache"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    lock_path = path.with_name(path.name + ".lock")
    with open(lock_path, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def locked_timing_cache(path: Path) -> contextlib.AbstractContextManager[None]:
    """Hold the cache file's inter-process lock (for a builder that rewrites it itself)."""
    return _locked(path)


class TimingCacheFile:
    """Load into a builder config before a build; merge back after it."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path)
        self.loaded_bytes = 0

    def attach(self, config: Any) -> Any:
        """Create the config's timing cache from disk (empty if absent) and set it."""
        with _locked(self.path):
            data = self.path.read_bytes() if self.path.exists() else b""
        self.loaded_bytes = len(data)
        timing_cache = config.create_timing_cache(data)
        config.set_timing_cache(timing_cache, False)
        return timing_cache

    def merge_back(self, config: Any, timing_cache: Any) -> int:
        """Combine the build's cache with the file's current content; return bytes written."""
        with _locked(self.path):
            on_disk = self.path.read_bytes() if self.path.exists() else b""
            merged = config.create_timing_cache(on_disk)
            merged.combine(timing_cache, False)
            data = bytes(merged.serialize())
            atomic_write_bytes(self.path, data)
        log.info(
            "timing cache merged",
            extra={"event": "trt.timing_cache.merged", "path": str(self.path), "bytes": len(data)},
        )
        return len(data)
