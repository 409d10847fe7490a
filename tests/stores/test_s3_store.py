"""The remote store against a real S3 server (SeaweedFS): happy paths and every fault."""

from __future__ import annotations

import hashlib
import logging
import socket
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stores.weed_server import (
    ACCESS_KEY,
    SECRET_KEY,
    TARGET,
    Device,
    DeviceFactory,
    WeedServer,
    ensure_bucket,
    make_identity,
    publish_local,
)
from trt_provision._fs import TEMP_PREFIX
from trt_provision.stores.s3 import S3EngineStore, S3Settings
from trt_provision.trust import SignatureTrust, TrustPolicy, generate_keypair, sign_engine

pytestmark = [pytest.mark.s3, pytest.mark.tier1]


def _files(device: Device) -> list[str]:
    root = device.store.root
    return sorted(
        str(p.relative_to(root))
        for p in root.rglob("*")
        if p.is_file() and ".locks" not in p.parts
    )


def _temps(device: Device) -> list[Path]:
    return [p for p in device.store.root.rglob(f"{TEMP_PREFIX}*")]


def _keys(device: Device) -> list[str]:
    client = device.remote.client()
    bucket = device.remote.settings.bucket
    listing = client.list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    """Warnings but the once-per-run "not authenticated" one (its own test covers it)."""
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and getattr(r, "event", "") != "remote.unauthenticated"
    ]


# ------------------------------------------------------------------ happy paths


def test_upload_then_fetch_on_another_device(make_device: DeviceFactory) -> None:
    builder, puller = make_device(), make_device()
    identity = make_identity()
    entry = publish_local(builder.store, identity, 3 << 20)

    assert builder.remote.upload(entry) is True
    key = builder.remote.key_for(identity)
    assert key == f"fleet/engines/demo_cnn/{identity.filename}"
    assert _keys(builder) == [key, key + ".json", key + ".sha256"]

    fetched = puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    assert fetched is not None
    assert fetched.sha256 == entry.sha256
    assert fetched.engine_path == puller.store.path_for(identity)
    assert fetched.engine_path.read_bytes() == entry.engine_path.read_bytes()
    # Sidecars byte-identical to the builder's: a signature over them stays valid.
    for suffix in (".json", ".sha256"):
        name = identity.filename + suffix
        assert (puller.store.path_for(identity).with_name(name).read_bytes()
                == entry.engine_path.with_name(name).read_bytes())
    assert _temps(puller) == []
    puller.gate.validate(fetched.engine_path, TARGET)


def test_fetch_of_absent_engine_is_a_quiet_miss(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    device = make_device()
    caplog.set_level(logging.INFO, logger="trt_provision")
    assert device.remote.fetch(make_identity(), device.store, device.gate, TARGET) is None
    assert _warnings(caplog) == []
    assert any(getattr(r, "event", "") == "remote.fetch.miss" for r in caplog.records)
    assert _files(device) == []


def test_second_upload_of_the_same_engine_does_not_overwrite(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    first, second = make_device(), make_device()
    identity = make_identity()
    a = publish_local(first.store, identity, b"engine-from-device-a" * 1000)
    b = publish_local(second.store, identity, b"engine-from-device-b" * 1000)
    caplog.set_level(logging.INFO, logger="trt_provision")
    assert first.remote.upload(a) is True
    assert second.remote.upload(b) is False
    assert any(getattr(r, "event", "") == "remote.upload.lost_race" for r in caplog.records)
    # The loser keeps its own engine; the store keeps the winner's.
    assert b.engine_path.read_bytes() == b"engine-from-device-b" * 1000
    client = first.remote.client()
    key = first.remote.key_for(identity)
    body = client.get_object(Bucket=first.remote.settings.bucket, Key=key)
    assert body["Body"].read() == b"engine-from-device-a" * 1000


def test_two_devices_racing_to_upload(make_device: DeviceFactory) -> None:
    identity = make_identity()
    devices = [make_device() for _ in range(4)]
    entries = [
        publish_local(d.store, identity, f"engine bytes of device {i}".encode() * 50_000)
        for i, d in enumerate(devices)
    ]
    barrier = threading.Barrier(len(devices))
    results: list[bool] = [False] * len(devices)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = devices[i].remote.upload(entries[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert sum(results) == 1
    winner = entries[results.index(True)]
    puller = make_device()
    fetched = puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    assert fetched is not None and fetched.sha256 == winner.sha256
    # Every loser still has a valid local engine of its own.
    for device, entry in zip(devices, entries, strict=True):
        assert device.gate.validate(entry.engine_path, TARGET).sha256 == entry.sha256


def test_upload_disabled(make_device: DeviceFactory) -> None:
    device = make_device(upload_enabled=False)
    entry = publish_local(device.store, make_identity(), b"x" * 100)
    assert device.remote.upload(entry) is False
    assert _keys(device) == []


# ------------------------------------------------------------------ faults


def test_wrong_credentials_warn_and_never_leak_the_secret(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    good = make_device()
    identity = make_identity()
    entry = publish_local(good.store, identity, b"e" * 4096)
    assert good.remote.upload(entry)
    wrong_secret = "wrong-secret-do-not-print-0123456789"
    bad = make_device(secret=wrong_secret)
    caplog.set_level(logging.DEBUG)
    assert bad.remote.fetch(identity, bad.store, bad.gate, TARGET) is None
    other = publish_local(bad.store, make_identity(seed="v2"), b"f" * 4096)
    assert bad.remote.upload(other) is False
    warnings = _warnings(caplog)
    assert len(warnings) == 2
    assert all("wrong credentials" in w for w in warnings)
    text = caplog.text + repr(bad.remote) + repr(bad.remote.settings)
    for record in caplog.records:
        text += repr(record.__dict__)
    assert wrong_secret not in text and SECRET_KEY not in text
    assert _files(bad) == sorted(
        str(p.relative_to(bad.store.root)) for p in (
            other.engine_path, other.sha256_path, other.metadata_path
        )
    )


def test_tampered_engine_is_refused_and_nothing_published(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    builder, puller = make_device(), make_device()
    identity = make_identity()
    entry = publish_local(builder.store, identity, 2 << 20)
    assert builder.remote.upload(entry)
    client = builder.remote.client()
    bucket, key = builder.remote.settings.bucket, builder.remote.key_for(identity)
    tampered = bytearray(entry.engine_path.read_bytes())
    tampered[1000] ^= 0xFF
    client.put_object(Bucket=bucket, Key=key, Body=bytes(tampered))

    assert puller.remote.fetch(identity, puller.store, puller.gate, TARGET) is None
    assert any("tampered" in w for w in _warnings(caplog))
    assert _files(puller) == []
    assert _temps(puller) == []


def test_tampered_metadata_is_refused(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    builder, puller = make_device(), make_device()
    identity = make_identity()
    entry = publish_local(builder.store, identity, b"m" * 10_000)
    assert builder.remote.upload(entry)
    client = builder.remote.client()
    bucket, key = builder.remote.settings.bucket, builder.remote.key_for(identity)
    meta = entry.metadata_path.read_text().replace(entry.sha256, "0" * 64)
    client.put_object(Bucket=bucket, Key=key + ".json", Body=meta.encode())
    assert puller.remote.fetch(identity, puller.store, puller.gate, TARGET) is None
    assert any("disagree" in w for w in _warnings(caplog))
    assert _files(puller) == []


@pytest.mark.parametrize("missing", [".sha256", ".json"])
def test_missing_sidecar(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture, missing: str
) -> None:
    builder, puller = make_device(), make_device()
    identity = make_identity()
    assert builder.remote.upload(publish_local(builder.store, identity, b"s" * 10_000))
    client = builder.remote.client()
    bucket, key = builder.remote.settings.bucket, builder.remote.key_for(identity)
    client.delete_object(Bucket=bucket, Key=key + missing)
    caplog.set_level(logging.INFO, logger="trt_provision")
    assert puller.remote.fetch(identity, puller.store, puller.gate, TARGET) is None
    events = [getattr(r, "event", "") for r in caplog.records]
    if missing == ".sha256":
        # An engine without its .sha256 is an upload in progress or abandoned: absent.
        assert "remote.fetch.miss" in events
    else:
        assert "remote.fetch.incomplete" in events
    assert _files(puller) == []


def test_server_killed_mid_download(
    private_weed: WeedServer, make_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    ensure_bucket(private_weed.client(), "engines-private")
    builder = make_device(server=private_weed, bucket="engines-private")
    identity = make_identity()
    entry = publish_local(builder.store, identity, 48 << 20)
    assert builder.remote.upload(entry)

    class KillingBody:
        """Reads one chunk, then the server dies under the download."""

        def __init__(self, body: Any) -> None:
            self._body = body
            self._reads = 0

        def read(self, amt: int | None = None) -> bytes:
            self._reads += 1
            if self._reads == 2:
                private_weed.kill()
            data: bytes = self._body.read(amt)
            return data

        def close(self) -> None:
            self._body.close()

    class KillingClient:
        def __init__(self, real: Any) -> None:
            self._real = real

        def __getattr__(self, name: str) -> Any:
            return getattr(self._real, name)

        def get_object(self, **kwargs: Any) -> Any:
            response = dict(self._real.get_object(**kwargs))
            if not kwargs["Key"].endswith((".json", ".sha256", ".sig")):
                response["Body"] = KillingBody(response["Body"])
            return response

    puller = make_device(server=private_weed, bucket="engines-private")
    remote = S3EngineStore(puller.remote.settings, client=KillingClient(puller.remote.client()),
                           chunk_bytes=1 << 20)
    assert remote.fetch(identity, puller.store, puller.gate, TARGET) is None
    assert _files(puller) == []
    assert _temps(puller) == []
    assert _warnings(caplog)
    # The interrupted download took the remote out of this run: nothing more is tried.
    assert remote.offline_reason is not None
    # With the server gone, another run's first attempt is reported as "unreachable" (how
    # fast is a property of the configured timeouts, not something a test can assert).
    assert puller.remote.fetch(identity, puller.store, puller.gate, TARGET) is None
    assert any("unreachable" in w for w in _warnings(caplog))
    assert puller.remote.offline_reason is not None
    assert puller.remote.upload(entry) is False


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a hung server."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    conns: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        sock.settimeout(0.1)
        while not stop.is_set():
            try:
                conns.append(sock.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    stop.set()
    thread.join()
    for c in conns:
        c.close()
    sock.close()


@pytest.fixture
def http_503_server() -> Iterator[str]:
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    class Handler(BaseHTTPRequestHandler):
        def _fail(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            if length:
                self.rfile.read(length)
            body = b"<Error><Code>ServiceUnavailable</Code><Message>down</Message></Error>"
            self.send_response(503)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_PUT = do_HEAD = do_DELETE = _fail

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()
    thread.join()


@pytest.mark.parametrize(
    ("server", "reason", "offline"),
    [("silent_server", "too slow", True), ("http_503_server", "server error 503", False)],
)
def test_slow_or_failing_server_warns_and_falls_back(
    request: pytest.FixtureRequest,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
    server: str,
    reason: str,
    offline: bool,
) -> None:
    from trt_provision.gates.engine_gate import DefaultEngineGate
    from trt_provision.stores.local import LocalEngineStore

    endpoint = request.getfixturevalue(server)
    store = LocalEngineStore(tmp_path / "cache")
    gate = DefaultEngineGate(cache_root=store.root)
    remote = S3EngineStore(
        S3Settings(
            bucket="engines", endpoint=endpoint, access_key=ACCESS_KEY, secret_key=SECRET_KEY,
            connect_timeout_s=0.5, read_timeout_s=0.5, max_attempts=1,
        )
    )
    identity = make_identity()
    # The outcome and the reason are the contract; the elapsed time depends on machine load.
    assert remote.fetch(identity, store, gate, TARGET) is None
    entry = publish_local(store, identity, b"z" * 100)
    assert remote.upload(entry) is False
    warnings = _warnings(caplog)
    # A hung server is a connection fault: one WARN, then the remote is skipped for the run
    # (the upload is not even tried). A 503 is the answer of a live server: each call WARNs.
    assert len(warnings) == (1 if offline else 2)
    assert all(reason in w for w in warnings)
    assert (remote.offline_reason is not None) is offline


# ------------------------------------------------------------------ trust


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("fleet", "stranger"):
        _, public = generate_keypair(tmp_path / "keys" / f"{name}.key")
        out[name] = (tmp_path / "keys" / f"{name}.key", public)
    return out


def test_signed_engine_fetched_with_require(
    make_device: DeviceFactory, keys: dict[str, Any]
) -> None:
    private, public = keys["fleet"]
    trust = SignatureTrust(TrustPolicy.REQUIRE, [public])
    builder, puller = make_device(), make_device(trust=trust)
    identity = make_identity()
    entry = publish_local(builder.store, identity, 1 << 20)
    sign_engine(entry.engine_path, private)
    assert builder.remote.upload(entry)
    assert builder.remote.key_for(identity) + ".sig" in _keys(builder)
    fetched = puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    assert fetched is not None
    assert fetched.engine_path.with_name(identity.filename + ".sig").is_file()
    # The local gate (same trust) accepts it again later.
    puller.gate.validate(fetched.engine_path, TARGET)


@pytest.mark.parametrize(
    ("signer", "reason"), [(None, "not signed"), ("stranger", "unknown key")]
)
def test_require_refuses_unsigned_or_foreign_signature(
    make_device: DeviceFactory,
    keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
    signer: str | None,
    reason: str,
) -> None:
    trust = SignatureTrust(TrustPolicy.REQUIRE, [keys["fleet"][1]])
    builder, puller = make_device(), make_device(trust=trust)
    identity = make_identity()
    entry = publish_local(builder.store, identity, 1 << 16)
    if signer:
        sign_engine(entry.engine_path, keys[signer][0])
    assert builder.remote.upload(entry)
    assert puller.remote.fetch(identity, puller.store, puller.gate, TARGET) is None
    assert any(reason in w for w in _warnings(caplog))
    assert _files(puller) == []


def test_gate_refusal_after_publish_takes_the_engine_back(
    make_device: DeviceFactory, keys: dict[str, Any]
) -> None:
    """A store without trust, a gate with ``require``: the gate's word is final."""
    builder, puller = make_device(), make_device()
    puller.gate = type(puller.gate)(
        cache_root=puller.store.root,
        trust=SignatureTrust(TrustPolicy.REQUIRE, [keys["fleet"][1]]),
    )
    identity = make_identity()
    assert builder.remote.upload(publish_local(builder.store, identity, 1 << 16))
    assert puller.remote.fetch(identity, puller.store, puller.gate, TARGET) is None
    assert _files(puller) == []


def test_verify_if_signed_accepts_unsigned(
    make_device: DeviceFactory, keys: dict[str, Any]
) -> None:
    trust = SignatureTrust(TrustPolicy.VERIFY_IF_SIGNED, [keys["fleet"][1]])
    builder, puller = make_device(), make_device(trust=trust)
    identity = make_identity()
    assert builder.remote.upload(publish_local(builder.store, identity, 1 << 16))
    assert puller.remote.fetch(identity, puller.store, puller.gate, TARGET) is not None


# ------------------------------------------------------------------ size


def test_200_mb_engine_round_trip(make_device: DeviceFactory) -> None:
    builder, puller = make_device(read_timeout_s=30.0), make_device(read_timeout_s=30.0)
    identity = make_identity(model="big_model")
    entry = publish_local(builder.store, identity, 200 << 20)
    assert builder.remote.upload(entry)
    fetched = puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    assert fetched is not None
    assert fetched.size_bytes == 200 << 20
    assert fetched.sha256 == entry.sha256
    digest = hashlib.sha256(fetched.engine_path.read_bytes()).hexdigest()
    assert digest == entry.sha256
    assert _temps(puller) == []
