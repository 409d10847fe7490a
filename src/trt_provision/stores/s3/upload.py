"""Uploading one engine's object set: the local sidecars read like the gate reads them, then
engine → .json → .sig → .sha256, each with a conditional put (``If-None-Match: *``), so the
``.sha256`` marks a complete set and two devices racing never overwrite each other: the
loser keeps its local engine. A signed engine may replace a complete *unsigned* set (never a
signed one, nor an upload in progress). An upload that fails halfway removes what it put."""

from __future__ import annotations

import logging
import os

from trt_provision.errors import EngineGateError
from trt_provision.integrity import parse_sha256_bytes, read_cache_file
from trt_provision.stores.s3.faults import (
    Conflict,
    Refused,
    botocore_errors,
    reason,
    remote_errors,
)
from trt_provision.stores.s3.layout import (
    JSON_SUFFIX,
    MAX_METADATA_BYTES,
    MAX_SHA_SIDECAR_BYTES,
    MAX_SIGNATURE_BYTES,
    SHA_SUFFIX,
    SIG_SUFFIX,
    object_url,
)
from trt_provision.stores.s3.multipart import PartPlan, put_engine
from trt_provision.stores.s3.signatures import SignatureVerifier, refuses_unsigned
from trt_provision.stores.s3.transfer import Transfer
from trt_provision.types import EngineCacheEntry

log = logging.getLogger(__name__)


def read_local(entry: EngineCacheEntry) -> tuple[bytes, bytes, bytes | None, int]:
    """The local sidecars, read like the gate reads them (``read_cache_file``: regular
    files inside the cache, owned by us, bounded) and to the bounds a fetching device
    accepts: a ``.sig`` planted as a FIFO or a link to ``/dev/zero`` (the gate reads
    no ``.sig`` without a trust policy) is refused, never waited on or read whole."""
    engine = entry.engine_path
    root = engine.parent.parent  # <cache>/<model>/<engine>
    sig_path = engine.with_name(engine.name + SIG_SUFFIX)
    try:
        sha_bytes = read_cache_file(
            engine.with_name(engine.name + SHA_SUFFIX), MAX_SHA_SIDECAR_BYTES,
            what="sha256 sidecar", root=root,
        )
        meta_bytes = read_cache_file(
            engine.with_name(engine.name + JSON_SUFFIX), MAX_METADATA_BYTES,
            what="metadata sidecar", root=root,
        )
        sig_bytes: bytes | None = None
        if os.path.lexists(sig_path):
            sig_bytes = read_cache_file(
                sig_path, MAX_SIGNATURE_BYTES, what="signature", root=root
            )
        size = os.stat(engine).st_size
    except EngineGateError as exc:
        raise Refused(f"local {exc}") from exc
    except OSError as exc:
        raise Refused(f"local engine unreadable: {exc.strerror}") from exc
    try:  # the set a device will fetch must verify there: the .sha256 covers the .json
        claimed = parse_sha256_bytes(sha_bytes, engine, engine.name, meta_bytes)
    except EngineGateError as exc:
        raise Refused(f"local {exc}") from exc
    if claimed != entry.sha256:
        raise Refused("local sha256 sidecar does not match the engine entry")
    return sha_bytes, meta_bytes, sig_bytes, size


def upload_object_set(
    transfer: Transfer,
    plan: PartPlan,
    trust: SignatureVerifier | None,
    entry: EngineCacheEntry,
    key: str,
) -> bool:
    """Put ``entry``'s set under ``key``: True when uploaded, False when the slot was taken
    (logged); Refused (the set rolled back) when it cannot be uploaded."""
    sha_bytes, meta_bytes, sig_bytes, size = read_local(entry)
    if size > transfer.settings.max_engine_bytes:
        # No device of the fleet would fetch it.
        raise Refused(f"engine is larger than the configured limit ({size} bytes)")
    if sig_bytes is None and refuses_unsigned(trust):
        # An unsigned engine would hold the slot for good, and every device that requires
        # signatures (this one included) would refuse it and rebuild forever.
        raise Refused(
            "it is unsigned and this host's trust policy requires signatures "
            "(set signing_key to sign what this host builds)",
            event="remote.upload.unsigned",
            once="unsigned-upload",
        )
    errors: tuple[type[BaseException], ...] = (*botocore_errors(), Conflict)
    put: list[str] = []
    try:
        try:
            put_engine(transfer, plan, key, entry.engine_path, size, {"IfNoneMatch": "*"})
        except Conflict:
            if sig_bytes is not None and _replace_unsigned(
                transfer, plan, entry, key, size, meta_bytes, sig_bytes, sha_bytes
            ):
                return True
            _log_lost_race(transfer, entry, key)
            return False
        put.append(key)
        for suffix, data in (
            (JSON_SUFFIX, meta_bytes),
            (SIG_SUFFIX, sig_bytes),
            (SHA_SUFFIX, sha_bytes),
        ):
            if data is not None:
                transfer.put(key + suffix, data, {"IfNoneMatch": "*"})
                put.append(key + suffix)
    except errors as exc:
        _roll_back(transfer, put)
        raise Refused(reason(exc, transfer.settings), event="remote.upload.failed") from exc
    except OSError as exc:
        _roll_back(transfer, put)
        raise Refused(
            f"cannot read local engine: {exc.strerror}", event="remote.upload.failed"
        ) from exc
    return True


def _replace_unsigned(
    transfer: Transfer,
    plan: PartPlan,
    entry: EngineCacheEntry,
    key: str,
    size: int,
    meta_bytes: bytes,
    sig_bytes: bytes,
    sha_bytes: bytes,
) -> bool:
    """Replace a complete *unsigned* object set by this signed one; False to keep it.

    The slot is claimed by a conditional put of the ``.sig``: of several signed devices
    only one proceeds, and a slot that already holds a signature (another device's
    signed engine, or a signed upload in progress) is never touched. The ``.sha256``
    (the completion mark) is removed first, so fetchers see the slot absent while the
    engine and metadata are rewritten, and put back last.
    """
    sha_head = transfer.head(key + SHA_SUFFIX)
    if sha_head is None or transfer.head(key + SIG_SUFFIX) is not None:
        return False  # an upload in progress, or already signed: keep it
    engine_head = transfer.head(key)
    json_head = transfer.head(key + JSON_SUFFIX)
    if engine_head is None or json_head is None:
        return False
    try:
        transfer.put(key + SIG_SUFFIX, sig_bytes, {"IfNoneMatch": "*"})
    except Conflict:
        return False  # another signed device claimed it first
    done: list[str] = []
    try:
        transfer.conditional(
            lambda: transfer.request(
                "delete_object",
                Key=key + SHA_SUFFIX,
                IfMatch=sha_head["ETag"],
            )
        )
        done.append("sha")
        put_engine(transfer, plan, key, entry.engine_path, size, {"IfMatch": engine_head["ETag"]})
        transfer.put(key + JSON_SUFFIX, meta_bytes, {"IfMatch": json_head["ETag"]})
        transfer.put(key + SHA_SUFFIX, sha_bytes, {"IfNoneMatch": "*"})
    except BaseException:
        # Without its .sha256 the slot reads as absent; clear it so a later upload can
        # fill it instead of finding a half-replaced set forever.
        _roll_back(transfer, [key + SIG_SUFFIX, *([key, key + JSON_SUFFIX] if done else [])])
        raise
    log.info(
        "replaced the unsigned remote engine %s with this host's signed one",
        entry.identity.filename,
        extra={"event": "remote.upload.replaced_unsigned", "key": key},
    )
    return True


def _log_lost_race(transfer: Transfer, entry: EngineCacheEntry, key: str) -> None:
    complete = True
    try:
        complete = transfer.head(key + SHA_SUFFIX) is not None
    except remote_errors():
        complete = False
    log.info(
        "remote store already holds %s (%s); keeping the local engine",
        entry.identity.filename,
        "uploaded by another device" if complete else "upload by another device pending",
        extra={"event": "remote.upload.lost_race", "key": key, "complete": complete},
    )


def _roll_back(transfer: Transfer, keys: list[str]) -> None:
    """Remove what this upload put, so no partial object set stays behind."""
    for key in reversed(keys):
        try:
            transfer.request("delete_object", Key=key)
        except remote_errors() as exc:
            log.warning(
                "could not remove partial upload %s: %s",
                object_url(transfer.settings.bucket, key),
                reason(exc, transfer.settings),
                extra={"event": "remote.upload.rollback_failed", "key": key},
            )
