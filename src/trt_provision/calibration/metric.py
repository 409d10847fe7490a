"""A user's task metric (``accuracy_metric = "file.py:function"``) for the accuracy gate.

The function is called once per judged split as ``fn(reference, candidate, inputs)``: three
lists with one ``{name: array}`` mapping per batch (FP32 outputs, converted outputs, inputs).
It returns ``(score, passed)`` or a mapping with ``score`` and ``passed`` - e.g. the share of
decoded strings that match, or a mean IoU against a threshold. Higher scores are better (the
algorithm search ranks by it). A metric that is a pass rate should say so: ``samples`` and
``agreeing`` (integers, e.g. 48 lines of which 47 decode alike) and optionally ``threshold``
(the rate it asks for; default the gate's agreement bar) in the mapping make the gate judge
it on the Wilson lower bound of ``agreeing / samples`` like every other rate - 4 of 4 lines
is then "not enough evidence", not a pass. It is user code: it runs only when a graph is
judged during a build, never to plan or under ``--dry-run``.
"""

from __future__ import annotations

import importlib.util
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trt_provision.errors import EngineBuildError
from trt_provision.identity import MAX_METRIC_BYTES, metric_file_sha256  # the identity hashes it

__all__ = ["MAX_METRIC_BYTES", "load_metric", "metric_file_sha256", "run_metric"]

def load_metric(spec: str, *, model: str = "") -> Any:
    """Import ``file.py:function`` and return the function (a clear error if it is not)."""
    file_part, sep, func_name = spec.partition(".py:")
    if not sep or not func_name:
        raise EngineBuildError(f"accuracy_metric must be 'file.py:function', got {spec!r}",
                               model=model)
    path = Path(file_part + ".py")
    if not path.is_file():
        raise EngineBuildError("accuracy metric script not found", path=str(path), model=model)
    name = f"_trt_provision_metric_{abs(hash(str(path.resolve())))}"
    module_spec = importlib.util.spec_from_file_location(name, path)
    if module_spec is None or module_spec.loader is None:
        raise EngineBuildError("cannot import accuracy metric script", path=str(path))
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except (Exception, SystemExit) as exc:  # the user's code may raise (or exit) anything
        raise EngineBuildError(
            f"accuracy metric script failed to import: {type(exc).__name__}: {exc}",
            path=str(path), model=model,
        ) from exc
    func = getattr(module, func_name, None)
    if not callable(func):
        raise EngineBuildError(f"accuracy metric script has no function {func_name!r}",
                               path=str(path), model=model)
    return func


def run_metric(
    name: str, func: Any, reference: Sequence[Mapping[str, Any]],
    candidate: Sequence[Mapping[str, Any]], inputs: Sequence[Mapping[str, Any]], *,
    model: str = "",
) -> Any:
    from trt_provision.calibration.accuracy import MetricResult

    try:
        result = func(list(reference), list(candidate), list(inputs))
    except (Exception, SystemExit) as exc:  # sys.exit() in a metric must not end the run
        raise EngineBuildError(
            f"accuracy metric {name} failed: {type(exc).__name__}: {exc}", model=model
        ) from exc
    if isinstance(result, Mapping):
        score, passed = result.get("score"), result.get("passed")
    elif isinstance(result, tuple) and len(result) == 2:
        score, passed = result
    else:
        raise EngineBuildError(
            f"accuracy metric {name} must return (score, passed) or "
            f"{{'score': ..., 'passed': ...}}, got {type(result).__name__}", model=model)
    # numpy scalars are what a metric naturally returns (``iou.mean() > 0.5``): accept them.
    if isinstance(score, np.generic) and not isinstance(score, np.bool_):
        score = score.item()
    if isinstance(passed, np.bool_):
        passed = bool(passed)
    if isinstance(score, bool) or not isinstance(score, int | float) or not math.isfinite(
            float(score)) or not isinstance(passed, bool):
        raise EngineBuildError(
            f"accuracy metric {name} returned score={score!r}, passed={passed!r}; expected a "
            "finite number and a bool", model=model)
    samples, agreeing, threshold = _rate(name, result, model)
    return MetricResult(name=name, score=float(score), passed=passed, samples=samples,
                        agreeing=agreeing, threshold=threshold)


def _rate(name: str, result: Any, model: str) -> tuple[int | None, int | None, float | None]:
    """``samples`` / ``agreeing`` / ``threshold`` of a metric that reports a pass rate."""
    if not isinstance(result, Mapping) or (
            "samples" not in result and "agreeing" not in result):
        return None, None, None
    samples, agreeing = result.get("samples"), result.get("agreeing")
    values = [v.item() if isinstance(v, np.integer) else v for v in (samples, agreeing)]
    samples, agreeing = values
    if (any(isinstance(v, bool) or not isinstance(v, int) for v in values)
            or not 0 <= agreeing <= samples):  # type: ignore[operator]
        raise EngineBuildError(
            f"accuracy metric {name} returned samples={samples!r}, agreeing={agreeing!r}; "
            "expected integers with 0 <= agreeing <= samples", model=model)
    threshold = result.get("threshold")
    if threshold is not None:
        if isinstance(threshold, np.floating):
            threshold = threshold.item()
        if (isinstance(threshold, bool) or not isinstance(threshold, int | float)
                or not 0.0 <= float(threshold) <= 1.0):
            raise EngineBuildError(
                f"accuracy metric {name} returned threshold={threshold!r}; expected a rate "
                "in [0, 1]", model=model)
        threshold = float(threshold)
    return samples, agreeing, threshold
