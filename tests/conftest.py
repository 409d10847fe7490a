"""Shared fixtures: the demo corpus, an isolated cache dir and environment."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
# Make tests/fakes importable as `fakes.*` without packaging the test tree.
sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture
def demo_dir() -> Path:
    return EXAMPLES


@pytest.fixture
def demo_models() -> dict[str, Path]:
    return {p.stem: p for p in sorted((EXAMPLES / "models").glob("*.onnx"))}


@pytest.fixture
def demo_configs() -> dict[str, Any]:
    """Build config of each demo model as examples/demo.toml has it (with the profiles its
    dynamic inputs need): model name -> BuildConfig."""
    from trt_provision.config import load_manifest

    return {b.name: b.build_config for b in load_manifest(EXAMPLES / "demo.toml").backbones}


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Iterator[None]:
    # No test may read or write the user's real cache.
    monkeypatch.delenv("TRT_PROVISION_CACHE_DIR", raising=False)
    monkeypatch.delenv("TENSORRT_CACHE_DIR", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    yield


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


def _hypothesis_profiles() -> None:
    # The whole suite runs one fixed sequence of examples everywhere (laptop, CI, a loaded
    # machine): a red run is reproducible and a green run stays green. No example database,
    # so nothing learnt on one machine changes what another runs; no per-example deadline,
    # so a slow machine is never a failure. `--hypothesis-profile=explore` explores on demand.
    from hypothesis import settings

    settings.register_profile(
        "deterministic", derandomize=True, database=None, deadline=None, print_blob=True
    )
    settings.register_profile("explore", derandomize=False, database=None, deadline=None)
    settings.load_profile("deterministic")


_hypothesis_profiles()
