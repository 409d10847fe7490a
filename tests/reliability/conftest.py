"""Fixtures of the reliability suite: one pristine ONNX Runtime cache of the demo corpus,
copied per case."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from reliability._support import demo_request, wire_ort
from trt_provision.host import probe_host
from trt_provision.types import HostCapabilities


@pytest.fixture(scope="session")
def host() -> HostCapabilities:
    return probe_host()


@pytest.fixture(scope="session")
def pristine_cache(tmp_path_factory: pytest.TempPathFactory, host: HostCapabilities) -> Path:
    """A cache holding one verified ONNX Runtime engine per demo model (never modified)."""
    root = tmp_path_factory.mktemp("pristine") / "cache"
    summary = wire_ort(root, host).compiler.compile_engines_for_corpus(demo_request())
    assert summary.built == len(summary.results) == 3
    return root


@pytest.fixture
def cache_copy(tmp_path: Path, pristine_cache: Path) -> Path:
    target = tmp_path / "cache"
    shutil.copytree(pristine_cache, target, symlinks=True)
    return target
