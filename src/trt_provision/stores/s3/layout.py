"""Where an engine's objects live in the bucket, and how much of each a device reads.

Layout under the bucket::

    <prefix>/engines/<model>/<filename>            the engine
    <prefix>/engines/<model>/<filename>.json       metadata (names the engine, carries its sha256)
    <prefix>/engines/<model>/<filename>.sig        optional Ed25519 signature over the .json
    <prefix>/engines/<model>/<filename>.sha256     sha256sum line, uploaded last

The ``.sha256`` marks a complete object set: an engine without it is treated as absent (an
upload in progress or abandoned). A local cache keeps the same names side by side.

A builder of record's TensorRT timing cache, under the local file's own name (which carries
the TensorRT version, the sm and the device name)::

    <prefix>/timing/<name>.timing-cache            the cache
    <prefix>/timing/<name>.timing-cache.sig        optional Ed25519 signature over the .sha256
    <prefix>/timing/<name>.timing-cache.sha256     sha256sum line naming the file, put last
"""

from __future__ import annotations

import contextlib
import re
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
# Timing caches hold tactic timings, a few MiB for large networks (onnxruntime#14767 calls
# them "usually very small (only a few MB)"); the bound only stops a hostile bucket.
MAX_TIMING_CACHE_BYTES = 256 << 20
# The local timing cache's file name (runtimes/tensorrt/timing_cache.timing_cache_path).
TIMING_CACHE_NAME = re.compile(r"trt-[A-Za-z0-9_.+-]{1,200}\.timing-cache")


def object_key(prefix: str, identity: EngineIdentity) -> str:
    """The engine's key; its sidecars add their suffix to it."""
    parts = [prefix, "engines", identity.model_name, identity.filename]
    return "/".join(p for p in parts if p)


def timing_key(prefix: str, name: str) -> str:
    """The key of the fleet's timing cache ``name``; ValueError for any other name."""
    if TIMING_CACHE_NAME.fullmatch(name) is None:
        raise ValueError(f"not a timing cache name: {name!r}")
    return "/".join(p for p in (prefix, "timing", name) if p)


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
