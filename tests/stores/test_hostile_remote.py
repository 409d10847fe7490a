"""Attacks by whoever controls the bucket or the server (or a proxy in between): each one
ends in a WARN and "no engine" (the model is built locally), never in an exception, a hang
or a full disk.

What a real server can store (nested JSON, foreign signatures) runs against SeaweedFS; what
only a misbehaving server does (trickling, malformed or missing Content-Length, dropped
connections) runs against the loopback fake in ``stores/fake_s3_server.py``.
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
from stores.weed_server import (
    ACCESS_KEY,
    SECRET_KEY,
    TARGET,
    DeviceFactory,
    make_identity,
    publish_local,
)
from trt_provision._fs import TEMP_PREFIX
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.stores.s3 import UNAUTHENTICATED_WARNING, S3EngineStore, S3Settings
from trt_provision.trust import SignatureTrust, TrustPolicy, generate_keypair, sign_metadata
from trt_provision.types import EngineCacheEntry, EngineIdentity

pytestmark = [pytest.mark.tier1]

HANG_GUARD_S = 120.0  # generous: only a hang (the bug) gets near it
T = TypeVar("T")


def _bounded_call(fn: Callable[[], T]) -> T:
    """Run ``fn`` in a thread; fail (instead of hanging the suite) if it never returns."""
    result: list[T] = []
    error: list[BaseException] = []

    def run() -> None:
        try:
            result.append(fn())
        except BaseException as exc:
            error.append(exc)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), "remote call hung"
    if error:
        raise error[0]
    return result[0]


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno >= logging.WARNING and getattr(r, "event", "") != "remote.unauthenticated"
    ]


def _files(store: LocalEngineStore) -> list[Path]:
    return [p for p in store.root.rglob("*") if p.is_file() and ".locks" not in p.parts]


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


def _remote(endpoint: str, trust: Any = None, **settings: Any) -> S3EngineStore:
    options: dict[str, Any] = {
        "connect_timeout_s": 1.0, "read_timeout_s": 2.0, "max_attempts": 1, **settings
    }
    extra = {
        k: options.pop(k)
        for k in ("chunk_bytes", "rate_window_s", "client", "multipart_threshold_bytes")
        if k in options
    }
    return S3EngineStore(
        S3Settings(bucket="engines", endpoint=endpoint, prefix="fleet", access_key=ACCESS_KEY,
                   secret_key=SECRET_KEY, **options),
        trust=trust,
        **extra,
    )


def _seed(server: fake.FakeS3, remote: S3EngineStore, entry: EngineCacheEntry) -> str:
    """Put a complete, honest object set of ``entry`` in the fake bucket; return its key."""
    key = remote.key_for(entry.identity)
    server.put(key, entry.engine_path.read_bytes())
    server.put(key + ".json", entry.metadata_path.read_bytes())
    server.put(key + ".sha256", entry.sha256_path.read_bytes())
    return key


def _fetch(remote: S3EngineStore, identity: EngineIdentity,
           device: tuple[LocalEngineStore, DefaultEngineGate]) -> EngineCacheEntry | None:
    store, gate = device
    return _bounded_call(lambda: remote.fetch(identity, store, gate, TARGET))


# ------------------------------------------------------------------ sidecars


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


@pytest.mark.s3
def test_nested_bracket_metadata_is_refused_not_a_recursion_error(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    """200 kB of brackets as the .json: the depth is bounded before json.loads runs."""
    builder, puller = make_device(), make_device()
    identity = make_identity()
    assert builder.remote.upload(publish_local(builder.store, identity, b"n" * 10_000))
    client, bucket = builder.remote.client(), builder.remote.settings.bucket
    key = builder.remote.key_for(identity)
    client.put_object(Bucket=bucket, Key=key + ".json", Body=_nested(100_000))

    assert _bounded_call(
        lambda: puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    ) is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "nested deeper than 32" in warnings[0]
    assert _files(puller.store) == []


@pytest.fixture
def fleet_key(tmp_path: Path) -> tuple[Path, Any]:
    private = tmp_path / "keys" / "fleet.key"
    _, public = generate_keypair(private)
    return private, public


@pytest.mark.s3
def test_signature_is_checked_before_the_metadata_is_parsed(
    make_device: DeviceFactory,
    fleet_key: tuple[Path, Any],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With signatures required, unsigned hostile metadata never reaches the JSON parser."""
    private, public = fleet_key
    trust = SignatureTrust(TrustPolicy.REQUIRE, [public])
    builder, puller = make_device(), make_device(trust=trust)
    identity = make_identity()
    assert builder.remote.upload(publish_local(builder.store, identity, b"s" * 10_000))
    client, bucket = builder.remote.client(), builder.remote.settings.bucket
    key = builder.remote.key_for(identity)
    client.put_object(Bucket=bucket, Key=key + ".json", Body=_nested(100_000))

    import trt_provision.stores.s3.fetch as s3

    parsed: list[bytes] = []
    real = s3.loads_bounded

    def spy(data: bytes, **kwargs: Any) -> Any:
        parsed.append(data)
        return real(data, **kwargs)

    monkeypatch.setattr(s3, "loads_bounded", spy)
    assert _bounded_call(
        lambda: puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    ) is None
    assert parsed == []
    assert any("not signed" in w for w in _warnings(caplog))

    # Signed by the fleet key (a key holder gone rogue): the signature verifies, and the
    # bounded parser still refuses the nesting.
    client.put_object(Bucket=bucket, Key=key + ".sig",
                      Body=sign_metadata(_nested(100_000), private))
    caplog.clear()
    assert _bounded_call(
        lambda: puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    ) is None
    assert len(parsed) == 1
    assert any("nested deeper" in w for w in _warnings(caplog))
    assert _files(puller.store) == []


@pytest.mark.s3
def test_validly_signed_set_replayed_under_another_identity_is_refused(
    make_device: DeviceFactory, fleet_key: tuple[Path, Any], caplog: pytest.LogCaptureFixture
) -> None:
    """A bucket writer copies a signed object set of model A to model B's slot."""
    from trt_provision.trust import sign_engine

    private, public = fleet_key
    trust = SignatureTrust(TrustPolicy.REQUIRE, [public])
    builder, puller = make_device(trust=trust), make_device(trust=trust)
    a, b = make_identity(model="model_a"), make_identity(model="model_b")
    entry = publish_local(builder.store, a, b"a" * 10_000)
    sign_engine(entry.engine_path, private)
    assert builder.remote.upload(entry)
    client, bucket = builder.remote.client(), builder.remote.settings.bucket
    src, dst = builder.remote.key_for(a), builder.remote.key_for(b)
    for suffix in ("", ".json", ".sig"):
        body = client.get_object(Bucket=bucket, Key=src + suffix)["Body"].read()
        client.put_object(Bucket=bucket, Key=dst + suffix, Body=body)
    sha = client.get_object(Bucket=bucket, Key=src + ".sha256")["Body"].read()
    client.put_object(Bucket=bucket, Key=dst + ".sha256",
                      Body=sha.replace(a.filename.encode(), b.filename.encode()))
    assert _bounded_call(lambda: puller.remote.fetch(b, puller.store, puller.gate, TARGET)) is None
    assert any("for another engine" in w for w in _warnings(caplog))
    assert _files(puller.store) == []


@pytest.mark.parametrize("suffix", [".sha256", ".json", ""])
def test_malformed_content_length_is_a_warning(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
    suffix: str,
) -> None:
    """botocore raises ValueError parsing ``Content-Length: 123abc``: a WARN, no crash."""
    remote = _remote(hostile.endpoint)
    identity = make_identity()
    key = _seed(hostile, remote, publish_local(builder, identity, b"c" * 5000))
    hostile.modes[key + suffix] = fake.BAD_LENGTH
    assert _fetch(remote, identity, device) is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "not fetched" in warnings[0]
    assert _files(device[0]) == []


@pytest.mark.parametrize("mode", [fake.NORMAL, fake.NO_LENGTH])
@pytest.mark.parametrize("suffix", [".sha256", ".json", ".sig"])
def test_oversize_sidecar_is_refused_with_or_without_content_length(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
    suffix: str,
    mode: str,
) -> None:
    """2 MiB of JSON whitespace (or, without Content-Length, an endless body)."""
    remote = _remote(hostile.endpoint, chunk_bytes=64 << 10)
    identity = make_identity()
    key = _seed(hostile, remote, publish_local(builder, identity, b"o" * 5000))
    hostile.put(key + suffix, b" " * (2 << 20), mode)
    assert _fetch(remote, identity, device) is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "too large" in warnings[0]
    assert _files(device[0]) == []


def test_any_exception_of_one_fetch_is_a_warning(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Whatever a third-party parser raises for one model, the run goes on."""
    class Broken:
        def get_object(self, **kwargs: Any) -> Any:
            raise KeyError("a parser bug\x1b[2J\nfrom http://h.example/?token=T0k3n")

    remote = _remote(hostile.endpoint, client=Broken())
    identity = make_identity()
    _seed(hostile, remote, publish_local(builder, identity, b"x" * 5000))
    assert _fetch(remote, identity, device) is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "KeyError" in warnings[0]
    # What the message quotes is printed without control characters or URL secrets.
    assert "\x1b" not in warnings[0] and "\n" not in warnings[0] and "T0k3n" not in warnings[0]
    # Not a connection fault: the remote stays in use for the next model.
    assert remote.offline_reason is None


# ------------------------------------------------------------------ slow servers


def test_trickling_engine_body_ends_at_the_minimum_rate(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """One byte every 50 ms (well inside the 2 s read timeout), forever."""
    remote = _remote(hostile.endpoint, min_rate_bytes_s=64 << 10, chunk_bytes=64 << 10,
                     rate_window_s=0.5)
    identity = make_identity()
    key = _seed(hostile, remote, publish_local(builder, identity, 1 << 20))
    hostile.modes[key] = fake.TRICKLE_BODY
    assert _fetch(remote, identity, device) is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "slower than 64 KiB/s" in warnings[0]
    assert "rest of this run" in warnings[0]
    assert _files(device[0]) == []
    # The remote is out of this run: the next model is not even asked for.
    gets = hostile.count("GET")
    assert _fetch(remote, make_identity(seed="v2"), device) is None
    assert hostile.count("GET") == gets


@pytest.mark.parametrize("mode", [fake.TRICKLE_BODY, fake.TRICKLE_HEADERS])
def test_trickling_server_ends_at_the_deadline(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
    mode: str,
) -> None:
    """No rate check configured: the overall deadline alone ends the GET (sidecar or engine)."""
    remote = _remote(hostile.endpoint, min_rate_bytes_s=0, get_deadline_s=1.5)
    identity = make_identity()
    key = _seed(hostile, remote, publish_local(builder, identity, 1 << 20))
    hostile.modes[key if mode == fake.TRICKLE_BODY else key + ".sha256"] = mode
    assert _fetch(remote, identity, device) is None
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "1.5 s deadline" in warnings[0]
    assert _files(device[0]) == []


def test_trickled_answer_to_a_put_or_head_ends_at_the_deadline(
    hostile: fake.FakeS3,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Uploads and existence checks are held to the same deadline as downloads."""
    from trt_provision.errors import StoreError

    remote = _remote(hostile.endpoint, get_deadline_s=1.5)
    store, _ = device
    entry = publish_local(store, make_identity(), b"p" * 5000)
    key = remote.key_for(entry.identity)
    hostile.modes[key] = fake.TRICKLE_HEADERS
    assert _bounded_call(functools.partial(remote.upload, entry)) is False
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "1.5 s deadline" in warnings[0]
    assert remote.offline_reason is not None

    hostile.modes[key + ".sha256"] = fake.TRICKLE_HEADERS
    fresh = _remote(hostile.endpoint, get_deadline_s=1.5)
    with pytest.raises(StoreError, match="deadline"):
        _bounded_call(functools.partial(fresh.exists, entry.identity))


def test_engine_without_content_length_is_read_to_its_declared_size_plus_one(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The server sends the engine, then zero bytes for ever, with no Content-Length."""
    remote = _remote(hostile.endpoint, chunk_bytes=64 << 10)
    identity = make_identity()
    entry = publish_local(builder, identity, 300_000)
    key = _seed(hostile, remote, entry)
    hostile.modes[key] = fake.NO_LENGTH

    open_files: dict[int, int] = {}  # bytes written per open file descriptor
    closed_files: list[int] = []
    import trt_provision.stores.s3.fetch as s3

    real_write, real_close = s3.os.write, s3.os.close

    def counting_write(fd: int, data: Any) -> int:
        n = real_write(fd, data)
        open_files[fd] = open_files.get(fd, 0) + n
        return n

    def counting_close(fd: int) -> None:
        closed_files.append(open_files.pop(fd, 0))
        real_close(fd)

    monkeypatch.setattr(s3.os, "write", counting_write)
    monkeypatch.setattr(s3.os, "close", counting_close)
    assert _fetch(remote, identity, device) is None
    # The staged engine got the declared size plus one byte, however much the server sent.
    assert max(closed_files) == entry.size_bytes + 1
    assert hostile.bytes_sent[key] > entry.size_bytes + 1
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "larger than its metadata declares" in warnings[0]
    assert _files(device[0]) == []
    assert not list(device[0].root.rglob(f"{TEMP_PREFIX}*"))


def test_engine_without_content_length_of_the_declared_size_is_fetched(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
) -> None:
    """Control: the bound is declared + 1, so an honest body without the header works."""
    remote = _remote(hostile.endpoint, chunk_bytes=64 << 10)
    identity = make_identity()
    entry = publish_local(builder, identity, 300_000)
    key = _seed(hostile, remote, entry)
    hostile.modes[key] = fake.NO_LENGTH
    hostile.stop.set()  # the body ends after the engine: an honest server closing
    fetched = _fetch(remote, identity, device)
    assert fetched is not None and fetched.sha256 == entry.sha256


# ------------------------------------------------------------------ dead or failing servers


@pytest.mark.parametrize("attempts", [1, 2, 3])
def test_max_attempts_counts_every_request(
    hostile: fake.FakeS3,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    attempts: int,
) -> None:
    """``max_attempts = N`` makes N requests in all (botocore's own setting counts retries)."""
    hostile.default_mode = fake.ERROR_503
    remote = _remote(hostile.endpoint, max_attempts=attempts)
    assert _fetch(remote, make_identity(), device) is None
    assert hostile.count("GET") == attempts


def test_first_connection_fault_takes_the_remote_out_of_the_run(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
) -> None:
    """A server that drops every connection: one request, one WARN, for 3 fetches + uploads."""
    hostile.default_mode = fake.DROP
    remote = _remote(hostile.endpoint)
    store, _ = device
    for seed in ("a", "b", "c"):
        identity = make_identity(seed=seed)
        assert _fetch(remote, identity, device) is None
        entry = publish_local(store, identity, b"d" * 1000)
        assert _bounded_call(functools.partial(remote.upload, entry)) is False
    assert sum(hostile.requests.values()) == 1
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "rest of this run" in warnings[0]


# ------------------------------------------------------------------ authentication


def test_no_public_key_warns_once_per_run(
    hostile: fake.FakeS3,
    builder: LocalEngineStore,
    device: tuple[LocalEngineStore, DefaultEngineGate],
    caplog: pytest.LogCaptureFixture,
) -> None:
    remote = _remote(hostile.endpoint)
    for seed in ("a", "b", "c"):
        entry = publish_local(builder, make_identity(seed=seed), b"u" * 1000)
        _seed(hostile, remote, entry)
        assert _fetch(remote, entry.identity, device) is not None
    unauthenticated = [
        r for r in caplog.records
        if r.levelno == logging.WARNING and r.getMessage() == UNAUTHENTICATED_WARNING
    ]
    assert len(unauthenticated) == 1
    # A new run (a new store) says it again; a store with a trust policy never does.
    caplog.clear()
    _fetch(_remote(hostile.endpoint), make_identity(seed="a"), device)
    assert UNAUTHENTICATED_WARNING in caplog.text


# ------------------------------------------------------------------ redaction


def test_endpoint_query_and_credentials_never_logged(
    hostile: fake.FakeS3, caplog: pytest.LogCaptureFixture
) -> None:
    from trt_provision.errors import ManifestError
    from trt_provision.stores.s3 import redact_url, redact_urls, remote_store_from_settings

    token = "QuerySecret-51a7"
    caplog.set_level(logging.DEBUG)
    remote = remote_store_from_settings(
        {"bucket": "engines", "endpoint": f"{hostile.endpoint}/?X-Token={token}"},
        environ={"ARTIFACTS_ACCESS_KEY": ACCESS_KEY, "ARTIFACTS_SECRET_KEY": SECRET_KEY},
    )
    assert remote is not None
    text = caplog.text + repr(remote) + str(remote.settings.describe())
    for record in caplog.records:
        text += repr(record.__dict__)
    assert token not in text and SECRET_KEY not in text
    assert hostile.endpoint in text
    assert redact_url("https://u:p@h.example:8443/a/b?sig=1#f") == "https://h.example:8443/a/b"
    assert token not in redact_urls(f"could not reach 'http://h/?t={token}' now")
    with pytest.raises(ManifestError) as info:
        S3Settings(bucket="b", endpoint=f"ftp://user:{token}@h/?t={token}")
    assert token not in str(info.value)


# ------------------------------------------------------------------ through the CLI


def test_hostile_remote_through_provision_warns_builds_and_exits_0(
    hostile: fake.FakeS3,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Every model's object set is hostile in its own way; ``provision`` builds them all."""
    import json

    from trt_provision.cli.main import main

    monkeypatch.setenv("ARTIFACTS_ACCESS_KEY", ACCESS_KEY)
    monkeypatch.setenv("ARTIFACTS_SECRET_KEY", SECRET_KEY)
    models = Path(__file__).resolve().parents[2] / "examples" / "models"
    manifest = tmp_path / "fleet.toml"
    manifest.write_text(f"""
[remote]
endpoint = "{hostile.endpoint}"
bucket = "engines"
prefix = "fleet"
connect_timeout_s = 1
read_timeout_s = 2
max_attempts = 1
get_deadline_s = 2

[defaults]
precision = "fp32"

[[models]]
name = "demo_cnn"
path = "{models / 'demo_cnn.onnx'}"
profiles = [{{ input = "image", min = [1, 3, 32, 32], opt = [4, 3, 32, 32], max = [8, 3, 32, 32] }}]

[[models]]
name = "two_inputs"
path = "{models / 'two_inputs.onnx'}"
profiles = [{{ input = "token_ids", min = [1, 16], opt = [8, 16], max = [32, 16] }},
            {{ input = "mask", min = [1, 16], opt = [8, 16], max = [32, 16] }}]

[[models]]
name = "dynamic_mlp"
path = "{models / 'dynamic_mlp.onnx'}"
profiles = [{{ input = "features", min = [1, 64], opt = [16, 64], max = [64, 64] }}]
""")
    # The honest engines, built once without the remote, become the bucket's object sets.
    assert main(["provision", str(manifest), "--cache-dir", str(tmp_path / "a"),
                 "--no-remote", "--json"]) == 0
    built = json.loads(capsys.readouterr().out)["results"]
    attacks = iter([
        (".json", _nested(100_000), fake.NORMAL),  # RecursionError before the fix
        ("", None, fake.BAD_LENGTH),  # ValueError out of botocore before the fix
        ("", None, fake.TRICKLE_BODY),  # hours before the fix
    ])
    for result in built:
        engine = Path(result["engine"])
        key = f"fleet/engines/{result['name']}/{engine.name}"
        for suffix in ("", ".json", ".sha256"):
            hostile.put(key + suffix, engine.with_name(engine.name + suffix).read_bytes())
        suffix, payload, mode = next(attacks)
        hostile.put(key + suffix, payload if payload is not None else
                    engine.with_name(engine.name + suffix).read_bytes(), mode)

    rc = _bounded_call(lambda: main(["provision", str(manifest), "--cache-dir",
                                     str(tmp_path / "b"), "--json"]))
    captured = capsys.readouterr()
    assert rc == 0, captured.err
    out = json.loads(captured.out)
    assert out["built"] == 3 and out["fetched"] == 0
    assert "Traceback" not in captured.err
    # One WARN per attack, each naming its reason, plus the no-public-key warning.
    assert captured.err.count(UNAUTHENTICATED_WARNING) == 1
    assert "nested deeper than 32 levels" in captured.err
    assert "ValueError" in captured.err
    assert "deadline" in captured.err and "rest of this run" in captured.err
    assert SECRET_KEY not in captured.err
