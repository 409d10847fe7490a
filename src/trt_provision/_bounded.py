"""Bounded parsing of bytes that come from outside (a remote store, a shared cache).

``json.loads`` recurses once per nesting level, so a sidecar of nested brackets raises
RecursionError (or worse, exhausts the C stack) long before any size check matters. The
nesting depth is measured first by a linear scan that never recurses, and only input within
both the size and the depth limit reaches ``json.loads``.
"""

from __future__ import annotations

import json
import re
from typing import Any

__all__ = ["MAX_JSON_DEPTH", "BoundedInputError", "json_depth", "loads_bounded"]

MAX_JSON_DEPTH = 32

# Outside strings: skip everything but quotes and brackets in one step.
_PLAIN = re.compile(rb'[^"\[\]{}]*')
# Inside a string (after the opening quote): plain characters and escape pairs. Anchored
# with match() at one position and free of overlapping alternatives: linear, no backtracking
# blow-up on an unterminated string.
_STRING_BODY = re.compile(rb'(?:[^"\\]+|\\.)*', re.DOTALL)


class BoundedInputError(ValueError):
    """Outside input over a size or depth limit, or not parseable."""


def json_depth(data: bytes, limit: int) -> int:
    """Maximum bracket nesting of ``data`` (brackets inside strings do not count).

    Stops and returns ``limit + 1`` as soon as the nesting exceeds ``limit``; does not
    validate JSON otherwise (``json.loads`` does that afterwards).
    """
    depth = deepest = 0
    pos, end = 0, len(data)
    while pos < end:
        pos = _PLAIN.match(data, pos).end()  # type: ignore[union-attr]
        if pos >= end:
            break
        char = data[pos]
        pos += 1
        if char == 0x22:  # '"'
            pos = _STRING_BODY.match(data, pos).end()  # type: ignore[union-attr]
            pos += 1  # the closing quote (or past the end: json.loads reports it)
        elif char in (0x5B, 0x7B):  # '[' '{'
            depth += 1
            if depth > deepest:
                deepest = depth
                if deepest > limit:
                    return limit + 1
        else:  # ']' '}'
            depth = max(depth - 1, 0)
    return deepest


def loads_bounded(
    data: bytes, *, max_bytes: int, max_depth: int = MAX_JSON_DEPTH, what: str = "JSON"
) -> Any:
    """``json.loads`` of outside bytes, refusing oversize or too deeply nested input.

    Every failure is a :class:`BoundedInputError` whose message names ``what`` and the
    reason; RecursionError cannot occur.
    """
    if len(data) > max_bytes:
        raise BoundedInputError(f"{what} is larger than {max_bytes} bytes")
    if json_depth(data, max_depth) > max_depth:
        raise BoundedInputError(f"{what} is nested deeper than {max_depth} levels")
    try:
        return json.loads(data)
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise BoundedInputError(f"{what} is not valid JSON") from exc
    except (ValueError, RecursionError) as exc:
        # e.g. an integer beyond Python's digit limit for int(str).
        raise BoundedInputError(f"{what} is not usable JSON: {type(exc).__name__}") from exc
