"""Remote faults through the compiler: a server killed mid-upload, a 5xx on the last object
of an upload, a dead endpoint. Provisioning completes from local builds and the store is
left without a partial object set. (Kill mid-download, wrong credentials, slow and 503
servers on fetch: tests/stores/test_s3_store.py.)"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from reliability._support import demo_request, load_script, wire_ort
from stores.weed_server import ACCESS_KEY, SECRET_KEY, WeedServer, ensure_bucket, start_weed
from trt_provision.compiler import EngineCompiler
from trt_provision.stores.s3 import S3EngineStore, S3Settings
from trt_provision.types import CompileOutcome, HostCapabilities

pytestmark = [pytest.mark.s3, pytest.mark.tier1]


@pytest.fixture
def weed_server(tmp_path: Path) -> Iterator[WeedServer]:
    server = start_weed(tmp_path / "weed")
    try:
        yield server
    finally:
        server.stop()


class _FaultyClient:
    """Wraps a boto3 client; runs ``fault`` before the n-th put_object."""

    def __init__(self, real: Any, nth: int, fault: Any) -> None:
        self._real = real
        self._nth = nth
        self._fault = fault
        self.puts = 0

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def put_object(self, **kw: Any) -> Any:
        self.puts += 1
        if self.puts == self._nth:
            self._fault()
        return self._real.put_object(**kw)


def _settings(endpoint: str, bucket: str = "faults") -> S3Settings:
    return S3Settings(bucket=bucket, endpoint=endpoint, access_key=ACCESS_KEY,
                      secret_key=SECRET_KEY, connect_timeout_s=1.0, read_timeout_s=2.0,
                      max_attempts=1)


def _provision(cache: Path, host: HostCapabilities, remote: S3EngineStore) -> Any:
    wired = wire_ort(cache, host)
    compiler = EngineCompiler(runtime=wired.runtime, store=wired.store, gate=wired.gate,
                              host=host, remote=remote)
    return compiler.compile_engines_for_corpus(demo_request())


def _objects(server: WeedServer, bucket: str) -> list[str]:
    listing = server.client().list_objects_v2(Bucket=bucket)
    return sorted(o["Key"] for o in listing.get("Contents", []))


def test_server_killed_mid_upload_provisioning_completes_locally(
    tmp_path: Path, weed_server: WeedServer, host: HostCapabilities
) -> None:
    ensure_bucket(weed_server.client(), "faults")
    store = S3EngineStore(_settings(weed_server.endpoint))
    client = _FaultyClient(store.client(), 2, weed_server.kill)  # engine put, then dies
    store = S3EngineStore(_settings(weed_server.endpoint), client=client)
    summary = _provision(tmp_path / "cache", host, store)
    assert {r.outcome for r in summary.results} == {CompileOutcome.BUILT}
    audit = load_script("reliability_common").audit_cache(tmp_path / "cache")
    assert len(audit.accepted) == 3 and audit.accepted_wrong_bytes == []
    assert client.puts >= 2


def test_5xx_on_last_object_rolls_back_and_store_stays_consistent(
    tmp_path: Path, weed_server: WeedServer, host: HostCapabilities
) -> None:
    ensure_bucket(weed_server.client(), "faults")
    from botocore.exceptions import ClientError

    def fail() -> None:
        raise ClientError({"Error": {"Code": "InternalError", "Message": "boom"},
                           "ResponseMetadata": {"HTTPStatusCode": 500}}, "PutObject")

    real = S3EngineStore(_settings(weed_server.endpoint)).client()
    client = _FaultyClient(real, 3, fail)  # engine and .json put, the .sha256 put fails
    summary = _provision(tmp_path / "a", host, S3EngineStore(_settings(weed_server.endpoint),
                                                             client=client))
    assert {r.outcome for r in summary.results} == {CompileOutcome.BUILT}
    victim = summary.results[0].identity
    remote = S3EngineStore(_settings(weed_server.endpoint))
    assert not remote.exists(victim)
    assert not [k for k in _objects(weed_server, "faults") if victim.filename in k]
    # another device never fetches the half upload: it fetches the others, builds this one
    second = _provision(tmp_path / "b", host, remote)
    outcomes = {r.name: r.outcome for r in second.results}
    assert outcomes[summary.results[0].name] is CompileOutcome.BUILT
    assert sorted(o.value for o in outcomes.values()) == ["built", "fetched", "fetched"]


def test_dead_endpoint_provisioning_completes_locally(
    tmp_path: Path, host: HostCapabilities
) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    summary = _provision(tmp_path / "cache", host,
                         S3EngineStore(_settings(f"http://127.0.0.1:{port}")))
    assert {r.outcome for r in summary.results} == {CompileOutcome.BUILT}
