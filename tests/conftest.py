"""Shared fixtures: the demo corpus, an isolated cache dir and environment."""

from __future__ import annotations

import logging
import os
import shutil
import sys
import tempfile
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


@pytest.fixture(autouse=True)
def _package_logger_reset() -> Iterator[None]:
    """Every test starts and ends with the package logger as an application would find it
    (no handler, propagating, level unset): the CLI's main() configures it (its own handler,
    no propagation), and a test or fixture that runs main() in-process must not take log
    records away from the caplog of whichever test a worker runs next."""
    logger = logging.getLogger("trt_provision")

    def reset() -> None:
        logger.handlers[:] = []
        logger.setLevel(logging.NOTSET)
        logger.propagate = True
        logger.disabled = False

    reset()
    yield
    reset()


@pytest.fixture
def cache_dir(tmp_path: Path) -> Path:
    path = tmp_path / "cache"
    path.mkdir()
    return path


def pytest_xdist_auto_num_workers(config: pytest.Config) -> int:
    """`-n auto` (in addopts): the suite, or a directory of it, runs on one worker per core
    (at least two: many tests wait on subprocesses and servers rather than compute). A run
    that names only test files stays in one process, which starts faster than workers for
    a few files. PYTEST_XDIST_AUTO_NUM_WORKERS, or -n N, decides instead."""
    if os.environ.get("PYTEST_XDIST_AUTO_NUM_WORKERS"):
        return int(os.environ["PYTEST_XDIST_AUTO_NUM_WORKERS"])
    if config.args and all(a.split("::")[0].endswith(".py") for a in config.args):
        return 0
    return max(2, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity")
               else os.cpu_count() or 1)


def pytest_xdist_make_scheduler(config: pytest.Config, log: Any) -> Any:
    """xdist's load scheduling, except that a real model's tests (tests/realmodels) go to one
    worker: they share what the model's earlier tests built (a session fixture per worker).
    The nodeid decides, since markers do not reach the scheduler (and pytest 9 ignores the
    nodeid suffix xdist_group marks rely on). Other --dist modes are xdist's own."""
    if config.getvalue("dist") != "load":
        return None
    from xdist.scheduler import LoadScopeScheduling  # type: ignore[import-untyped]

    class _RealModelsTogether(LoadScopeScheduling):  # type: ignore[misc]
        def _split_scope(self, nodeid: str) -> str:
            path, _, name = nodeid.partition("::")
            if path.endswith("realmodels/test_real_models.py") and name.endswith("]"):
                return "realmodels:" + name[name.rindex("[") + 1:-1]
            return nodeid

    return _RealModelsTogether(config, log)


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    # Longest first: the `slow` tests (minutes each on two cores) start before the many
    # short ones, so no worker is left running one of them alone at the end. A stable sort:
    # the order within each half is the collection order, on every xdist worker alike.
    items.sort(key=lambda item: item.get_closest_marker("slow") is None)


_WORKER_TMP: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    # Under xdist every worker gets a temporary directory of its own: a test that checks
    # what appeared in the temporary directory while it ran must not see the files of a
    # test running on another worker. Sticky and world-writable like /tmp, since tests
    # acting as a second user share directories made in it.
    if os.environ.get("PYTEST_XDIST_WORKER") and not _WORKER_TMP:
        private = tempfile.mkdtemp(prefix=f"pytest-{os.environ['PYTEST_XDIST_WORKER']}-")
        os.chmod(private, 0o1777)
        _WORKER_TMP.append(private)
        os.environ["TMPDIR"] = tempfile.tempdir = private


def pytest_unconfigure(config: pytest.Config) -> None:
    for private in _WORKER_TMP:
        shutil.rmtree(private, ignore_errors=True)


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
