"""Crash consistency: kill -9 `provision` at random moments; the next run finds no engine
accepted with wrong bytes and finishes with a verified cache. The full 200-trial figure
comes from scripts/reliability_crash.py; this runs a smaller share of it."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reliability._support import engine_of, load_script, sidecars

pytestmark = [pytest.mark.slow, pytest.mark.tier1]


def test_random_kills_never_leave_an_accepted_wrong_engine() -> None:
    driver = load_script("reliability_crash")
    report = driver.run(trials=40, workers=2, seed=20240601)
    assert report["trials"] == 40
    assert report["killed_mid_run"] >= 20  # the kills really land inside runs
    assert report["failures"] == []


def test_audit_flags_an_engine_whose_sidecars_were_forged_to_match(
    tmp_path: Path, pristine_cache: Path
) -> None:
    """Control: the independent audit notices a truncated engine that a broken publish
    could have stamped with matching sidecars (the gate then accepts it)."""
    common = load_script("reliability_common")
    cache = tmp_path / "cache"
    shutil.copytree(pristine_cache, cache)
    engine = engine_of(cache, "dynamic_mlp")
    engine.write_bytes(engine.read_bytes()[: engine.stat().st_size // 2])
    import hashlib

    digest = hashlib.sha256(engine.read_bytes()).hexdigest()
    sha, meta = sidecars(engine)
    sha.write_text(f"{digest}  {engine.name}\n")
    data = json.loads(meta.read_text())
    data.update(sha256=digest, size_bytes=engine.stat().st_size)
    meta.write_text(json.dumps(data))
    audit = common.audit_cache(cache)
    assert audit.accepted_wrong_bytes == [engine.name]
