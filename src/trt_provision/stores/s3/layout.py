"""Where an engine's objects live in the bucket, and how much of each a device reads.

Layout under the bucket::

    <prefix>/engines/<model>/<filename>            the engine
    <prefix>/engines/<model>/<filename>.json       metadata (names the engine, carries its sha256)
    <prefix>/engines/<model>/<filename>.sig        optional Ed25519 signature over the .json
    <prefix>/engines/<model>/<filename>.sha256     sha256sum line, uploaded last

The ``.sha256`` marks a complete object set: an engine without it is treated as absent (an
upload in progress or abandoned). A local cache keeps the same names side by side.
"""

from __future__ import annotations

import contextlib
from pathlib import Path

from trt_provision._fs import fsync_dir
from trt_provision.types import EngineIdentity

SHA_SUFFIX = ".sha256"
JSON_SUFFIX = ".json"
SIG_SUFFIX = ".sig"
# Sidecar bounds: a sha256sum line, a metadata document of a few kB, one signature line.
MAX_SHA_SIDECAR_BYTES = 4096
MAX_METADATA_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 1024  # as trust.MAX_SIGNATURE_BYTES


def object_key(prefix: str, identity: EngineIdentity) -> str:
    """The engine's key; its sidecars add their suffix to it."""
    parts = [prefix, "engines", identity.model_name, identity.filename]
    return "/".join(p for p in parts if p)


def object_url(bucket: str, key: str) -> str:
    """``s3://bucket/key``, as logs and messages name an object."""
    return f"s3://{bucket}/{key}"


def sidecar_path(engine: Path, suffix: str) -> Path:
    return engine.with_name(engine.name + suffix)


def remove_local_set(final: Path) -> None:
    """Remove a published engine and its sidecars from the local cache."""
    for path in (final, *(sidecar_path(final, s) for s in (SHA_SUFFIX, JSON_SUFFIX, SIG_SUFFIX))):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(final.parent)
