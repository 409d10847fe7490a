"""Concurrency: 8 processes provisioning the demo corpus into one cache directory at once."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reliability._support import load_script

pytestmark = [pytest.mark.slow, pytest.mark.tier1]


def test_eight_processes_build_each_engine_exactly_once(tmp_path: Path) -> None:
    driver = load_script("reliability_concurrency")
    for i in range(2):
        result = driver.one_round(tmp_path / f"cache{i}", 8)
        assert result["failures"] == []
        assert result["codes"] == [0] * 8
        assert result["built"] == 3 and result["reused"] == 8 * 3 - 3


def test_round_check_notices_a_wrong_build_count(tmp_path: Path, pristine_cache: Path) -> None:
    """Control: a round over an already full cache builds nothing, and the check says so."""
    driver = load_script("reliability_concurrency")
    cache = tmp_path / "cache"
    shutil.copytree(pristine_cache, cache)
    result = driver.one_round(cache, 2)
    assert any("built 0 engines" in f for f in result["failures"])
