"""Calibration / validation / test splits: every choice is made on validation, confirmed on test.

Scheme (recorded in the metadata and part of the calibration key):

* **by batch** (5 or more batches): batch ``i`` goes to ``PATTERN[i % 5]``, i.e. calibration,
  validation, calibration, test, calibration - 60 / 20 / 20 and spread over the whole source
  (a source sorted by class or time still gives every split some of each part);
* **by row** (fewer batches, but each with 5+ rows along a dynamic leading batch dimension):
  the same pattern over the rows of every batch, so each split holds rows of every batch
  (stratified by batch); a profile's batch bounds are respected;
* **evaluation data** (``calibration.evaluation_data``): all calibration data calibrates; the
  user's held-out batches alternate between validation and test (rows, if only one batch).

Every row not used to calibrate is evidence: beyond ``calibration.max_batches`` calibration
batches, the rest go to validation and test (alternately) instead of being dropped.

Anything less is too little to judge: :class:`AccuracyGateError`, unless the build allows
inaccurate engines, in which case the build goes on "not judged" with a warning. So is a
validation or test split with fewer samples (rows) than the gate needs for a verdict
(``required_samples`` of its agreement bar, e.g. 73 for 0.95): "not enough evidence", before
any calibration runs.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

from trt_provision.calibration.data import Batch, InputSpec
from trt_provision.errors import AccuracyGateError

if TYPE_CHECKING:
    from trt_provision.types import BuildConfig

__all__ = ["MIN_BATCHES", "PATTERN", "SPLIT_SCHEME", "DataSplits", "split_for_judging"]

logger = logging.getLogger(__name__)

PATTERN: tuple[str, ...] = ("calibration", "validation", "calibration", "test", "calibration")
MIN_BATCHES = len(PATTERN)
SPLIT_SCHEME = "round-robin-5/v1"


@dataclass(frozen=True)
class DataSplits:
    calibration: tuple[Batch, ...]
    validation: tuple[Batch, ...]
    test: tuple[Batch, ...]
    method: str  # "batches" | "rows" | "evaluation-batches" | "evaluation-rows" | "none"
    source_batches: int
    judged: bool = True
    note: str = ""
    overlap: dict[str, int] | None = None  # held-out rows identical to a calibration row


    def to_metadata(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "scheme": SPLIT_SCHEME,
            "method": self.method,
            "source_batches": self.source_batches,
            "calibration": _describe(self.calibration),
            "validation": _describe(self.validation),
            "test": _describe(self.test),
            "judged": self.judged,
        }
        if self.note:
            out["note"] = self.note
        if self.overlap:
            out["identical_to_calibration_rows"] = dict(self.overlap)
        return out


def _rows(batch: Batch) -> int:
    import numpy as np

    return int(min((np.shape(v)[0] if np.ndim(v) else 1) for v in batch.values()))


def _describe(batches: Sequence[Batch]) -> dict[str, int]:
    return {"batches": len(batches), "rows": sum(_rows(b) for b in batches)}


def _row_digests(batch: Batch) -> list[bytes]:
    """One digest per row (all inputs' slices along the leading axis), or one for the batch
    when its inputs do not share a leading length."""
    import hashlib

    import numpy as np

    arrays = [np.ascontiguousarray(batch[k]) for k in sorted(batch)]
    lengths = {a.shape[0] if a.ndim else -1 for a in arrays}
    if len(lengths) != 1 or -1 in lengths:
        h = hashlib.sha256()
        for a in arrays:
            h.update(a.tobytes())
        return [h.digest()]
    digests = []
    for r in range(lengths.pop()):
        h = hashlib.sha256()
        for a in arrays:
            h.update(np.ascontiguousarray(a[r]).tobytes())
        digests.append(h.digest())
    return digests


def _overlap(splits: DataSplits, model: str) -> DataSplits:
    """Count validation / test rows byte-identical to a calibration row (a constant or
    duplicated source): such a split is not held out, and the metadata and log say so."""
    seen = {d for b in splits.calibration for d in _row_digests(b)}
    counts = {name: sum(d in seen for b in getattr(splits, name) for d in _row_digests(b))
              for name in ("validation", "test")}
    if not any(counts.values()):
        return splits
    logger.warning(
        "%s: %d validation and %d test rows are identical to calibration rows; the accuracy "
        "figures are not measured on held-out data", model or "model", counts["validation"],
        counts["test"], extra={"event": "calibration.split.overlap", "model": model})
    return replace(splits, overlap=counts)


def _by_pattern(batches: Sequence[Batch], pattern: Sequence[str]) -> dict[str, list[Batch]]:
    out: dict[str, list[Batch]] = {p: [] for p in pattern}
    for i, batch in enumerate(batches):
        out[pattern[i % len(pattern)]].append(batch)
    return out


def _row_split(
    batches: Sequence[Batch], pattern: Sequence[str], specs: Sequence[InputSpec],
    config: BuildConfig | None,
) -> dict[str, list[Batch]] | None:
    """Split the rows of every batch by ``pattern``; None when rows cannot be split."""
    import numpy as np

    if not batches or any(not s.shape or s.shape[0] is not None for s in specs):
        return None  # only a dynamic leading (batch) dimension can be cut into rows
    low = 1
    if config is not None:
        for s in specs:
            profile = config.profile_for(s.name)
            if profile is not None:
                low = max(low, profile.min_shape[0])
    out: dict[str, list[Batch]] = {p: [] for p in pattern}
    for batch in batches:
        lengths = {np.shape(v)[0] for v in batch.values() if np.ndim(v)}
        if len(lengths) != 1:
            return None
        rows = lengths.pop()
        for part in dict.fromkeys(pattern):  # one sub-batch per split and batch
            index = np.array([r for r in range(rows) if pattern[r % len(pattern)] == part])
            if index.size < low:
                return None
            out[part].append({name: np.asarray(v)[index] for name, v in batch.items()})
    return out


def split_for_judging(
    batches: Sequence[Batch], specs: Sequence[InputSpec], config: BuildConfig, *,
    evaluation: Sequence[Batch] | None = None, model: str = "", source: str = "",
) -> DataSplits:
    """Split ``batches`` (and ``evaluation``) for calibrating, choosing and confirming."""
    total = len(batches)
    if evaluation is not None:
        pattern = ("validation", "test")
        parts = (_by_pattern(evaluation, pattern) if len(evaluation) >= 2
                 else _row_split(evaluation, pattern, specs, config))
        method = "evaluation-batches" if len(evaluation) >= 2 else "evaluation-rows"
        if parts is not None and parts["validation"] and parts["test"]:
            return _check_evidence(
                _overlap(DataSplits(tuple(batches), tuple(parts["validation"]),
                                    tuple(parts["test"]), method, total), model),
                config, model, source)
        return _too_little(batches, config, model, source,
                           f"evaluation data has {len(evaluation)} batch(es); at least 2 "
                           "batches (or 2 rows along a dynamic batch dimension) are needed")
    if total >= MIN_BATCHES:
        parts = _by_pattern(batches, PATTERN)
        method = "batches"
    else:
        parts = _row_split(batches, PATTERN, specs, config)
        method = "rows"
    if parts is None or not all(parts[p] for p in ("calibration", "validation", "test")):
        return _too_little(
            batches, config, model, source,
            f"calibration data has {total} batch(es); judging needs at least {MIN_BATCHES} "
            f"batches, or {MIN_BATCHES}+ rows per batch along a dynamic batch dimension, "
            "or calibration.evaluation_data")
    _cap_calibration(parts, config)
    return _check_evidence(
        _overlap(DataSplits(tuple(parts["calibration"]), tuple(parts["validation"]),
                            tuple(parts["test"]), method, total), model),
        config, model, source)


def _cap_calibration(parts: dict[str, list[Batch]], config: BuildConfig) -> None:
    """Calibration batches beyond ``max_batches`` are evidence, not waste: they go to
    validation and test alternately."""
    cap = config.calibration.max_batches if config.calibration is not None else None
    if cap is None or len(parts["calibration"]) <= cap:
        return
    extra = parts["calibration"][cap:]
    del parts["calibration"][cap:]
    for i, batch in enumerate(extra):
        parts[("validation", "test")[i % 2]].append(batch)


def _samples(batches: Sequence[Batch]) -> int:
    return sum(_rows(b) for b in batches)


def _check_evidence(splits: DataSplits, config: BuildConfig, model: str, source: str
                    ) -> DataSplits:
    """Refuse before calibrating when validation or test holds fewer samples than the gate
    needs for a verdict: even all of them agreeing could not clear its bar."""
    from trt_provision.calibration.accuracy import (
        accuracy_gate,
        not_enough_evidence,
        wilson_lower_bound,
    )

    gate = accuracy_gate(config)
    if gate is None:
        return splits
    needed = gate.required_samples
    counts = {"test": _samples(splits.test), "validation": _samples(splits.validation)}
    short = next(((name, n) for name, n in counts.items() if n < needed), None)
    if short is None:
        return splits
    name, n = short
    why = not_enough_evidence(n, needed, name)
    if not config.allow_inaccurate:
        raise AccuracyGateError(
            why, model=model, source=source, data=name, samples=n, required_samples=needed,
            bound=round(wilson_lower_bound(n, n), 4), threshold=gate.agreement_bar,
        )
    note = f"not judged: {why}"
    logger.warning("%s: %s", model or "model", note,
                   extra={"event": "calibration.split.not_enough_evidence", "model": model,
                          "samples": n, "required_samples": needed})
    return replace(splits, judged=False, note=note)


def _too_little(
    batches: Sequence[Batch], config: BuildConfig, model: str, source: str, why: str
) -> DataSplits:
    if not config.allow_inaccurate:
        raise AccuracyGateError(
            f"too little data to judge the {config.precision.value} graph: {why} "
            "(allow_inaccurate = true builds it unjudged)",
            model=model, source=source,
        )
    note = f"not judged: {why}; the figures below are measured on the calibration data itself"
    logger.warning(
        "%s: %s", model or "model", note,
        extra={"event": "calibration.split.too_little", "model": model},
    )
    all_ = tuple(batches)
    return DataSplits(all_, all_, all_, "none", len(batches), judged=False, note=note)
