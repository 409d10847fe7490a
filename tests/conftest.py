"""Shared fixtures: the demo corpus, an isolated cache dir and environment."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

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
    # CI runs one fixed sequence of examples, so a red run is reproducible; local runs explore.
    import os

    from hypothesis import settings

    settings.register_profile("ci", derandomize=True, print_blob=True)
    if os.environ.get("CI"):
        settings.load_profile("ci")


_hypothesis_profiles()
