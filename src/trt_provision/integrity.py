"""Engine integrity: ``sha256sum``-compatible sidecar and the JSON metadata sidecar.

``X.engine.sha256`` holds two lines, ``<64 hex>  X.engine`` and ``<64 hex>  X.engine.json``
(so ``sha256sum -c X.engine.sha256`` checks both in the engine's directory);
``X.engine.json`` holds identity, build config, I/O shapes, host, tool versions, timings and
evidence, including the engine's sha256 and file name. The metadata decides what a load
admits (memory budget, profiles, shapes), so it is covered like the engine: a sidecar of
the older one-line form verifies nothing about it and the engine is rebuilt. (Neither
line authenticates anything: whoever can rewrite one sidecar can rewrite both; a
signature over the metadata bytes does, ``trust.py``.)
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trt_provision._bounded import BoundedInputError
from trt_provision._bounded import loads_bounded as _loads_bounded
from trt_provision._fs import atomic_write_bytes, read_checked_file
from trt_provision.errors import EngineGateError

__all__ = [
    "MAX_METADATA_BYTES",
    "MAX_SIDECAR_BYTES",
    "MAX_SIGNATURE_FILE_BYTES",
    "METADATA_FORMAT",
    "PERF_SUFFIX",
    "SIDECAR_SUFFIXES",
    "format_sha256_line",
    "loads_bounded",
    "metadata_bytes",
    "parse_metadata_bytes",
    "parse_sha256_bytes",
    "parse_sha256_sidecar",
    "read_cache_file",
    "read_metadata",
    "read_sidecar_json",
    "sha256_file",
    "sha256_sidecar_bytes",
    "update_from_file",
    "write_metadata",
    "write_sha256_sidecar",
]

METADATA_FORMAT = 1
# Measured latency lives beside the engine in its own file: the metadata sidecar is what a
# fleet signature covers, so measuring an engine must never rewrite it.
PERF_SUFFIX = ".perf.json"
BLOCK_SIZE = 1 << 20  # 1 MiB: few syscalls, and each block is still in L2 when it is hashed
MAX_SIDECAR_BYTES = 4096
MAX_METADATA_BYTES = 16 << 20
MAX_SIGNATURE_FILE_BYTES = 4096  # one ASCII line; the trust policy refuses anything longer
# Every sidecar an engine may have.
SIDECAR_SUFFIXES = (".sha256", ".json", ".sig", PERF_SUFFIX)

_LINE_RE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


def update_from_file(digest: Any, path: Path, block_size: int = BLOCK_SIZE) -> int:
    """Feed a file into ``digest`` in one pass with a reused buffer; return its size."""
    size = 0
    buf = bytearray(block_size)
    view = memoryview(buf)
    # Opened without blocking and checked to be a regular file: a FIFO (or a device) named
    # as a model or engine would block, or never end. OSError, as for a missing file.
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise OSError(errno.EINVAL, "not a regular file", str(path))
    with open(fd, "rb", buffering=0) as fh:
        while n := fh.readinto(buf):
            digest.update(view[:n])
            size += n
    return size


def sha256_file(path: Path, block_size: int = BLOCK_SIZE) -> tuple[str, int]:
    """Hash a file in one pass; return (hex digest, size in bytes)."""
    digest = hashlib.sha256()
    size = update_from_file(digest, path, block_size)
    return digest.hexdigest(), size


def format_sha256_line(digest: str, filename: str) -> str:
    return f"{digest}  {filename}\n"


def sha256_sidecar_bytes(digest: str, engine_name: str, metadata: bytes) -> bytes:
    """The ``.sha256`` sidecar of an engine: its digest, then its metadata sidecar's."""
    return (
        format_sha256_line(digest, engine_name)
        + format_sha256_line(hashlib.sha256(metadata).hexdigest(), engine_name + ".json")
    ).encode()


def write_sha256_sidecar(engine_path: Path, digest: str, metadata: bytes) -> Path:
    sidecar = engine_path.with_name(engine_path.name + ".sha256")
    atomic_write_bytes(sidecar, sha256_sidecar_bytes(digest, engine_path.name, metadata))
    return sidecar


def read_cache_file(
    path: Path, cap: int, *, what: str, root: Path | None = None, check_owner: bool = True
) -> bytes:
    """Read a small file of the cache with every check an engine gets; EngineGateError if not.

    A regular file (a symlink only when it resolves inside ``root``; FIFOs, devices and
    sockets refused without blocking), owned by this user or root and not writable by
    others (``_fs.untrusted_reason``; skipped with ``check_owner=False``, for a file the
    user named on the command line), at most ``cap`` bytes: the descriptor is checked
    with ``fstat`` and at most ``cap + 1`` bytes are read, so ``/dev/zero`` or a file that
    grows meanwhile costs nothing.
    """
    return read_checked_file(
        path, cap, what=what, root=root, check_owner=check_owner, error=EngineGateError
    )


def parse_sha256_sidecar(
    sidecar: Path, engine_name: str, *, root: Path | None = None, metadata: bytes | None = None
) -> str:
    """Return the digest a sidecar claims for ``engine_name``; EngineGateError if unusable
    (or, with ``metadata``, when it does not cover exactly those metadata bytes)."""
    raw = read_cache_file(sidecar, MAX_SIDECAR_BYTES, what="sha256 sidecar", root=root)
    return parse_sha256_bytes(raw, sidecar, engine_name, metadata)


def parse_sha256_bytes(
    raw: bytes, sidecar: Path, engine_name: str, metadata: bytes | None = None
) -> str:
    """The engine digest of a ``.sha256`` sidecar's bytes.

    With ``metadata`` (the metadata sidecar's exact bytes), the sidecar must also carry
    their digest on a second line and it must match: a sidecar of the older one-line form
    does not, and is refused (the engine is rebuilt), never trusted.
    """
    where = str(sidecar)
    if len(raw) > MAX_SIDECAR_BYTES:
        raise EngineGateError("sha256 sidecar too large", path=where)
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise EngineGateError("sha256 sidecar is not ASCII", path=where) from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) not in (1, 2):
        raise EngineGateError(
            "sha256 sidecar must hold one line for the engine and one for its metadata",
            path=where, lines=len(lines),
        )
    found: list[tuple[str, str]] = []
    for line in lines:
        match = _LINE_RE.fullmatch(line)
        if match is None:
            raise EngineGateError("sha256 sidecar is malformed", path=where)
        found.append((match.group(1), match.group(2)))
    for (_, name), expected in zip(found, (engine_name, engine_name + ".json"), strict=False):
        if name != expected:
            raise EngineGateError(
                "sha256 sidecar is for another file", path=where, expected=expected, found=name
            )
    if metadata is not None:
        if len(found) < 2:
            raise EngineGateError(
                "sha256 sidecar does not cover the metadata sidecar (an older format); the "
                "metadata is not verified",
                path=where,
            )
        actual = hashlib.sha256(metadata).hexdigest()
        if actual != found[1][0]:
            raise EngineGateError(
                "metadata sidecar does not match its sha256 (edited or corrupt)",
                path=where, expected=found[1][0], found=actual,
            )
    return found[0][0]


def loads_bounded(
    raw: bytes, where: str, what: str = "metadata sidecar", cap: int = MAX_METADATA_BYTES
) -> Any:
    """``_bounded.loads_bounded`` (size and nesting checked before ``json.loads``) with its
    refusal as an EngineGateError."""
    try:
        return _loads_bounded(raw, max_bytes=cap, what=what)
    except BoundedInputError as exc:
        reason = str(exc).removeprefix(what).strip()
        raise EngineGateError(f"{what} {reason}", path=where) from exc


def read_sidecar_json(
    engine_path: Path, suffix: str, *, cap: int = MAX_METADATA_BYTES, root: Path | None = None
) -> Any:
    """Read and parse a JSON sidecar (e.g. ``.perf.json``) with the bounded, checked read."""
    path = engine_path.with_name(engine_path.name + suffix)
    what = f"{suffix} sidecar"
    raw = read_cache_file(path, cap, what=what, root=root)
    return loads_bounded(raw, str(path), what, cap)


def metadata_bytes(metadata: Mapping[str, Any]) -> bytes:
    return (json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_metadata(engine_path: Path, metadata: Mapping[str, Any]) -> Path:
    path = engine_path.with_name(engine_path.name + ".json")
    atomic_write_bytes(path, metadata_bytes(metadata))
    return path


def read_metadata(engine_path: Path, *, root: Path | None = None) -> dict[str, Any]:
    """Load and structurally check the metadata sidecar of ``engine_path``."""
    path = engine_path.with_name(engine_path.name + ".json")
    raw = read_cache_file(path, MAX_METADATA_BYTES, what="metadata sidecar", root=root)
    return parse_metadata_bytes(raw, path, engine_path.name)


def parse_metadata_bytes(raw: bytes, path: Path, engine_name: str) -> dict[str, Any]:
    """Parse (bounded depth) and structurally check metadata sidecar bytes."""
    if len(raw) > MAX_METADATA_BYTES:
        raise EngineGateError("metadata sidecar too large", path=str(path))
    data = loads_bounded(raw, str(path))
    if not isinstance(data, dict):
        raise EngineGateError("metadata sidecar is not a JSON object", path=str(path))
    for key, kind in (("format", int), ("engine", str), ("sha256", str), ("identity", dict)):
        if not isinstance(data.get(key), kind):
            raise EngineGateError(
                "metadata sidecar lacks a valid field",
                path=str(path),
                field=key,
                expected=kind.__name__,
            )
    if data["format"] != METADATA_FORMAT:
        raise EngineGateError(
            "metadata sidecar has an unknown format",
            path=str(path),
            expected=METADATA_FORMAT,
            found=data["format"],
        )
    if data["engine"] != engine_name:
        raise EngineGateError(
            "metadata sidecar is for another file",
            path=str(path),
            expected=engine_name,
            found=data["engine"],
        )
    return data
