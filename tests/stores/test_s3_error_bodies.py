"""Answers whose body never ends: an error to a GET, a PUT or a multipart request, sent
close-delimited or chunked, as fast as loopback goes. botocore reads such bodies whole before
it returns (an error body of a GET, every body of the other requests); the store reads at
most a few KiB of them, closes the connection and moves on, and no thread of it is left
reading. A MemoryError, whatever caused it, takes the remote out of the run.

The server stops an "endless" body at ``fake.ENDLESS_CAP_BYTES`` (64 MiB), so that the bug
costs the suite that much memory, not the machine; what it managed to send is the measure.
"""

from __future__ import annotations

import functools
import logging
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from stores import fake_s3_server as fake
from stores.weed_server import ACCESS_KEY, SECRET_KEY, TARGET, make_identity, publish_local
from trt_provision.errors import StoreError
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.stores.s3 import S3EngineStore, S3Settings
from trt_provision.types import EngineCacheEntry

pytestmark = [pytest.mark.tier1]

HANG_GUARD_S = 120.0  # generous: only a hang (the bug) gets near it
# What the server may have sent into a connection the client has closed after a few KiB:
# the client's bound plus both sockets' kernel buffers. Reading the body whole sends all of
# ENDLESS_CAP_BYTES.
MAX_SENT_BYTES = 16 << 20
T = TypeVar("T")


def _new_store_threads(before: set[threading.Thread]) -> list[threading.Thread]:
    """Helper threads of the store started since ``before`` that are still running, after
    giving each a moment to finish: a thread still reading is the bug."""
    late = [t for t in threading.enumerate() if t not in before and t.name.startswith("s3-")]
    for thread in late:
        thread.join(HANG_GUARD_S)
    return [t for t in late if t.is_alive()]


def _call(fn: Callable[[], T]) -> tuple[T | BaseException, list[threading.Thread]]:
    """``fn()`` (or what it raised), and the store threads it left running."""
    before = set(threading.enumerate())
    result: list[T | BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            result.append(exc)

    caller = threading.Thread(target=run, daemon=True)
    caller.start()
    caller.join(HANG_GUARD_S)
    assert not caller.is_alive(), "remote call hung"
    return result[0], _new_store_threads(before)


def _sent_when_done(server: fake.FakeS3, key: str) -> int:
    """Bytes the server sent for ``key`` once its endless answers have ended."""
    assert server.endless_done.wait(HANG_GUARD_S), "the server is still sending"
    with server.lock:
        return server.bytes_sent[key]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and getattr(r, "event", "") != "remote.unauthenticated"
    ]


@pytest.fixture
def hostile() -> Iterator[fake.FakeS3]:
    yield from fake.serve()


@pytest.fixture
def device(tmp_path: Path) -> tuple[LocalEngineStore, DefaultEngineGate]:
    store = LocalEngineStore(tmp_path / "device")
    store.ensure_writable()
    return store, DefaultEngineGate(cache_root=store.root)


@pytest.fixture
def builder(tmp_path: Path) -> LocalEngineStore:
    store = LocalEngineStore(tmp_path / "builder")
    store.ensure_writable()
    return store


def _remote(endpoint: str, **settings: Any) -> S3EngineStore:
    extra = {k: settings.pop(k) for k in ("client", "multipart_threshold_bytes") if k in settings}
    options: dict[str, Any] = {
        "connect_timeout_s": 1.0, "read_timeout_s": 2.0, "max_attempts": 1,
        # The bug's symptom was a deadline that moved the run on while the reading went on:
        # a short one lets the unfixed code show it quickly.
        "get_deadline_s": 5.0, **settings,
    }
    return S3EngineStore(
        S3Settings(bucket="engines", endpoint=endpoint, prefix="fleet", access_key=ACCESS_KEY,
                   secret_key=SECRET_KEY, **options),
        **extra,
    )


def _seed(server: fake.FakeS3, remote: S3EngineStore, entry: EngineCacheEntry) -> str:
    key = remote.key_for(entry.identity)
    server.put(key, entry.engine_path.read_bytes())
    server.put(key + ".json", entry.metadata_path.read_bytes())
    server.put(key + ".sha256", entry.sha256_path.read_bytes())
    return key


# ------------------------------------------------------------------ GET


@pytest.mark.parametrize(
    ("status", "mode", "suffix"),
    [
        (500, fake.ENDLESS_ERROR, ""),  # the reported attack: the engine GET
        (503, fake.ENDLESS_ERROR, ""),
        (403, fake.ENDLESS_ERROR, ""),
        (404, fake.ENDLESS_ERROR, ""),
        (500, fake.ENDLESS_ERROR_CHUNKED, ""),
        (500, fake.ENDLESS_ERROR, ".sha256"),  # the first GET of a fetch
        (404, fake.ENDLESS_ERROR_CHUNKED, ".json"),
    ],
)
def test_endless_error_body_of_a_get_is_read_to_a_bound_and_no_thread_reads_on(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
    status: int,
    mode: str,
    suffix: str,
) -> None:
    remote = _remote(hostile.endpoint)
    entry = publish_local(builder, make_identity(), b"e" * 10_000)
    key = _seed(hostile, remote, entry) + suffix
    hostile.modes[key] = mode
    hostile.endless_status = status
    store, gate = device

    result, running = _call(lambda: remote.fetch(entry.identity, store, gate, TARGET))

    assert result is None
    assert running == []
    assert _sent_when_done(hostile, key) <= MAX_SENT_BYTES
    assert [p for p in store.root.rglob("*") if p.is_file() and ".locks" not in p.parts] == []
    if suffix != ".sha256" or status != 404:
        assert len(_warnings(caplog)) == 1


def test_endless_error_bodies_of_retried_gets_are_each_bounded(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
) -> None:
    """botocore retries a 500: every attempt's body is bounded, not just the last."""
    remote = _remote(hostile.endpoint, max_attempts=3)
    entry = publish_local(builder, make_identity(), b"e" * 10_000)
    key = _seed(hostile, remote, entry)
    hostile.modes[key] = fake.ENDLESS_ERROR
    store, gate = device

    result, running = _call(lambda: remote.fetch(entry.identity, store, gate, TARGET))

    assert result is None and running == []
    assert hostile.count("GET", key) == 3
    assert _sent_when_done(hostile, key) <= 3 * MAX_SENT_BYTES


# ------------------------------------------------------------------ other requests


@pytest.mark.parametrize(
    ("mode", "status"),
    [
        (fake.ENDLESS_ERROR, 500),
        (fake.ENDLESS_ERROR_CHUNKED, 403),
        (fake.ENDLESS_OK, 200),  # a "successful" PUT whose answer never ends
    ],
)
def test_endless_answer_to_a_put_is_read_to_a_bound(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    caplog: pytest.LogCaptureFixture,
    mode: str,
    status: int,
) -> None:
    remote = _remote(hostile.endpoint)
    entry = publish_local(builder, make_identity(), b"u" * 10_000)
    key = remote.key_for(entry.identity)
    hostile.modes[key] = mode
    hostile.endless_status = status

    result, running = _call(functools.partial(remote.upload, entry))

    assert result is False
    assert running == []
    assert _sent_when_done(hostile, key) <= MAX_SENT_BYTES
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "not uploaded" in warnings[0]
    if mode == fake.ENDLESS_OK:
        # Refused as a broken server: the remote is out of the run.
        assert remote.offline_reason is not None and "body above" in remote.offline_reason


@pytest.mark.parametrize("mode", [fake.ENDLESS_ERROR, fake.ENDLESS_OK])
def test_endless_answer_to_a_multipart_request_is_read_to_a_bound(
    hostile: fake.FakeS3, builder: LocalEngineStore, mode: str
) -> None:
    remote = _remote(hostile.endpoint, multipart_threshold_bytes=1000)
    entry = publish_local(builder, make_identity(), b"m" * 10_000)
    key = remote.key_for(entry.identity)
    hostile.modes[key] = mode

    result, running = _call(functools.partial(remote.upload, entry))

    assert result is False
    assert running == []
    assert hostile.count("POST", key) >= 1
    assert _sent_when_done(hostile, key) <= MAX_SENT_BYTES


def test_endless_body_after_a_head_is_not_read(hostile: fake.FakeS3) -> None:
    """HEAD answers carry no body; one sent anyway is never read (``exists`` of ``push``)."""
    remote = _remote(hostile.endpoint)
    identity = make_identity()
    key = remote.key_for(identity) + ".sha256"
    hostile.modes[key] = fake.ENDLESS_ERROR

    result, running = _call(lambda: remote.exists(identity))

    assert isinstance(result, StoreError) and "server error 500" in str(result)
    assert running == []
    with hostile.lock:
        assert hostile.bytes_sent[key] <= MAX_SENT_BYTES


@pytest.mark.parametrize("operation", ["fetch", "upload"])
def test_trickled_error_body_ends_with_the_deadline_and_its_reader(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
    operation: str,
) -> None:
    """An error body trickled just inside the read timeout: the deadline moves the run on,
    and the socket is shut down under the reading thread, which ends (it used to read on
    until the server stopped)."""
    remote = _remote(hostile.endpoint, get_deadline_s=1.0, min_rate_bytes_s=0)
    entry = publish_local(builder, make_identity(), b"t" * 10_000)
    if operation == "fetch":
        key = _seed(hostile, remote, entry)
        store, gate = device
        call: Callable[[], Any] = functools.partial(
            remote.fetch, entry.identity, store, gate, TARGET
        )
    else:
        key = remote.key_for(entry.identity)
        call = functools.partial(remote.upload, entry)
    hostile.modes[key] = fake.TRICKLE_ERROR

    result, running = _call(call)

    assert result in (None, False)
    assert running == []
    assert "rest of this run" in _warnings(caplog)[0]


# ------------------------------------------------------------------ MemoryError


class _OutOfMemory:
    """A client whose every request runs out of memory, as reading an endless body did."""

    def __init__(self) -> None:
        self.calls = 0

    def _fail(self, **_: Any) -> Any:
        self.calls += 1
        raise MemoryError

    get_object = put_object = head_object = _fail


def test_memory_error_takes_the_remote_out_of_the_run(
    device: tuple[LocalEngineStore, DefaultEngineGate],
    builder: LocalEngineStore,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client = _OutOfMemory()
    remote = _remote("http://127.0.0.1:9", client=client)
    store, gate = device
    first, second = make_identity(seed="a"), make_identity(seed="b")

    assert remote.fetch(first, store, gate, TARGET) is None
    assert remote.fetch(second, store, gate, TARGET) is None
    assert remote.upload(publish_local(builder, second, b"x" * 1000)) is False
    with pytest.raises(StoreError, match="not used for the rest of this run"):
        remote.exists(second)

    assert client.calls == 1
    warnings = _warnings(caplog)
    assert len(warnings) == 1
    assert "out of memory" in warnings[0] and "rest of this run" in warnings[0]


def test_memory_error_in_a_check_is_a_store_error_and_takes_the_remote_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """``push`` asks ``exists`` first: a MemoryError there is a StoreError (exit 1), not an
    internal error (exit 3), and the remote is given up."""
    client = _OutOfMemory()
    remote = _remote("http://127.0.0.1:9", client=client)

    with pytest.raises(StoreError, match="out of memory"):
        remote.exists(make_identity())

    assert remote.offline_reason is not None
    with pytest.raises(StoreError, match="rest of this run"):
        remote.exists(make_identity(seed="b"))
    assert client.calls == 1
