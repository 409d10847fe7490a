"""Make the scanner helper next to these tests importable (tests run in importlib mode)."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[2]
for _p in (_HERE, _ROOT / "tests", _ROOT / "src"):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))


import pytest  # noqa: E402 - after the path set-up above
from trt_rig import FakeTrtexec, Rig, rig_factory, setup_fake_trtexec  # noqa: E402


@pytest.fixture
def make_rig(tmp_path: Path) -> Callable[..., Rig]:
    return rig_factory(tmp_path)


@pytest.fixture
def fake_trtexec(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeTrtexec:
    return setup_fake_trtexec(tmp_path, monkeypatch)
