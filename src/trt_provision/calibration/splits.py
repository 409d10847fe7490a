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
batches, the rest go to validation and test (alternately) instead of being dropped, and so do
the source's batches after the first ``max_batches`` (:func:`read_source`; the calibration
key and ranges come from the first ``max_batches`` only, as before). That evidence is read up
to :data:`EVIDENCE_MAX_ROWS` rows or :data:`EVIDENCE_MAX_BYTES` bytes, whichever comes first;
the metadata, and a refusal for too little evidence, say when the limit stopped it.

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

from trt_provision.calibration.data import Batch, CalibrationDataset, InputSpec
from trt_provision.errors import AccuracyGateError

if TYPE_CHECKING:
    from trt_provision.types import BuildConfig

__all__ = [
    "EVIDENCE_MAX_BYTES",
    "EVIDENCE_MAX_ROWS",
    "MIN_BATCHES",
    "PATTERN",
    "SPLIT_SCHEME",
    "DataSplits",
    "SourceRead",
    "read_source",
    "split_for_judging",
]

logger = logging.getLogger(__name__)

PATTERN: tuple[str, ...] = ("calibration", "validation", "calibration", "test", "calibration")
MIN_BATCHES = len(PATTERN)
SPLIT_SCHEME = "round-robin-5/v1"
# Evidence read beyond max_batches is held in memory for the comparisons: bounded. 20 000 rows
# give each split 10 000 samples, more than a 0.999 bar needs with a few disagreeing (7 289
# with 2); the byte limit keeps large inputs (images) within a small device's memory.
EVIDENCE_MAX_ROWS = 20_000
EVIDENCE_MAX_BYTES = 512 << 20


@dataclass(frozen=True)
class SourceRead:
    """A source read once: the first ``max_batches`` batches (calibration, and the dataset
    digest), the batches after them (evidence only), and why that evidence stopped early
    ("" when the whole source was read)."""

    batches: tuple[Batch, ...]
    beyond: tuple[Batch, ...] = ()
    limit: str = ""


def _nbytes(batch: Batch) -> int:
    import numpy as np

    return sum(int(np.asarray(v).nbytes) for v in batch.values())


def read_source(dataset: CalibrationDataset, max_batches: int | None, *,
                max_rows: int = EVIDENCE_MAX_ROWS, max_bytes: int = EVIDENCE_MAX_BYTES
                ) -> SourceRead:
    """Read ``dataset`` once: its first ``max_batches`` batches, then evidence batches up to
    ``max_rows`` rows or ``max_bytes`` bytes (an endless loader stops there too)."""
    if max_batches is None:
        return SourceRead(tuple(dataset))
    head: list[Batch] = []
    beyond: list[Batch] = []
    rows = size = 0
    for batch in dataset.read_all():
        if len(head) < max_batches:
            head.append(batch)
            continue
        n, b = _rows(batch), _nbytes(batch)
        if rows + n > max_rows or size + b > max_bytes:
            limit = (f"evidence beyond max_batches read up to its limit of {max_rows} rows or "
                     f"{max_bytes >> 20} MiB ({rows} rows)")
            logger.info("%s", limit, extra={"event": "calibration.split.evidence_limit",
                                             "rows": rows, "bytes": size})
            return SourceRead(tuple(head), tuple(beyond), limit)
        beyond.append(batch)
        rows, size = rows + n, size + b
    return SourceRead(tuple(head), tuple(beyond))


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
    beyond: dict[str, int] | None = None  # evidence read after the first max_batches
    evidence_limit: str = ""  # why that evidence stopped before the source's end

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
        if self.beyond:
            out["beyond_max_batches"] = dict(self.beyond)
        if self.evidence_limit:
            out["evidence_limit"] = self.evidence_limit
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
    beyond: Sequence[Batch] = (), evidence_limit: str = "",
) -> DataSplits:
    """Split ``batches`` (and ``evaluation``) for calibrating, choosing and confirming.

    ``beyond``: the source's batches after the first ``max_batches`` (``batches``); they never
    calibrate and go to validation and test alternately. Where ``batches`` alone cannot be
    split, all of them calibrate (as an unjudged build calibrates) and ``beyond`` is the
    evidence, like evaluation data."""
    total = len(batches)
    if evaluation is None and beyond and _split_of(batches, specs, config)[0] is None:
        evaluation, beyond = beyond, ()
        label = "beyond-max-batches"
    else:
        label = "evaluation"
    if evaluation is not None:
        pattern = ("validation", "test")
        parts = (_by_pattern(evaluation, pattern) if len(evaluation) >= 2
                 else _row_split(evaluation, pattern, specs, config))
        method = f"{label}-batches" if len(evaluation) >= 2 else f"{label}-rows"
        if parts is not None and parts["validation"] and parts["test"]:
            _add_evidence(parts, beyond)
            return _check_evidence(
                _overlap(DataSplits(tuple(batches), tuple(parts["validation"]),
                                    tuple(parts["test"]), method, total,
                                    beyond=_beyond(evaluation if label != "evaluation"
                                                   else beyond),
                                    evidence_limit=evidence_limit), model),
                config, model, source)
        if label == "evaluation":
            return _too_little(batches, config, model, source,
                               f"evaluation data has {len(evaluation)} batch(es); at least 2 "
                               "batches (or 2 rows along a dynamic batch dimension) are needed")
        parts = None
    else:
        parts, method = _split_of(batches, specs, config)
    if parts is None:
        return _too_little(
            batches, config, model, source,
            f"calibration data has {total} batch(es); judging needs at least {MIN_BATCHES} "
            f"batches, or {MIN_BATCHES}+ rows per batch along a dynamic batch dimension, "
            "or calibration.evaluation_data")
    _cap_calibration(parts, config)
    _add_evidence(parts, beyond)
    return _check_evidence(
        _overlap(DataSplits(tuple(parts["calibration"]), tuple(parts["validation"]),
                            tuple(parts["test"]), method, total, beyond=_beyond(beyond),
                            evidence_limit=evidence_limit), model),
        config, model, source)


def _split_of(batches: Sequence[Batch], specs: Sequence[InputSpec], config: BuildConfig
              ) -> tuple[dict[str, list[Batch]] | None, str]:
    """The calibrate / validate / test pattern over ``batches`` (None: too few to split)."""
    if len(batches) >= MIN_BATCHES:
        parts: dict[str, list[Batch]] | None = _by_pattern(batches, PATTERN)
        method = "batches"
    else:
        parts = _row_split(batches, PATTERN, specs, config)
        method = "rows"
    if parts is None or not all(parts[p] for p in ("calibration", "validation", "test")):
        return None, method
    return parts, method


def _add_evidence(parts: dict[str, list[Batch]], beyond: Sequence[Batch]) -> None:
    for i, batch in enumerate(beyond):
        parts[("validation", "test")[i % 2]].append(batch)


def _beyond(batches: Sequence[Batch]) -> dict[str, int] | None:
    return _describe(batches) if batches else None


def _cap_calibration(parts: dict[str, list[Batch]], config: BuildConfig) -> None:
    """Calibration batches beyond ``max_batches`` are evidence, not waste: they go to
    validation and test alternately."""
    cap = config.calibration.max_batches if config.calibration is not None else None
    if cap is None or len(parts["calibration"]) <= cap:
        return
    extra = parts["calibration"][cap:]
    del parts["calibration"][cap:]
    _add_evidence(parts, extra)


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
    if splits.evidence_limit:
        why = f"{why} ({splits.evidence_limit})"
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
