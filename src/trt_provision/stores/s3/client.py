"""The boto3 client (boto3 and botocore imported on first use, in this package only), and
the bound on every answer body botocore would otherwise read whole."""

from __future__ import annotations

import contextlib
import socket
import threading
from collections.abc import Callable, Iterator
from typing import Any

from trt_provision._lazy import import_optional
from trt_provision.errors import StoreError
from trt_provision.stores.s3.faults import ResponseTooLarge
from trt_provision.stores.s3.settings import S3Settings

# Every body other than a GET's object: error answers (to any request) and the answers to
# PUT, HEAD, DELETE and the multipart requests. S3 sends a few hundred bytes of XML there.
MAX_RESPONSE_BODY_BYTES = 64 << 10


def build_client(s: S3Settings) -> Any:
    """A boto3 S3 client for ``s`` whose answers' bodies are bounded (see ``_bounded_send``)."""
    boto3 = import_optional("boto3", "remote")
    config_mod = import_optional("botocore.config", "remote")
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
    http_session = getattr(getattr(client, "_endpoint", None), "http_session", None)
    if not callable(getattr(http_session, "send", None)):
        # Without it answers could not be bounded: refuse rather than read them whole.
        raise StoreError(
            "this botocore version is not supported (no HTTP session to bound "
            "answers with); install a botocore of the 'remote' extra's range"
        )
    awsrequest = import_optional("botocore.awsrequest", "remote")
    client.meta.events.register(
        "before-send.s3", _bounded_send(http_session, awsrequest.AWSResponse)
    )
    return client


# The urllib3 responses of the request a helper thread is making, so that the thread that
# waits for it can close them or shut their sockets down (see _bounded_send).
_calls = threading.local()


def track_responses(responses: list[Any] | None) -> None:
    """Collect into ``responses`` the answers of the requests this thread makes (None: stop)."""
    _calls.responses = responses


def socket_of(raw: Any) -> socket.socket | None:
    """The socket under a urllib3 response (response → connection), if it still has one."""
    conn = getattr(raw, "connection", None) or getattr(raw, "_connection", None)
    sock = getattr(conn, "sock", None)
    return sock if isinstance(sock, socket.socket) else None


def shut_down(raws: list[Any]) -> None:
    """Wake the helper thread blocked reading one of ``raws``: its read fails at once."""
    for raw in raws:
        sock = socket_of(raw)
        if sock is not None:
            with contextlib.suppress(OSError):
                sock.shutdown(socket.SHUT_RDWR)
            continue
        # An answer with ``Connection: close``: http.client has handed its socket over to
        # the response, out of the connection's reach; urllib3 (2.3 on) keeps a way to it.
        shutdown = getattr(raw, "shutdown", None)
        if callable(shutdown):
            with contextlib.suppress(Exception):
                shutdown()


def close_all(raws: list[Any]) -> None:
    for raw in raws:
        with contextlib.suppress(Exception):
            raw.close()


class _ReadBody:
    """A body already read (to its bound), in place of the urllib3 response botocore would
    read whole: ``AWSResponse.content`` joins ``raw.stream()``."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, *_: Any, **__: Any) -> Iterator[bytes]:
        if self._data:
            yield self._data

    def read(self, *_: Any, **__: Any) -> bytes:
        data, self._data = self._data, b""
        return data

    def close(self) -> None:
        self._data = b""


def _read_capped(raw: Any, limit: int) -> tuple[bytes, bool]:
    """At most ``limit`` bytes of ``raw``'s body, and whether that was all of it.

    A longer body is cut and its connection closed, never handed back to the pool with
    unread bytes (nor read on)."""
    parts: list[bytes] = []
    total = 0
    pieces = raw.stream(16 << 10)  # urllib3 yields at most this much per piece, chunked or not
    try:
        for piece in pieces:
            parts.append(piece)
            total += len(piece)
            if total > limit:
                raw.close()
                return b"".join(parts)[:limit], False
    finally:
        pieces.close()
    return b"".join(parts), True


def _bounded_send(http_session: Any, response_type: Any) -> Callable[..., Any]:
    """A ``before-send`` handler that sends the request itself and bounds the answer's body.

    botocore reads two kinds of body whole, into memory, before any handler of ours sees
    them: every body of an operation without a streaming output (``URLLib3Session.send`` in
    botocore/httpsession.py: ``if not request.stream_output: http_response.content``), and
    the body of every error answer, GET included (``convert_to_response_dict`` in
    botocore/endpoint.py: ``if status_code >= 300: body = http_response.content``). A server
    answering with an endless body filled memory until the process died. The one hook before
    both is ``before-send``: ``Endpoint._do_get_response`` sends the first response a handler
    returns instead of sending the request itself. So this handler sends through botocore's
    own HTTP session, asking for the body unread, and reads at most MAX_RESPONSE_BODY_BYTES
    of it unless it is a GET's object (which ``Transfer.get`` reads to its own bound). An error
    body is cut there (botocore then parses the error from the status code); any other
    answer that long is refused (``ResponseTooLarge``).
    """

    def send(request: Any, **_: Any) -> Any:
        streaming = bool(request.stream_output)
        request.stream_output = True
        try:
            response = http_session.send(request)
        finally:
            request.stream_output = streaming
        raw = response.raw
        holder = getattr(_calls, "responses", None)
        if holder is not None:
            holder.append(raw)
        if streaming and response.status_code < 300:
            return response
        body, whole = _read_capped(raw, MAX_RESPONSE_BODY_BYTES)
        if not whole and response.status_code < 300:
            raise ResponseTooLarge(
                f"answer of {response.status_code} with a body above "
                f"{MAX_RESPONSE_BODY_BYTES} bytes"
            )
        return response_type(response.url, response.status_code, response.headers,
                             _ReadBody(body))

    return send

