"""Persistent TensorRT timing cache per (TensorRT version, sm, device), merged under a lock.

A timing cache holds measured tactic timings: they belong to one device model, not to an
architecture (an A30 and an A100 are both sm80); the device name joins the key.

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

__all__ = [
    "TimingCacheFile",
    "locked_timing_cache",
    "private_copy",
    "publish_copy",
    "timing_cache_path",
]

log = logging.getLogger(__name__)

# Timing caches hold a few MiB per model family; a larger file is not one of ours.
MAX_TIMING_CACHE_BYTES = 1 << 30


def timing_cache_path(
    directory: Path, trt_version: str, sm: str, device: str | None = None
) -> Path:
    key = f"trt-{trt_version}.{sm}" + (f".{device}" if device else "")
    safe = re.sub(r"[^A-Za-z0-9_.+-]", "_", key)
    return Path(directory) / f"{safe}.timing-cache"


def private_copy(path: Path, copy: Path) -> bytes:
    """Copy the shared cache file (empty when absent) to ``copy`` under its lock, so a tool
    that rewrites the file in place (trtexec) works on its own copy; returns the bytes."""
    with _locked(path):
        data = _read(path)
    atomic_write_bytes(copy, data)
    return data


def publish_copy(path: Path, before: bytes, copy: Path, config: Any | None) -> bool:
    """Bring a private copy back: replace the shared file when nobody changed it since
    :func:`private_copy`, else merge through ``ITimingCache.combine`` when a builder config
    is at hand, else leave the shared file as it is. Returns whether it was updated."""
    if not copy.exists():
        return False
    after = _read(copy)
    with _locked(path):
        current = _read(path)
        if current == before:
            if after and after != before:
                atomic_write_bytes(path, after)
                return True
            return False
        if config is None:
            log.info("timing cache changed meanwhile; this build's copy is not merged",
                     extra={"event": "trt.timing_cache.skipped", "path": str(path)})
            return False
        merged = config.create_timing_cache(current)
        theirs = config.create_timing_cache(after)
        if merged is None or theirs is None or not merged.combine(theirs, False):
            log.warning("TensorRT could not merge the timing cache; the file is left as it is",
                        extra={"event": "trt.timing_cache.merge_failed", "path": str(path)})
            return False
        atomic_write_bytes(path, bytes(merged.serialize()))
        return True


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
