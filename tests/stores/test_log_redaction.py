"""A failing fetch logs its detail at DEBUG without the endpoint's query string: botocore's
own messages quote the endpoint (``EndpointResolutionError: Custom endpoint `...?token=...`
was not a valid URI``), and a traceback logged as is carried it to the log."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from stores.weed_server import ACCESS_KEY, SECRET_KEY, TARGET, make_identity
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.stores.s3 import remote_store_from_settings

pytestmark = [pytest.mark.tier1]


def test_debug_detail_of_a_failed_fetch_never_carries_the_endpoint_query(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    token = "QueryToken-7c1e"
    store = LocalEngineStore(tmp_path / "cache")
    store.ensure_writable()
    # Port 9 (discard) on the loopback: botocore refuses the URI before any traffic.
    remote = remote_store_from_settings(
        {"bucket": "engines", "endpoint": f"http://127.0.0.1:9/?token={token}",
         "connect_timeout_s": 1, "read_timeout_s": 1, "max_attempts": 1},
        environ={"ARTIFACTS_ACCESS_KEY": ACCESS_KEY, "ARTIFACTS_SECRET_KEY": SECRET_KEY},
    )
    assert remote is not None
    caplog.set_level(logging.DEBUG, logger="trt_provision")
    gate = DefaultEngineGate(cache_root=store.root)
    assert remote.fetch(make_identity(), store, gate, TARGET) is None
    details = [r for r in caplog.records if getattr(r, "event", "") == "remote.fetch.detail"]
    assert details, "the failure detail is logged at DEBUG"
    assert "Traceback" in caplog.text  # the detail is still there, redacted
    assert token not in caplog.text and SECRET_KEY not in caplog.text
