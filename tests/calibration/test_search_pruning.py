"""The sensitivity search stops at once when it cannot succeed: the graph keeping every
measured layer in higher precision bounds what any step can reach, so when that graph
fails the gate no leave-one-out graph is built (a hopeless int8 refusal costs one graph,
not one per layer)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import pytest

from trt_provision.calibration.stages.search import Candidate, sensitivity_search

pytestmark = pytest.mark.tier0


@dataclass
class _Report:
    agreement: float

    def score(self) -> tuple[float, float, float]:
        return (self.agreement, self.agreement, self.agreement)

    @property
    def worst_cosine(self) -> float:
        return self.agreement

    @property
    def worst_top1(self) -> float:
        return self.agreement


def _builder(agreement_when_kept: dict[int, float], bar: float,
             quantized: int = 40) -> tuple[Any, list[str]]:
    """``quantized``: the graph's quantized ops when nothing is kept (more than the layers
    the search measures, as on a real model with more than its budget of layers)."""
    built: list[str] = []

    def build(label: str, ranges: Any, keep: Sequence[str] = ()) -> Candidate:
        built.append(label)
        rate = agreement_when_kept.get(len(keep), agreement_when_kept[0])
        qdq = SimpleNamespace(kept_float=tuple(keep), excluded=(),
                              quantized_ops=quantized - len(keep))
        return Candidate(label, qdq, label, _Report(rate), rate >= bar)  # type: ignore[arg-type]

    return build, built


LAYERS = [f"fc{i}" for i in range(8)]


def test_a_hopeless_graph_skips_the_leave_one_out_pass() -> None:
    build, built = _builder({0: 0.01, 8: 0.10}, bar=0.95)
    base = build("minmax", None)
    best, info = sensitivity_search(base, None, build, LAYERS, "onnxruntime")  # type: ignore[arg-type]
    assert built == ["minmax", "keep-all"]  # no loo-* graph was built
    assert info["passes_gate"] is False and "no smaller set can pass" in info["skipped"]
    assert best is base and info["kept"] == []


def test_a_reachable_bar_runs_the_search_as_before() -> None:
    build, built = _builder({0: 0.5, 1: 0.96, 8: 0.99}, bar=0.95)
    base = build("minmax", None)
    best, info = sensitivity_search(base, None, build, LAYERS, "onnxruntime")  # type: ignore[arg-type]
    assert built[:2] == ["minmax", "keep-all"]
    assert sum(label.startswith("loo-") for label in built) == len(LAYERS)
    assert best.passes and "skipped" not in info and info["kept"] == list(best.qdq.kept_float)


def test_a_ceiling_that_quantizes_nothing_bounds_nothing() -> None:
    """When every weighted layer is measured, keeping them all leaves nothing to quantize:
    that graph is FP32, no bound, and the search runs."""
    build, built = _builder({0: 0.5, 1: 0.96, 8: 0.2}, bar=0.95, quantized=len(LAYERS))
    best, info = sensitivity_search(build("minmax", None), None, build, LAYERS, "onnxruntime")  # type: ignore[arg-type]
    assert best.passes and "skipped" not in info
    assert sum(label.startswith("loo-") for label in built) == len(LAYERS)


def test_when_only_keeping_every_measured_layer_passes_that_graph_is_chosen() -> None:
    build, _built = _builder({0: 0.5, 8: 0.99}, bar=0.95)  # no step up to 4 layers passes
    base = build("minmax", None)
    best, info = sensitivity_search(base, None, build, LAYERS, "onnxruntime")  # type: ignore[arg-type]
    assert best.label == "keep-all" and best.passes and info["passes_gate"]
    assert info["kept"] == LAYERS
