"""The governed calibration cache: a keyed blob plus two sidecars, replaced atomically.

On disk, for one model and precision::

    <stem>.<hash16>.<precision>.calib                 magic line + JSON header line + payload
    <stem>.<hash16>.<precision>.calib.sha256          "<sha256 of the blob>  <blob file name>"
    <stem>.<hash16>.<precision>.calib.dataset_sha256  dataset version of the payload

(``hash16``: the first 16 hex digits of the model's sha256; the TensorRT calibration cache
of the same model sits beside it as ``<stem>.<hash16>.<precision>.trt.calib``.)

The blob starts with the magic line ``TRTPCAL`` and a one-line JSON header (format version,
key, algorithm, created-by, dataset version, payload kind), then the payload bytes. Reuse
needs the header key to match and both sidecars to agree; a different key means *stale*
(recalibrate and replace); a malformed or disagreeing sidecar or blob is an error and the
files are left untouched for a person to inspect. With governance off, a raw TensorRT
calibration cache (no header) is accepted as it is.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_provision._fs import (
    atomic_write_bytes,
    fsync_dir,
    locked_file,
    make_dirs,
    read_checked_file,
    untrusted_chain,
)
from trt_provision._version import __version__
from trt_provision.errors import CalibrationCacheError, StoreError

__all__ = [
    "FORMAT_VERSION",
    "CacheHeader",
    "CacheLookup",
    "GovernedCalibrationCache",
    "cache_path_for",
    "calibration_key",
    "decode_blob",
    "encode_blob",
]

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MODEL_HASH_PREFIX = 16  # 64 bits of the model sha256 in the cache file name
MAGIC = b"TRTPCAL\n"
# Ranges of one tensor take a line: far beyond any real model, and bounded.
MAX_BLOB_BYTES = 64 << 20
MAX_SIDECAR_BYTES = 4096
_SHA_RE = re.compile(r"[0-9a-f]{64}")
_DATASET_RE = re.compile(r"[\x21-\x7e]{1,256}")
_STEM_RE = re.compile(r"[^A-Za-z0-9_-]+")
_HEADER_FIELDS = ("format_version", "key", "algorithm", "created_by", "dataset_version",
                  "payload_kind")


def calibration_key(
    *,
    model_hash: str,
    precision: str,
    dataset_version: str,
    algorithm: str,
    algorithm_params: Mapping[str, Any],
    plugins: Sequence[tuple[str, str, str]] = (),
    pinned_keywords: Sequence[str] = (),
    excluded_op_types: Sequence[str] = (),
    tool_version: str = __version__,
) -> str:
    """sha256 over everything a calibration result depends on (canonical JSON)."""
    payload = {
        "model": model_hash,
        "plugins": sorted([list(p) for p in plugins]),
        "precision": precision,
        "pinned_keywords": sorted(set(pinned_keywords)),
        "excluded_op_types": sorted(set(excluded_op_types)),
        "dataset_version": dataset_version,
        "algorithm": algorithm,
        "algorithm_params": dict(sorted(algorithm_params.items())),
        "tool_version": tool_version,
    }
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def cache_path_for(
    cache_dir: Path,
    model_stem: str,
    precision: str,
    *,
    model_hash: str | None = None,
    kind: str = "",
) -> Path:
    """Key-independent path, so a stale cache of the same model is found and replaced.

    ``<stem>.<model hash prefix>.<precision>[.<kind>].calib``: the stem keeps the name
    readable, the model hash keeps two models with the same file name apart, and ``kind``
    separates payloads that must not replace each other (the TensorRT cache next to ranges).
    """
    stem = _STEM_RE.sub("_", model_stem).strip("_") or "model"
    parts = [stem]
    if model_hash:
        digest = model_hash.split(":")[-1].lower()
        if not re.fullmatch(r"[0-9a-f]{16,}", digest):
            raise ValueError(f"model hash must be hex (16+ chars), got {model_hash!r}")
        parts.append(digest[:MODEL_HASH_PREFIX])
    parts.append(_STEM_RE.sub("_", precision))
    if kind:
        parts.append(_STEM_RE.sub("_", kind))
    return Path(cache_dir) / (".".join(parts) + ".calib")


@dataclass(frozen=True)
class CacheHeader:
    key: str
    algorithm: str
    dataset_version: str
    payload_kind: str  # "ranges-json" | "trt-calibration-cache"
    created_by: str = f"trt-provision {__version__}"
    format_version: int = FORMAT_VERSION

    def __post_init__(self) -> None:
        if not _SHA_RE.fullmatch(self.key):
            raise ValueError(f"calibration key must be 64 lowercase hex chars, got {self.key!r}")
        if not _DATASET_RE.fullmatch(self.dataset_version):
            raise ValueError(f"dataset version is not printable ASCII: {self.dataset_version!r}")

    def to_dict(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in _HEADER_FIELDS}


@dataclass(frozen=True)
class CacheLookup:
    """What a lookup found. ``payload`` is set for ``hit`` and ``legacy``."""

    status: str  # hit | miss | stale | incomplete | legacy
    path: Path
    header: CacheHeader | None = None
    payload: bytes | None = None
    details: Mapping[str, Any] = field(default_factory=dict)

    @property
    def usable(self) -> bool:
        return self.status in ("hit", "legacy")


def encode_blob(header: CacheHeader, payload: bytes) -> bytes:
    line = json.dumps(header.to_dict(), sort_keys=True, separators=(",", ":")).encode()
    return MAGIC + line + b"\n" + payload


def decode_blob(data: bytes) -> tuple[CacheHeader, bytes]:
    """Split a governed blob into header and payload; CalibrationCacheError if malformed."""
    if not data.startswith(MAGIC):
        raise CalibrationCacheError("calibration cache blob has no trt-provision header")
    end = data.find(b"\n", len(MAGIC))
    if end < 0:
        raise CalibrationCacheError("calibration cache header is not terminated")
    try:
        raw = json.loads(data[len(MAGIC) : end].decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise CalibrationCacheError(f"calibration cache header is not JSON: {exc}") from exc
    if not isinstance(raw, dict) or set(raw) != set(_HEADER_FIELDS):
        raise CalibrationCacheError(
            "calibration cache header has unexpected fields",
            expected=list(_HEADER_FIELDS), found=sorted(raw) if isinstance(raw, dict) else None,
        )
    if raw["format_version"] != FORMAT_VERSION:
        raise CalibrationCacheError(
            "unsupported calibration cache format version",
            expected=FORMAT_VERSION, found=raw["format_version"],
        )
    if not all(isinstance(raw[k], str) for k in _HEADER_FIELDS if k != "format_version"):
        raise CalibrationCacheError("calibration cache header fields must be strings")
    try:
        header = CacheHeader(
            key=raw["key"], algorithm=raw["algorithm"], dataset_version=raw["dataset_version"],
            payload_kind=raw["payload_kind"], created_by=raw["created_by"],
            format_version=raw["format_version"],
        )
    except ValueError as exc:
        raise CalibrationCacheError(f"calibration cache header is invalid: {exc}") from exc
    return header, data[end + 1 :]


class GovernedCalibrationCache:
    """One calibration cache file and its sidecars."""

    def __init__(self, path: Path, *, governed: bool = True) -> None:
        self.path = Path(path)
        self.governed = governed

    @property
    def sha256_path(self) -> Path:
        return self.path.with_name(self.path.name + ".sha256")

    @property
    def dataset_path(self) -> Path:
        return self.path.with_name(self.path.name + ".dataset_sha256")

    @property
    def lock_path(self) -> Path:
        return self.path.with_name(self.path.name + ".lock")

    def _check_dir(self) -> None:
        """The directory (and every one above it) is one nobody else can change, as for
        the engine cache: another user's directory could plant links or swap files."""
        found = untrusted_chain(self.path.parent)
        if found is not None:
            raise CalibrationCacheError(
                f"calibration cache directory or a directory above it {found[1]}; another "
                "local user could swap calibration files",
                path=str(found[0]),
                fix=found[2],
            )

    @contextlib.contextmanager
    def lock(self) -> Iterator[None]:
        """Exclusive advisory lock, so two builds do not calibrate the same model at once.

        The lock file is opened like every file we own (``_fs.open_lock_file``): a planted
        symlink is refused, never followed, and a FIFO never blocks."""
        self._check_dir()
        try:
            make_dirs(self.path.parent)
        except OSError as exc:
            raise CalibrationCacheError(
                f"cannot create calibration cache directory: {exc.strerror}",
                path=str(self.path.parent),
            ) from exc
        with locked_file(self.lock_path, error=CalibrationCacheError):
            yield

    # -------------------------------------------------------------- reading

    def _read(self, path: Path, cap: int = MAX_SIDECAR_BYTES) -> bytes:
        # O_NOFOLLOW | O_NONBLOCK, fstat: a regular file of ours, bounded; a FIFO or a
        # symlink planted under our name is refused without blocking.
        return read_checked_file(
            path, cap, what="calibration cache file", error=CalibrationCacheError
        )

    def _read_sha_sidecar(self) -> str | None:
        if not os.path.lexists(self.sha256_path):
            return None
        text = self._read(self.sha256_path).decode("utf-8", errors="replace").strip()
        parts = text.split()
        if len(parts) != 2 or not _SHA_RE.fullmatch(parts[0]) or parts[1] != self.path.name:
            raise CalibrationCacheError(
                "calibration cache .sha256 sidecar is malformed; delete the cache files to "
                "recalibrate",
                path=str(self.sha256_path),
            )
        return parts[0]

    def _read_dataset_sidecar(self) -> str | None:
        if not os.path.lexists(self.dataset_path):
            return None
        text = self._read(self.dataset_path).decode("utf-8", errors="replace")
        value = text[:-1] if text.endswith("\n") else text
        if not _DATASET_RE.fullmatch(value):
            raise CalibrationCacheError(
                "calibration cache .dataset_sha256 sidecar is malformed; delete the cache "
                "files to recalibrate",
                path=str(self.dataset_path),
            )
        return value

    def load(self, key: str, dataset_version: str) -> CacheLookup:
        """Look the cache up for ``key``; never modifies anything on disk."""
        self._check_dir()
        if not os.path.lexists(self.path):
            return CacheLookup("miss", self.path)
        if not self.governed:
            return self._load_ungoverned(key)
        # Both sidecars are checked for well-formedness first, so a malformed one is
        # reported even when the cache would be stale (and is then never overwritten).
        recorded_sha = self._read_sha_sidecar()
        recorded_dataset = self._read_dataset_sidecar()
        if recorded_sha is None:
            # A crash between blob and sidecar (sidecars are written last): not trusted.
            logger.warning(
                "calibration cache has no .sha256 sidecar; recalibrating",
                extra={"event": "calibration.cache.incomplete", "path": str(self.path)},
            )
            return CacheLookup("incomplete", self.path)
        data = self._read(self.path, MAX_BLOB_BYTES)
        actual = hashlib.sha256(data).hexdigest()
        if actual != recorded_sha:
            raise CalibrationCacheError(
                "calibration cache does not match its .sha256 sidecar (corrupt or modified); "
                "delete the cache files to recalibrate",
                path=str(self.path), expected=recorded_sha, found=actual,
            )
        header, payload = decode_blob(data)
        if header.key != key:
            logger.info(
                "calibration cache is stale; recalibrating",
                extra={
                    "event": "calibration.cache.stale", "path": str(self.path),
                    "cached_key": header.key, "key": key,
                },
            )
            return CacheLookup("stale", self.path, header=header,
                               details={"cached_key": header.key})
        if recorded_dataset is None:
            logger.warning(
                "calibration cache has no .dataset_sha256 sidecar; recalibrating",
                extra={"event": "calibration.cache.incomplete", "path": str(self.path)},
            )
            return CacheLookup("incomplete", self.path, header=header)
        if recorded_dataset != header.dataset_version or recorded_dataset != dataset_version:
            raise CalibrationCacheError(
                "calibration cache .dataset_sha256 sidecar disagrees with the cache header; "
                "delete the cache files to recalibrate",
                path=str(self.dataset_path), expected=dataset_version, found=recorded_dataset,
            )
        logger.info(
            "calibration cache hit",
            extra={"event": "calibration.cache.hit", "path": str(self.path), "key": key},
        )
        return CacheLookup("hit", self.path, header=header, payload=payload)

    def _load_ungoverned(self, key: str) -> CacheLookup:
        data = self._read(self.path, MAX_BLOB_BYTES)
        if not data.startswith(MAGIC):
            logger.info(
                "using a legacy calibration cache without governance",
                extra={"event": "calibration.cache.legacy", "path": str(self.path)},
            )
            return CacheLookup("legacy", self.path, payload=data)
        header, payload = decode_blob(data)
        if header.key != key:
            # Even ungoverned, a cache we can prove stale is not used.
            logger.info(
                "calibration cache is stale; recalibrating",
                extra={"event": "calibration.cache.stale", "path": str(self.path),
                       "cached_key": header.key, "key": key},
            )
            return CacheLookup("stale", self.path, header=header)
        return CacheLookup("hit", self.path, header=header, payload=payload)

    # -------------------------------------------------------------- writing

    def store(self, header: CacheHeader, payload: bytes) -> Path:
        """Write blob, then dataset sidecar, then the .sha256 sidecar (the commit mark)."""
        self._check_dir()
        blob = encode_blob(header, payload)
        if len(blob) > MAX_BLOB_BYTES:
            raise CalibrationCacheError(
                f"calibration cache would be larger than {MAX_BLOB_BYTES >> 20} MiB",
                path=str(self.path), found=len(blob),
            )
        # Drop the old commit mark first: a crash mid-replace reads as incomplete, not corrupt.
        with contextlib.suppress(FileNotFoundError):
            self.sha256_path.unlink()
        try:
            make_dirs(self.path.parent)
            # Make the removal durable before the blob changes: after a power loss the old
            # commit mark must not come back beside a new blob.
            fsync_dir(self.path.parent)
            atomic_write_bytes(self.path, blob)
            atomic_write_bytes(self.dataset_path, header.dataset_version.encode() + b"\n")
            digest = hashlib.sha256(blob).hexdigest()
            atomic_write_bytes(self.sha256_path, f"{digest}  {self.path.name}\n".encode())
        except (OSError, StoreError) as exc:
            reason = exc.strerror if isinstance(exc, OSError) else exc.message
            raise CalibrationCacheError(
                f"cannot write calibration cache: {reason}", path=str(self.path)
            ) from exc
        logger.info(
            "calibration cache written",
            extra={"event": "calibration.cache.write", "path": str(self.path), "key": header.key,
                   "bytes": len(blob)},
        )
        return self.path
