"""Engine integrity: ``sha256sum``-compatible sidecar and the JSON metadata sidecar.

``X.engine.sha256`` holds one line ``<64 hex>  X.engine`` (so ``sha256sum -c`` works in the
engine's directory); ``X.engine.json`` holds identity, build config, host, tool versions,
timings and evidence, including the engine's sha256 and file name.
"""

from __future__ import annotations

import hashlib
import json
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trt_provision._fs import atomic_write_bytes
from trt_provision.errors import EngineGateError

__all__ = [
    "METADATA_FORMAT",
    "PERF_SUFFIX",
    "format_sha256_line",
    "metadata_bytes",
    "parse_sha256_sidecar",
    "read_metadata",
    "sha256_file",
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

_LINE_RE = re.compile(r"([0-9a-f]{64}) [ *](.+)")


def update_from_file(digest: Any, path: Path, block_size: int = BLOCK_SIZE) -> int:
    """Feed a file into ``digest`` in one pass with a reused buffer; return its size."""
    size = 0
    buf = bytearray(block_size)
    view = memoryview(buf)
    with open(path, "rb", buffering=0) as fh:
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


def write_sha256_sidecar(engine_path: Path, digest: str) -> Path:
    sidecar = engine_path.with_name(engine_path.name + ".sha256")
    atomic_write_bytes(sidecar, format_sha256_line(digest, engine_path.name).encode())
    return sidecar


def parse_sha256_sidecar(sidecar: Path, engine_name: str) -> str:
    """Return the digest a sidecar claims for ``engine_name``; EngineGateError if unusable."""
    try:
        raw = sidecar.read_bytes()[: MAX_SIDECAR_BYTES + 1]
    except FileNotFoundError as exc:
        raise EngineGateError("sha256 sidecar missing", path=str(sidecar)) from exc
    except OSError as exc:
        raise EngineGateError(
            f"sha256 sidecar unreadable: {exc.strerror}", path=str(sidecar)
        ) from exc
    if len(raw) > MAX_SIDECAR_BYTES:
        raise EngineGateError("sha256 sidecar too large", path=str(sidecar))
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError as exc:
        raise EngineGateError("sha256 sidecar is not ASCII", path=str(sidecar)) from exc
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if len(lines) != 1:
        raise EngineGateError(
            "sha256 sidecar must hold exactly one line", path=str(sidecar), lines=len(lines)
        )
    match = _LINE_RE.fullmatch(lines[0])
    if match is None:
        raise EngineGateError("sha256 sidecar is malformed", path=str(sidecar))
    if match.group(2) != engine_name:
        raise EngineGateError(
            "sha256 sidecar is for another file",
            path=str(sidecar),
            expected=engine_name,
            found=match.group(2),
        )
    return match.group(1)


def metadata_bytes(metadata: Mapping[str, Any]) -> bytes:
    return (json.dumps(metadata, indent=2, sort_keys=True, default=str) + "\n").encode()


def write_metadata(engine_path: Path, metadata: Mapping[str, Any]) -> Path:
    path = engine_path.with_name(engine_path.name + ".json")
    atomic_write_bytes(path, metadata_bytes(metadata))
    return path


def read_metadata(engine_path: Path) -> dict[str, Any]:
    """Load and structurally check the metadata sidecar of ``engine_path``."""
    path = engine_path.with_name(engine_path.name + ".json")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_METADATA_BYTES + 1)
    except FileNotFoundError as exc:
        raise EngineGateError("metadata sidecar missing", path=str(path)) from exc
    except OSError as exc:
        raise EngineGateError(
            f"metadata sidecar unreadable: {exc.strerror}", path=str(path)
        ) from exc
    if len(raw) > MAX_METADATA_BYTES:
        raise EngineGateError("metadata sidecar too large", path=str(path))
    try:
        data = json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EngineGateError(f"metadata sidecar is not valid JSON: {exc}", path=str(path)) from exc
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
    if data["engine"] != engine_path.name:
        raise EngineGateError(
            "metadata sidecar is for another file",
            path=str(path),
            expected=engine_path.name,
            found=data["engine"],
        )
    return data
