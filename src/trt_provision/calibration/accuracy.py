"""Accuracy of a converted graph against the FP32 model, and the optional accuracy gate.

Per output, over all held-out batches:

* ``max_abs_error``  - max |candidate - reference|;
* ``max_rel_error``  - ``max_abs_error / max |reference|`` (relative to the output's range;
  an element-wise ratio explodes wherever the reference is near zero);
* ``cosine``         - cosine similarity of the flattened outputs (1.0 when both are zero).
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision.calibration.data import Batch, InputSpec
from trt_provision.errors import AccuracyGateError, EngineBuildError

if TYPE_CHECKING:
    import numpy.typing as npt

    from trt_provision.types import BuildConfig

__all__ = [
    "AccuracyReport",
    "OutputAccuracy",
    "check_accuracy_gate",
    "compare_models",
    "synthetic_batches",
]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class OutputAccuracy:
    name: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    elements: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "max_abs_error": _round(self.max_abs_error),
            "max_rel_error": _round(self.max_rel_error),
            "cosine": _round(self.cosine),
            "elements": self.elements,
        }


def _round(value: float) -> float | str:
    return round(value, 8) if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class AccuracyReport:
    outputs: tuple[OutputAccuracy, ...]
    batches: int
    data: str  # "held-out" | "calibration" | "synthetic"

    @property
    def worst_cosine(self) -> float:
        return min((o.cosine for o in self.outputs), default=1.0)

    def to_dict(self) -> dict[str, Any]:
        return {
            "batches": self.batches,
            "data": self.data,
            "outputs": {o.name: o.to_dict() for o in self.outputs},
        }


class _Accumulator:
    def __init__(self) -> None:
        self.max_abs = 0.0
        self.ref_max = 0.0
        self.dot = 0.0
        self.ref_sq = 0.0
        self.cand_sq = 0.0
        self.elements = 0
        self.nonfinite = False

    def add(self, ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> None:
        import numpy as np

        r = np.asarray(ref, dtype=np.float64).reshape(-1)
        c = np.asarray(cand, dtype=np.float64).reshape(-1)
        if r.shape != c.shape:
            self.nonfinite = True
            return
        if not (np.isfinite(c).all() and np.isfinite(r).all()):
            self.nonfinite = True
        with np.errstate(invalid="ignore", over="ignore"):
            if r.size:
                self.max_abs = max(self.max_abs, float(np.max(np.abs(c - r))))
                self.ref_max = max(self.ref_max, float(np.max(np.abs(r))))
            self.dot += float(np.dot(r, c))
            self.ref_sq += float(np.dot(r, r))
            self.cand_sq += float(np.dot(c, c))
        self.elements += r.size

    def result(self, name: str) -> OutputAccuracy:
        if self.nonfinite:
            return OutputAccuracy(name, math.inf, math.inf, -1.0, self.elements)
        if self.ref_sq == 0.0 and self.cand_sq == 0.0:
            cosine = 1.0
        elif self.ref_sq == 0.0 or self.cand_sq == 0.0:
            cosine = 0.0
        else:
            cosine = self.dot / math.sqrt(self.ref_sq * self.cand_sq)
        rel = self.max_abs / self.ref_max if self.ref_max > 0 else (
            0.0 if self.max_abs == 0 else math.inf
        )
        return OutputAccuracy(name, self.max_abs, rel, max(-1.0, min(1.0, cosine)),
                              self.elements)


def _session(path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
        raise EngineBuildError(
            f"cannot load model for the accuracy check: {type(exc).__name__}: {exc}",
            model=str(path),
        ) from exc


def compare_models(
    reference: Path, candidate: Path, batches: Iterable[Batch], *, data: str = "held-out"
) -> AccuracyReport:
    """Run both models on every batch and compare their outputs by name."""
    ref_sess, cand_sess = _session(reference), _session(candidate)
    names = [o.name for o in ref_sess.get_outputs()]
    cand_names = {o.name for o in cand_sess.get_outputs()}
    missing = [n for n in names if n not in cand_names]
    if missing:
        raise EngineBuildError("converted model lost an output", output=missing[0])
    acc = {n: _Accumulator() for n in names}
    count = 0
    for batch in batches:
        feed = dict(batch)
        ref_out = ref_sess.run(names, feed)
        cand_out = cand_sess.run(names, feed)
        for name, r, c in zip(names, ref_out, cand_out, strict=True):
            acc[name].add(r, c)
        count += 1
    report = AccuracyReport(tuple(acc[n].result(n) for n in names), count, data)
    logger.info(
        "accuracy check: worst cosine %.6f over %d batches",
        report.worst_cosine, count,
        extra={"event": "calibration.accuracy", "batches": count,
               "worst_cosine": report.worst_cosine, "data": data},
    )
    return report


def check_accuracy_gate(
    report: AccuracyReport, config: BuildConfig, *, model: str = ""
) -> None:
    """Raise AccuracyGateError naming the first output that fails the configured gate."""
    for out in report.outputs:
        if config.min_cosine is not None and not out.cosine >= config.min_cosine:
            raise AccuracyGateError(
                f"output {out.name!r} fails the accuracy gate: cosine {out.cosine:.6f} < "
                f"{config.min_cosine}",
                model=model, output=out.name, cosine=out.cosine, min_cosine=config.min_cosine,
            )
        if config.max_rel_error is not None and not out.max_rel_error <= config.max_rel_error:
            raise AccuracyGateError(
                f"output {out.name!r} fails the accuracy gate: relative error "
                f"{out.max_rel_error:.6g} > {config.max_rel_error}",
                model=model, output=out.name, max_rel_error=out.max_rel_error,
                limit=config.max_rel_error,
            )


def synthetic_batches(
    specs: Sequence[InputSpec], config: BuildConfig | None = None, *, count: int = 4,
    seed: int = 0,
) -> list[dict[str, npt.NDArray[Any]]]:
    """Seeded stand-in data when no calibration data is configured (shapes from profiles)."""
    import numpy as np

    rng = np.random.default_rng(seed)
    batches: list[dict[str, npt.NDArray[Any]]] = []
    for _ in range(count):
        batch: dict[str, npt.NDArray[Any]] = {}
        for spec in specs:
            profile = config.profile_for(spec.name) if config is not None else None
            if profile is not None and len(profile.opt_shape) == spec.rank:
                shape = profile.opt_shape
            else:
                shape = tuple(d if d is not None else 1 for d in spec.shape)
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                batch[spec.name] = rng.standard_normal(shape).astype(dtype)
            else:
                batch[spec.name] = np.zeros(shape, dtype=dtype)
        batches.append(batch)
    return batches
