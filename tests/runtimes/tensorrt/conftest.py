"""Make the scanner helper next to these tests importable (tests run in importlib mode)."""

from __future__ import annotations

import sys
from pathlib import Path

_HERE = Path(__file__).resolve().parent
_ROOT = _HERE.parents[2]
for _p in (_HERE, _ROOT / "tests", _ROOT / "src"):
    if str(_p) not in sys.path:
        sys.path.append(str(_p))
