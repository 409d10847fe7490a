"""Fetching one engine's object set: the sidecars (bounded), the signature over the raw
metadata, the metadata checked against the identity asked for, the engine streamed into a
staged file while hashed, then published locally (temp → verify → rename) and validated by
the gate; nothing partial is ever published."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
from pathlib import Path
from typing import Any

from trt_provision._bounded import BoundedInputError, loads_bounded
from trt_provision._fs import fsync_dir, publish_file, write_temp_file
from trt_provision.errors import EngineGateError, StoreError
from trt_provision.integrity import (
    parse_sha256_bytes,
    parse_sha256_sidecar,
    sha256_sidecar_bytes,
)
from trt_provision.seams import EngineGate, EngineStore
from trt_provision.stores.s3.faults import Absent, Refused
from trt_provision.stores.s3.layout import (
    JSON_SUFFIX,
    MAX_METADATA_BYTES,
    MAX_SHA_SIDECAR_BYTES,
    MAX_SIGNATURE_BYTES,
    SHA_SUFFIX,
    SIG_SUFFIX,
    object_url,
    remove_local_set,
)
from trt_provision.stores.s3.signatures import SignatureVerifier, check_before_parse
from trt_provision.stores.s3.transfer import Transfer
from trt_provision.types import EngineCacheEntry, EngineIdentity, RuntimeTarget

log = logging.getLogger(__name__)

_SYNC_EVERY = 32 << 20


def fetch_object_set(
    transfer: Transfer,
    trust: SignatureVerifier | None,
    identity: EngineIdentity,
    key: str,
    local: EngineStore,
    gate: EngineGate,
    expected: RuntimeTarget,
) -> EngineCacheEntry:
    """Download, verify and publish ``identity``'s set under ``key``; Absent, Refused,
    EngineGateError or the transfer's own faults when it is unusable."""
    name = identity.filename
    # The .sha256 goes up last: without it the object set is incomplete, i.e. absent.
    sha_bytes = transfer.get_small(key + SHA_SUFFIX, MAX_SHA_SIDECAR_BYTES)
    try:
        meta_bytes = transfer.get_small(key + JSON_SUFFIX, MAX_METADATA_BYTES)
    except Absent as exc:
        raise Refused("metadata sidecar missing", event="remote.fetch.incomplete") from exc
    try:
        sig_bytes: bytes | None = transfer.get_small(key + SIG_SUFFIX, MAX_SIGNATURE_BYTES)
    except Absent:
        sig_bytes = None
    # The signature covers the raw metadata bytes: where one is required, nothing of the
    # metadata is parsed before it verifies.
    check_before_parse(trust, meta_bytes, sig_bytes, object_url(transfer.settings.bucket, key))
    final = local.path_for(identity)
    staged = local.staging_path(identity)
    temps: list[Path] = [staged]
    try:
        claimed = _claimed_digest(final, sha_bytes, temps)
        metadata = _check_metadata(
            identity, meta_bytes, claimed, transfer.settings.max_engine_bytes
        )
        try:  # the .sha256 must cover the metadata bytes too, as in the local cache
            parse_sha256_bytes(sha_bytes, final, final.name, meta_bytes)
        except EngineGateError as exc:
            raise Refused(f"sha256 sidecar unusable: {exc.message}") from exc
        size = _download(transfer, key, staged, claimed, metadata["size_bytes"])
        _publish(final, staged, claimed, meta_bytes, sig_bytes, temps)
    finally:
        for tmp in temps:
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    try:
        # The bytes were hashed while streaming and matched the sidecar: no second pass.
        entry = gate.validate(final, expected, known_sha256=claimed)
    except EngineGateError:
        # Published but refused by the gate (host, trust): take it back so that the
        # local cache never holds an engine that only looks reusable.
        remove_local_set(final)
        raise
    log.debug(
        "published fetched engine %s",
        final,
        extra={"event": "remote.fetch.published", "engine": name, "bytes": size},
    )
    return entry


def _claimed_digest(final: Path, sha_bytes: bytes, temps: list[Path]) -> str:
    sha_tmp = write_temp_file(final.with_name(final.name + SHA_SUFFIX), sha_bytes)
    temps.append(sha_tmp)
    try:
        return parse_sha256_sidecar(sha_tmp, final.name)
    except EngineGateError as exc:
        raise Refused(f"sha256 sidecar unusable: {exc.message}") from exc


def _check_metadata(
    identity: EngineIdentity, meta_bytes: bytes, claimed: str, max_engine_bytes: int
) -> dict[str, Any]:
    try:
        metadata = loads_bounded(
            meta_bytes, max_bytes=MAX_METADATA_BYTES, what="metadata sidecar"
        )
    except BoundedInputError as exc:
        raise Refused(str(exc)) from exc
    if not isinstance(metadata, dict):
        raise Refused("metadata sidecar is not a JSON object")
    if metadata.get("engine") != identity.filename:
        raise Refused("metadata sidecar is for another engine")
    if metadata.get("sha256") != claimed:
        raise Refused("metadata and sha256 sidecars disagree (tampered?)")
    if metadata.get("identity") != identity.to_dict():
        raise Refused("metadata identity does not match the requested identity")
    declared = metadata.get("size_bytes")
    if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
        raise Refused("metadata sidecar declares no valid engine size")
    if declared > max_engine_bytes:
        raise Refused(
            f"engine is larger than the configured limit ({declared} bytes declared)"
        )
    return metadata


def _download(transfer: Transfer, key: str, staged: Path, claimed: str, declared: int) -> int:
    """Stream the engine into ``staged`` while hashing it: one pass over the bytes.

    Reading stops one byte past the size the (checked) metadata declares, with or
    without a Content-Length header, so a lying server cannot fill the disk.
    """
    digest = hashlib.sha256()
    fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    unsynced = 0

    def on_head(length: int | None) -> None:
        if length is not None and length != declared:
            raise Refused(f"engine size {length} differs from its metadata ({declared})")

    def on_chunk(chunk: bytes) -> None:
        nonlocal unsynced
        digest.update(chunk)
        view = memoryview(chunk)
        while view:
            view = view[os.write(fd, view):]
        unsynced += len(chunk)
        if unsynced >= _SYNC_EVERY:
            # Flush while the socket is still being read, so the final fsync has little
            # left to do instead of the whole engine.
            os.fdatasync(fd)
            unsynced = 0

    try:
        size = transfer.get(key, declared, on_head, on_chunk)
        if size == declared:
            os.fsync(fd)
    finally:
        os.close(fd)
    if size == 0:
        raise Refused("engine object is empty")
    if size != declared:
        raise Refused(
            f"engine object is {'larger' if size > declared else 'smaller'} than its "
            f"metadata declares ({declared} bytes)",
            event="remote.fetch.corrupt",
        )
    found = digest.hexdigest()
    if found != claimed:
        raise Refused(
            f"engine sha256 does not match its sidecar (tampered or corrupt): "
            f"expected {claimed[:16]}…, found {found[:16]}…",
            event="remote.fetch.corrupt",
        )
    return size


def _publish(
    final: Path,
    staged: Path,
    digest: str,
    meta_bytes: bytes,
    sig_bytes: bytes | None,
    temps: list[Path],
) -> None:
    """Same order as the local store's publish: engine first, then its sidecars.

    The metadata is kept byte for byte, so its signature stays valid locally.
    """
    sha_final = final.with_name(final.name + SHA_SUFFIX)
    json_final = final.with_name(final.name + JSON_SUFFIX)
    sig_final = final.with_name(final.name + SIG_SUFFIX)
    sha_line = sha256_sidecar_bytes(digest, final.name, meta_bytes)
    pending: list[tuple[Path, Path]] = []
    pending.append((write_temp_file(sha_final, sha_line), sha_final))
    pending.append((write_temp_file(json_final, meta_bytes), json_final))
    if sig_bytes is not None:
        pending.append((write_temp_file(sig_final, sig_bytes), sig_final))
    temps.extend(tmp for tmp, _ in pending)
    try:
        # A stale signature of an older engine must not outlive it.
        with contextlib.suppress(FileNotFoundError):
            sig_final.unlink()
        publish_file(staged, final)
        for tmp, dest in pending:
            os.replace(tmp, dest)
        fsync_dir(final.parent)
    except OSError as exc:
        raise StoreError(
            f"cannot publish fetched engine: {exc.strerror}", path=str(final)
        ) from exc
