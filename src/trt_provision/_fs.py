"""Crash-safe file primitives (temp file → fsync → rename → fsync(dir)), the temp-name
schema, and the ownership policy for cache files and directories.

Ownership policy (the rule ssh applies to ``~/.ssh``): a file or directory of the cache is
trusted only when it is owned by the effective user or root and nobody else can write it
(no other-write bit; no group-write bit unless the group holds this user alone).
Directories above the cache root may also be sticky and owned by the user or root
(``/tmp``): there nobody else can rename or delete our entries. Anything on a read-only
mount is trusted (nobody can change it without remounting).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import os
import re
import stat
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from trt_provision.errors import StoreError, TrtProvisionError

__all__ = [
    "DIR_MODE",
    "FILE_MODE",
    "PRIVATE_DIR_MODE",
    "PRIVATE_FILE_MODE",
    "TEMP_PREFIX",
    "TempName",
    "atomic_write_bytes",
    "copy_file_atomic",
    "fsync_dir",
    "iter_temp_files",
    "locked_file",
    "make_dirs",
    "no_space_left",
    "open_lock_file",
    "parse_temp_name",
    "publish_file",
    "read_checked_file",
    "read_named_file",
    "temp_path_for",
    "untrusted_chain",
    "untrusted_reason",
    "write_temp_file",
    "writer_alive",
]

# Every temp file we create starts with this prefix, so readers skip it and gc can clean it.
TEMP_PREFIX = ".tmp-"
DIR_MODE = 0o755
PRIVATE_DIR_MODE = 0o700
FILE_MODE = 0o644
PRIVATE_FILE_MODE = 0o600

# Our temp names, and only ours: ``.tmp-<pid>-<hex nonce>-<final name>`` for files
# (``temp_path_for``, staging) and ``.tmp-<pid>-<ort|trt|chk>-<mkdtemp suffix>`` for the
# build (and engine check) work directories. ``.tmp-draft.txt`` or ``.tmp-editor-backup``
# do not parse, so nothing ever deletes them.
_TEMP_RE = re.compile(
    r"\.tmp-(?P<pid>[1-9][0-9]{0,9})-"
    r"(?:(?P<work>ort|trt|chk)-[a-z0-9_]{1,32}|[0-9a-f]{1,32}-(?P<final>[^/\x00]+))"
)


@dataclass(frozen=True)
class TempName:
    """What a temp name of ours says: the writer's pid, and the file it stands in for
    (``None`` for a build work directory)."""

    pid: int
    final: str | None

    @property
    def is_workdir(self) -> bool:
        return self.final is None


def parse_temp_name(name: str) -> TempName | None:
    """The parsed temp name, or None when ``name`` is not one we create."""
    match = _TEMP_RE.fullmatch(name)
    if match is None:
        return None
    return TempName(pid=int(match["pid"]), final=match["final"])


def writer_alive(pid: int) -> bool:
    """Whether the process that wrote a temp may still be running (ours counts as alive)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError as exc:
        return exc.errno == errno.EPERM
    return True


def temp_path_for(final: Path) -> Path:
    return final.with_name(f"{TEMP_PREFIX}{os.getpid()}-{uuid.uuid4().hex[:8]}-{final.name}")


def _read_only_mount(path: Path) -> bool:
    try:
        return bool(os.statvfs(path).f_flag & os.ST_RDONLY)
    except OSError:
        return False


@functools.lru_cache(maxsize=16)
def _private_group(gid: int) -> bool:
    """Whether group ``gid`` holds this user alone (a user-private group, as on systems
    whose default umask is 002): its write bit then lets nobody else in. Debian's ssh
    accepts the same."""
    try:
        import grp
        import pwd

        me = pwd.getpwuid(os.geteuid())
        group = grp.getgrgid(gid)
    except (ImportError, KeyError):
        return False
    if set(group.gr_mem) - {me.pw_name}:
        return False
    return all(p.pw_name == me.pw_name for p in pwd.getpwall() if p.pw_gid == gid) and (
        me.pw_gid == gid or me.pw_name in group.gr_mem
    )


def untrusted_reason(
    path: Path, st: os.stat_result, *, above_root: bool = False
) -> tuple[str, str] | None:
    """Why ``path`` (with lstat/fstat result ``st``) may not be trusted, with the fix, or
    None. ``above_root``: a directory above the cache root (sticky ones are fine)."""
    euid = os.geteuid()
    if st.st_uid not in (euid, 0):
        if _read_only_mount(path):
            return None
        return (
            f"is owned by uid {st.st_uid}, not by this user (uid {euid}) or root",
            f"chown {euid} {path}, or use a cache directory you own",
        )
    if stat.S_ISLNK(st.st_mode) or not st.st_mode & 0o022:
        return None
    if not st.st_mode & 0o002 and _private_group(st.st_gid):
        return None  # group-writable, but the group is ours alone (umask 002 distributions)
    if above_root and stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX:
        return None
    if _read_only_mount(path):
        return None
    return ("is writable by group or others", f"chmod go-w {path}")


def untrusted_chain(root: Path) -> tuple[Path, str, str] | None:
    """The first directory from ``/`` down to the cache root (symlinks resolved) that
    another user could change: ``(path, reason, fix)``; None when all are trusted or the
    root does not exist yet."""
    real = Path(os.path.realpath(root))
    for directory in (*reversed(real.parents), real):
        try:
            st = os.lstat(directory)
        except FileNotFoundError:
            return None
        except OSError:
            continue
        found = untrusted_reason(directory, st, above_root=directory != real)
        if found is not None:
            return (directory, *found)
    return None


def make_dirs(path: Path, mode: int = DIR_MODE) -> list[Path]:
    """Create ``path`` and its missing parents with exactly ``mode`` whatever the umask;
    return the directories created. Existing directories are left as they are; a
    symlink or a file where a directory should be raises OSError (ENOTDIR)."""
    path = Path(path)
    missing: list[Path] = []
    for candidate in (path, *path.parents):
        try:
            st = os.lstat(candidate)
        except FileNotFoundError:
            missing.append(candidate)
            continue
        if not stat.S_ISDIR(st.st_mode) and candidate == path:
            raise OSError(errno.ENOTDIR, "not a directory (or a symlink)", str(candidate))
        break
    created: list[Path] = []
    for directory in reversed(missing):
        try:
            os.mkdir(directory, mode)
        except FileExistsError:
            if not stat.S_ISDIR(os.lstat(directory).st_mode):
                raise
            continue
        # mkdir's mode is masked by the umask: set it exactly, through a descriptor that
        # refuses a symlink swapped in meanwhile.
        fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        try:
            os.fchmod(fd, mode)
        finally:
            os.close(fd)
        created.append(directory)
    return created


def no_space_left(path: Path, probe_bytes: int = 1 << 20) -> bool:
    """Whether the filesystem holding ``path`` (a file or directory) cannot take
    ``probe_bytes`` more right now. Used to name ENOSPC when a library that wrote a file
    reports it as something else (ONNX Runtime says "Protobuf serialization failed")."""
    directory = path if path.is_dir() else path.parent
    tmpfile = getattr(os, "O_TMPFILE", 0)
    if tmpfile:
        # An unnamed file: nothing to clean up, whatever happens next.
        try:
            fd = os.open(directory, os.O_RDWR | tmpfile, 0o600)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                return True
        else:
            try:
                os.posix_fallocate(fd, 0, probe_bytes)
                return False
            except OSError as exc:
                if exc.errno == errno.ENOSPC:
                    return True
            finally:
                os.close(fd)
    try:  # no O_TMPFILE or fallocate on this filesystem: ask it how much is free
        st = os.statvfs(directory)
    except OSError:
        return False
    free_blocks = st.f_bfree if os.geteuid() == 0 else st.f_bavail
    return free_blocks * st.f_frsize < probe_bytes


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
        # O_EXCL|O_NOFOLLOW: a planted file or symlink under this name is never written through.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
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


def iter_temp_files(directory: Path) -> Iterator[tuple[Path, TempName]]:
    """Entries of a real (not symlinked) directory whose names parse as our temp names."""
    try:
        if not stat.S_ISDIR(os.lstat(directory).st_mode):
            return
        names = sorted(os.listdir(directory))
    except OSError:
        return
    for name in names:
        parsed = parse_temp_name(name)
        if parsed is not None:
            yield directory / name, parsed


# ---------------------------------------------------------------- files we own or are named

# Never through a symlink, never waiting on a FIFO's writer (O_NONBLOCK has no effect on
# a regular file), never inherited by a child process.
_SAFE_OPEN = os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC


def read_checked_file(
    path: Path,
    cap: int,
    *,
    what: str,
    root: Path | None = None,
    check_owner: bool = True,
    error: type[TrtProvisionError] = StoreError,
) -> bytes:
    """Read a small file with every check a cache file gets; ``error`` (a
    TrtProvisionError subclass) naming ``what`` and the path if it fails one.

    A regular file (a symlink only when it resolves inside ``root``; FIFOs, devices and
    sockets refused without blocking), owned by this user or root and not writable by
    others (``untrusted_reason``; skipped with ``check_owner=False``), at most ``cap``
    bytes: the descriptor is checked with ``fstat`` and at most ``cap + 1`` bytes are
    read, so ``/dev/zero`` or a file that grows meanwhile costs nothing.
    """
    where = str(path)
    try:
        st = os.lstat(path)
    except FileNotFoundError as exc:
        raise error(f"{what} missing", path=where) from exc
    except (OSError, ValueError) as exc:  # ValueError: an embedded NUL
        raise error(f"{what} unreadable: {_reason(exc)}", path=where) from exc
    target = Path(path)
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(path))
        real_root = Path(os.path.realpath(root)) if root is not None else None
        if real_root is None or real_root not in target.parents:
            raise error(
                f"{what} is a symlink pointing outside the cache", path=where, found=str(target)
            )
    try:
        fd = os.open(target, os.O_RDONLY | _SAFE_OPEN)
    except FileNotFoundError as exc:
        raise error(f"{what} symlink is dangling", path=where) from exc
    except OSError as exc:
        raise error(f"{what} unreadable: {exc.strerror}", path=where) from exc
    try:
        fst = os.fstat(fd)
        if not stat.S_ISREG(fst.st_mode):
            raise error(f"{what} is not a regular file", path=where)
        if fst.st_size > cap:
            raise error(f"{what} too large", path=where, found=fst.st_size)
        untrusted = untrusted_reason(target, fst) if check_owner else None
        if untrusted is not None:
            raise error(f"{what} {untrusted[0]}", path=where, fix=untrusted[1])
        chunks: list[bytes] = []
        left = cap + 1
        while left > 0:
            chunk = os.read(fd, min(left, 1 << 20))
            if not chunk:
                break
            chunks.append(chunk)
            left -= len(chunk)
    except OSError as exc:
        raise error(f"{what} unreadable: {exc.strerror}", path=where) from exc
    finally:
        os.close(fd)
    raw = b"".join(chunks)
    if len(raw) > cap:
        raise error(f"{what} too large", path=where, found=f"> {cap} bytes")
    return raw


def read_named_file(
    path: Path, cap: int, *, what: str, error: type[TrtProvisionError] = StoreError
) -> bytes:
    """A file the user named (a key, a calibration table, a sidecar beside a named
    engine): symlinks followed, but only to a regular file; at most ``cap`` bytes; opened
    without blocking, so a FIFO or ``/dev/zero`` is refused instead of hanging or filling
    memory."""
    return read_checked_file(
        path, cap, what=what, root=Path(os.sep), check_owner=False, error=error
    )


def _reason(exc: BaseException) -> str:
    return exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)


def open_lock_file(
    path: Path, mode: int = FILE_MODE, *, error: type[TrtProvisionError] = StoreError
) -> int:
    """Open (creating it) a lock file of ours; return the descriptor.

    ``O_NOFOLLOW``: a planted symlink, even a dangling one, is refused and its target is
    never created; ``O_NONBLOCK``: a FIFO planted under the name never blocks the open.
    The descriptor must be a regular file owned by us (or root) that nobody else can
    write, else ``error``. Other OSErrors (no write access) propagate for the caller.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | _SAFE_OPEN, mode)
    except OSError as exc:
        if exc.errno == errno.ELOOP:
            raise error(
                "lock file is a symlink; refusing to follow it", path=str(path),
                fix=f"remove {path}",
            ) from exc
        raise
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise error("lock file is not a regular file", path=str(path), fix=f"remove {path}")
        untrusted = untrusted_reason(Path(path), st)
        if untrusted is not None:
            raise error(f"lock file {untrusted[0]}", path=str(path), fix=untrusted[1])
    except BaseException:
        os.close(fd)
        raise
    return fd


@contextlib.contextmanager
def locked_file(
    path: Path, mode: int = FILE_MODE, *, error: type[TrtProvisionError] = StoreError
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on the lock file ``path`` (``open_lock_file``); an
    OSError while opening it is ``error`` naming the path."""
    try:
        fd = open_lock_file(path, mode, error=error)
    except OSError as exc:
        raise error(f"cannot open lock file: {exc.strerror}", path=str(path)) from exc
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


def copy_file_atomic(src: Path, final: Path, mode: int = FILE_MODE) -> None:
    """Copy ``src`` to ``final`` through a temp file created with exactly ``mode`` (or
    stricter, by the umask) and renamed over it; StoreError if it cannot.

    An existing ``final`` that is not a regular file (a FIFO, a device such as
    ``/dev/null``, a directory, or a symlink to one of them) is refused, never replaced:
    a copy must not swap a device node of the host for a file.
    """
    try:
        st = os.stat(final)
    except FileNotFoundError:
        st = None
    except OSError as exc:
        raise _store_error("write file", final, exc) from exc
    if st is not None and not stat.S_ISREG(st.st_mode):
        raise StoreError(
            "refusing to replace an existing file that is not a regular file (a device, "
            "FIFO, socket or directory)",
            path=str(final),
            fix="name a regular file or a new path",
        )
    tmp = temp_path_for(final)
    try:
        # O_EXCL|O_NOFOLLOW: nothing planted under the temp name is written through.
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                      mode)
        try:
            src_fd = os.open(src, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            try:
                if not stat.S_ISREG(os.fstat(src_fd).st_mode):
                    raise OSError(errno.EINVAL, "source is not a regular file", str(src))
                while chunk := os.read(src_fd, 1 << 20):
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(out, view):]
            finally:
                os.close(src_fd)
            os.fsync(out)
        finally:
            os.close(out)
        os.replace(tmp, final)
        fsync_dir(final.parent)
    except OSError as exc:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise _store_error("write file", final, exc) from exc
