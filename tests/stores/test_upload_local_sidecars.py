"""An upload (``push``, or ``provision`` after a build) reads the local sidecars like the gate
does: a ``.sig`` planted as a FIFO, a link out of the cache or an oversized file is refused
with a WARN, never waited on, read whole or sent to the fleet.

Without a trust policy the gate never reads the ``.sig``, so the upload is the first reader.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from stores import fake_s3_server as fake
from stores.weed_server import ACCESS_KEY, SECRET_KEY, make_identity, publish_local
from trt_provision.stores.local import LocalEngineStore
from trt_provision.stores.s3 import S3EngineStore, S3Settings

pytestmark = [pytest.mark.tier1]

HANG_GUARD_S = 120.0  # only a hang (the bug) gets near it


@pytest.fixture
def server() -> Iterator[fake.FakeS3]:
    yield from fake.serve()


def _upload(server: fake.FakeS3, store: LocalEngineStore, plant: str) -> tuple[bool, str]:
    entry = publish_local(store, make_identity(), 4096)
    sig = entry.engine_path.with_name(entry.engine_path.name + ".sig")
    if plant == "fifo":
        os.mkfifo(sig)
    elif plant == "outside":
        sig.symlink_to("/dev/zero")
    else:
        sig.write_bytes(b"A" * (2 << 20))
    remote = S3EngineStore(S3Settings(
        bucket="engines", endpoint=server.endpoint, access_key=ACCESS_KEY,
        secret_key=SECRET_KEY, connect_timeout_s=1.0, read_timeout_s=2.0, max_attempts=1,
    ))
    result: list[bool] = []
    thread = threading.Thread(target=lambda: result.append(remote.upload(entry)), daemon=True)
    thread.start()
    thread.join(HANG_GUARD_S)
    assert not thread.is_alive(), "upload hung on the planted .sig"
    return result[0], str(sig)


@pytest.mark.parametrize("plant", ["fifo", "outside", "oversized"])
def test_planted_signature_is_refused_not_read_or_uploaded(
    server: fake.FakeS3, tmp_path: Path, plant: str, caplog: pytest.LogCaptureFixture
) -> None:
    store = LocalEngineStore(tmp_path / "cache")
    store.ensure_writable()
    with caplog.at_level(logging.WARNING, logger="trt_provision"):
        uploaded, sig = _upload(server, store, plant)
    assert uploaded is False
    assert server.count("PUT") == 0  # nothing of the set reached the bucket
    (warning,) = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING
                  and "not uploaded" in r.getMessage()]
    assert "local signature" in warning and sig in warning


def test_honest_signature_file_is_uploaded(server: fake.FakeS3, tmp_path: Path) -> None:
    """Control: a regular, small .sig goes up with the set."""
    store = LocalEngineStore(tmp_path / "cache")
    store.ensure_writable()
    entry = publish_local(store, make_identity(), 4096)
    sig = entry.engine_path.with_name(entry.engine_path.name + ".sig")
    sig.write_bytes(b"ed25519:0123456789abcdef:" + b"A" * 86 + b"\n")
    remote = S3EngineStore(S3Settings(
        bucket="engines", endpoint=server.endpoint, access_key=ACCESS_KEY,
        secret_key=SECRET_KEY, connect_timeout_s=1.0, read_timeout_s=2.0, max_attempts=1,
    ))
    assert remote.upload(entry) is True
    key = remote.key_for(entry.identity)
    assert server.objects[key + ".sig"] == sig.read_bytes()
