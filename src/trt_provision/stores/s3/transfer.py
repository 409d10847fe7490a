"""Every request to the remote under a deadline, every GET also under a minimum transfer
rate, every GET body read to a bound: a server that trickles, stalls or sends without end
cannot hold the run or fill memory or disk."""

from __future__ import annotations

import contextlib
import queue
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

from trt_provision.stores.s3.client import (
    build_client,
    close_all,
    shut_down,
    track_responses,
)
from trt_provision.stores.s3.faults import (
    Absent,
    Conflict,
    Refused,
    TooSlow,
    botocore_errors,
    error_code,
    is_absent,
    is_conflict,
)
from trt_provision.stores.s3.settings import S3Settings

CHUNK_BYTES = 8 << 20
RATE_WINDOW_S = 10.0
_POLL_S = 0.25


class Transfer:
    """The requests of one store to its bucket; the client is built on first use."""

    def __init__(
        self,
        settings: S3Settings,
        *,
        client: Any = None,
        chunk_bytes: int = CHUNK_BYTES,
        rate_window_s: float = RATE_WINDOW_S,
    ) -> None:
        self.settings = settings
        self._client = client
        self._chunk = chunk_bytes
        self._rate_window = rate_window_s

    def client(self) -> Any:
        """The boto3 client, built on first use (boto3 and botocore imported lazily)."""
        if self._client is None:
            self._client = build_client(self.settings)
        return self._client

    def get(
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
        and the GET raises TooSlow.
        """
        s = self.settings
        events: queue.Queue[tuple[str, Any]] = queue.Queue(maxsize=4)
        cancel = threading.Event()
        raws: list[Any] = []  # the urllib3 responses of this GET (see _bounded_send)
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
            track_responses(raws)
            try:
                response = client.get_object(Bucket=s.bucket, Key=key)
                body = response["Body"]
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
                track_responses(None)
                if body is not None:
                    with contextlib.suppress(Exception):
                        body.close()
                # When botocore's parser raises on a hostile header (a malformed
                # Content-Length is a ValueError), the response it was parsing is dropped
                # unclosed, socket included: close what this GET received.
                close_all(raws)

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
                    raise TooSlow(
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
                        raise TooSlow(
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
                shut_down(raws)
                worker.join(timeout=_POLL_S)

    def get_small(self, key: str, limit: int) -> bytes:
        """A sidecar: at most ``limit`` bytes, under the GET deadline and rate."""
        parts: list[bytes] = []

        def on_head(length: int | None) -> None:
            if length is not None and length > limit:
                raise Refused(f"sidecar {key} is too large ({length} bytes)")

        try:
            total = self.get(key, limit, on_head, parts.append)
        except botocore_errors() as exc:
            if is_absent(exc):
                raise Absent(key) from exc
            raise
        if total > limit:
            raise Refused(f"sidecar {key} is too large")
        return b"".join(parts)

    # ------------------------------------------------------------------ other requests

    @staticmethod
    def conditional(call: Callable[[], Any]) -> Any:
        """Run a conditional request; a precondition failure becomes Conflict."""
        try:
            return call()
        except botocore_errors() as exc:
            if is_conflict(exc):
                code, status = error_code(exc)
                raise Conflict(code or str(status)) from exc
            raise

    def request(self, operation: str, **params: Any) -> Any:
        """One request other than a GET, under the deadline too.

        A helper thread does the blocking I/O, so a server that trickles the answer to a
        PUT or HEAD cannot hold the run; past the deadline the helper is left to the
        server's mercy (the remote is then skipped for the run, so one helper at most).
        """
        method = getattr(self.client(), operation)
        outcome: list[tuple[bool, Any]] = []
        done = threading.Event()
        raws: list[Any] = []  # the urllib3 responses of this request (see _bounded_send)

        def run() -> None:
            track_responses(raws)
            try:
                outcome.append((True, method(Bucket=self.settings.bucket, **params)))
            except BaseException as exc:  # handed to the caller's thread
                outcome.append((False, exc))
            finally:
                track_responses(None)
                done.set()

        worker = threading.Thread(target=run, name=f"s3-{operation}", daemon=True)
        worker.start()
        deadline = self.settings.get_deadline_s
        if not done.wait(deadline):
            # An answer whose body is being read can be cut short; one still waiting for
            # its headers cannot (see the GET's note).
            shut_down(raws)
            worker.join(timeout=_POLL_S)
            raise TooSlow(f"{operation} exceeded the {deadline:g} s deadline")
        ok, value = outcome[0]
        if ok:
            return value
        raise value

    def put(self, key: str, data: bytes, condition: Mapping[str, str]) -> Any:
        """A conditional PUT of ``data``."""
        return self.conditional(
            lambda: self.request(
                "put_object", Key=key, Body=data, ContentLength=len(data), **condition
            )
        )

    def head(self, key: str) -> dict[str, Any] | None:
        """HEAD of ``key``, None when absent."""
        try:
            response: dict[str, Any] = self.request("head_object", Key=key)
        except botocore_errors() as exc:
            if is_absent(exc):
                return None
            raise
        return response

