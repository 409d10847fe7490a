"""Crash-safe file primitives: temp file → fsync → rename → fsync(dir)."""

from __future__ import annotations

import contextlib
import errno
import os
import uuid
from collections.abc import Iterator
from pathlib import Path

from trt_provision.errors import StoreError

__all__ = [
    "TEMP_PREFIX",
    "atomic_write_bytes",
    "fsync_dir",
    "iter_temp_files",
    "publish_file",
    "temp_path_for",
    "write_temp_file",
]

# Every temp file we create starts with this prefix, so readers skip it and gc can clean it.
TEMP_PREFIX = ".tmp-"


def temp_path_for(final: Path) -> Path:
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}")


def fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _store_error(action: str, path: Path, exc: OSError) -> StoreError:
    reason = "no space left on device" if exc.errno == errno.ENOSPC else exc.strerror
    return StoreError(f"cannot {action}: {reason}", path=str(path), errno=exc.errno)


def write_temp_file(final: Path, data: bytes, mode: int = 0o644) -> Path:
    """Write and fsync ``data`` to a temp file beside ``final``; the caller renames it."""
    tmp = temp_path_for(final)
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _store_error("write file", final, exc) from exc
    return tmp


def atomic_write_bytes(final: Path, data: bytes, mode: int = 0o644) -> None:
    """Write ``data`` so that ``final`` is either its old content or all of ``data``."""
    tmp = write_temp_file(final, data, mode)
    try:
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _store_error("write file", final, exc) from exc


def publish_file(staged: Path, final: Path) -> None:
    """fsync a fully written staged file and rename it over ``final``."""
    try:
        fd = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(staged, final)
        fsync_dir(final.parent)
    except OSError as exc:
        raise _store_error("publish file", final, exc) from exc


def iter_temp_files(directory: Path) -> Iterator[Path]:
    if directory.is_dir():
        yield from (p for p in directory.iterdir() if p.name.startswith(TEMP_PREFIX))
