"""The fleet's shared engine store on an S3-compatible server (AWS S3, MinIO, SeaweedFS...).

Layout under the bucket::

    <prefix>/engines/<model>/<filename>            the engine
    <prefix>/engines/<model>/<filename>.json       metadata (names the engine, carries its sha256)
    <prefix>/engines/<model>/<filename>.sig        optional Ed25519 signature over the .json
    <prefix>/engines/<model>/<filename>.sha256     sha256sum line, uploaded last

Upload order is engine → .json → .sig → .sha256, each with a conditional put
(``If-None-Match: *``), so the ``.sha256`` marks a complete object set and two devices
racing never overwrite each other: the loser keeps its local engine. Engines above the
single-PUT limit go up as a multipart upload whose completion is conditional too. Fetch
starts with the ``.sha256``: an engine without it is treated as absent (an upload in progress
or abandoned).

Everything read from the bucket is hostile until checked: every GET runs under an overall
deadline and a minimum transfer rate, every body is read up to a fixed bound (the engine up
to the size its metadata declares, plus one byte), the signature is checked over the raw
metadata bytes before they are parsed, and JSON is parsed with bounded depth. Every remote
fault (absent, unreachable, slow, 5xx, bad credentials, tampered bytes, untrusted signature,
anything unexpected) is logged with its reason and reported as "no engine" / "not
uploaded"; after the first connection-level failure the remote is skipped for the rest of
the run. Nothing partial is ever published locally (temp file → verify → rename) or left
remotely (an upload that fails halfway deletes what it put). This is the only module that
imports boto3.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
import os
import queue
import re
import socket
import threading
import time
import traceback
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol
from urllib.parse import urlsplit

from trt_provision._bounded import BoundedInputError, loads_bounded
from trt_provision._fs import fsync_dir, publish_file, write_temp_file
from trt_provision._lazy import import_optional
from trt_provision.errors import EngineGateError, ManifestError, StoreError, TrtProvisionError
from trt_provision.integrity import (
    parse_sha256_bytes,
    parse_sha256_sidecar,
    read_cache_file,
    sha256_sidecar_bytes,
)
from trt_provision.seams import EngineGate, EngineStore
from trt_provision.types import EngineCacheEntry, EngineIdentity, RuntimeTarget

__all__ = [
    "S3EngineStore",
    "S3Settings",
    "SignatureVerifier",
    "redact_url",
    "redact_urls",
    "remote_store_from_settings",
    "settings_from_config",
]

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
CHUNK_BYTES = 8 << 20
MAX_SINGLE_PUT_BYTES = 5 << 30  # S3's limit for one PUT: larger engines go up in parts
MIN_PART_BYTES = 5 << 20  # S3's smallest part (but the last)
MAX_PARTS = 10_000
DEFAULT_PART_BYTES = 64 << 20
# Sidecar bounds: a sha256sum line, a metadata document of a few kB, one signature line.
MAX_SHA_SIDECAR_BYTES = 4096
MAX_METADATA_BYTES = 1 << 20
MAX_SIGNATURE_BYTES = 1024  # as trust.MAX_SIGNATURE_BYTES
SHA_SUFFIX = ".sha256"
JSON_SUFFIX = ".json"
SIG_SUFFIX = ".sig"
RATE_WINDOW_S = 10.0
UNAUTHENTICATED_WARNING = "remote engines are not authenticated; set public_key"

_SYNC_EVERY = 32 << 20
_POLL_S = 0.25


class SignatureVerifier(Protocol):
    """Trust decision over raw sidecar bytes, before anything is published locally."""

    def check_bytes(self, metadata: bytes, signature: bytes | None, where: str) -> None: ...


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: no credentials, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme:
        return "<URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_urls(text: str) -> str:
    """Every URL inside ``text`` redacted (for messages of third-party exceptions)."""
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)


@dataclass(frozen=True)
class S3Settings:
    """Where the shared store lives and how patiently to talk to it. Keys never print."""

    bucket: str
    endpoint: str | None = field(default=None, repr=False)  # None: AWS S3 of ``region``
    prefix: str = ""
    region: str = DEFAULT_REGION
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    path_style: bool = True  # MinIO / SeaweedFS need it; AWS accepts it
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    max_attempts: int = 3  # total attempts per request, the first one included
    upload_enabled: bool = True
    max_engine_bytes: int = 64 << 30
    # Every GET (sidecars and engine) ends within this many seconds...
    get_deadline_s: float = 3600.0
    # ...and is given up when slower than this (0: no rate check; the deadline still holds).
    min_rate_bytes_s: int = 64 << 10

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise ManifestError("remote bucket must be a non-empty name", key="remote.bucket")
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ManifestError(
                "remote endpoint must be an http:// or https:// URL",
                key="remote.endpoint",
                found=redact_url(self.endpoint),  # never echo credentials in a URL
            )
        if self.endpoint is not None and "@" in self.endpoint:
            raise ManifestError(
                "remote endpoint must not embed credentials", key="remote.endpoint"
            )
        if (self.access_key is None) != (self.secret_key is None):
            raise ManifestError(
                "remote access key and secret key must be given together",
                key="remote.access_key",
            )
        for name in ("connect_timeout_s", "read_timeout_s", "get_deadline_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ManifestError(
                    "remote timeouts must be finite and > 0 seconds", key=f"remote.{name}"
                )
        if self.max_attempts < 1:
            raise ManifestError("remote max_attempts must be >= 1", key="remote.max_attempts")
        if self.max_engine_bytes < 1:
            raise ManifestError("remote max_engine_bytes must be >= 1", key="remote")
        if self.min_rate_bytes_s < 0:
            raise ManifestError("remote min_rate_kib_s must be >= 0", key="remote.min_rate_kib_s")

    def __repr__(self) -> str:
        return f"S3Settings({self.describe()})"

    @property
    def has_static_credentials(self) -> bool:
        return self.access_key is not None

    def describe(self) -> dict[str, Any]:
        """What may be logged or printed: no credentials, no query strings."""
        return {
            "endpoint": redact_url(self.endpoint) if self.endpoint else f"aws:{self.region}",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "path_style": self.path_style,
            "credentials": "static" if self.has_static_credentials else "default chain",
        }

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> S3Settings:
        """Settings from ``ARTIFACTS_*`` (then standard ``AWS_*``) variables.

        ``overrides`` (e.g. from the config file or the command line) win over the
        environment; a None override is ignored.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "endpoint": _env(env, "ARTIFACTS_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            "bucket": _env(env, "ARTIFACTS_BUCKET"),
            "prefix": _env(env, "ARTIFACTS_PREFIX") or "",
            "region": _env(env, "ARTIFACTS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
            or DEFAULT_REGION,
        }
        access = _env(env, "ARTIFACTS_ACCESS_KEY")
        secret = _env(env, "ARTIFACTS_SECRET_KEY")
        token = None
        if access is None and secret is None:
            access = _env(env, "AWS_ACCESS_KEY_ID")
            secret = _env(env, "AWS_SECRET_ACCESS_KEY")
            token = _env(env, "AWS_SESSION_TOKEN")
        values.update(access_key=access, secret_key=secret, session_token=token)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values.get("bucket"):
            raise ManifestError(
                "no remote bucket configured", key="remote.bucket", env="ARTIFACTS_BUCKET"
            )
        return cls(**values)


class _Refused(Exception):
    """Internal: the remote object set is unusable; ``reason`` says why."""

    def __init__(self, reason: str, *, event: str = "remote.fetch.refused") -> None:
        super().__init__(reason)
        self.reason = reason
        self.event = event


class _Absent(Exception):
    """Internal: the object is not in the store."""


class _TooSlow(Exception):
    """Internal: a GET ran past its deadline or below the minimum rate (a connection fault)."""


class _Conflict(Exception):
    """Internal: a conditional request found the slot taken by another device."""


def _error_code(exc: Any) -> tuple[str, int]:
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


_ABSENT_CODES = {"NoSuchKey", "404", "NotFound"}
_AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "403",
}
_CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def _socket_of(body: Any) -> socket.socket | None:
    """The socket under a botocore streaming body (urllib3 response → connection), if any."""
    raw = getattr(body, "_raw_stream", None)
    conn = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


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
    ) -> None:
        if chunk_bytes < 64 << 10:
            raise ValueError(f"chunk_bytes must be >= 64 KiB, got {chunk_bytes}")
        if not 1 <= multipart_threshold_bytes <= MAX_SINGLE_PUT_BYTES:
            raise ValueError(
                f"multipart_threshold_bytes must be in 1..{MAX_SINGLE_PUT_BYTES}, "
                f"got {multipart_threshold_bytes}"
            )
        if not MIN_PART_BYTES <= part_bytes <= MAX_SINGLE_PUT_BYTES:
            raise ValueError(f"part_bytes must be in 5 MiB..5 GiB, got {part_bytes}")
        if rate_window_s <= 0:
            raise ValueError(f"rate_window_s must be > 0, got {rate_window_s}")
        self._settings = settings
        self._trust = trust
        self._client = client
        self._chunk = chunk_bytes
        self._multipart_threshold = multipart_threshold_bytes
        self._part_bytes = part_bytes
        self._rate_window = rate_window_s
        self._state_lock = threading.Lock()
        # The body of the response botocore is parsing on this thread (see client()).
        self._parsing = threading.local()
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

    # ------------------------------------------------------------------ keys

    def key_for(self, identity: EngineIdentity) -> str:
        parts = [self._settings.prefix, "engines", identity.model_name, identity.filename]
        return "/".join(p for p in parts if p)

    def _where(self, key: str) -> str:
        return f"s3://{self._settings.bucket}/{key}"

    # ------------------------------------------------------------------ client

    def client(self) -> Any:
        """The boto3 client, built on first use (boto3 and botocore imported lazily)."""
        if self._client is None:
            boto3 = import_optional("boto3", "remote")
            config_mod = import_optional("botocore.config", "remote")
            s = self._settings
            config = config_mod.Config(
                connect_timeout=s.connect_timeout_s,
                read_timeout=s.read_timeout_s,
                # botocore's ``max_attempts`` counts retries; ``total_max_attempts`` counts
                # the first request too, which is what our setting's name promises.
                retries={"total_max_attempts": s.max_attempts, "mode": "standard"},
                s3={"addressing_style": "path" if s.path_style else "auto"},
                # Servers other than AWS reject or mangle the default CRC trailers.
                request_checksum_calculation="when_required",
                response_checksum_validation="when_required",
                signature_version="s3v4",
            )
            session = boto3.session.Session(
                aws_access_key_id=s.access_key,
                aws_secret_access_key=s.secret_key,
                aws_session_token=s.session_token,
                region_name=s.region,
            )
            client = session.client("s3", endpoint_url=s.endpoint, config=config)
            # When botocore's parser raises on a hostile header (a malformed Content-Length
            # is a ValueError), the response it was parsing is dropped unclosed, socket
            # included: remember it so the GET that failed can close it.
            client.meta.events.register(
                "before-parse.s3.GetObject", self._remember_response_body
            )
            self._client = client
        return self._client

    def _remember_response_body(self, response_dict: Any = None, **_: Any) -> None:
        if isinstance(response_dict, dict):
            self._parsing.body = response_dict.get("body")

    @staticmethod
    def _botocore_errors() -> tuple[type[BaseException], ...]:
        exc = import_optional("botocore.exceptions", "remote")
        return (exc.BotoCoreError, exc.ClientError)

    @classmethod
    def _remote_errors(cls) -> tuple[type[BaseException], ...]:
        return (*cls._botocore_errors(), _TooSlow)

    @staticmethod
    def _is_connection_level(exc: BaseException) -> bool:
        """Faults of the connection, not of one object: worth giving up the remote for."""
        if isinstance(exc, _TooSlow | ConnectionError | TimeoutError | socket.timeout):
            return True
        errors = import_optional("botocore.exceptions", "remote")
        return isinstance(
            exc, errors.ConnectionError | errors.HTTPClientError | errors.IncompleteReadError
        )

    def _reason(self, exc: BaseException) -> str:
        """A one-line reason without secrets or URLs."""
        if isinstance(exc, _TooSlow):
            return str(exc)
        if isinstance(exc, _Conflict):
            return "another device wrote the same object meanwhile"
        code, status = _error_code(exc)
        name = type(exc).__name__
        if code in _AUTH_CODES or status == 403:
            return f"access denied or wrong credentials ({code or status})"
        if code == "NoSuchBucket":
            return f"bucket {self._settings.bucket!r} does not exist"
        if status >= 500:
            return f"server error {status} ({code})"
        if name in ("ReadTimeoutError", "ConnectTimeoutError"):
            return (
                f"server too slow ({name}; connect {self._settings.connect_timeout_s:g} s, "
                f"read {self._settings.read_timeout_s:g} s)"
            )
        if name in ("EndpointConnectionError", "ConnectionClosedError", "ProxyConnectionError"):
            return "server unreachable"
        if name == "NoCredentialsError":
            return "no credentials configured"
        if name in ("ResponseStreamingError", "IncompleteReadError"):
            return "download interrupted"
        if code:
            return f"{code} ({status})"
        if isinstance(exc, OSError) and exc.strerror:
            return exc.strerror
        # The message may quote what the server sent: no URLs, no control characters.
        detail = "".join(c if c.isprintable() else "?" for c in redact_urls(str(exc))[:200])
        return f"{name}: {detail}" if detail else name

    # ------------------------------------------------------------------ run state

    def _warn_once(self, topic: str, message: str, *args: Any, **extra: Any) -> None:
        with self._state_lock:
            first = topic not in self._warned
            self._warned.add(topic)
        log.log(logging.WARNING if first else logging.DEBUG, message, *args, extra=extra)

    def _go_offline(self, reason: str) -> bool:
        """Stop using the remote for this run; True for the first caller."""
        with self._state_lock:
            first = self._offline is None
            if first:
                self._offline = reason
        return first

    # ------------------------------------------------------------------ bounded GET

    def _timed_get(
        self,
        key: str,
        limit: int,
        on_head: Callable[[int | None], None],
        on_chunk: Callable[[bytes], None],
    ) -> int:
        """GET ``key`` reading at most ``limit + 1`` body bytes; return how many were read.

        A helper thread does the blocking socket work; this thread hands each chunk to
        ``on_chunk`` and enforces the deadline and the minimum rate, so a server that sends
        one byte just inside the read timeout, forever, still ends within the deadline. When
        either limit is hit the socket is shut down under the helper (it then fails at once)
        and the GET raises _TooSlow.
        """
        s = self._settings
        events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
        cancel = threading.Event()
        bodies: list[Any] = []
        client = self.client()

        def put(item: tuple[str, Any]) -> None:
            while not cancel.is_set():
                try:
                    events.put(item, timeout=_POLL_S)
                    return
                except queue.Full:
                    continue

        def fetch() -> None:
            body = None
            self._parsing.body = None
            try:
                response = client.get_object(Bucket=s.bucket, Key=key)
                body = response["Body"]
                bodies.append(body)
                length = response.get("ContentLength")
                put(("head", length))
                total = 0
                while total <= limit and not cancel.is_set():
                    chunk = body.read(min(self._chunk, limit + 1 - total))
                    if not chunk:
                        break
                    total += len(chunk)
                    put(("data", chunk))
                put(("end", None))
            except BaseException as exc:  # handed to the caller's thread, which decides
                put(("error", exc))
            finally:
                if body is None:
                    body = getattr(self._parsing, "body", None)
                self._parsing.body = None
                if body is not None:
                    with contextlib.suppress(Exception):
                        body.close()

        worker = threading.Thread(target=fetch, name="s3-get", daemon=True)
        started = time.monotonic()
        deadline = started + s.get_deadline_s
        # The rate is judged from one connect + read timeout after the start on: the
        # latency of a first answer (or of a retried one) is not a slow transfer.
        mark_time = started + s.connect_timeout_s + s.read_timeout_s
        mark_bytes, total = 0, 0
        worker.start()
        try:
            while True:
                now = time.monotonic()
                if now >= deadline:
                    raise _TooSlow(
                        f"transfer exceeded the {s.get_deadline_s:g} s deadline "
                        f"({total} bytes received)"
                    )
                elapsed = now - mark_time
                if s.min_rate_bytes_s and elapsed >= self._rate_window:
                    progress = total - mark_bytes
                    # One read may be in flight: count it as if it had just arrived, so only
                    # a transfer that is certainly too slow is given up.
                    in_flight = min(self._chunk, limit + 1 - total)
                    if progress >= s.min_rate_bytes_s * elapsed:
                        mark_time, mark_bytes = now, total
                    elif progress + in_flight < s.min_rate_bytes_s * elapsed:
                        raise _TooSlow(
                            f"transfer slower than {s.min_rate_bytes_s / 1024:g} KiB/s "
                            f"({progress} bytes in {elapsed:.1f} s)"
                        )
                try:
                    kind, value = events.get(timeout=min(_POLL_S, max(deadline - now, 0.001)))
                except queue.Empty:
                    continue
                if kind == "head":
                    on_head(None if value is None else int(value))
                elif kind == "data":
                    total += len(value)
                    on_chunk(value)
                elif kind == "error":
                    raise value
                else:
                    return total
        finally:
            cancel.set()
            if worker.is_alive():
                # Wake a read blocked on the socket; a request still waiting for its headers
                # has no socket we can reach and ends with its read timeout or the process.
                sock = _socket_of(bodies[0]) if bodies else None
                if sock is not None:
                    with contextlib.suppress(OSError):
                        sock.shutdown(socket.SHUT_RDWR)
                worker.join(timeout=_POLL_S)

    def _get_small(self, key: str, limit: int) -> bytes:
        """A sidecar: at most ``limit`` bytes, under the GET deadline and rate."""
        parts: list[bytes] = []

        def on_head(length: int | None) -> None:
            if length is not None and length > limit:
                raise _Refused(f"sidecar {key} is too large ({length} bytes)")

        try:
            total = self._timed_get(key, limit, on_head, parts.append)
        except self._botocore_errors() as exc:
            code, status = _error_code(exc)
            if code in _ABSENT_CODES or status == 404:
                raise _Absent(key) from exc
            raise
        if total > limit:
            raise _Refused(f"sidecar {key} is too large")
        return b"".join(parts)

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
        where = self._where(key)
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
            entry = self._fetch(identity, key, local, gate, expected)
        except _Absent:
            log.info(
                "remote store has no %s",
                identity.filename,
                extra={"event": "remote.fetch.miss", "key": key},
            )
            return None
        except _Refused as exc:
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
        reason = self._reason(exc)
        extra: dict[str, Any] = {"event": f"{event}.failed", "key": key, "reason": reason}
        connection = False
        with contextlib.suppress(TrtProvisionError):
            connection = self._is_connection_level(exc)
        if connection and self._go_offline(reason):
            extra["offline"] = True
            log.warning(
                message + ": %s; not using the remote store for the rest of this run",
                subject,
                reason,
                extra=extra,
            )
            return
        log.warning(message + ": %s", subject, reason, extra=extra)
        # Not exc_info: a third-party message may quote the endpoint with its query string
        # (botocore's EndpointResolutionError does), so the traceback is redacted first.
        detail = redact_urls("".join(traceback.format_exception(exc)))
        log.debug("remote failure detail:\n%s", detail, extra={"event": f"{event}.detail"})

    def _fetch(
        self,
        identity: EngineIdentity,
        key: str,
        local: EngineStore,
        gate: EngineGate,
        expected: RuntimeTarget,
    ) -> EngineCacheEntry:
        name = identity.filename
        # The .sha256 goes up last: without it the object set is incomplete, i.e. absent.
        sha_bytes = self._get_small(key + SHA_SUFFIX, MAX_SHA_SIDECAR_BYTES)
        try:
            meta_bytes = self._get_small(key + JSON_SUFFIX, MAX_METADATA_BYTES)
        except _Absent as exc:
            raise _Refused("metadata sidecar missing", event="remote.fetch.incomplete") from exc
        try:
            sig_bytes: bytes | None = self._get_small(key + SIG_SUFFIX, MAX_SIGNATURE_BYTES)
        except _Absent:
            sig_bytes = None
        # The signature covers the raw metadata bytes: where one is required, nothing of the
        # metadata is parsed before it verifies.
        if self._trust is not None:
            self._trust.check_bytes(meta_bytes, sig_bytes, self._where(key))
        final = local.path_for(identity)
        staged = local.staging_path(identity)
        temps: list[Path] = [staged]
        try:
            claimed = self._claimed_digest(final, sha_bytes, temps)
            metadata = self._check_metadata(identity, meta_bytes, claimed)
            try:  # the .sha256 must cover the metadata bytes too, as in the local cache
                parse_sha256_bytes(sha_bytes, final, final.name, meta_bytes)
            except EngineGateError as exc:
                raise _Refused(f"sha256 sidecar unusable: {exc.message}") from exc
            size = self._download(key, staged, claimed, metadata["size_bytes"])
            self._publish(final, staged, claimed, meta_bytes, sig_bytes, temps)
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
            _remove_engine_files(final)
            raise
        log.debug(
            "published fetched engine %s",
            final,
            extra={"event": "remote.fetch.published", "engine": name, "bytes": size},
        )
        return entry

    @staticmethod
    def _claimed_digest(final: Path, sha_bytes: bytes, temps: list[Path]) -> str:
        sha_tmp = write_temp_file(final.with_name(final.name + SHA_SUFFIX), sha_bytes)
        temps.append(sha_tmp)
        try:
            return parse_sha256_sidecar(sha_tmp, final.name)
        except EngineGateError as exc:
            raise _Refused(f"sha256 sidecar unusable: {exc.message}") from exc

    def _check_metadata(
        self, identity: EngineIdentity, meta_bytes: bytes, claimed: str
    ) -> dict[str, Any]:
        try:
            metadata = loads_bounded(
                meta_bytes, max_bytes=MAX_METADATA_BYTES, what="metadata sidecar"
            )
        except BoundedInputError as exc:
            raise _Refused(str(exc)) from exc
        if not isinstance(metadata, dict):
            raise _Refused("metadata sidecar is not a JSON object")
        if metadata.get("engine") != identity.filename:
            raise _Refused("metadata sidecar is for another engine")
        if metadata.get("sha256") != claimed:
            raise _Refused("metadata and sha256 sidecars disagree (tampered?)")
        if metadata.get("identity") != identity.to_dict():
            raise _Refused("metadata identity does not match the requested identity")
        declared = metadata.get("size_bytes")
        if isinstance(declared, bool) or not isinstance(declared, int) or declared < 1:
            raise _Refused("metadata sidecar declares no valid engine size")
        if declared > self._settings.max_engine_bytes:
            raise _Refused(
                f"engine is larger than the configured limit ({declared} bytes declared)"
            )
        return metadata

    def _download(self, key: str, staged: Path, claimed: str, declared: int) -> int:
        """Stream the engine into ``staged`` while hashing it: one pass over the bytes.

        Reading stops one byte past the size the (checked) metadata declares, with or
        without a Content-Length header, so a lying server cannot fill the disk.
        """
        digest = hashlib.sha256()
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        unsynced = 0

        def on_head(length: int | None) -> None:
            if length is not None and length != declared:
                raise _Refused(f"engine size {length} differs from its metadata ({declared})")

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
            size = self._timed_get(key, declared, on_head, on_chunk)
            if size == declared:
                os.fsync(fd)
        finally:
            os.close(fd)
        if size == 0:
            raise _Refused("engine object is empty")
        if size != declared:
            raise _Refused(
                f"engine object is {'larger' if size > declared else 'smaller'} than its "
                f"metadata declares ({declared} bytes)",
                event="remote.fetch.corrupt",
            )
        found = digest.hexdigest()
        if found != claimed:
            raise _Refused(
                f"engine sha256 does not match its sidecar (tampered or corrupt): "
                f"expected {claimed[:16]}…, found {found[:16]}…",
                event="remote.fetch.corrupt",
            )
        return size

    @staticmethod
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

    # ------------------------------------------------------------------ upload

    def _refuses_unsigned(self) -> bool:
        """Whether this host's own trust policy would refuse an unsigned engine."""
        if self._trust is None:
            return False
        try:
            self._trust.check_bytes(b"{}", None, "unsigned engine")
        except EngineGateError:
            return True
        return False

    def upload(self, entry: EngineCacheEntry) -> bool:
        """Conditional put of a locally published engine; False when not uploaded.

        Never raises (but KeyboardInterrupt and the like).
        """
        key = self.key_for(entry.identity)
        where = self._where(key)
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
            uploaded = self._upload(entry, key)
        except _Refused as exc:
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

    def _read_local(self, entry: EngineCacheEntry) -> tuple[bytes, bytes, bytes | None, int]:
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
            raise _Refused(f"local {exc}") from exc
        except OSError as exc:
            raise _Refused(f"local engine unreadable: {exc.strerror}") from exc
        if not sha_bytes.startswith(entry.sha256.encode()):
            raise _Refused("local sha256 sidecar does not match the engine entry")
        return sha_bytes, meta_bytes, sig_bytes, size

    def _upload(self, entry: EngineCacheEntry, key: str) -> bool:
        sha_bytes, meta_bytes, sig_bytes, size = self._read_local(entry)
        if size > self._settings.max_engine_bytes:
            # No device of the fleet would fetch it.
            raise _Refused(f"engine is larger than the configured limit ({size} bytes)")
        if sig_bytes is None and self._refuses_unsigned():
            # An unsigned engine would hold the slot for good, and every device that requires
            # signatures (this one included) would refuse it and rebuild forever.
            self._warn_once(
                "unsigned-upload",
                "engine %s not uploaded: it is unsigned and this host's trust policy "
                "requires signatures (set signing_key to sign what this host builds)",
                entry.identity.filename,
                event="remote.upload.unsigned",
                key=key,
            )
            return False
        errors: tuple[type[BaseException], ...] = (*self._botocore_errors(), _Conflict)
        put: list[str] = []
        try:
            try:
                self._put_engine(key, entry.engine_path, size, {"IfNoneMatch": "*"})
            except _Conflict:
                if sig_bytes is not None and self._replace_unsigned(
                    entry, key, size, meta_bytes, sig_bytes, sha_bytes
                ):
                    return True
                self._log_lost_race(entry, key)
                return False
            put.append(key)
            for suffix, data in (
                (JSON_SUFFIX, meta_bytes),
                (SIG_SUFFIX, sig_bytes),
                (SHA_SUFFIX, sha_bytes),
            ):
                if data is not None:
                    self._put(key + suffix, data, {"IfNoneMatch": "*"})
                    put.append(key + suffix)
        except errors as exc:
            self._roll_back(put)
            raise _Refused(self._reason(exc), event="remote.upload.failed") from exc
        except OSError as exc:
            self._roll_back(put)
            raise _Refused(
                f"cannot read local engine: {exc.strerror}", event="remote.upload.failed"
            ) from exc
        return True

    def _conditional(self, call: Callable[[], Any]) -> Any:
        """Run a conditional request; a precondition failure becomes _Conflict."""
        try:
            return call()
        except self._botocore_errors() as exc:
            code, status = _error_code(exc)
            if code in _CONFLICT_CODES or status in (409, 412):
                raise _Conflict(code or str(status)) from exc
            raise

    def _request(self, operation: str, **params: Any) -> Any:
        """One request other than a GET, under the deadline too.

        A helper thread does the blocking I/O, so a server that trickles the answer to a
        PUT or HEAD cannot hold the run; past the deadline the helper is left to the
        server's mercy (the remote is then skipped for the run, so one helper at most).
        """
        method = getattr(self.client(), operation)
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()

        def run() -> None:
            try:
                outcome.append((True, method(Bucket=self._settings.bucket, **params)))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))
            finally:
                done.set()

        threading.Thread(target=run, name=f"s3-{operation}", daemon=True).start()
        deadline = self._settings.get_deadline_s
        if not done.wait(deadline):
            raise _TooSlow(f"{operation} exceeded the {deadline:g} s deadline")
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def _put(self, key: str, data: bytes, condition: Mapping[str, str]) -> Any:
        return self._conditional(
            lambda: self._request(
                "put_object", Key=key, Body=data, ContentLength=len(data), **condition
            )
        )

    def _put_engine(self, key: str, path: Path, size: int, condition: Mapping[str, str]) -> None:
        """One PUT, or a multipart upload above the threshold; both conditional."""
        if size <= self._multipart_threshold:
            with open(path, "rb") as fh:
                self._conditional(
                    lambda: self._request(
                        "put_object", Key=key, Body=fh, ContentLength=size, **condition
                    )
                )
            return
        part_bytes = max(self._part_bytes, -(-size // MAX_PARTS))
        upload_id = self._request("create_multipart_upload", Key=key)["UploadId"]
        try:
            parts: list[dict[str, Any]] = []
            with open(path, "rb") as fh:
                while data := fh.read(part_bytes):
                    number = len(parts) + 1
                    response = self._request(
                        "upload_part",
                        Key=key,
                        UploadId=upload_id,
                        PartNumber=number,
                        Body=data,
                        ContentLength=len(data),
                    )
                    parts.append({"ETag": response["ETag"], "PartNumber": number})
            # Check, then complete conditionally. The completion carries the same condition
            # as a single PUT (AWS S3 and SeaweedFS honour it); the check before it keeps a
            # server that ignores conditions on completion from overwriting a slot filled
            # during the part uploads, leaving only the moment between check and completion.
            if condition.get("IfNoneMatch") == "*" and self._head(key) is not None:
                raise _Conflict("slot filled during the multipart upload")
            self._conditional(
                lambda: self._request(
                    "complete_multipart_upload",
                    Key=key,
                    UploadId=upload_id,
                    MultipartUpload={"Parts": parts},
                    **condition,
                )
            )
        except BaseException:
            with contextlib.suppress(Exception):
                self._request("abort_multipart_upload", Key=key, UploadId=upload_id)
            raise

    def _head(self, key: str) -> dict[str, Any] | None:
        """HEAD of ``key``, None when absent."""
        try:
            response: dict[str, Any] = self._request("head_object", Key=key)
        except self._botocore_errors() as exc:
            code, status = _error_code(exc)
            if code in _ABSENT_CODES or status == 404:
                return None
            raise
        return response

    def _replace_unsigned(
        self,
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
        sha_head = self._head(key + SHA_SUFFIX)
        if sha_head is None or self._head(key + SIG_SUFFIX) is not None:
            return False  # an upload in progress, or already signed: keep it
        engine_head = self._head(key)
        json_head = self._head(key + JSON_SUFFIX)
        if engine_head is None or json_head is None:
            return False
        try:
            self._put(key + SIG_SUFFIX, sig_bytes, {"IfNoneMatch": "*"})
        except _Conflict:
            return False  # another signed device claimed it first
        done: list[str] = []
        try:
            self._conditional(
                lambda: self._request(
                    "delete_object",
                    Key=key + SHA_SUFFIX,
                    IfMatch=sha_head["ETag"],
                )
            )
            done.append("sha")
            self._put_engine(key, entry.engine_path, size, {"IfMatch": engine_head["ETag"]})
            self._put(key + JSON_SUFFIX, meta_bytes, {"IfMatch": json_head["ETag"]})
            self._put(key + SHA_SUFFIX, sha_bytes, {"IfNoneMatch": "*"})
        except BaseException:
            # Without its .sha256 the slot reads as absent; clear it so a later upload can
            # fill it instead of finding a half-replaced set forever.
            self._roll_back(
                [key + SIG_SUFFIX, *([key, key + JSON_SUFFIX] if done else [])]
            )
            raise
        log.info(
            "replaced the unsigned remote engine %s with this host's signed one",
            entry.identity.filename,
            extra={"event": "remote.upload.replaced_unsigned", "key": key},
        )
        return True

    def _log_lost_race(self, entry: EngineCacheEntry, key: str) -> None:
        complete = True
        try:
            complete = self._head(key + SHA_SUFFIX) is not None
        except self._remote_errors():
            complete = False
        log.info(
            "remote store already holds %s (%s); keeping the local engine",
            entry.identity.filename,
            "uploaded by another device" if complete else "upload by another device pending",
            extra={"event": "remote.upload.lost_race", "key": key, "complete": complete},
        )

    def _roll_back(self, keys: list[str]) -> None:
        """Remove what this upload put, so no partial object set stays behind."""
        for key in reversed(keys):
            try:
                self._request("delete_object", Key=key)
            except self._remote_errors() as exc:
                log.warning(
                    "could not remove partial upload %s: %s",
                    self._where(key),
                    self._reason(exc),
                    extra={"event": "remote.upload.rollback_failed", "key": key},
                )

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
            return self._head(self.key_for(identity) + SHA_SUFFIX) is not None
        except self._remote_errors() as exc:
            raise StoreError(
                f"remote store check failed: {self._reason(exc)}", key=self.key_for(identity)
            ) from exc


def _remove_engine_files(final: Path) -> None:
    for path in (
        final,
        *(final.with_name(final.name + s) for s in (SHA_SUFFIX, JSON_SUFFIX, SIG_SUFFIX)),
    ):
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    with contextlib.suppress(OSError):
        fsync_dir(final.parent)


_CONFIG_KEYS = {
    "endpoint": "endpoint",
    "bucket": "bucket",
    "prefix": "prefix",
    "region": "region",
    "path_style": "path_style",
    "access_key": "access_key",
    "secret_key": "secret_key",
    "connect_timeout_s": "connect_timeout_s",
    "read_timeout_s": "read_timeout_s",
    "max_attempts": "max_attempts",
    "upload": "upload_enabled",
    "max_engine_mib": "max_engine_bytes",
    "get_deadline_s": "get_deadline_s",
    "min_rate_kib_s": "min_rate_bytes_s",
}


_MAX_MIB = 1 << 43  # bytes stay below 2**63


def settings_from_config(
    table: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> S3Settings | None:
    """S3Settings from a manifest's ``[remote]`` table plus the environment.

    None when neither configures a bucket (no remote store). Unknown keys and wrong types
    raise ManifestError naming the key.
    """
    env = os.environ if environ is None else environ
    raw = dict(table or {})
    if not raw.get("bucket") and not env.get("ARTIFACTS_BUCKET"):
        return None
    overrides: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _CONFIG_KEYS:
            raise ManifestError(
                "unknown remote key", key=f"remote.{key}", expected=f"one of {sorted(_CONFIG_KEYS)}"
            )
        target = _CONFIG_KEYS[key]
        if key in ("path_style", "upload"):
            if not isinstance(value, bool):
                raise ManifestError("expected true or false", key=f"remote.{key}")
        elif key in ("connect_timeout_s", "read_timeout_s", "max_engine_mib", "get_deadline_s"):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ManifestError(
                    "expected a finite number > 0", key=f"remote.{key}", found=repr(value)[:40]
                )
            if key == "max_engine_mib":
                if value >= _MAX_MIB:
                    raise ManifestError(
                        f"expected a number of MiB below {_MAX_MIB}", key=f"remote.{key}"
                    )
                value = int(value * (1 << 20))
        elif key == "min_rate_kib_s":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0 <= value < _MAX_MIB
            ):
                raise ManifestError(
                    "expected a finite number >= 0 (0: no minimum rate)",
                    key=f"remote.{key}",
                    found=repr(value)[:40],
                )
            value = int(value * 1024)
        elif key == "max_attempts":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ManifestError(
                    "expected an integer >= 1", key=f"remote.{key}", found=repr(value)[:40]
                )
        elif not isinstance(value, str):
            raise ManifestError("expected a string", key=f"remote.{key}")
        overrides[target] = value
    return S3Settings.from_env(env, **overrides)


def remote_store_from_settings(
    table: Mapping[str, Any] | None,
    trust: SignatureVerifier | None = None,
    environ: Mapping[str, str] | None = None,
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
    return S3EngineStore(settings, trust=trust)
