"""Bounded JSON of outside bytes: size and depth refused before json.loads recurses."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trt_provision._bounded import MAX_JSON_DEPTH, BoundedInputError, json_depth, loads_bounded

pytestmark = pytest.mark.tier0

_json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(), inner, max_size=4),
    max_leaves=30,
)


def _depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max((_depth(v) for v in value), default=0)
    if isinstance(value, dict):
        return 1 + max((_depth(v) for v in value.values()), default=0)
    return 0


@settings(max_examples=200)
@given(_json_values)
def test_depth_of_any_json_document_is_its_nesting(value: Any) -> None:
    data = json.dumps(value).encode()
    assert json_depth(data, 1000) == _depth(value)
    assert loads_bounded(data, max_bytes=len(data)) == value


@settings(max_examples=200)
@given(st.binary(max_size=2000))
def test_arbitrary_bytes_raise_only_bounded_input_error(data: bytes) -> None:
    with contextlib.suppress(BoundedInputError):
        loads_bounded(data, max_bytes=1 << 20)


@pytest.mark.parametrize("opener", [b"[", b"{\"a\":"])
def test_deep_nesting_is_refused_without_recursion_error(opener: bytes) -> None:
    data = opener * 200_000
    with pytest.raises(BoundedInputError, match="nested deeper"):
        loads_bounded(data, max_bytes=len(data))


def test_depth_limit_is_inclusive() -> None:
    ok = b"[" * MAX_JSON_DEPTH + b"]" * MAX_JSON_DEPTH
    assert json_depth(ok, MAX_JSON_DEPTH) == MAX_JSON_DEPTH
    loads_bounded(ok, max_bytes=len(ok))
    deep = b"[" + ok + b"]"
    with pytest.raises(BoundedInputError, match="nested deeper than 32"):
        loads_bounded(deep, max_bytes=len(deep))


def test_brackets_and_escaped_quotes_inside_strings_do_not_count() -> None:
    data = json.dumps({"a": "[[[[{{{{\\\"]]]" * 100, "b": ["\"[", "\\"]}).encode()
    assert json_depth(data, 100) == 2
    assert loads_bounded(data, max_bytes=len(data), max_depth=2)["b"] == ["\"[", "\\"]


def test_oversize_is_refused_before_parsing() -> None:
    with pytest.raises(BoundedInputError, match="larger than 10 bytes"):
        loads_bounded(b"[1, 2, 3, 4, 5]", max_bytes=10, what="JSON")


def test_huge_integer_is_a_bounded_input_error() -> None:
    with pytest.raises(BoundedInputError):
        loads_bounded(b"1" * 5000, max_bytes=10_000)
