"""A fetched engine is verified like a local one: the remote ``.sha256`` must cover the
metadata bytes, and the published local sidecar carries both lines."""

from __future__ import annotations

import logging
import shutil
import subprocess

import pytest

from stores.weed_server import TARGET, DeviceFactory, make_identity, publish_local
from trt_provision.gates.engine_gate import DefaultEngineGate

pytestmark = [pytest.mark.s3, pytest.mark.tier1]


def test_fetched_engine_has_both_lines_and_passes_sha256sum(make_device: DeviceFactory) -> None:
    builder, puller = make_device(), make_device()
    identity = make_identity()
    assert builder.remote.upload(publish_local(builder.store, identity, b"e" * 10_000))
    entry = puller.remote.fetch(identity, puller.store, puller.gate, TARGET)
    assert entry is not None
    lines = entry.sha256_path.read_text().splitlines()
    assert [ln.split("  ")[1] for ln in lines] == [entry.engine_path.name,
                                                   entry.engine_path.name + ".json"]
    DefaultEngineGate(cache_root=puller.store.root).validate(entry.engine_path, TARGET)
    if shutil.which("sha256sum"):
        ok = subprocess.run(["sha256sum", "-c", entry.sha256_path.name],
                            cwd=entry.engine_path.parent, capture_output=True, text=True)
        assert ok.returncode == 0, ok.stdout + ok.stderr


@pytest.mark.parametrize("change", ["old one-line sidecar", "metadata edited alone"])
def test_remote_set_whose_sha256_does_not_cover_the_metadata_is_not_fetched(
    make_device: DeviceFactory, caplog: pytest.LogCaptureFixture, change: str
) -> None:
    builder, puller = make_device(), make_device()
    identity = make_identity()
    entry = publish_local(builder.store, identity, b"e" * 10_000)
    assert builder.remote.upload(entry)
    client = builder.remote.client()
    bucket, key = builder.remote.settings.bucket, builder.remote.key_for(identity)
    if change == "old one-line sidecar":
        line = f"{entry.sha256}  {entry.engine_path.name}\n"
        client.put_object(Bucket=bucket, Key=key + ".sha256", Body=line.encode())
    else:
        meta = entry.metadata_path.read_bytes().replace(b'"size_bytes"', b'"size_bytes" ', 1)
        client.put_object(Bucket=bucket, Key=key + ".json", Body=meta)
    with caplog.at_level(logging.WARNING):
        assert puller.remote.fetch(identity, puller.store, puller.gate, TARGET) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert any("does not cover the metadata" in w or "does not match its sha256" in w
               for w in warnings), warnings
    assert not puller.store.path_for(identity).exists()
