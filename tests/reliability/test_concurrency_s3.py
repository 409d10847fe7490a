"""Concurrency with a shared remote: 2 cache directories (4 processes each) provisioning the
demo corpus at once against one SeaweedFS store."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from reliability._support import DEMO_MANIFEST, load_script
from stores.weed_server import ACCESS_KEY, SECRET_KEY, WeedServer, ensure_bucket, start_weed

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.tier1]


@pytest.fixture
def weed_server(tmp_path: Path) -> Iterator[WeedServer]:
    server = start_weed(tmp_path / "weed")
    try:
        yield server
    finally:
        server.stop()


def _manifest(tmp_path: Path, endpoint: str) -> Path:
    models = DEMO_MANIFEST.parent / "models"
    text = DEMO_MANIFEST.read_text().replace('path = "models/', f'path = "{models}/')
    text = f'[remote]\nendpoint = "{endpoint}"\nbucket = "shared"\nprefix = "rel"\n\n' + text
    path = tmp_path / "shared.toml"
    path.write_text(text)
    return path


def test_two_cache_dirs_share_one_store(tmp_path: Path, weed_server: WeedServer) -> None:
    ensure_bucket(weed_server.client(), "shared")
    manifest = _manifest(tmp_path, weed_server.endpoint)
    env = dict(os.environ, ARTIFACTS_ACCESS_KEY=ACCESS_KEY, ARTIFACTS_SECRET_KEY=SECRET_KEY)
    env.pop("TRT_PROVISION_CACHE_DIR", None)
    caches = [tmp_path / "device-a", tmp_path / "device-b"]
    children = [
        (cache, subprocess.Popen(
            [sys.executable, "-m", "trt_provision", "provision", str(manifest), "--json",
             "--cache-dir", str(cache)],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True))
        for _ in range(4) for cache in caches
    ]
    per_cache: dict[Path, dict[str, int]] = {c: {"built": 0, "fetched": 0, "reused": 0} for c in caches}
    for cache, child in children:
        out, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-2000:]
        data = json.loads(out)
        for key in ("built", "fetched", "reused"):
            per_cache[cache][key] += int(data[key])
        assert SECRET_KEY not in out + err
    for cache in caches:
        counts = per_cache[cache]
        # Within one cache directory every engine is produced exactly once (built or fetched).
        assert counts["built"] + counts["fetched"] == 3, counts
        assert counts["reused"] == 4 * 3 - 3, counts
    total_built = sum(c["built"] for c in per_cache.values())
    assert 3 <= total_built <= 6  # no fleet-wide build lock: both devices may build one
    common = load_script("reliability_common")
    for cache in caches:
        audit = common.audit_cache(cache)
        assert len(audit.accepted) == 3 and audit.accepted_wrong_bytes == [] and audit.temp_files == []
    # The store is consistent: a fresh device fetches every engine and verifies it.
    fresh = tmp_path / "device-c"
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", "provision", str(manifest), "--json",
         "--cache-dir", str(fresh)], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert json.loads(proc.stdout)["fetched"] == 3
    assert common.audit_cache(fresh).accepted_wrong_bytes == []
