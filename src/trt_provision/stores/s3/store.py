"""``S3EngineStore``: the remote store one run talks to. It never raises for a remote fault:
whatever goes wrong (absent, unreachable, slow, 5xx, bad credentials, tampered bytes, an
untrusted signature, anything unexpected) is logged with its reason and reported as "no
engine" / "not uploaded"; after the first connection-level fault the remote is skipped for
the rest of the run."""

from __future__ import annotations

import contextlib
import logging
import threading
import time
import traceback
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trt_provision.errors import EngineGateError, StoreError, TrtProvisionError
from trt_provision.seams import EngineGate, EngineStore
from trt_provision.stores.s3.faults import (
    Absent,
    Refused,
    is_connection_level,
    reason,
    remote_errors,
)
from trt_provision.stores.s3.fetch import fetch_object_set
from trt_provision.stores.s3.layout import (
    MAX_TIMING_CACHE_BYTES,
    SHA_SUFFIX,
    object_key,
    object_url,
    timing_key,
)
from trt_provision.stores.s3.multipart import (
    DEFAULT_PART_BYTES,
    MAX_SINGLE_PUT_BYTES,
    PartPlan,
)
from trt_provision.stores.s3.settings import S3Settings, redact_urls, settings_from_config
from trt_provision.stores.s3.signatures import UNAUTHENTICATED_WARNING, SignatureVerifier
from trt_provision.stores.s3.timing import SignBytes, fetch_timing_cache, upload_timing_cache
from trt_provision.stores.s3.transfer import CHUNK_BYTES, RATE_WINDOW_S, Transfer
from trt_provision.stores.s3.upload import upload_object_set
from trt_provision.types import EngineCacheEntry, EngineIdentity, RuntimeTarget

log = logging.getLogger(__name__)


class S3EngineStore:
    """``RemoteEngineStore`` over an S3-compatible bucket; failures are logged, not raised.

    One instance serves one run: after the first connection-level failure it stops talking
    to the server (one WARN) until a new instance is made.
    """

    def __init__(
        self,
        settings: S3Settings,
        *,
        trust: SignatureVerifier | None = None,
        client: Any = None,
        chunk_bytes: int = CHUNK_BYTES,
        multipart_threshold_bytes: int = MAX_SINGLE_PUT_BYTES,
        part_bytes: int = DEFAULT_PART_BYTES,
        rate_window_s: float = RATE_WINDOW_S,
        sign_timing_cache: SignBytes | None = None,
        max_timing_cache_bytes: int = MAX_TIMING_CACHE_BYTES,
    ) -> None:
        if chunk_bytes < 64 << 10:
            raise ValueError(f"chunk_bytes must be >= 64 KiB, got {chunk_bytes}")
        self._parts = PartPlan(multipart_threshold_bytes, part_bytes)
        if rate_window_s <= 0:
            raise ValueError(f"rate_window_s must be > 0, got {rate_window_s}")
        self._settings = settings
        self._trust = trust
        self._sign_timing = sign_timing_cache
        self._max_timing = max_timing_cache_bytes
        self._transfer = Transfer(
            settings, client=client, chunk_bytes=chunk_bytes, rate_window_s=rate_window_s
        )
        self._state_lock = threading.Lock()
        self._offline: str | None = None  # why the remote is skipped for this run
        self._warned: set[str] = set()

    def __repr__(self) -> str:
        return f"S3EngineStore({self._settings!r})"

    @property
    def settings(self) -> S3Settings:
        return self._settings

    @property
    def offline_reason(self) -> str | None:
        """Why this run stopped using the remote, or None while it is in use."""
        return self._offline

    def key_for(self, identity: EngineIdentity) -> str:
        return object_key(self._settings.prefix, identity)

    def client(self) -> Any:
        """The boto3 client, built on first use (boto3 and botocore imported lazily)."""
        return self._transfer.client()

    # ------------------------------------------------------------------ run state

    def _warn_once(self, topic: str, message: str, *args: Any, **extra: Any) -> None:
        with self._state_lock:
            first = topic not in self._warned
            self._warned.add(topic)
        log.log(logging.WARNING if first else logging.DEBUG, message, *args, extra=extra)

    def _go_offline(self, why: str) -> bool:
        """Stop using the remote for this run; True for the first caller."""
        with self._state_lock:
            first = self._offline is None
            if first:
                self._offline = why
        return first

    # ------------------------------------------------------------------ fetch

    def fetch(
        self,
        identity: EngineIdentity,
        local: EngineStore,
        gate: EngineGate,
        expected: RuntimeTarget,
    ) -> EngineCacheEntry | None:
        """Download, verify and publish ``identity`` locally; None (logged) when unusable.

        Never raises (but KeyboardInterrupt and the like): whatever goes wrong with one
        model's fetch, the caller builds that model locally.
        """
        key = self.key_for(identity)
        where = object_url(self._settings.bucket, key)
        if self._offline is not None:
            log.debug(
                "remote store skipped for the rest of this run: %s",
                self._offline,
                extra={"event": "remote.fetch.skipped", "key": key},
            )
            return None
        if self._trust is None:
            self._warn_once(
                "unauthenticated",
                UNAUTHENTICATED_WARNING,
                event="remote.unauthenticated",
            )
        started = time.monotonic()
        log.info(
            "fetching %s",
            where,
            extra={"event": "remote.fetch.start", "key": key},
        )
        try:
            entry = fetch_object_set(
                self._transfer, self._trust, identity, key, local, gate, expected
            )
        except Absent:
            log.info(
                "remote store has no %s",
                identity.filename,
                extra={"event": "remote.fetch.miss", "key": key},
            )
            return None
        except Refused as exc:
            log.warning(
                "remote engine %s not used: %s",
                where,
                exc.reason,
                extra={"event": exc.event, "key": key, "reason": exc.reason},
            )
            return None
        except EngineGateError as exc:
            log.warning(
                "remote engine %s refused: %s",
                where,
                exc,
                extra={"event": "remote.fetch.untrusted", "key": key, "reason": exc.message},
            )
            return None
        except TrtProvisionError as exc:  # local disk trouble, missing boto3...
            log.warning(
                "remote engine %s not fetched: %s",
                where,
                exc,
                extra={"event": "remote.fetch.failed", "key": key, "reason": exc.message},
            )
            return None
        except Exception as exc:
            # Whatever else: botocore faults (its timeouts are also OSErrors), a malformed
            # header botocore cannot parse (ValueError), a bug in a third-party parser. One
            # model's fetch failing never ends the run: that model is built locally.
            self._log_failure("remote engine %s not fetched", where, key, exc, "remote.fetch")
            return None
        seconds = time.monotonic() - started
        log.info(
            "fetched %s (%.1f MiB) in %.2f s",
            identity.filename,
            entry.size_bytes / (1 << 20),
            seconds,
            extra={
                "event": "remote.fetch.done",
                "key": key,
                "bytes": entry.size_bytes,
                "seconds": round(seconds, 4),
            },
        )
        return entry

    def _log_failure(
        self, message: str, subject: str, key: str, exc: BaseException, event: str
    ) -> None:
        why = reason(exc, self._settings)
        extra: dict[str, Any] = {"event": f"{event}.failed", "key": key, "reason": why}
        connection = False
        with contextlib.suppress(TrtProvisionError):
            connection = is_connection_level(exc)
        if connection and self._go_offline(why):
            extra["offline"] = True
            log.warning(
                message + ": %s; not using the remote store for the rest of this run",
                subject,
                why,
                extra=extra,
            )
            return
        log.warning(message + ": %s", subject, why, extra=extra)
        # Not exc_info: a third-party message may quote the endpoint with its query string
        # (botocore's EndpointResolutionError does), so the traceback is redacted first.
        detail = redact_urls("".join(traceback.format_exception(exc)))
        log.debug("remote failure detail:\n%s", detail, extra={"event": f"{event}.detail"})

    # ------------------------------------------------------------------ upload

    def upload(self, entry: EngineCacheEntry) -> bool:
        """Conditional put of a locally published engine; False when not uploaded.

        Never raises (but KeyboardInterrupt and the like).
        """
        key = self.key_for(entry.identity)
        where = object_url(self._settings.bucket, key)
        if not self._settings.upload_enabled:
            log.debug("upload disabled", extra={"event": "remote.upload.disabled", "key": key})
            return False
        if self._offline is not None:
            log.debug(
                "remote store skipped for the rest of this run: %s",
                self._offline,
                extra={"event": "remote.upload.skipped", "key": key},
            )
            return False
        started = time.monotonic()
        try:
            uploaded = upload_object_set(self._transfer, self._parts, self._trust, entry, key)
        except Refused as exc:
            if exc.once is not None:
                self._warn_once(
                    exc.once,
                    "engine %s not uploaded: %s",
                    entry.identity.filename,
                    exc.reason,
                    event=exc.event,
                    key=key,
                )
                return False
            log.warning(
                "engine %s not uploaded: %s",
                entry.identity.filename,
                exc.reason,
                extra={"event": exc.event, "key": key, "reason": exc.reason},
            )
            return False
        except TrtProvisionError as exc:  # missing boto3, bad settings
            log.warning(
                "engine %s not uploaded: %s",
                entry.identity.filename,
                exc,
                extra={"event": "remote.upload.failed", "key": key, "reason": exc.message},
            )
            return False
        except Exception as exc:
            self._log_failure(
                "engine %s not uploaded", entry.identity.filename, key, exc, "remote.upload"
            )
            return False
        if uploaded:
            seconds = time.monotonic() - started
            log.info(
                "uploaded %s to %s in %.2f s",
                entry.identity.filename,
                where,
                seconds,
                extra={
                    "event": "remote.upload.done",
                    "key": key,
                    "bytes": entry.size_bytes,
                    "seconds": round(seconds, 4),
                },
            )
        return uploaded

    # ------------------------------------------------------------------ timing caches

    def fetch_timing_cache(self, name: str, dest: Path) -> bool:
        """Place the fleet's verified timing cache ``name`` at ``dest`` when no local cache
        is there; False (logged) otherwise. Never raises (but KeyboardInterrupt and the like).
        """
        try:
            key = timing_key(self._settings.prefix, name)
        except ValueError as exc:
            log.warning("timing cache not fetched: %s", exc,
                        extra={"event": "remote.timing.bad_name", "cache": name})
            return False
        where = object_url(self._settings.bucket, key)
        if self._offline is not None:
            log.debug("remote store skipped for the rest of this run: %s", self._offline,
                      extra={"event": "remote.timing.skipped", "key": key})
            return False
        if self._trust is None:
            self._warn_once("unauthenticated", UNAUTHENTICATED_WARNING,
                            event="remote.unauthenticated")
        started = time.monotonic()
        try:
            size = fetch_timing_cache(
                self._transfer, self._trust, key, name, Path(dest), self._max_timing
            )
        except Absent:
            log.info("remote store has no timing cache %s", name,
                     extra={"event": "remote.timing.miss", "key": key})
            return False
        except Refused as exc:
            log.warning("timing cache %s not used: %s", where, exc.reason,
                        extra={"event": exc.event, "key": key, "reason": exc.reason})
            return False
        except EngineGateError as exc:
            log.warning("timing cache %s refused: %s", where, exc,
                        extra={"event": "remote.timing.untrusted", "key": key,
                               "reason": exc.message})
            return False
        except TrtProvisionError as exc:
            log.warning("timing cache %s not fetched: %s", where, exc,
                        extra={"event": "remote.timing.failed", "key": key,
                               "reason": exc.message})
            return False
        except Exception as exc:
            # Local disk trouble included: a missing timing cache only costs build time.
            self._log_failure("timing cache %s not fetched", where, key, exc,
                              "remote.timing.fetch")
            return False
        if size == 0:
            log.debug("a local timing cache %s exists; the fleet's is not needed", name,
                      extra={"event": "remote.timing.local_kept", "key": key})
            return False
        seconds = time.monotonic() - started
        log.info("fetched timing cache %s (%d bytes) in %.2f s", name, size, seconds,
                 extra={"event": "remote.timing.fetched", "key": key, "bytes": size,
                        "seconds": round(seconds, 4)})
        return True

    def upload_timing_cache(self, name: str, source: Path) -> bool:
        """Replace the fleet's timing cache ``name`` with the local ``source`` (signed with
        this host's signing key); False when not uploaded or unchanged. Never raises."""
        try:
            key = timing_key(self._settings.prefix, name)
        except ValueError as exc:
            log.warning("timing cache not uploaded: %s", exc,
                        extra={"event": "remote.timing.bad_name", "cache": name})
            return False
        if not self._settings.upload_enabled or self._offline is not None:
            log.debug("timing cache upload skipped",
                      extra={"event": "remote.timing.upload_skipped", "key": key})
            return False
        started = time.monotonic()
        try:
            size = upload_timing_cache(
                self._transfer, self._trust, self._sign_timing, key, name, Path(source),
                self._max_timing,
            )
        except Refused as exc:
            if exc.once is not None:
                self._warn_once(exc.once, "timing cache %s not uploaded: %s", name,
                                exc.reason, event=exc.event, key=key)
            else:
                log.warning("timing cache %s not uploaded: %s", name, exc.reason,
                            extra={"event": exc.event, "key": key, "reason": exc.reason})
            return False
        except TrtProvisionError as exc:
            log.warning("timing cache %s not uploaded: %s", name, exc,
                        extra={"event": "remote.timing.upload_failed", "key": key,
                               "reason": exc.message})
            return False
        except Exception as exc:
            self._log_failure("timing cache %s not uploaded", name, key, exc,
                              "remote.timing.upload")
            return False
        if size == 0:
            log.debug("timing cache %s unchanged; not uploaded", name,
                      extra={"event": "remote.timing.unchanged", "key": key})
            return False
        seconds = time.monotonic() - started
        log.info("uploaded timing cache %s (%d bytes) in %.2f s", name, size, seconds,
                 extra={"event": "remote.timing.uploaded", "key": key, "bytes": size,
                        "seconds": round(seconds, 4)})
        return True

    # ------------------------------------------------------------------ listing

    def exists(self, identity: EngineIdentity) -> bool:
        """Whether a complete object set is present (its .sha256 exists).

        Once the run has stopped using the remote, StoreError at once: asking again would
        cost another deadline against the server that was given up on."""
        if self._offline is not None:
            raise StoreError(
                f"remote store not used for the rest of this run: {self._offline}",
                key=self.key_for(identity),
            )
        try:
            return self._transfer.head(self.key_for(identity) + SHA_SUFFIX) is not None
        except remote_errors() as exc:
            why = reason(exc, self._settings)
            if is_connection_level(exc):
                self._go_offline(why)
            raise StoreError(
                f"remote store check failed: {why}", key=self.key_for(identity)
            ) from exc


def remote_store_from_settings(
    table: Mapping[str, Any] | None,
    trust: SignatureVerifier | None = None,
    environ: Mapping[str, str] | None = None,
    sign_timing_cache: SignBytes | None = None,
) -> S3EngineStore | None:
    """The configured remote store (boto3 not imported yet), or None when none is set."""
    settings = settings_from_config(table, environ)
    if settings is None:
        return None
    described = settings.describe()
    log.debug(
        "remote store %s",
        described,
        extra={"event": "remote.configured", **{f"remote_{k}": v for k, v in described.items()}},
    )
    return S3EngineStore(settings, trust=trust, sign_timing_cache=sign_timing_cache)
