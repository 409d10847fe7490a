"""After the first connection-level fault the remote is out of the run: ``exists`` (which
``push`` asks after a failed upload) answers at once instead of waiting out another
deadline against the same server."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from stores import fake_s3_server as fake
from stores.weed_server import ACCESS_KEY, SECRET_KEY, make_identity, publish_local
from trt_provision.errors import StoreError
from trt_provision.stores.local import LocalEngineStore
from trt_provision.stores.s3 import S3EngineStore, S3Settings

pytestmark = [pytest.mark.tier1]


@pytest.fixture
def server() -> Iterator[fake.FakeS3]:
    yield from fake.serve()


def test_exists_after_the_remote_went_offline_sends_nothing(
    server: fake.FakeS3, tmp_path: Path
) -> None:
    store = LocalEngineStore(tmp_path / "cache")
    store.ensure_writable()
    entry = publish_local(store, make_identity(), 4096)
    remote = S3EngineStore(S3Settings(
        bucket="engines", endpoint=server.endpoint, access_key=ACCESS_KEY,
        secret_key=SECRET_KEY, connect_timeout_s=1.0, read_timeout_s=2.0, max_attempts=1,
        get_deadline_s=1.0,
    ))
    server.default_mode = fake.TRICKLE_HEADERS  # every answer trickles its headers
    assert remote.upload(entry) is False
    assert remote.offline_reason is not None and "deadline" in remote.offline_reason
    heads = server.count("HEAD")
    with pytest.raises(StoreError, match="not used for the rest of this run"):
        remote.exists(entry.identity)
    assert server.count("HEAD") == heads  # no request, so no second deadline
