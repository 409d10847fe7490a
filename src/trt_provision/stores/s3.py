"""The fleet's shared engine store on an S3-compatible server (AWS S3, MinIO, SeaweedFS...).

Layout under the bucket::

    <prefix>/engines/<model>/<filename>            the engine
    <prefix>/engines/<model>/<filename>.json       metadata (names the engine, carries its sha256)
    <prefix>/engines/<model>/<filename>.sig        optional Ed25519 signature over the .json
    <prefix>/engines/<model>/<filename>.sha256     sha256sum line, uploaded last

Upload order is engine → .json → .sig → .sha256, each with a conditional put
(``If-None-Match: *``), so the ``.sha256`` marks a complete object set and two devices
racing never overwrite each other: the loser keeps its local engine. Fetch starts with the
``.sha256``: an engine without it is treated as absent (an upload in progress or abandoned).

Every remote fault (absent, unreachable, slow, 5xx, bad credentials, tampered bytes, untrusted
signature) is logged with its reason and reported as "no engine" / "not uploaded"; nothing
partial is ever published locally (temp file → verify → rename) or left remotely (an upload
that fails halfway deletes what it put). This is the only module that imports boto3.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import logging
import math
import os
import queue
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trt_provision._fs import fsync_dir, publish_file, write_temp_file
from trt_provision._lazy import import_optional
from trt_provision.errors import EngineGateError, ManifestError, StoreError, TrtProvisionError
from trt_provision.integrity import format_sha256_line, parse_sha256_sidecar
from trt_provision.seams import EngineGate, EngineStore
from trt_provision.types import EngineCacheEntry, EngineIdentity, RuntimeTarget

__all__ = [
    "S3EngineStore",
    "S3Settings",
    "SignatureVerifier",
    "remote_store_from_settings",
    "settings_from_config",
]

log = logging.getLogger(__name__)

DEFAULT_REGION = "us-east-1"
CHUNK_BYTES = 8 << 20
MAX_SINGLE_PUT_BYTES = 5 << 30  # S3's limit for one PUT
MAX_SIDECAR_BYTES = 16 << 20
SHA_SUFFIX = ".sha256"
JSON_SUFFIX = ".json"
SIG_SUFFIX = ".sig"


_SYNC_EVERY = 32 << 20


class SignatureVerifier(Protocol):
    """Trust decision over raw sidecar bytes, before anything is published locally."""

    def check_bytes(self, metadata: bytes, signature: bytes | None, where: str) -> None: ...


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


@dataclass(frozen=True)
class S3Settings:
    """Where the shared store lives and how patiently to talk to it. Keys never print."""

    bucket: str
    endpoint: str | None = None  # None: AWS S3 of ``region``
    prefix: str = ""
    region: str = DEFAULT_REGION
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    path_style: bool = True  # MinIO / SeaweedFS need it; AWS accepts it
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    max_attempts: int = 3
    upload_enabled: bool = True
    max_engine_bytes: int = 64 << 30

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise ManifestError("remote bucket must be a non-empty name", key="remote.bucket")
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ManifestError(
                "remote endpoint must be an http:// or https:// URL",
                key="remote.endpoint",
                found=self.endpoint.split("@")[-1],  # never echo credentials in a URL
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
        if self.connect_timeout_s <= 0 or self.read_timeout_s <= 0:
            raise ManifestError("remote timeouts must be > 0 seconds", key="remote.timeouts")
        if self.max_attempts < 1:
            raise ManifestError("remote max_attempts must be >= 1", key="remote.max_attempts")
        if self.max_engine_bytes < 1:
            raise ManifestError("remote max_engine_bytes must be >= 1", key="remote")

    @property
    def has_static_credentials(self) -> bool:
        return self.access_key is not None

    def describe(self) -> dict[str, Any]:
        """What may be logged or printed: no credentials."""
        return {
            "endpoint": self.endpoint or f"aws:{self.region}",
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


class S3EngineStore:
    """``RemoteEngineStore`` over an S3-compatible bucket; failures are logged, not raised."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        trust: SignatureVerifier | None = None,
        client: Any = None,
        chunk_bytes: int = CHUNK_BYTES,
    ) -> None:
        if chunk_bytes < 64 << 10:
            raise ValueError(f"chunk_bytes must be >= 64 KiB, got {chunk_bytes}")
        self._settings = settings
        self._trust = trust
        self._client = client
        self._chunk = chunk_bytes

    def __repr__(self) -> str:
        return f"S3EngineStore({self._settings!r})"

    @property
    def settings(self) -> S3Settings:
        return self._settings

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
                retries={"max_attempts": s.max_attempts, "mode": "standard"},
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
            self._client = session.client("s3", endpoint_url=s.endpoint, config=config)
        return self._client

    @staticmethod
    def _botocore_errors() -> tuple[type[BaseException], ...]:
        exc = import_optional("botocore.exceptions", "remote")
        return (exc.BotoCoreError, exc.ClientError)

    def _reason(self, exc: BaseException) -> str:
        """A one-line reason without secrets (botocore messages carry none)."""
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
        return name

    # ------------------------------------------------------------------ small objects

    def _get_small(self, key: str) -> bytes:
        try:
            response = self.client().get_object(Bucket=self._settings.bucket, Key=key)
        except self._botocore_errors() as exc:
            code, status = _error_code(exc)
            if code in _ABSENT_CODES or status == 404:
                raise _Absent(key) from exc
            raise
        body = response["Body"]
        try:
            if int(response.get("ContentLength") or 0) > MAX_SIDECAR_BYTES:
                raise _Refused(f"sidecar {key} is too large")
            data: bytes = body.read(MAX_SIDECAR_BYTES + 1)
        finally:
            body.close()
        if len(data) > MAX_SIDECAR_BYTES:
            raise _Refused(f"sidecar {key} is too large")
        return data

    # ------------------------------------------------------------------ fetch

    def fetch(
        self,
        identity: EngineIdentity,
        local: EngineStore,
        gate: EngineGate,
        expected: RuntimeTarget,
    ) -> EngineCacheEntry | None:
        """Download, verify and publish ``identity`` locally; None (logged) when unusable."""
        key = self.key_for(identity)
        where = self._where(key)
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
            # botocore's timeouts are also OSErrors: classify them first.
            if isinstance(exc, self._botocore_errors()):
                reason = self._reason(exc)
            elif isinstance(exc, OSError):
                reason = exc.strerror or type(exc).__name__
            else:
                raise
            log.warning(
                "remote engine %s not fetched: %s",
                where,
                reason,
                extra={"event": "remote.fetch.failed", "key": key, "reason": reason},
            )
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
        sha_bytes = self._get_small(key + SHA_SUFFIX)
        try:
            meta_bytes = self._get_small(key + JSON_SUFFIX)
        except _Absent as exc:
            raise _Refused("metadata sidecar missing", event="remote.fetch.incomplete") from exc
        try:
            sig_bytes: bytes | None = self._get_small(key + SIG_SUFFIX)
        except _Absent:
            sig_bytes = None
        final = local.path_for(identity)
        staged = local.staging_path(identity)
        temps: list[Path] = [staged]
        try:
            claimed = self._claimed_digest(final, sha_bytes, temps)
            metadata = self._check_metadata(identity, meta_bytes, claimed)
            if self._trust is not None:
                self._trust.check_bytes(meta_bytes, sig_bytes, self._where(key))
            size = self._download(key, staged, claimed, metadata.get("size_bytes"))
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

    @staticmethod
    def _check_metadata(
        identity: EngineIdentity, meta_bytes: bytes, claimed: str
    ) -> dict[str, Any]:
        try:
            metadata = json.loads(meta_bytes)
        except (UnicodeDecodeError, json.JSONDecodeError) as exc:
            raise _Refused("metadata sidecar is not valid JSON") from exc
        if not isinstance(metadata, dict):
            raise _Refused("metadata sidecar is not a JSON object")
        if metadata.get("engine") != identity.filename:
            raise _Refused("metadata sidecar is for another engine")
        if metadata.get("sha256") != claimed:
            raise _Refused("metadata and sha256 sidecars disagree (tampered?)")
        if metadata.get("identity") != identity.to_dict():
            raise _Refused("metadata identity does not match the requested identity")
        return metadata

    def _download(
        self, key: str, staged: Path, claimed: str, expected_size: object
    ) -> int:
        response = self.client().get_object(Bucket=self._settings.bucket, Key=key)
        body = response["Body"]
        try:
            length = int(response.get("ContentLength") or 0)
            if length > self._settings.max_engine_bytes:
                raise _Refused(
                    f"engine is larger than the configured limit ({length} bytes)"
                )
            if isinstance(expected_size, int) and length and length != expected_size:
                raise _Refused(
                    f"engine size {length} differs from its metadata ({expected_size})"
                )
            digest, size = self._stream_to_file(body, staged)
        finally:
            body.close()
        if size == 0:
            raise _Refused("engine object is empty")
        if digest != claimed:
            raise _Refused(
                f"engine sha256 does not match its sidecar (tampered or corrupt): "
                f"expected {claimed[:16]}…, found {digest[:16]}…",
                event="remote.fetch.corrupt",
            )
        return size

    def _stream_to_file(self, body: Any, staged: Path) -> tuple[str, int]:
        """Write the body to ``staged`` while hashing it: one pass over the bytes.

        The socket is read on this thread while a helper thread hashes and writes the
        previous chunks (both release the GIL), so hashing costs almost no wall time.
        """
        digest = hashlib.sha256()
        limit = self._settings.max_engine_bytes
        chunks: queue.Queue[bytes | None] = queue.Queue(maxsize=4)
        failure: list[BaseException] = []
        fd = os.open(staged, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)

        def sink() -> None:
            # Always consume up to the None marker, so the reader never blocks on put().
            unsynced = 0
            while (chunk := chunks.get()) is not None:
                if failure:
                    continue
                try:
                    digest.update(chunk)
                    view = memoryview(chunk)
                    while view:
                        view = view[os.write(fd, view):]
                    unsynced += len(chunk)
                    if unsynced >= _SYNC_EVERY:
                        # Flush while the socket is still being read, so the final fsync
                        # has little left to do instead of the whole engine.
                        os.fdatasync(fd)
                        unsynced = 0
                except BaseException as exc:
                    failure.append(exc)
            if not failure:
                try:
                    os.fsync(fd)
                except BaseException as exc:
                    failure.append(exc)

        writer = threading.Thread(target=sink, name="s3-fetch-writer", daemon=True)
        writer.start()
        size = 0
        try:
            try:
                while not failure and (chunk := body.read(self._chunk)):
                    size += len(chunk)
                    if size > limit:
                        raise _Refused("engine is larger than the configured limit")
                    chunks.put(chunk)
            finally:
                chunks.put(None)
                writer.join()
        finally:
            os.close(fd)
        if failure:
            raise failure[0]
        return digest.hexdigest(), size

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
        sha_line = format_sha256_line(digest, final.name).encode()
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

    def upload(self, entry: EngineCacheEntry) -> bool:
        """Conditional put of a locally published engine; False when not uploaded."""
        key = self.key_for(entry.identity)
        where = self._where(key)
        if not self._settings.upload_enabled:
            log.debug("upload disabled", extra={"event": "remote.upload.disabled", "key": key})
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

    def _upload(self, entry: EngineCacheEntry, key: str) -> bool:
        engine = entry.engine_path
        try:
            sha_bytes = engine.with_name(engine.name + SHA_SUFFIX).read_bytes()
            meta_bytes = engine.with_name(engine.name + JSON_SUFFIX).read_bytes()
            size = engine.stat().st_size
        except OSError as exc:
            raise _Refused(f"local engine or sidecar unreadable: {exc.strerror}") from exc
        try:
            sig_bytes: bytes | None = engine.with_name(engine.name + SIG_SUFFIX).read_bytes()
        except FileNotFoundError:
            sig_bytes = None
        except OSError as exc:
            raise _Refused(f"local signature unreadable: {exc.strerror}") from exc
        if not sha_bytes.startswith(entry.sha256.encode()):
            raise _Refused("local sha256 sidecar does not match the engine entry")
        if size > MAX_SINGLE_PUT_BYTES:
            raise _Refused(f"engine is larger than one S3 PUT allows ({size} bytes)")
        errors = self._botocore_errors()
        put: list[str] = []
        try:
            try:
                with open(engine, "rb") as fh:
                    self._put(key, fh, size)
            except errors as exc:
                code, status = _error_code(exc)
                if code in _CONFLICT_CODES or status in (409, 412):
                    self._log_lost_race(entry, key)
                    return False
                raise
            put.append(key)
            for suffix, data in (
                (JSON_SUFFIX, meta_bytes),
                (SIG_SUFFIX, sig_bytes),
                (SHA_SUFFIX, sha_bytes),
            ):
                if data is not None:
                    self._put(key + suffix, data, len(data))
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

    def _put(self, key: str, body: Any, length: int) -> None:
        self.client().put_object(
            Bucket=self._settings.bucket,
            Key=key,
            Body=body,
            ContentLength=length,
            IfNoneMatch="*",
        )

    def _log_lost_race(self, entry: EngineCacheEntry, key: str) -> None:
        complete = True
        try:
            self.client().head_object(Bucket=self._settings.bucket, Key=key + SHA_SUFFIX)
        except self._botocore_errors():
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
                self.client().delete_object(Bucket=self._settings.bucket, Key=key)
            except self._botocore_errors() as exc:
                log.warning(
                    "could not remove partial upload %s: %s",
                    self._where(key),
                    self._reason(exc),
                    extra={"event": "remote.upload.rollback_failed", "key": key},
                )

    # ------------------------------------------------------------------ listing

    def exists(self, identity: EngineIdentity) -> bool:
        """Whether a complete object set is present (its .sha256 exists)."""
        try:
            self.client().head_object(
                Bucket=self._settings.bucket, Key=self.key_for(identity) + SHA_SUFFIX
            )
        except self._botocore_errors() as exc:
            code, status = _error_code(exc)
            if code in _ABSENT_CODES or status == 404:
                return False
            raise StoreError(
                f"remote store check failed: {self._reason(exc)}", key=self.key_for(identity)
            ) from exc
        return True


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
        elif key in ("connect_timeout_s", "read_timeout_s", "max_engine_mib"):
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
    log.debug(
        "remote store %s",
        settings.describe(),
        extra={"event": "remote.configured", **{f"remote_{k}": v for k, v in
                                                 settings.describe().items()}},
    )
    return S3EngineStore(settings, trust=trust)
