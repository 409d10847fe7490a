"""Policies that call the graph stage: the choice among calibration algorithms and the
sensitivity search (layers kept in higher precision). Both select on the validation split
only: the test split never steers them."""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from trt_provision.calibration.accuracy import AccuracyReport
from trt_provision.calibration.ranges import TensorRanges
from trt_provision.errors import EngineBuildError

__all__ = ["SENSITIVITY_MAX_LAYERS", "Candidate", "best_of", "sensitivity_search"]

logger = logging.getLogger(__name__)

# Sensitivity search budget: layers measured one at a time, then graphs tried while keeping
# the most sensitive ones in higher precision (1, 2, 4, ... up to half the weighted layers).
SENSITIVITY_MAX_LAYERS = 32


@dataclass(frozen=True)
class Candidate:
    """A graph built by the graph stage and measured on validation."""

    label: str
    qdq: Any
    path: Any
    validation: AccuracyReport
    passes: bool

    def rank(self) -> tuple[bool, tuple[float, float, float]]:
        return (self.passes, self.validation.score())


# (label, ranges, layers kept in higher precision) -> the candidate graph, measured
BuildCandidate = Callable[[str, TensorRanges, Sequence[str]], Candidate]


def best_of(candidates: Sequence[Candidate]) -> Candidate:
    """Passing the gate first, then the validation score. Ties keep the order given (the
    order of ALGORITHMS: min-max first, the most robust on real models)."""
    return max(candidates, key=Candidate.rank)


def sensitivity_search(
    base: Candidate, ranges: TensorRanges, build: BuildCandidate, layers: Sequence[str],
    consumer: str,
) -> tuple[Candidate, dict[str, Any]]:
    """Leave-one-out sensitivity on the validation split, then keep the most sensitive
    layers in higher precision (FP16 for TensorRT, FP32 on the CPU) until the gate passes
    or the budget is spent. Like Polygraphy's ``debug precision``, but judged on validation
    only: the test split never steers the search."""
    measured = list(layers[:SENSITIVITY_MAX_LAYERS])
    # Every step keeps a subset of the measured layers in higher precision, so the graph
    # that keeps all of them bounds what the search can reach: when even that one fails the
    # gate, the leave-one-out pass (one graph and one validation run per layer) is skipped.
    ceiling = None
    if measured:
        try:
            ceiling = build("keep-all", ranges, measured)
        except EngineBuildError:
            ceiling = None
    # A ceiling that quantizes nothing (every weighted layer measured) is FP32: no bound.
    if ceiling is not None and ceiling.qdq.quantized_ops > 0 and not ceiling.passes:
        logger.info(
            "sensitivity search skipped: keeping all %d measured layers in higher precision "
            "still fails the gate on validation", len(measured),
            extra={"event": "calibration.sensitivity.hopeless", "layers": len(measured)},
        )
        return base, {
            "measured_on": "validation",
            "method": "leave-one-layer-out",
            "higher_precision": "fp16" if consumer == "tensorrt" else "fp32",
            "budget_layers": SENSITIVITY_MAX_LAYERS,
            "skipped": f"keeping all {len(measured)} measured layers in higher precision "
                       "still fails the gate: no smaller set can pass",
            "ceiling": {"kept": len(measured), "cosine": ceiling.validation.worst_cosine,
                        "top1_agreement": ceiling.validation.worst_top1},
            "kept": [],
            "passes_gate": False,
        }
    base_score = base.validation.score()
    per_layer: list[tuple[tuple[float, ...], str, AccuracyReport]] = []
    for layer in measured:
        cand = build(f"loo-{len(per_layer)}", ranges, [layer])
        gain = tuple(a - b for a, b in zip(cand.validation.score(), base_score, strict=True))
        per_layer.append((gain, layer, cand.validation))
    per_layer.sort(key=lambda t: t[0], reverse=True)
    order = [layer for _, layer, _ in per_layer]
    steps = [1 << i for i in range(16) if (1 << i) <= max(1, len(order) // 2)]
    tried: list[dict[str, Any]] = []
    best = base
    for count in steps:
        keep = order[:count]
        cand = build(f"keep-{count}", ranges, keep)
        tried.append({"kept": count, "cosine": cand.validation.worst_cosine,
                      "top1_agreement": cand.validation.worst_top1, "passes_gate": cand.passes})
        if cand.rank() > best.rank():
            best = cand
        if cand.passes:
            break
    kept = list(best.qdq.kept_float) or [p.node for p in best.qdq.excluded
                                          if p.keyword == "sensitivity"]
    info = {
        "measured_on": "validation",
        "method": "leave-one-layer-out",
        "higher_precision": "fp16" if consumer == "tensorrt" else "fp32",
        "budget_layers": SENSITIVITY_MAX_LAYERS,
        "layers": [{"node": layer, "cosine": rep.worst_cosine,
                    "top1_agreement": rep.worst_top1,
                    "gain": [round(g, 6) for g in gain]}
                   for gain, layer, rep in per_layer],
        "steps": tried,
        "kept": kept,
        "passes_gate": best.passes,
    }
    logger.info(
        "sensitivity search kept %d layer(s) in higher precision; gate %s on validation",
        len(kept), "passes" if best.passes else "still fails",
        extra={"event": "calibration.sensitivity", "kept": kept},
    )
    return best, info
