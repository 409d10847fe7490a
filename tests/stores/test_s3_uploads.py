"""Uploads against a real S3 server (SeaweedFS): the fleet signing policy and multipart
uploads, both without ever overwriting a slot another device filled."""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest

from stores.weed_server import TARGET, Device, DeviceFactory, make_identity, publish_local
from trt_provision.stores.s3 import S3EngineStore
from trt_provision.trust import SignatureTrust, TrustPolicy, generate_keypair, sign_engine
from trt_provision.types import EngineCacheEntry

pytestmark = [pytest.mark.s3, pytest.mark.tier1]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in ("fleet", "other"):
        _, public = generate_keypair(tmp_path / "keys" / f"{name}.key")
        out[name] = (tmp_path / "keys" / f"{name}.key", public)
    return out


def _require(keys: dict[str, Any]) -> SignatureTrust:
    return SignatureTrust(TrustPolicy.REQUIRE, [keys["fleet"][1], keys["other"][1]])


def _keys(device: Device) -> list[str]:
    listing = device.remote.client().list_objects_v2(Bucket=device.remote.settings.bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _remote_engine(device: Device, entry: EngineCacheEntry) -> bytes:
    client, bucket = device.remote.client(), device.remote.settings.bucket
    body: bytes = client.get_object(
        Bucket=bucket, Key=device.remote.key_for(entry.identity)
    )["Body"].read()
    return body


def _pending_multipart(device: Device) -> list[Any]:
    client, bucket = device.remote.client(), device.remote.settings.bucket
    uploads: list[Any] = client.list_multipart_uploads(Bucket=bucket).get("Uploads", [])
    return uploads


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]


# ------------------------------------------------------------------ signing policy


def test_host_that_requires_signatures_never_uploads_an_unsigned_engine(
    make_device: DeviceFactory, keys: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    device = make_device(trust=_require(keys))
    for seed in ("a", "b"):
        entry = publish_local(device.store, make_identity(seed=seed), b"u" * 4096)
        assert device.remote.upload(entry) is False
    assert _keys(device) == []
    warnings = _warnings(caplog)
    assert len(warnings) == 1 and "unsigned" in warnings[0] and "signing_key" in warnings[0]
    # Signed, the same host uploads.
    sign_engine(entry.engine_path, keys["fleet"][0])
    assert device.remote.upload(entry) is True


def test_verify_if_signed_host_may_upload_unsigned(
    make_device: DeviceFactory, keys: dict[str, Any]
) -> None:
    trust = SignatureTrust(TrustPolicy.VERIFY_IF_SIGNED, [keys["fleet"][1]])
    device = make_device(trust=trust)
    entry = publish_local(device.store, make_identity(), b"v" * 4096)
    assert device.remote.upload(entry) is True


def test_signed_engine_replaces_an_unsigned_one(
    make_device: DeviceFactory, keys: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    identity = make_identity()
    keyless, build_box = make_device(), make_device(trust=_require(keys))
    unsigned = publish_local(keyless.store, identity, b"unsigned-engine" * 1000)
    assert keyless.remote.upload(unsigned) is True

    signed = publish_local(build_box.store, identity, b"signed-engine" * 1000)
    sign_engine(signed.engine_path, keys["fleet"][0])
    caplog.set_level(logging.INFO, logger="trt_provision")
    assert build_box.remote.upload(signed) is True
    assert any(getattr(r, "event", "") == "remote.upload.replaced_unsigned"
               for r in caplog.records)
    key = build_box.remote.key_for(identity)
    assert _keys(build_box) == [key, key + ".json", key + ".sha256", key + ".sig"]
    assert _remote_engine(build_box, signed) == b"signed-engine" * 1000

    # A device that requires signatures now fetches it instead of rebuilding for ever.
    puller = make_device(trust=_require(keys))
    fetched = puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    assert fetched is not None and fetched.sha256 == signed.sha256
    # The keyless device's own engine is untouched.
    assert unsigned.engine_path.read_bytes() == b"unsigned-engine" * 1000


def test_signed_engine_never_replaces_another_signed_one(
    make_device: DeviceFactory, keys: dict[str, Any], caplog: pytest.LogCaptureFixture
) -> None:
    identity = make_identity()
    first, second = make_device(trust=_require(keys)), make_device(trust=_require(keys))
    a = publish_local(first.store, identity, b"first-signed" * 1000)
    sign_engine(a.engine_path, keys["fleet"][0])
    b = publish_local(second.store, identity, b"second-signed" * 1000)
    sign_engine(b.engine_path, keys["other"][0])
    assert first.remote.upload(a) is True
    caplog.set_level(logging.INFO, logger="trt_provision")
    assert second.remote.upload(b) is False
    assert any(getattr(r, "event", "") == "remote.upload.lost_race" for r in caplog.records)
    assert _remote_engine(first, a) == b"first-signed" * 1000


def test_signed_engine_never_replaces_an_upload_in_progress(
    make_device: DeviceFactory, keys: dict[str, Any]
) -> None:
    """Engine present, no .sha256 yet: maybe a signed upload whose .sig is not up yet."""
    identity = make_identity()
    other, device = make_device(), make_device(trust=_require(keys))
    client, bucket = other.remote.client(), other.remote.settings.bucket
    key = other.remote.key_for(identity)
    client.put_object(Bucket=bucket, Key=key, Body=b"in-progress")
    entry = publish_local(device.store, identity, b"mine" * 1000)
    sign_engine(entry.engine_path, keys["fleet"][0])
    assert device.remote.upload(entry) is False
    assert _keys(device) == [key]
    assert client.get_object(Bucket=bucket, Key=key)["Body"].read() == b"in-progress"


def test_two_signed_devices_racing_to_replace_an_unsigned_slot(
    make_device: DeviceFactory, keys: dict[str, Any]
) -> None:
    identity = make_identity()
    keyless = make_device()
    assert keyless.remote.upload(publish_local(keyless.store, identity, b"old" * 1000))
    devices = [make_device(trust=_require(keys)) for _ in range(3)]
    entries = []
    for i, device in enumerate(devices):
        entry = publish_local(device.store, identity, f"signed by {i}".encode() * 1000)
        sign_engine(entry.engine_path, keys["fleet"][0])
        entries.append(entry)
    barrier = threading.Barrier(len(devices))
    results = [False] * len(devices)

    def run(i: int) -> None:
        barrier.wait()
        results[i] = devices[i].remote.upload(entries[i])

    threads = [threading.Thread(target=run, args=(i,)) for i in range(len(devices))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # The conditional .sig put lets exactly one device replace the slot; the others keep
    # their engines, and the slot ends complete and consistent.
    assert sum(results) == 1
    puller = make_device(trust=_require(keys))
    fetched = puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    assert fetched is not None
    assert fetched.sha256 == entries[results.index(True)].sha256
    for device, entry in zip(devices, entries, strict=True):
        assert device.gate.validate(entry.engine_path, TARGET).sha256 == entry.sha256


# ------------------------------------------------------------------ multipart


def _multipart(device: Device, **kwargs: Any) -> S3EngineStore:
    """The device's remote with a tiny multipart threshold (the real one is 5 GiB)."""
    return S3EngineStore(
        device.remote.settings,
        multipart_threshold_bytes=1 << 20,
        part_bytes=5 << 20,
        **kwargs,
    )


def test_multipart_upload_round_trip(make_device: DeviceFactory) -> None:
    builder, puller = make_device(), make_device()
    identity = make_identity(model="big_model")
    entry = publish_local(builder.store, identity, (11 << 20) + 12345)  # 3 parts
    remote = _multipart(builder)
    assert remote.upload(entry) is True
    head = builder.remote.client().head_object(
        Bucket=builder.remote.settings.bucket, Key=remote.key_for(identity)
    )
    assert head["ETag"].strip('"').endswith("-3")  # S3's mark of a 3-part object
    fetched = puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    assert fetched is not None and fetched.sha256 == entry.sha256
    assert _pending_multipart(builder) == []


def test_multipart_upload_never_overwrites_a_filled_slot(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture
) -> None:
    identity = make_identity(model="big_model")
    first, second = make_device(), make_device()
    a = publish_local(first.store, identity, b"a" * (6 << 20))
    b = publish_local(second.store, identity, b"b" * (6 << 20))
    assert first.remote.upload(a) is True
    caplog.set_level(logging.INFO, logger="trt_provision")
    assert _multipart(second).upload(b) is False
    assert any(getattr(r, "event", "") == "remote.upload.lost_race" for r in caplog.records)
    assert _remote_engine(first, a) == a.engine_path.read_bytes()
    assert _pending_multipart(first) == []


class _FillDuringParts:
    """Another device fills the slot while this one is uploading its parts."""

    def __init__(self, real: Any, fill: Any) -> None:
        self._real = real
        self._fill = fill
        self.parts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def upload_part(self, **kwargs: Any) -> Any:
        self.parts += 1
        if self.parts == 2:
            self._fill()
        return self._real.upload_part(**kwargs)


@pytest.mark.parametrize("server_condition_only", [False, True])
def test_slot_filled_during_a_multipart_upload_is_kept(
    make_device: DeviceFactory, monkeypatch: pytest.MonkeyPatch, server_condition_only: bool
) -> None:
    """The check before completion sees the slot taken; with the check skipped (the race
    between check and completion), the server's conditional completion refuses."""
    identity = make_identity(model="big_model")
    first, second = make_device(), make_device()
    a = publish_local(first.store, identity, b"a" * (1 << 20))
    b = publish_local(second.store, identity, b"b" * (11 << 20))
    client = _FillDuringParts(second.remote.client(), lambda: first.remote.upload(a))
    remote = _multipart(second, client=client)
    if server_condition_only:
        monkeypatch.setattr(remote._transfer, "head", lambda key: None)
    assert remote.upload(b) is False
    assert client.parts >= 2
    assert _remote_engine(first, a) == a.engine_path.read_bytes()
    assert _pending_multipart(first) == []
