"""The suite is deterministic: hypothesis runs one fixed sequence, and no test asserts on
wall-clock time (a loaded machine must not turn a test red)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from hypothesis import settings

pytestmark = pytest.mark.tier0

TESTS = Path(__file__).resolve().parent
_CLOCKS = {"monotonic", "monotonic_ns", "time", "time_ns", "perf_counter", "perf_counter_ns"}


def test_hypothesis_profile_is_derandomized_without_database() -> None:
    current = settings()
    assert current.derandomize is True
    assert current.database is None
    assert current.deadline is None


def _clock_calls(node: ast.AST) -> list[str]:
    found = []
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute):
            base = sub.func.value
            if (sub.func.attr in _CLOCKS and isinstance(base, ast.Name)
                    and base.id == "time"):
                found.append(f"time.{sub.func.attr}()")
    return found


def _timed_names(tree: ast.AST) -> set[str]:
    """Variables assigned from a clock reading, or a difference of clock readings."""
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Assign) and _clock_calls(node.value):
            names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
    return names


def _offences(source: str) -> list[str]:
    tree = ast.parse(source)
    timed = _timed_names(tree)
    out = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Assert):
            continue
        used = {n.id for n in ast.walk(node.test) if isinstance(n, ast.Name)}
        if _clock_calls(node.test) or used & timed:
            out.append(f"line {node.lineno}: {ast.unparse(node.test)}")
    return out


def test_no_test_asserts_on_wall_clock_time() -> None:
    offences = {
        str(path.relative_to(TESTS)): found
        for path in sorted(TESTS.rglob("*.py"))
        if (found := _offences(path.read_text()))
    }
    assert offences == {}


def test_the_scan_sees_a_wall_clock_assert() -> None:
    """Control: the scan flags both spellings of a timed assert, and not a polling loop."""
    direct = "import time\nt = time.monotonic()\nassert time.monotonic() - t < 5\n"
    named = "import time\nt0 = time.perf_counter()\nx = 1\nseconds = time.perf_counter() - t0\nassert seconds < 60\n"
    polling = "import time\nd = time.monotonic() + 5\nwhile time.monotonic() < d:\n    pass\n"
    assert _offences(direct) and _offences(named)
    assert _offences(polling) == []
