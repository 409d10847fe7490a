"""What can go wrong with the remote, said in one line without secrets, and which faults
are worth giving the remote up for (for the rest of the run)."""

from __future__ import annotations

import socket
from typing import Any

from trt_provision._lazy import import_optional
from trt_provision.stores.s3.settings import S3Settings, redact_urls


class Refused(Exception):
    """The remote object set (or the local one to upload) is unusable; ``reason`` says why.

    ``once`` names a topic warned about once per run (then logged at DEBUG)."""

    def __init__(
        self, reason: str, *, event: str = "remote.fetch.refused", once: str | None = None
    ) -> None:
        super().__init__(reason)
        self.reason = reason
        self.event = event
        self.once = once


class Absent(Exception):
    """The object is not in the store."""


class TooSlow(Exception):
    """A request ran past its deadline or a GET below the minimum rate (a connection fault)."""


class Conflict(Exception):
    """A conditional request found the slot taken by another device."""


class ResponseTooLarge(Exception):
    """A successful answer without an object (to a PUT, a multipart request...) carried more
    than ``client.MAX_RESPONSE_BODY_BYTES``: a broken or hostile server."""


def error_code(exc: Any) -> tuple[str, int]:
    """The S3 error code and HTTP status of a botocore ClientError (``("", 0)`` otherwise)."""
    response = getattr(exc, "response", None) or {}
    code = str(response.get("Error", {}).get("Code", ""))
    status = int(response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0)
    return code, status


ABSENT_CODES = {"NoSuchKey", "404", "NotFound"}
AUTH_CODES = {
    "InvalidAccessKeyId",
    "SignatureDoesNotMatch",
    "AccessDenied",
    "InvalidToken",
    "ExpiredToken",
    "AuthorizationHeaderMalformed",
    "403",
}
CONFLICT_CODES = {"PreconditionFailed", "ConditionalRequestConflict", "412", "409"}


def is_absent(exc: BaseException) -> bool:
    code, status = error_code(exc)
    return code in ABSENT_CODES or status == 404


def is_conflict(exc: BaseException) -> bool:
    code, status = error_code(exc)
    return code in CONFLICT_CODES or status in (409, 412)


def botocore_errors() -> tuple[type[BaseException], ...]:
    exc = import_optional("botocore.exceptions", "remote")
    return (exc.BotoCoreError, exc.ClientError)


def remote_errors() -> tuple[type[BaseException], ...]:
    """What a request to the remote may raise, short of a bug of ours."""
    return (*botocore_errors(), TooSlow, ResponseTooLarge, MemoryError)


def is_connection_level(exc: BaseException) -> bool:
    """Faults of the server or the connection, not of one object: worth giving up the
    remote for. Running out of memory is one too: whatever filled it, talking on to that
    server risks the build or the application the device is for."""
    if isinstance(
        exc,
        TooSlow | ResponseTooLarge | MemoryError | ConnectionError | TimeoutError | socket.timeout,
    ):
        return True
    errors = import_optional("botocore.exceptions", "remote")
    return isinstance(
        exc, errors.ConnectionError | errors.HTTPClientError | errors.IncompleteReadError
    )


def reason(exc: BaseException, settings: S3Settings) -> str:
    """A one-line reason without secrets or URLs."""
    if isinstance(exc, TooSlow | ResponseTooLarge):
        return str(exc)
    if isinstance(exc, MemoryError):
        return "out of memory while talking to the remote store"
    if isinstance(exc, Conflict):
        return "another device wrote the same object meanwhile"
    code, status = error_code(exc)
    name = type(exc).__name__
    if code in AUTH_CODES or status == 403:
        return f"access denied or wrong credentials ({code or status})"
    if code == "NoSuchBucket":
        return f"bucket {settings.bucket!r} does not exist"
    if status >= 500:
        return f"server error {status} ({code})"
    if name in ("ReadTimeoutError", "ConnectTimeoutError"):
        return (
            f"server too slow ({name}; connect {settings.connect_timeout_s:g} s, "
            f"read {settings.read_timeout_s:g} s)"
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
