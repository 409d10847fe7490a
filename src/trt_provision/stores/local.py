"""The local engine cache: ``<root>/<model>/<filename>`` plus sidecars.

Publishing moves a fully written staged file into place (fsync → rename → fsync dir) and
only then writes the ``.sha256`` and ``.json`` sidecars, each atomically. A reader that
races a publish sees either no engine, or an engine whose sidecars do not verify yet (not
reusable), never a half engine with a valid sidecar.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from trt_provision._fs import (
    TEMP_PREFIX,
    fsync_dir,
    iter_temp_files,
    publish_file,
    write_temp_file,
)
from trt_provision.errors import StoreError
from trt_provision.identity import ENGINE_SUFFIX
from trt_provision.integrity import format_sha256_line, metadata_bytes, sha256_file
from trt_provision.types import EngineCacheEntry, EngineIdentity

__all__ = ["LocalEngineStore"]

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"


class LocalEngineStore:
    """Engine cache directory with per-identity fcntl locks and atomic publish."""

    def __init__(self, root: Path) -> None:
        self._root = Path(root)

    @property
    def root(self) -> Path:
        return self._root

    def ensure_writable(self) -> None:
        """Create the cache directory and prove it is writable, or raise StoreError."""
        try:
            self._root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create cache directory: {exc.strerror}", path=str(self._root)
            ) from exc
        if not os.access(self._root, os.W_OK | os.X_OK):
            raise StoreError("cache directory is not writable", path=str(self._root))

    def path_for(self, identity: EngineIdentity) -> Path:
        return self._root / identity.model_name / identity.filename

    @contextlib.contextmanager
    def lock(self, identity: EngineIdentity) -> Iterator[None]:
        """Exclusive inter-process lock for one identity (build + publish)."""
        lock_dir = self._root / LOCK_DIR
        try:
            lock_dir.mkdir(parents=True, exist_ok=True)
            fd = os.open(lock_dir / (identity.filename + ".lock"), os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise StoreError(
                f"cannot create lock file: {exc.strerror}", path=str(lock_dir)
            ) from exc
        try:
            started = time.monotonic()
            fcntl.flock(fd, fcntl.LOCK_EX)
            waited = time.monotonic() - started
            if waited > 0.05:
                log.info(
                    "waited %.2f s for the build lock of %s",
                    waited,
                    identity.filename,
                    extra={"event": "engine.lock.waited", "seconds": waited},
                )
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
            os.close(fd)

    def staging_path(self, identity: EngineIdentity) -> Path:
        final = self.path_for(identity)
        try:
            final.parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StoreError(
                f"cannot create model directory: {exc.strerror}", path=str(final.parent)
            ) from exc
        return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{time.time_ns()}-{final.name}")

    def publish(
        self, identity: EngineIdentity, staged_path: Path, metadata: Mapping[str, Any]
    ) -> EngineCacheEntry:
        final = self.path_for(identity)
        if not staged_path.is_file() or staged_path.stat().st_size == 0:
            raise StoreError("staged engine is missing or empty", path=str(staged_path))
        digest, size = sha256_file(staged_path)
        full = dict(metadata)
        full.update(
            {
                "format": 1,
                "engine": final.name,
                "sha256": digest,
                "size_bytes": size,
                "identity": identity.to_dict(),
            }
        )
        # Every byte is written (and fsynced) before anything is renamed, so a full disk
        # fails here and leaves the previous engine and its sidecars untouched.
        sha_final = final.with_name(final.name + ".sha256")
        json_final = final.with_name(final.name + ".json")
        temps: list[Path] = []
        try:
            sha_line = format_sha256_line(digest, final.name).encode()
            temps.append(write_temp_file(sha_final, sha_line))
            temps.append(write_temp_file(json_final, metadata_bytes(full)))
            # A signature of the engine being replaced would not verify for the new one and
            # would make a trust-checking gate refuse it forever: it goes first.
            with contextlib.suppress(FileNotFoundError):
                final.with_name(final.name + ".sig").unlink()
            # Engine first, sidecars after: until both agree with it, it is not reusable.
            publish_file(staged_path, final)
            os.replace(temps[0], sha_final)
            os.replace(temps[1], json_final)
            fsync_dir(final.parent)
        except OSError as exc:
            raise StoreError(f"cannot publish engine: {exc.strerror}", path=str(final)) from exc
        finally:
            for tmp in temps:
                with contextlib.suppress(FileNotFoundError):
                    tmp.unlink()
        return EngineCacheEntry(
            engine_path=final,
            sha256=digest,
            identity=identity,
            size_bytes=size,
            extras={"metadata": full},
        )

    def iter_engines(self) -> Iterator[Path]:
        if not self._root.is_dir():
            return
        for model_dir in sorted(self._root.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            for path in sorted(model_dir.iterdir()):
                if path.name.endswith(ENGINE_SUFFIX) and not path.name.startswith(TEMP_PREFIX):
                    yield path

    def clean_temp_files(self) -> list[Path]:
        """Remove temp files and work dirs left by killed runs (their writer pid is gone)."""
        removed: list[Path] = []
        if not self._root.is_dir():
            return removed
        dirs = [self._root, *(d for d in self._root.iterdir() if d.is_dir())]
        for directory in dirs:
            for tmp in iter_temp_files(directory):
                # A live writer's temp is never removed, however long its build takes.
                if _writer_alive(tmp.name):
                    continue
                with contextlib.suppress(FileNotFoundError):
                    if tmp.is_dir() and not tmp.is_symlink():
                        shutil.rmtree(tmp)
                    else:
                        tmp.unlink()
                    removed.append(tmp)
        return removed


def _writer_alive(temp_name: str) -> bool:
    """Temp names carry the writer's pid: ``.tmp-<pid>-<nonce>-<name>``."""
    try:
        pid = int(temp_name[len(TEMP_PREFIX) :].split("-", 1)[0])
    except ValueError:
        return False
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True
