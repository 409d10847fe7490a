"""Fixtures of the store tests: a session SeaweedFS server, private servers for
destructive cases, and provisioning "devices" (a cache dir, a gate, a remote handle)."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from stores.weed_server import (
    ACCESS_KEY,
    SECRET_KEY,
    Device,
    DeviceFactory,
    WeedServer,
    ensure_bucket,
    start_weed,
)
from trt_provision.gates.engine_gate import DefaultEngineGate, TrustCheck
from trt_provision.stores.local import LocalEngineStore
from trt_provision.stores.s3 import S3EngineStore, S3Settings


@pytest.fixture(scope="session")
def weed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[WeedServer]:
    server = start_weed(tmp_path_factory.mktemp("weed"))
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def private_weed(tmp_path: Path) -> Iterator[WeedServer]:
    """A server of its own for cases that kill it."""
    server = start_weed(tmp_path)
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def bucket(weed: WeedServer) -> str:
    name = f"engines-{uuid.uuid4().hex[:12]}"
    ensure_bucket(weed.client(), name)
    return name


@pytest.fixture
def make_device(tmp_path: Path, weed: WeedServer, bucket: str) -> DeviceFactory:
    counter = iter(range(1000))

    def factory(
        *,
        trust: Any = None,
        server: WeedServer | None = None,
        access: str = ACCESS_KEY,
        secret: str = SECRET_KEY,
        **settings: Any,
    ) -> Device:
        srv = server or weed
        root = tmp_path / f"device{next(counter)}"
        store = LocalEngineStore(root)
        store.ensure_writable()
        gate_trust: TrustCheck | None = trust
        gate = DefaultEngineGate(cache_root=root, trust=gate_trust)
        s3 = S3Settings(
            bucket=settings.pop("bucket", bucket),
            endpoint=srv.endpoint,
            prefix=settings.pop("prefix", "fleet"),
            access_key=access,
            secret_key=secret,
            **{"connect_timeout_s": 2.0, "read_timeout_s": 5.0, "max_attempts": 1, **settings},
        )
        return Device(store=store, gate=gate, remote=S3EngineStore(s3, trust=trust))

    return factory
