"""The local engine cache: ``<root>/<model>/<filename>`` plus sidecars.

Publishing moves a fully written staged file into place (fsync → rename → fsync dir) and
only then writes the ``.sha256`` and ``.json`` sidecars, each atomically. A reader that
races a publish sees either no engine, or an engine whose sidecars do not verify yet (not
reusable), never a half engine with a valid sidecar.

Another local user must not be able to steer us: directories are created ``0755`` (``0700``
for a private cache) whatever the umask, and nothing is written into a cache directory,
model directory or lock directory that is a symlink, owned by another user or writable by
others (``_fs.untrusted_reason``). Lock files are opened with ``O_NOFOLLOW``.

A read-only cache (a device image, a cache shared read-only) serves reuse: nothing is
written unless a build or fetch needs it, and then the error says write access is needed.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from trt_provision._fs import (
    DIR_MODE,
    FILE_MODE,
    PRIVATE_DIR_MODE,
    PRIVATE_FILE_MODE,
    TEMP_PREFIX,
    fsync_dir,
    make_dirs,
    open_lock_file,
    publish_file,
    temp_path_for,
    untrusted_chain,
    untrusted_reason,
    write_temp_file,
)
from trt_provision.errors import StoreError, TrtProvisionError
from trt_provision.identity import ENGINE_SUFFIX, REFUSAL_SUFFIX
from trt_provision.integrity import (
    loads_bounded,
    metadata_bytes,
    read_cache_file,
    sha256_file,
    sha256_sidecar_bytes,
)
from trt_provision.types import EngineCacheEntry, EngineIdentity

__all__ = ["LocalEngineStore"]

log = logging.getLogger(__name__)

LOCK_DIR = ".locks"
_NO_WRITE_ACCESS = (errno.EACCES, errno.EPERM, errno.EROFS)
MAX_REFUSAL_BYTES = 256 << 10  # a refusal record: a reason and its evidence, never more


class LocalEngineStore:
    """Engine cache directory with per-identity fcntl locks and atomic publish.

    ``private``: directories ``0700`` and files ``0600`` (default ``0755`` / ``0644``).
    """

    def __init__(self, root: Path, *, private: bool = False) -> None:
        self._root = Path(root)
        self._dir_mode = PRIVATE_DIR_MODE if private else DIR_MODE
        self._file_mode = PRIVATE_FILE_MODE if private else FILE_MODE

    @property
    def root(self) -> Path:
        return self._root

    # ------------------------------------------------------------------ checks

    def ensure_usable(self) -> None:
        """Create the cache directory when it is missing and check nobody else can change
        it; StoreError otherwise. A read-only cache passes: reuse needs no write access."""
        if not os.path.lexists(self._root):
            try:
                make_dirs(self._root, self._dir_mode)
            except OSError as exc:
                raise StoreError(
                    f"cannot create cache directory: {exc.strerror}", path=str(self._root)
                ) from exc
        if not self._root.is_dir():
            raise StoreError("cache directory is not a directory", path=str(self._root))
        self._check_root()

    def ensure_writable(self) -> None:
        """``ensure_usable``, and prove the cache directory is writable (a build follows)."""
        self.ensure_usable()
        if not self.writable():
            raise StoreError(
                "cache directory is not writable: building or fetching an engine needs write "
                "access",
                path=str(self._root),
                fix="make it writable, or point --cache-dir at a writable directory",
            )

    def writable(self) -> bool:
        return os.access(self._root, os.W_OK | os.X_OK)

    def _check_root(self) -> None:
        found = untrusted_chain(self._root)
        if found is not None:
            raise StoreError(
                f"cache directory or a directory above it {found[1]}; another local user "
                f"could swap engines",
                path=str(found[0]),
                fix=found[2],
            )

    def _check_own_dir(self, directory: Path, what: str) -> None:
        """``directory`` (which exists) is a real directory nobody else can write."""
        try:
            st = os.lstat(directory)
        except OSError as exc:
            raise StoreError(f"cannot read {what}: {exc.strerror}", path=str(directory)) from exc
        if stat.S_ISLNK(st.st_mode):
            raise StoreError(
                f"{what} is a symlink; refusing to write through it",
                path=str(directory),
                fix=f"remove the symlink {directory}",
            )
        if not stat.S_ISDIR(st.st_mode):
            raise StoreError(f"{what} is not a directory", path=str(directory))
        untrusted = untrusted_reason(directory, st)
        if untrusted is not None:
            raise StoreError(f"{what} {untrusted[0]}", path=str(directory), fix=untrusted[1])

    def _own_dir(self, directory: Path, what: str) -> Path:
        """Create (exact mode) or check a directory of the cache before writing into it."""
        self._check_root()
        try:
            make_dirs(directory, self._dir_mode)
        except OSError as exc:
            if exc.errno in _NO_WRITE_ACCESS:
                raise self._read_only(exc) from exc
            if exc.errno != errno.ENOTDIR:
                raise StoreError(
                    f"cannot create {what}: {exc.strerror}", path=str(directory)
                ) from exc
        self._check_own_dir(directory, what)
        return directory

    def _read_only(self, exc: OSError) -> StoreError:
        return StoreError(
            "cache directory is read-only: building or fetching an engine needs write access",
            path=str(self._root),
            fix="make it writable, or point --cache-dir at a writable directory",
            errno=exc.errno,
        )

    # ------------------------------------------------------------------ layout

    def path_for(self, identity: EngineIdentity) -> Path:
        return self._root / identity.model_name / identity.filename

    @contextlib.contextmanager
    def lock(self, identity: EngineIdentity) -> Iterator[None]:
        """Exclusive inter-process lock for one identity (build + publish)."""
        lock_dir = self._own_dir(self._root / LOCK_DIR, "lock directory")
        lock_path = lock_dir / (identity.filename + ".lock")
        try:
            # O_NOFOLLOW: a planted (even dangling) symlink is refused, its target never made;
            # a FIFO never blocks; a file that is not ours is refused.
            fd = open_lock_file(lock_path, self._file_mode)
        except OSError as exc:
            if exc.errno in _NO_WRITE_ACCESS:
                raise self._read_only(exc) from exc
            raise StoreError(
                f"cannot create lock file: {exc.strerror}", path=str(lock_path)
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
            try:
                yield
            finally:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)

    def staging_path(self, identity: EngineIdentity) -> Path:
        """A fresh temp name beside the final engine (``.tmp-<pid>-<nonce>-<filename>``), in
        a model directory that is real and ours, so nobody can plant a link at it."""
        final = self.path_for(identity)
        self._own_dir(final.parent, "model directory")
        return temp_path_for(final)

    def publish(
        self, identity: EngineIdentity, staged_path: Path, metadata: Mapping[str, Any]
    ) -> EngineCacheEntry:
        final = self.path_for(identity)
        self._check_root()
        self._check_own_dir(final.parent, "model directory")
        if staged_path.parent != final.parent:
            raise StoreError(
                "staged engine is not in its model directory",
                path=str(staged_path),
                expected=str(final.parent),
            )
        try:
            st = os.lstat(staged_path)
        except FileNotFoundError:
            st = None
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_size == 0:
            raise StoreError("staged engine is missing or empty", path=str(staged_path))
        self._set_mode(staged_path)
        digest, size, full = _full_metadata(identity, staged_path, final.name, metadata)
        # Every byte is written (and fsynced) before anything is renamed, so a full disk
        # fails here and leaves the previous engine and its sidecars untouched.
        sha_final = final.with_name(final.name + ".sha256")
        json_final = final.with_name(final.name + ".json")
        temps: list[Path] = []
        try:
            meta = metadata_bytes(full)
            sha_lines = sha256_sidecar_bytes(digest, final.name, meta)
            temps.append(write_temp_file(sha_final, sha_lines, self._file_mode))
            temps.append(write_temp_file(json_final, meta, self._file_mode))
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

    @contextlib.contextmanager
    def staged_entry(
        self, identity: EngineIdentity, staged_path: Path, metadata: Mapping[str, Any]
    ) -> Iterator[EngineCacheEntry]:
        """The staged engine as an entry the engine gate can check: hard-linked under its
        final name, with its sidecars, into a private work directory of the model directory
        (``.tmp-<pid>-chk-*``, which ``cache gc`` removes when its writer died). Removed on
        exit; the staged file itself is untouched and still the one to publish."""
        final = self.path_for(identity)
        if staged_path.parent != final.parent:
            raise StoreError("staged engine is not in its model directory",
                             path=str(staged_path), expected=str(final.parent))
        self._set_mode(staged_path)
        workdir = Path(tempfile.mkdtemp(prefix=f"{TEMP_PREFIX}{os.getpid()}-chk-",
                                        dir=final.parent))
        try:
            engine = workdir / final.name
            try:
                os.link(staged_path, engine)
            except OSError:  # a file system without hard links: a copy, checked by hash
                shutil.copyfile(staged_path, engine)
                os.chmod(engine, self._file_mode)
            digest, _, full = _full_metadata(identity, engine, final.name, metadata)
            # The cache's file mode whatever the umask: the gate refuses writable sidecars.
            meta = metadata_bytes(full)
            # Two lines, as published: the gate checks the .json against the second.
            for suffix, data in ((".sha256", sha256_sidecar_bytes(digest, final.name, meta)),
                                 (".json", meta)):
                fd = os.open(engine.with_name(engine.name + suffix),
                             os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                             self._file_mode)
                with os.fdopen(fd, "wb") as out:
                    os.fchmod(out.fileno(), self._file_mode)
                    out.write(data)
            yield EngineCacheEntry(engine_path=engine, sha256=digest, identity=identity,
                                   size_bytes=full["size_bytes"], extras={"metadata": full})
        finally:
            shutil.rmtree(workdir, ignore_errors=True)

    # ------------------------------------------------------------------ verdict memory

    def refusal_path(self, identity: EngineIdentity) -> Path:
        return self.path_for(identity).with_name(identity.filename + REFUSAL_SUFFIX)

    def record_refusal(self, identity: EngineIdentity, record: Mapping[str, Any]) -> None:
        """Remember a refusal under the identity it was judged for (temp → fsync →
        rename). Best effort: a cache that cannot take it only costs the next run time."""
        path = self.refusal_path(identity)
        body = {**dict(record), "format": 1, "engine": identity.filename,
                "identity": identity.to_dict()}
        try:
            self._own_dir(path.parent, "model directory")
            tmp = write_temp_file(path, metadata_bytes(body), self._file_mode)
            os.replace(tmp, path)
            fsync_dir(path.parent)
        except (OSError, StoreError) as exc:
            log.warning("cannot remember the refusal of %s: %s", identity.filename, exc,
                        extra={"event": "engine.refusal.unwritable", "path": str(path)})

    def refusal(self, identity: EngineIdentity) -> Mapping[str, Any] | None:
        """The refusal recorded for ``identity``, or None: absent, or not one we can trust
        (a symlink, not ours, oversized, corrupt, another identity's) - then it is ignored
        and the engine is judged again."""
        path = self.refusal_path(identity)
        if not os.path.lexists(path):
            return None
        try:
            raw = read_cache_file(path, MAX_REFUSAL_BYTES, what="refusal record",
                                  root=None)
            record = loads_bounded(raw, str(path), what="refusal record",
                                   cap=MAX_REFUSAL_BYTES)
        except TrtProvisionError as exc:
            log.warning("ignoring the refusal record %s: %s", path.name, exc,
                        extra={"event": "engine.refusal.ignored", "path": str(path)})
            return None
        if (not isinstance(record, dict) or record.get("engine") != identity.filename
                or record.get("identity") != identity.to_dict()
                or not isinstance(record.get("reason"), str)):
            log.warning("ignoring the refusal record %s: it does not describe this engine",
                        path.name, extra={"event": "engine.refusal.ignored",
                                          "path": str(path)})
            return None
        return record

    def forget_refusal(self, identity: EngineIdentity) -> None:
        with contextlib.suppress(FileNotFoundError, NotADirectoryError):
            self.refusal_path(identity).unlink()

    def _set_mode(self, staged_path: Path) -> None:
        """The cache's file mode or stricter for the staged engine, whatever wrote it (a
        runtime may create it group/world-writable under umask 0)."""
        try:
            fd = os.open(staged_path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) & self._file_mode)
            finally:
                os.close(fd)
        except OSError as exc:
            raise StoreError(
                f"cannot publish engine: {exc.strerror}", path=str(staged_path)
            ) from exc

    def iter_engines(self) -> Iterator[Path]:
        """Every engine-named file one level under the root (symlinked model directories
        included, so ``verify`` reports them; the gate refuses them)."""
        if not self._root.is_dir():
            return
        for model_dir in sorted(self._root.iterdir()):
            if model_dir.name.startswith(".") or not model_dir.is_dir():
                continue
            for path in sorted(model_dir.iterdir()):
                if path.name.endswith(ENGINE_SUFFIX) and not path.name.startswith(TEMP_PREFIX):
                    yield path

    def clean_temp_files(self) -> list[Path]:
        """Remove temp files and work dirs left by killed runs: only names our schema
        proves are ours, whose writer pid is gone (``maintenance.stale_temps``). A
        read-only or untrusted cache is left alone."""
        from trt_provision.stores.maintenance import remove_paths, stale_temps

        if not self._root.is_dir() or not self.writable() or untrusted_chain(self._root):
            return []
        return remove_paths(self._root, stale_temps(self._root))


def _full_metadata(
    identity: EngineIdentity, engine: Path, name: str, metadata: Mapping[str, Any]
) -> tuple[str, int, dict[str, Any]]:
    """The digest, size and sidecar metadata of the engine file ``engine`` published as
    ``name``."""
    digest, size = sha256_file(engine)
    full = dict(metadata)
    full.update({"format": 1, "engine": name, "sha256": digest, "size_bytes": size,
                 "identity": identity.to_dict()})
    return digest, size, full
