"""A builder of record's TensorRT timing cache, shared with the devices of its type.

The cache travels as the local file does (its name carries the TensorRT version, the sm and
the device name, so a device only ever asks for a cache of its own kind), with a ``.sha256``
line naming it and, from a builder with a signing key, a ``.sig`` over that line: the same
Ed25519 signature engines carry over their metadata, made and checked by the same code
(``trust.sign_metadata``, ``SignatureVerifier.check_bytes``).

Fetching trusts nothing it reads: the signature is checked over the raw ``.sha256`` bytes
before they are parsed, the line must name the file asked for (a validly signed cache of
another device cannot be swapped in), the body is read to a fixed bound while it is hashed
into a temp file, and only a file whose digest matches is linked into place, and only where
no local cache exists (``os.link`` never replaces a file): a device's own cache is never
overwritten by the fleet's. TensorRT then checks the cache's own header when it loads it and
refuses one from another device (``set_timing_cache`` returns false); the build goes on
without it.

Uploading replaces the slot (a builder of record's cache only grows, and the next push
carries everything the last one did): the ``.sha256`` goes first, so fetchers see the slot
absent while it is rewritten, and comes back last. An unchanged cache is not sent again.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Callable
from pathlib import Path

from trt_provision._fs import fsync_dir, temp_path_for
from trt_provision.errors import EngineGateError
from trt_provision.integrity import format_sha256_line, parse_sha256_bytes, read_cache_file
from trt_provision.stores.s3.faults import Absent, Refused, botocore_errors, is_absent
from trt_provision.stores.s3.layout import (
    MAX_SHA_SIDECAR_BYTES,
    MAX_SIGNATURE_BYTES,
    SHA_SUFFIX,
    SIG_SUFFIX,
    object_url,
)
from trt_provision.stores.s3.signatures import (
    SignatureVerifier,
    check_before_parse,
    refuses_unsigned,
)
from trt_provision.stores.s3.transfer import Transfer

__all__ = ["fetch_timing_cache", "upload_timing_cache"]

# Signs the ``.sha256`` line of a pushed cache (the builder's signing key), or None.
SignBytes = Callable[[bytes], bytes]


def fetch_timing_cache(
    transfer: Transfer,
    trust: SignatureVerifier | None,
    key: str,
    name: str,
    dest: Path,
    max_bytes: int,
) -> int:
    """Download, verify and place the cache under ``key`` at ``dest``; the bytes written, 0
    when a local cache is (or appeared) there. Absent, Refused, EngineGateError (the
    signature) or the transfer's own faults when it is unusable; nothing is left at ``dest``
    then."""
    sha_bytes = transfer.get_small(key + SHA_SUFFIX, MAX_SHA_SIDECAR_BYTES)
    try:
        sig_bytes: bytes | None = transfer.get_small(key + SIG_SUFFIX, MAX_SIGNATURE_BYTES)
    except Absent:
        sig_bytes = None
    check_before_parse(trust, sha_bytes, sig_bytes, object_url(transfer.settings.bucket, key))
    try:
        claimed = parse_sha256_bytes(sha_bytes, Path(key + SHA_SUFFIX), name)
    except EngineGateError as exc:
        raise Refused(f"sha256 sidecar unusable: {exc.message}",
                      event="remote.timing.refused") from exc
    if os.path.lexists(dest):
        return 0  # never replace a device's own cache (checked again by the link below)
    dest.parent.mkdir(parents=True, exist_ok=True)
    staged = temp_path_for(dest)
    try:
        size = _download(transfer, key, staged, claimed, max_bytes)
        try:
            os.link(staged, dest)  # fails where a file exists: a local cache always wins
        except FileExistsError:
            return 0
        fsync_dir(dest.parent)
    finally:
        with contextlib.suppress(FileNotFoundError):
            staged.unlink()
    return size


def _download(transfer: Transfer, key: str, staged: Path, claimed: str, max_bytes: int) -> int:
    digest = hashlib.sha256()
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)

    def on_head(length: int | None) -> None:
        if length is not None and length > max_bytes:
            raise Refused(f"timing cache is larger than the limit ({length} > {max_bytes} "
                          "bytes)", event="remote.timing.refused")

    def on_chunk(chunk: bytes) -> None:
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]

    try:
        try:
            size = transfer.get(key, max_bytes, on_head, on_chunk)
        except botocore_errors() as exc:
            if is_absent(exc):  # the .sha256 without its cache: an upload under way
                raise Absent(key) from exc
            raise
        if 0 < size <= max_bytes:
            os.fsync(fd)
    finally:
        os.close(fd)
    if size > max_bytes:
        raise Refused(f"timing cache is larger than the limit ({max_bytes} bytes)",
                      event="remote.timing.refused")
    if size == 0:
        raise Refused("timing cache object is empty", event="remote.timing.refused")
    found = digest.hexdigest()
    if found != claimed:
        raise Refused(
            f"timing cache sha256 does not match its sidecar (tampered or corrupt): "
            f"expected {claimed[:16]}…, found {found[:16]}…",
            event="remote.timing.corrupt",
        )
    return size


def upload_timing_cache(
    transfer: Transfer,
    trust: SignatureVerifier | None,
    sign: SignBytes | None,
    key: str,
    name: str,
    source: Path,
    max_bytes: int,
) -> int:
    """Put the local cache ``source`` under ``key``, signed when ``sign`` is given; the bytes
    sent, 0 when the store already holds this cache (or there is none to send). Refused
    when it must not be uploaded; the transfer's faults as they come."""
    if not os.path.lexists(source):
        return 0  # no cache was written (TensorRT refused the one on disk, or none is kept)
    try:
        # Read as the gate reads a sidecar: a regular file of ours, bounded.
        data = read_cache_file(source, max_bytes, what="timing cache", root=source.parent)
    except EngineGateError as exc:
        raise Refused(f"local {exc}", event="remote.timing.upload_refused") from exc
    if not data:
        return 0
    sha_line = format_sha256_line(hashlib.sha256(data).hexdigest(), name).encode()
    sig_bytes = sign(sha_line) if sign is not None else None
    if sig_bytes is None and refuses_unsigned(trust):
        # Every device of the fleet that requires signatures would refuse it.
        raise Refused(
            "it is unsigned and this host's trust policy requires signatures "
            "(set signing_key to sign what this host publishes)",
            event="remote.timing.unsigned", once="unsigned-timing-cache",
        )
    try:
        current: bytes | None = transfer.get_small(key + SHA_SUFFIX, MAX_SHA_SIDECAR_BYTES)
    except (Absent, Refused):
        current = None
    if current == sha_line and (sig_bytes is None or transfer.head(key + SIG_SUFFIX)):
        return 0  # unchanged since the last push
    if current is not None:
        # Fetchers see the slot absent, not half rewritten, until the .sha256 is back.
        transfer.request("delete_object", Key=key + SHA_SUFFIX)
    transfer.put(key, data, {})
    if sig_bytes is not None:
        transfer.put(key + SIG_SUFFIX, sig_bytes, {})
    else:
        # A signature of an earlier cache must not stand beside this one.
        transfer.request("delete_object", Key=key + SIG_SUFFIX)
    transfer.put(key + SHA_SUFFIX, sha_line, {})
    return len(data)
