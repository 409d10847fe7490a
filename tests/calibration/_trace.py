"""Follow one value through a build: which modules of the precision pipeline receive it.

``follow(value, prefixes)`` records every call into a module under ``prefixes`` whose
arguments hold ``value`` (by identity); ``visits`` records every call of such a module's
top-level functions from outside the module (methods and properties of its DTOs, closures
and comprehensions are not visits: reading a DTO is not going back to its stage). Both
give a path of modules; a *return* is a step into a module that the path had already left,
the measure of a pipeline that is not one-way. One trace at a time: a profiler is per
process (and per thread: work on other threads is not followed).
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType
from typing import Any


@dataclass
class Trace:
    stops: list[tuple[str, str]] = field(default_factory=list)  # (module, function) holding it
    visits: list[str] = field(default_factory=list)  # module entered from another module

    @staticmethod
    def returns(path: Sequence[str]) -> int:
        seen: set[str] = set()
        count = 0
        previous = None
        for module in path:
            if module != previous and module in seen:
                count += 1
            seen.add(module)
            previous = module
        return count

    @property
    def stop_modules(self) -> list[str]:
        return [m for m, _ in self.stops]

    def summary(self) -> dict[str, Any]:
        return {
            "stops": len(self.stops),
            "stop_modules": len(set(self.stop_modules)),
            "stop_returns": self.returns(self.stop_modules),
            "visits": len(self.visits),
            "visit_modules": len(set(self.visits)),
            "visit_returns": self.returns(self.visits),
        }


def _top_level(frame: FrameType) -> bool:
    """A module-level function (co_qualname needs Python 3.11; this works on 3.10 too)."""
    function = frame.f_globals.get(frame.f_code.co_name)
    return getattr(function, "__code__", None) is frame.f_code


def _holds(frame: FrameType, value: object) -> bool:
    code = frame.f_code
    count = code.co_argcount + code.co_kwonlyargcount
    return any(frame.f_locals.get(name) is value for name in code.co_varnames[:count])


@contextmanager
def follow(value: object, prefixes: Sequence[str]) -> Iterator[Trace]:
    trace = Trace()

    def profile(frame: FrameType, event: str, _arg: Any) -> None:
        if event != "call":
            return
        module = frame.f_globals.get("__name__", "")
        if not module.startswith(tuple(prefixes)):
            return
        if frame.f_code.co_name.startswith("<"):  # comprehensions, lambdas, genexprs
            return
        caller = frame.f_back.f_globals.get("__name__", "") if frame.f_back else ""
        if caller != module and _top_level(frame):
            trace.visits.append(module)
        if _holds(frame, value):
            trace.stops.append((module, frame.f_code.co_name))

    previous: Callable[..., Any] | None = sys.getprofile()
    if previous is not None:
        raise RuntimeError("a profiler is already installed; traces do not nest")
    sys.setprofile(profile)
    try:
        yield trace
    finally:
        sys.setprofile(previous)
