"""Policies that call the graph stage: the choice among calibration algorithms and the
sensitivity search (layers kept in higher precision). Both select on the validation split
only: the test split never steers them."""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision._bounded import loads_bounded
from trt_provision.calibration.accuracy import AccuracyReport
from trt_provision.calibration.ranges import TensorRanges
from trt_provision.errors import CalibrationCacheError, EngineBuildError

__all__ = [
    "SENSITIVITY_MAX_LAYERS",
    "Candidate",
    "best_of",
    "remembered_sensitivity_search",
    "sensitivity_search",
]

PAYLOAD_SENSITIVITY = "sensitivity-json"
_SEARCH_VERSION = "leave-one-layer-out/2"  # 2: a hopeless search stops at its ceiling

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
    if not best.passes and ceiling is not None and ceiling.passes and ceiling.qdq.quantized_ops:
        # No step up to half the layers passed, but keeping every measured one did: that
        # graph (still quantized elsewhere) is the one that passes.
        best = ceiling
        tried.append({"kept": len(measured), "cosine": ceiling.validation.worst_cosine,
                      "top1_agreement": ceiling.validation.worst_top1, "passes_gate": True})
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


def sensitivity_key(ranges_key: str, consumer: str, layers: Sequence[str],
                    judged_by: Mapping[str, Any]) -> str:
    """What the search's result depends on beyond the ranges' key (model, data version,
    algorithm, pinned and excluded layers): the consumer, the layers it may keep, its budget,
    and how validation is judged (gate, metric, the split)."""
    payload = {"ranges": ranges_key, "consumer": consumer, "layers": list(layers),
               "budget": SENSITIVITY_MAX_LAYERS, "method": _SEARCH_VERSION,
               "judged_by": dict(judged_by)}
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()


def remembered_sensitivity_search(
    base: Candidate, ranges: TensorRanges, build: BuildCandidate, layers: Sequence[str],
    consumer: str, *, cache_path: Path, key: str, dataset_version: str,
) -> tuple[Candidate, dict[str, Any]]:
    """``sensitivity_search``, its result kept in the governed calibration cache under
    ``key``: a later build with the same inputs builds only the graph the search chose
    (one graph, measured on validation again) instead of searching again."""
    from trt_provision.calibration.cache import CacheHeader, GovernedCalibrationCache

    cache = GovernedCalibrationCache(cache_path)
    try:
        lookup = cache.load(key, dataset_version)
        # Depth- and size-bounded: a planted payload is a ValueError, never RecursionError.
        found = (loads_bounded(lookup.payload, max_bytes=8 << 20, what="cached search")
                 if lookup.usable and lookup.payload else None)
    except (CalibrationCacheError, ValueError) as exc:
        logger.warning("ignoring the cached sensitivity search: %s", exc,
                       extra={"event": "calibration.sensitivity.cache_ignored",
                              "path": str(cache_path)})
        found = None
    if (isinstance(found, dict) and isinstance(found.get("kept"), list)
            and all(isinstance(n, str) and n in layers for n in found["kept"])
            and isinstance(found.get("info"), dict)):
        kept = list(found["kept"])
        best = build(f"keep-{len(kept)}", ranges, kept) if kept else base
        info = {**found["info"], "cached": True, "passes_gate": best.passes}
        logger.info(
            "sensitivity search answered from its cache: %d layer(s) kept", len(kept),
            extra={"event": "calibration.sensitivity.cached", "kept": kept})
        return best, info
    best, info = sensitivity_search(base, ranges, build, layers, consumer)
    chosen = list(best.qdq.kept_float) if best is not base else []
    if best is not base and not chosen:
        chosen = [p.node for p in best.qdq.excluded if p.keyword == "sensitivity"]
    try:
        with cache.lock():
            cache.store(CacheHeader(key=key, algorithm="sensitivity",
                                    dataset_version=dataset_version,
                                    payload_kind=PAYLOAD_SENSITIVITY),
                        json.dumps({"kept": chosen, "info": info}, default=str).encode())
    except CalibrationCacheError as exc:  # only the next build's time is lost
        logger.warning("cannot cache the sensitivity search: %s", exc,
                       extra={"event": "calibration.sensitivity.cache_unwritable"})
    return best, info
