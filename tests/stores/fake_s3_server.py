"""A small hostile S3 server on 127.0.0.1, for what a real server (SeaweedFS) cannot be made
to do: trickle bytes, send a malformed or no Content-Length, drop connections.

Path-style requests only (``/<bucket>/<key>``); signatures are not checked. Objects live in a
dict; each key can be given a ``mode`` that changes how its GET is answered. The server and
every trickling handler stop when the fixture stops the server.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import unquote, urlsplit

# GET modes
NORMAL = "normal"
TRICKLE_BODY = "trickle-body"  # honest headers, then one byte per interval, forever
# status line, then one header byte per interval, forever (GET, HEAD and PUT)
TRICKLE_HEADERS = "trickle-headers"
BAD_LENGTH = "bad-length"  # ``Content-Length: 12abc``
NO_LENGTH = "no-length"  # no Content-Length; the object, then zero bytes until stopped
DROP = "drop"  # read the request, close without an answer
ERROR_503 = "503"
# An error status (``endless_status``), then a body that does not end: delimited by the close
# of the connection, or chunked. Also a 200 to a PUT or POST with such a body.
ENDLESS_ERROR = "endless-error"
ENDLESS_ERROR_CHUNKED = "endless-error-chunked"
ENDLESS_OK = "endless-ok"
ENDLESS_MODES = (ENDLESS_ERROR, ENDLESS_ERROR_CHUNKED, ENDLESS_OK)
# An error status, then its body one byte per interval, forever (GET and PUT).
TRICKLE_ERROR = "trickle-error"
# What an "endless" body sends at most, so that a client that does read it all (the bug these
# modes look for) costs the suite a few dozen MiB, not the machine.
ENDLESS_CAP_BYTES = 64 << 20


@dataclass
class FakeS3:
    """State shared with the handlers: objects, modes and what was asked for."""

    objects: dict[str, bytes] = field(default_factory=dict)
    modes: dict[str, str] = field(default_factory=dict)
    default_mode: str = NORMAL
    endless_status: int = 500
    endless_active: int = 0
    endless_done: threading.Event = field(default_factory=threading.Event)  # none active
    interval_s: float = 0.05
    requests: Counter[tuple[str, str]] = field(default_factory=Counter)
    bytes_sent: Counter[str] = field(default_factory=Counter)
    stop: threading.Event = field(default_factory=threading.Event)
    endpoint: str = ""
    lock: threading.Lock = field(default_factory=threading.Lock)

    def put(self, key: str, data: bytes, mode: str | None = None) -> None:
        with self.lock:
            self.objects[key] = data
            if mode is not None:
                self.modes[key] = mode

    def count(self, method: str, suffix: str = "") -> int:
        with self.lock:
            return sum(n for (m, k), n in self.requests.items() if m == method and k.endswith(
                suffix))


def _handler(state: FakeS3) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _key(self) -> str:
            path = unquote(urlsplit(self.path).path).lstrip("/")
            return path.partition("/")[2]  # drop the bucket

        def _mode(self, key: str) -> str:
            with state.lock:
                return state.modes.get(key, state.default_mode)

        def _record(self, key: str) -> None:
            with state.lock:
                state.requests[(self.command, key)] += 1

        def _send(self, data: bytes, key: str) -> None:
            self.wfile.write(data)
            self.wfile.flush()
            with state.lock:
                state.bytes_sent[key] += len(data)

        def _reply(self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
                   ) -> None:
            self.send_response(status)
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if body and self.command != "HEAD":
                self.wfile.write(body)

        def _error(self, status: int, code: str) -> None:
            self._reply(status, f"<Error><Code>{code}</Code><Message>{code}</Message></Error>"
                        .encode(), {"Content-Type": "application/xml"})

        def _endless(self, key: str, mode: str) -> None:
            """The status line and headers, then a fast body that ends only when the client
            closes the connection (or at ENDLESS_CAP_BYTES)."""
            self.close_connection = True
            self.send_response(200 if mode == ENDLESS_OK else state.endless_status)
            self.send_header("Content-Type", "application/xml")
            chunked = mode == ENDLESS_ERROR_CHUNKED
            self.send_header("Transfer-Encoding" if chunked else "Connection",
                             "chunked" if chunked else "close")
            self.end_headers()
            # (A body after a HEAD's answer too: a hostile server need not follow HTTP.)
            block = b"<Error>" + b"x" * (64 << 10)
            unit = b"%x\r\n%s\r\n" % (len(block), block) if chunked else block
            sent = 0
            with state.lock:
                state.endless_active += 1
                state.endless_done.clear()
            try:
                while sent < ENDLESS_CAP_BYTES and not state.stop.is_set():
                    self._send(unit, key)
                    sent += len(unit)
            except OSError:
                return  # the client closed the connection: what a bounded reader does
            finally:
                with state.lock:
                    state.endless_active -= 1
                    if not state.endless_active:
                        state.endless_done.set()

        def _trickle_error(self, key: str) -> None:
            self.close_connection = True
            self.send_response(state.endless_status)
            self.send_header("Connection", "close")
            self.end_headers()
            self._trickle(key, b"x")

        def _drain(self) -> bytes:
            length = int(self.headers.get("Content-Length") or 0)
            return self.rfile.read(length) if length else b""

        def _trickle(self, key: str, unit: bytes) -> None:
            while not state.stop.wait(state.interval_s):
                try:
                    self._send(unit, key)
                except OSError:
                    return  # the client gave up and closed or shut down the socket

        def _trickle_headers(self, key: str) -> None:
            self.close_connection = True
            self.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
            self._trickle(key, b"a")

        def do_GET(self) -> None:
            key = self._key()
            self._record(key)
            mode = self._mode(key)
            with state.lock:
                data = state.objects.get(key)
            if mode == DROP:
                self.close_connection = True
                return
            if mode == ERROR_503:
                self._error(503, "ServiceUnavailable")
                return
            if mode in ENDLESS_MODES:
                self._endless(key, mode)
                return
            if mode == TRICKLE_ERROR:
                self._trickle_error(key)
                return
            if data is None:
                self._error(404, "NoSuchKey")
                return
            if mode == TRICKLE_HEADERS:
                self._trickle_headers(key)
                return
            self.send_response(200)
            self.send_header("Content-Type", "application/octet-stream")
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
            if mode == BAD_LENGTH:
                self.send_header("Content-Length", f"{len(data)}abc")
                self.send_header("Connection", "close")
                self.close_connection = True
            elif mode == NO_LENGTH:
                self.send_header("Connection", "close")
                self.close_connection = True
            else:
                self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            if mode == TRICKLE_BODY:
                self.close_connection = True
                self._trickle(key, b"\0")
                return
            try:
                self._send(data, key)
                if mode == NO_LENGTH:
                    # An endless body: only a reader that stops on its own bound ends it.
                    block = b"\0" * (64 << 10)
                    while not state.stop.is_set():
                        self._send(block, key)
            except OSError:
                return

        def do_HEAD(self) -> None:
            key = self._key()
            self._record(key)
            with state.lock:
                data = state.objects.get(key)
            if self._mode(key) == DROP:
                self.close_connection = True
                return
            if self._mode(key) == TRICKLE_HEADERS:
                self._trickle_headers(key)
                return
            if self._mode(key) in ENDLESS_MODES:
                self._endless(key, self._mode(key))
                return
            if data is None:
                self._reply(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.send_header("ETag", '"0123456789abcdef0123456789abcdef"')
            self.end_headers()

        def do_PUT(self) -> None:
            key = self._key()
            self._record(key)
            body = self._drain()
            if self._mode(key) == DROP:
                self.close_connection = True
                return
            if self._mode(key) == TRICKLE_HEADERS:
                self._trickle_headers(key)
                return
            if self._mode(key) in ENDLESS_MODES:
                self._endless(key, self._mode(key))
                return
            if self._mode(key) == TRICKLE_ERROR:
                self._trickle_error(key)
                return
            with state.lock:
                exists = key in state.objects
                if self.headers.get("If-None-Match") == "*" and exists:
                    conflict = True
                else:
                    conflict = False
                    state.objects[key] = body
            if conflict:
                self._error(412, "PreconditionFailed")
            else:
                self._reply(200, headers={"ETag": '"0123456789abcdef0123456789abcdef"'})

        def do_POST(self) -> None:
            """Multipart uploads: only the hostile answers are served."""
            key = self._key()
            self._record(key)
            self._drain()
            if self._mode(key) in ENDLESS_MODES:
                self._endless(key, self._mode(key))
                return
            self._error(501, "NotImplemented")

        def do_DELETE(self) -> None:
            key = self._key()
            self._record(key)
            with state.lock:
                state.objects.pop(key, None)
            self._reply(204)

    return Handler


def serve() -> Iterator[FakeS3]:
    """Start the server in a thread; stop it (and every trickle) when the generator ends."""
    state = FakeS3()
    state.endless_done.set()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(state))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05},
                              daemon=True)
    thread.start()
    state.endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    try:
        yield state
    finally:
        state.stop.set()
        server.shutdown()
        server.server_close()
        thread.join()
        # Give handler threads that were trickling a moment to notice the stop.
        time.sleep(state.interval_s * 2)
