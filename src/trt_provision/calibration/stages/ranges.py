"""Stage 3, ranges: per algorithm from its governed cache (computed in one pass for every
miss), or a user's TensorRT calibration cache; for FP16 the activation extremes observed on
the calibration split (values beyond the FP16 range stay FP32)."""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_provision.calibration.cache import CacheHeader, GovernedCalibrationCache, cache_path_for
from trt_provision.calibration.planner import key_for
from trt_provision.calibration.ranges import (
    TensorRanges,
    compute_activation_ranges,
    parse_trt_calibration_cache,
)
from trt_provision.calibration.stages.splits import Evidence
from trt_provision.calibration.user_cache import UserTrtCache, read_user_trt_cache
from trt_provision.errors import EngineBuildError, TrtProvisionError

__all__ = ["PAYLOAD_RANGES", "PAYLOAD_TRT_CACHE", "GovernedRanges", "Ranges", "ranges_for"]

PAYLOAD_RANGES = "ranges-json"
PAYLOAD_TRT_CACHE = "trt-calibration-cache"


@dataclass(frozen=True)
class GovernedRanges:
    """Activation ranges of one algorithm and where they came from (usable by every path)."""

    ranges: TensorRanges
    key: str
    dataset_version: str
    cache_path: Path
    cache_status: str  # hit | legacy | miss | stale | incomplete
    reused: bool
    batches: int
    preprocessed_path: Path
    note: str = ""

    def to_metadata(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "dataset_version": self.dataset_version,
            "cache_path": str(self.cache_path),
            "cache_reused": self.reused,
            "cache_status": self.cache_status,
            "algorithm": self.ranges.algorithm,
            "params": dict(self.ranges.params),
            "tensors": len(self.ranges.ranges),
            "batches": self.batches,
        }
        if self.note:
            out["note"] = self.note
        return out


@dataclass(frozen=True)
class Ranges:
    """The input of the ``graph`` stage."""

    evidence: Evidence
    governed: Mapping[str, GovernedRanges] = field(default_factory=dict)  # int8, per algorithm
    user: UserTrtCache | None = None  # int8 from a user's TensorRT calibration cache
    extremes: Any = None  # fp16: observed activation extremes per tensor


def ranges_for(evidence: Evidence, *, algorithms: Sequence[str] | None = None) -> Ranges:
    """``algorithms``: the ones to compute (default: the spec's; ``auto`` is all three)."""
    spec = evidence.spec
    if not spec.precision.needs_calibration:
        return Ranges(evidence, extremes=_observe_extremes(evidence))
    if spec.user_cache is not None:
        return Ranges(evidence, user=read_user_trt_cache(spec.user_cache))
    return Ranges(evidence, governed=_governed(evidence, list(algorithms or spec.algorithms)))


def _observe_extremes(evidence: Evidence) -> Any:
    from trt_provision.calibration.fp16 import observe_activation_extremes

    observe = list(evidence.splits.calibration) if evidence.splits is not None \
        else list(evidence.synthetic)
    try:
        return observe_activation_extremes(evidence.preprocessed, observe)
    except TrtProvisionError:
        raise
    except Exception as exc:  # ORT errors on inputs the model cannot take
        raise EngineBuildError(
            f"cannot run the model on "
            f"{'synthetic' if evidence.splits is None else 'calibration'} "
            f"inputs: {type(exc).__name__}: {exc}", model=evidence.spec.name) from exc


def _load(
    cache: GovernedCalibrationCache, key: str, version: str
) -> tuple[Any, TensorRanges | None]:
    lookup = cache.load(key, version)
    if not (lookup.usable and lookup.payload is not None):
        return lookup, None
    kind = lookup.header.payload_kind if lookup.header else PAYLOAD_TRT_CACHE
    ranges = (TensorRanges.from_json(lookup.payload) if kind == PAYLOAD_RANGES
              else parse_trt_calibration_cache(lookup.payload))
    return lookup, ranges


def _governed(evidence: Evidence, algorithms: list[str]) -> dict[str, GovernedRanges]:
    """Per algorithm: reuse its governed cache, or compute it (one pass for all misses).

    Each algorithm has its own cache file and key, so switching algorithm (or ``auto``)
    never replaces another algorithm's calibration.
    """
    from trt_provision.calibration.ranges import compute_ranges_for_algorithms

    spec = evidence.spec
    assert spec.calibration is not None and spec.model_hash is not None
    assert evidence.splits is not None and evidence.resolved is not None
    calibration = spec.calibration
    model_hash = spec.model_hash
    version = evidence.resolved.dataset_version
    batches = evidence.splits.calibration
    preprocessed = evidence.preprocessed
    workdir = spec.workdir
    cache_dir = spec.cache_dir or workdir / "calibration"
    precision = spec.precision.value
    found: dict[str, tuple[GovernedCalibrationCache, str, Any, TensorRanges | None]] = {}
    for algo in algorithms:
        key = key_for(spec.key, model_hash, version, algo)
        path = cache_path_for(cache_dir, spec.model.stem, precision, model_hash=model_hash,
                              kind=algo)
        cache = GovernedCalibrationCache(path, governed=calibration.governed)
        lookup, ranges = _load(cache, key, version)
        found[algo] = (cache, key, lookup, ranges)
    if not calibration.governed and all(v[3] is None for v in found.values()):
        legacy = cache_path_for(cache_dir, spec.model.stem, precision)
        if legacy.exists():
            # Ungoverned builds still find a cache under the older, hash-less file name;
            # it holds one set of ranges, so it is the only candidate.
            cache = GovernedCalibrationCache(legacy, governed=False)
            key = key_for(spec.key, model_hash, version, algorithms[0])
            lookup, ranges = _load(cache, key, version)
            if ranges is not None:
                return {algorithms[0]: GovernedRanges(
                    ranges=ranges, key=key, dataset_version=version,
                    cache_path=legacy, cache_status=lookup.status, reused=True,
                    batches=len(batches), preprocessed_path=preprocessed)}
    missing = [a for a, v in found.items() if v[3] is None]
    computed: dict[str, TensorRanges] = {}
    notes: dict[str, str] = {}
    if missing:
        started = time.perf_counter()
        if missing == ["minmax"]:
            computed = {"minmax": compute_activation_ranges(
                preprocessed, batches, dataclasses.replace(calibration, algorithm="minmax"),
                workdir / "ranges")}
        else:
            computed, notes = compute_ranges_for_algorithms(
                preprocessed, list(batches), calibration, missing, workdir / "ranges")
        seconds = round(time.perf_counter() - started, 3)
        for algo in missing:
            r = computed[algo]
            computed[algo] = TensorRanges(r.algorithm, r.ranges, {**r.params, "seconds": seconds})
    out: dict[str, GovernedRanges] = {}
    for algo, (cache, key, lookup, ranges) in found.items():
        if ranges is None:
            ranges = computed[algo]
            with cache.lock():
                cache.store(
                    CacheHeader(key=key, algorithm=algo, dataset_version=version,
                                payload_kind=PAYLOAD_RANGES),
                    ranges.to_json(),
                )
        out[algo] = GovernedRanges(
            ranges=ranges, key=key, dataset_version=version, cache_path=cache.path,
            cache_status=lookup.status, reused=lookup.usable, batches=len(batches),
            preprocessed_path=preprocessed,
            note=notes.get(algo, str(ranges.params.get("note", ""))),
        )
    return out
