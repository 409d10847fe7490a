"""Accuracy of a converted graph against the FP32 model, and the accuracy gate.

Per output, over all batches of one split:

* ``max_abs_error``  - max |candidate - reference|;
* ``max_rel_error``  - ``max_abs_error / max |reference|`` (relative to the output's range;
  an element-wise ratio explodes wherever the reference is near zero);
* ``cosine``         - cosine similarity of the flattened outputs (1.0 when both are zero);
* ``centered_cosine`` - the cosine of both outputs minus the reference's mean (Pearson
  correlation): an output dominated by a constant offset (a regression head ``+ 1000``) keeps
  a plain cosine of 0.9999 while its varying part is noise; the gate's ``min_cosine`` applies
  to both, except that a classification-like output whose top-1 agreement is gated needs a
  centered cosine of only ``CLASSIFIER_MIN_CENTERED_COSINE`` (0.95);
* ``top1_agreement`` - for classification-like outputs only (see :func:`classification_outputs`):
  the share of rows (every position but the last axis) whose arg-max class is the same;
* ``exact_agreement`` - for integer and boolean outputs (labels from ArgMax, indices, masks):
  the share of equal elements. A cosine of class indices says nothing (label 500 read as 501
  is cosine 0.99999); the gate's ``min_top1_agreement`` applies to it.

Per sample (a row along the batch axis; the whole output where there is none), by the output's
kind (:func:`output_kinds`; ``[models.outputs.NAME] kind`` names it): ``classes`` - the
sample's top-1 (every position) agrees; ``sequence`` - its whole arg-max sequence agrees (the
decoded line is the same); ``map`` - IoU of the thresholded maps >= ``MIN_MAP_IOU``;
``embedding`` - per-sample cosine; ``regression`` - the cosine-equivalent of its relative error.
The gate passes a rate only when its Wilson lower bound (:func:`wilson_lower_bound`) clears
the bar; fewer samples than :func:`required_samples` is "not enough evidence", a refusal.

A comparison over zero elements is an error, never a perfect score. The gate
(:class:`AccuracyGate`) is on by default for int8/mixed and for fp16 measured on real data;
its defaults and the evidence behind them are in ``_docs/calibration.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision.calibration.data import Batch, InputSpec
from trt_provision.errors import AccuracyGateError, EngineBuildError, TrtProvisionError

if TYPE_CHECKING:
    import numpy.typing as npt

    from trt_provision.types import BuildConfig

__all__ = [
    "CONFIDENCE_Z",
    "DEFAULT_AGREEMENT",
    "DEFAULT_GATES",
    "MIN_MAP_IOU",
    "AccuracyGate",
    "AccuracyReport",
    "MetricResult",
    "OutputAccuracy",
    "OutputInfo",
    "accuracy_gate",
    "check_accuracy_gate",
    "classification_outputs",
    "compare_models",
    "compare_outputs",
    "not_enough_evidence",
    "output_kinds",
    "required_samples",
    "synthetic_batches",
    "wilson_lower_bound",
]

logger = logging.getLogger(__name__)

# Default gates by precision (see _docs/calibration.md for the evidence). Cosine alone passed
# classifiers that flipped 7 of 40 labels at cosine 0.996, hence the top-1 agreement check.
DEFAULT_GATES: Mapping[str, tuple[float, float]] = {
    # precision: (min_cosine, min_top1_agreement)
    "int8": (0.99, 0.95),
    "mixed": (0.99, 0.95),
    "fp16": (0.999, 0.99),
}
TIE_FRACTION = 1e-3  # reference scores this close (share of the row's range) are a tie
# Classification-like: the class axis is the last one and holds at most this many classes.
_MAX_CLASSES = 1000
_CLASS_PRODUCERS = frozenset({"Softmax", "LogSoftmax"})
_MAP_PRODUCERS = frozenset({"Sigmoid"})

# ------------------------------------------------------------------ evidence

# Two-sided 95 % normal quantile of the Wilson score interval.
CONFIDENCE_Z = 1.96
# The agreement bar of a gate that sets none (fp32 / auto gates configured with a cosine only).
DEFAULT_AGREEMENT = 0.95
# A bar of 1.0 cannot be met by any lower bound: it demands every sample agree, on at least
# the evidence a 0.99 bar needs.
_HIGHEST_BOUNDED_BAR = 0.99
# Detection-like maps: binarized at 0.5 where the reference lies in [0, 1] (probabilities),
# else at 0 (logits: sigmoid(0) = 0.5); a sample agrees when the masks' IoU reaches this.
MAP_PROBABILITY_THRESHOLD = 0.5
MAP_LOGIT_THRESHOLD = 0.0
MIN_MAP_IOU = 0.95
# Regression: a sample whose reference is near zero is measured against this share of the
# output's typical (RMS) sample norm, so a relative error never divides by ~0.
_REGRESSION_NORM_FLOOR = 0.1
_CHUNK_ELEMENTS = 1 << 22  # per-sample metrics work on at most this many elements at once
_SEQUENCE, _CLASSES, _MAP, _EMBEDDING, _REGRESSION = (
    "sequence", "classes", "map", "embedding", "regression")
_DISCRETE_KINDS = frozenset({_SEQUENCE, _CLASSES, _MAP})
_CRITERIA = {
    _SEQUENCE: "arg-max sequence", _CLASSES: "top-1", _MAP: f"map IoU >= {MIN_MAP_IOU}",
    _EMBEDDING: "per-sample cosine", _REGRESSION: "per-sample relative error",
}


def wilson_lower_bound(agreeing: int, samples: int, z: float = CONFIDENCE_Z) -> float:
    """Lower end of the Wilson score interval of ``agreeing / samples``.

    ``(p + z²/2n - z·sqrt(p(1-p)/n + z²/4n²)) / (1 + z²/n)`` with ``p = k/n``; with every
    sample agreeing it is ``n / (n + z²)``: 4 of 4 gives 0.51. 0 for zero samples.
    """
    if samples <= 0:
        return 0.0
    if not 0 <= agreeing <= samples:
        raise ValueError(f"agreeing must be in [0, {samples}], got {agreeing}")
    n = float(samples)
    p = agreeing / n
    z2 = z * z
    centre = p + z2 / (2 * n)
    margin = z * math.sqrt(p * (1 - p) / n + z2 / (4 * n * n))
    return max(0.0, min(1.0, (centre - margin) / (1 + z2 / n)))


def required_samples(threshold: float, z: float = CONFIDENCE_Z) -> int:
    """The fewest samples for which all agreeing clears ``threshold``: ``n/(n+z²) >= t``, i.e.
    ``n >= t·z²/(1-t)`` (0.95: 73; 0.99: 381). A bar of 1.0 needs what 0.99 needs."""
    t = threshold if threshold < 1.0 else _HIGHEST_BOUNDED_BAR
    if t <= 0:
        return 1
    n = max(1, math.ceil(t * z * z / (1 - t)))
    while wilson_lower_bound(n, n, z) < t:  # float rounding at the boundary
        n += 1
    while n > 1 and wilson_lower_bound(n - 1, n - 1, z) >= t:
        n -= 1
    return n


def _rate_passes(agreeing: int, samples: int, threshold: float) -> tuple[bool, float]:
    bound = wilson_lower_bound(agreeing, samples)
    if threshold >= 1.0:
        return agreeing == samples, bound
    return bound >= threshold, bound


def not_enough_evidence(samples: int, required: int, data: str = "test") -> str:
    """The refusal reason of a verdict resting on fewer samples than its gate needs."""
    return (f"not enough evidence: {samples} {data} samples, need {required} for this gate; "
            "give more calibration data or `evaluation_data`")


@dataclass(frozen=True)
class OutputAccuracy:
    name: str
    max_abs_error: float
    max_rel_error: float
    cosine: float
    elements: int
    top1_agreement: float | None = None  # classification-like outputs only
    rows: int = 0
    centered_cosine: float | None = None  # None where the reference is constant
    exact_agreement: float | None = None  # integer / boolean outputs only
    # Per sample (a row along the batch axis, or the whole output of a batch without one):
    kind: str = ""  # sequence | classes | map | embedding | regression
    samples: int = 0
    # Per-sample quality: 1.0 / 0.0 (agrees or not) for sequence, classes and map; the
    # per-sample cosine (embedding) or its equivalent from the relative error (regression).
    sample_scores: tuple[float, ...] = field(default=(), repr=False)
    sample_cosine_min: float | None = None
    sample_cosine_p05: float | None = None
    sample_iou_min: float | None = None  # map outputs

    @property
    def discrete(self) -> bool:
        return self.kind in _DISCRETE_KINDS

    def agreeing(self, bar: float | None = None) -> int:
        """Samples that agree: for continuous kinds, those whose score reaches ``bar``."""
        if self.discrete or bar is None:
            return sum(1 for v in self.sample_scores if v >= 1.0)
        return sum(1 for v in self.sample_scores if v >= bar)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "max_abs_error": _round(self.max_abs_error),
            "max_rel_error": _round(self.max_rel_error),
            "cosine": _round(self.cosine),
            "elements": self.elements,
        }
        if self.centered_cosine is not None:
            out["centered_cosine"] = _round(self.centered_cosine)
        if self.exact_agreement is not None:
            out["exact_agreement"] = _round(self.exact_agreement)
        if self.top1_agreement is not None:
            out["top1_agreement"] = _round(self.top1_agreement)
            out["rows"] = self.rows
        if self.kind:
            out["kind"] = self.kind
            out["samples"] = self.samples
            if self.discrete:
                agreeing = self.agreeing()
                out["agreeing"] = agreeing
                out["bound"] = _round(wilson_lower_bound(agreeing, self.samples))
        for key in ("sample_cosine_min", "sample_cosine_p05", "sample_iou_min"):
            value = getattr(self, key)
            if value is not None:
                out[key] = _round(value)
        return out


def _round(value: float) -> float | str:
    return round(value, 8) if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class MetricResult:
    """What a user's task metric returned for one split. ``samples`` / ``agreeing`` (a pass
    rate: e.g. lines decoded alike) make it a rate the gate bounds like the others."""

    name: str
    score: float
    passed: bool
    samples: int | None = None
    agreeing: int | None = None
    threshold: float | None = None  # the rate the metric asks for; else the gate's bar

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {"metric": self.name, "score": _round(self.score),
                               "passed": self.passed}
        if self.samples is not None and self.agreeing is not None:
            out["samples"] = self.samples
            out["agreeing"] = self.agreeing
            out["bound"] = _round(wilson_lower_bound(self.agreeing, self.samples))
            if self.threshold is not None:
                out["threshold"] = self.threshold
        return out


@dataclass(frozen=True)
class AccuracyReport:
    outputs: tuple[OutputAccuracy, ...]
    batches: int
    data: str  # "validation" | "test" | "evaluation" | "calibration" | "synthetic" ...
    metric: MetricResult | None = None
    # The gate this report is judged by, when the caller gave it: its evidence (samples,
    # bound, bar) is then part of to_dict().
    gate: AccuracyGate | None = None

    @property
    def worst_cosine(self) -> float:
        return min((min(o.cosine, 1.0 if o.centered_cosine is None else o.centered_cosine)
                    for o in self.outputs if o.elements), default=1.0)

    @property
    def worst_top1(self) -> float | None:
        values = [v for o in self.outputs for v in (o.top1_agreement, o.exact_agreement)
                  if v is not None]
        return min(values) if values else None

    @property
    def samples(self) -> int:
        """The fewest samples any output was judged on."""
        return min((o.samples for o in self.outputs if o.kind), default=0)

    def score(self) -> tuple[float, float, float]:
        """Sort key, higher is better: metric score, top-1 agreement, cosine."""
        top1 = self.worst_top1
        metric = self.metric.score if self.metric is not None else 0.0
        return (metric, 1.0 if top1 is None else top1, self.worst_cosine)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batches": self.batches,
            "data": self.data,
            "samples": self.samples,
            "outputs": {o.name: o.to_dict() for o in self.outputs},
        }
        if self.data == "synthetic":
            out["note"] = "smoke, not an accuracy figure (synthetic inputs)"
        if self.metric is not None:
            out["task_metric"] = self.metric.to_dict()
        if self.gate is not None:
            evidence = self.gate.evidence(self)
            out["evidence"] = evidence
            for key in ("bound", "threshold"):
                if key in evidence:
                    out[key] = evidence[key]
        else:
            # Without the gate, the lowest bound of the outputs whose agreement needs no bar
            # (its threshold is the gate's agreement_bar, recorded beside this report).
            bounds = [wilson_lower_bound(o.agreeing(), o.samples) for o in self.outputs
                      if o.discrete and o.samples]
            if bounds:
                out["bound"] = _round(min(bounds))
        return out


# The centered-cosine bar for classification-like outputs whose top-1 agreement is gated.
CLASSIFIER_MIN_CENTERED_COSINE = 0.95


@dataclass(frozen=True)
class _Rate:
    """One rate the gate bounds: an output's per-sample agreement or the task metric's."""

    label: str  # "output 'y'" | "task metric m.py"
    criterion: str
    agreeing: int
    samples: int
    threshold: float

    @property
    def bound(self) -> float:
        return wilson_lower_bound(self.agreeing, self.samples)


@dataclass(frozen=True)
class AccuracyGate:
    """Thresholds a converted graph must meet on every output (None: not checked).

    ``min_top1_agreement`` is the agreement bar of every rate (per-sample agreement of each
    output, and a task metric that reports a pass rate), judged on the rate's Wilson lower
    bound; ``min_cosine`` also decides when an embedding / regression sample agrees.
    """

    min_cosine: float | None = None
    max_rel_error: float | None = None
    min_top1_agreement: float | None = None
    origin: str = "configured"  # "configured" | "default for <precision>"
    output_kinds: tuple[tuple[str, str], ...] = ()  # manifest-named kinds, by output

    @property
    def agreement_bar(self) -> float:
        return (self.min_top1_agreement if self.min_top1_agreement is not None
                else DEFAULT_AGREEMENT)

    @property
    def required_samples(self) -> int:
        return required_samples(self.agreement_bar)

    def _centered_bar(self, out: OutputAccuracy) -> float:
        # Logits of a classifier carry a shared offset by construction, and their task measure
        # is top-1 agreement (judged separately): the centered cosine there only has to rule out
        # noise (CLASSIFIER_MIN_CENTERED_COSINE). Any other output is held to min_cosine.
        assert self.min_cosine is not None
        if out.top1_agreement is not None and self.min_top1_agreement is not None:
            return min(self.min_cosine, CLASSIFIER_MIN_CENTERED_COSINE)
        return self.min_cosine

    def _rates(self, report: AccuracyReport) -> list[_Rate]:
        """Every per-sample rate this gate bounds in ``report``."""
        rates: list[_Rate] = []
        bar = self.agreement_bar
        for out in report.outputs:
            if not out.elements or not out.kind:
                continue
            if out.discrete and self.min_top1_agreement is None:
                continue
            if not out.discrete and self.min_cosine is None:
                continue
            rates.append(_Rate(f"output {out.name!r}", _CRITERIA.get(out.kind, out.kind),
                               out.agreeing(self.min_cosine), out.samples, bar))
        metric = report.metric
        if metric is not None and metric.samples is not None and metric.agreeing is not None:
            rates.append(_Rate(f"task metric {metric.name}", "pass rate", metric.agreeing,
                               metric.samples,
                               metric.threshold if metric.threshold is not None else bar))
        return rates

    def evidence(self, report: AccuracyReport) -> dict[str, Any]:
        """On how many samples the verdict rests and how sure it is: the weakest rate's
        samples, agreeing count and Wilson bound, against the bar and the samples it needs."""
        rates = self._rates(report)
        if not rates:
            return {"samples": report.samples, "rates": 0}
        weakest = min(rates, key=lambda r: (r.samples >= required_samples(r.threshold),
                                            r.bound))
        needed = required_samples(weakest.threshold)
        return {
            "samples": weakest.samples,
            "agreeing": weakest.agreeing,
            "bound": _round(weakest.bound),
            "threshold": weakest.threshold,
            "required_samples": needed,
            "enough": weakest.samples >= needed,
            "rate": weakest.label,
            "confidence": f"wilson lower bound, two-sided 95 % (z={CONFIDENCE_Z})",
        }

    def summary(self, report: AccuracyReport) -> str:
        """One line for logs and tables: ``n=80, bound=0.9551 >= 0.95``."""
        ev = self.evidence(report)
        if "bound" not in ev:
            return f"n={ev['samples']}"
        sign = ">=" if ev["enough"] and ev["bound"] >= ev["threshold"] else "<"
        return f"n={ev['samples']}, bound={ev['bound']:.4f} {sign} {ev['threshold']}"

    def failures(self, report: AccuracyReport) -> list[str]:
        found: list[str] = []
        rates = self._rates(report)
        short = [r for r in rates if r.samples < required_samples(r.threshold)]
        if short:
            weakest = min(short, key=lambda r: r.samples)
            found.append(not_enough_evidence(weakest.samples,
                                             required_samples(weakest.threshold), report.data))
        for rate in rates:
            if rate in short:
                continue
            ok, bound = _rate_passes(rate.agreeing, rate.samples, rate.threshold)
            if not ok:
                found.append(f"{rate.label}: {rate.agreeing} of {rate.samples} samples agree "
                             f"({rate.criterion}); n={rate.samples}, bound={bound:.4f} < "
                             f"{rate.threshold}")
        for out in report.outputs:
            if not out.elements:
                continue
            if self.min_cosine is not None and not out.cosine >= self.min_cosine:
                found.append(f"output {out.name!r}: cosine {out.cosine:.6f} < {self.min_cosine}")
            elif (self.min_cosine is not None and out.centered_cosine is not None
                    and not out.centered_cosine >= (bar := self._centered_bar(out))):
                found.append(f"output {out.name!r}: centered cosine {out.centered_cosine:.6f} "
                             f"< {bar} (the plain cosine {out.cosine:.6f} is "
                             "dominated by a constant offset)")
            if (self.min_top1_agreement is not None and out.exact_agreement is not None
                    and not out.exact_agreement >= self.min_top1_agreement):
                found.append(f"output {out.name!r}: exact agreement {out.exact_agreement:.4f} "
                             f"< {self.min_top1_agreement} (integer output)")
            if self.max_rel_error is not None and not out.max_rel_error <= self.max_rel_error:
                found.append(f"output {out.name!r}: relative error {out.max_rel_error:.6g} > "
                             f"{self.max_rel_error}")
            if (self.min_top1_agreement is not None and out.top1_agreement is not None
                    and not out.top1_agreement >= self.min_top1_agreement):
                found.append(f"output {out.name!r}: top-1 agreement {out.top1_agreement:.4f} < "
                             f"{self.min_top1_agreement} over {out.rows} rows")
        if report.metric is not None and not report.metric.passed:
            found.append(f"task metric {report.metric.name}: score {report.metric.score:.6g} "
                         "did not pass")
        return found

    def failing_outputs(self, report: AccuracyReport) -> list[str]:
        return [o.name for o in report.outputs
                if any(f.startswith(f"output {o.name!r}:") for f in self.failures(report))]

    def passes(self, report: AccuracyReport) -> bool:
        return not self.failures(report)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "min_cosine": self.min_cosine, "max_rel_error": self.max_rel_error,
            "min_top1_agreement": self.min_top1_agreement, "origin": self.origin,
            "agreement_bar": self.agreement_bar, "required_samples": self.required_samples,
            "confidence": f"wilson lower bound, two-sided 95 % (z={CONFIDENCE_Z})",
        }
        if self.output_kinds:
            out["output_kinds"] = dict(self.output_kinds)
        return out


def accuracy_gate(config: BuildConfig, *, measured_on_data: bool = True) -> AccuracyGate | None:
    """The gate of ``config``: configured thresholds, else the precision's defaults.

    fp16 measured on synthetic inputs gets no default gate (a smoke check only); fp32 none.
    """
    configured = (config.min_cosine, config.max_rel_error, config.min_top1_agreement)
    precision = config.precision.value
    defaults = DEFAULT_GATES.get(precision) if measured_on_data else None
    kinds = tuple(config.output_kinds)
    if all(v is None for v in configured):
        if defaults is None:
            return None
        return AccuracyGate(min_cosine=defaults[0], min_top1_agreement=defaults[1],
                            origin=f"default for {precision}", output_kinds=kinds)
    min_top1 = config.min_top1_agreement
    if min_top1 is None and defaults is not None:
        min_top1 = defaults[1]  # a configured cosine does not switch the label check off
    return AccuracyGate(min_cosine=config.min_cosine, max_rel_error=config.max_rel_error,
                        min_top1_agreement=min_top1, output_kinds=kinds)


# ------------------------------------------------------------------ output kinds


@dataclass(frozen=True)
class OutputInfo:
    """What the graph says about one output: its kind (None: decided on the first batch's
    reference values), the axis its symbolic batch dimension sits on, and its element type."""

    name: str
    kind: str | None
    batch_axis: int | None
    integer: bool
    rank: int | None


def output_kinds(
    model_path: Path, overrides: Mapping[str, str] | Iterable[tuple[str, str]] = ()
) -> dict[str, OutputInfo]:
    """Per output: the kind named in ``overrides``, else one inferred from the graph.

    Inference (in order): integer / boolean outputs -> ``classes`` (labels, compared
    exactly); produced by Softmax / LogSoftmax -> ``sequence`` at rank 3, else ``classes``;
    produced by Sigmoid at rank 3+ -> ``map``; rank 2 with 2..1000 classes (logits) ->
    ``classes``. Anything else is decided on the reference outputs (:func:`_runtime_kind`).
    """
    import onnx

    named = dict(overrides.items() if isinstance(overrides, Mapping) else overrides)
    model = onnx.load(str(model_path), load_external_data=False)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    initializers = {i.name for i in model.graph.initializer}
    batch_symbol = ""
    for inp in model.graph.input:
        if inp.name in initializers:
            continue
        dims = list(inp.type.tensor_type.shape.dim) if inp.type.tensor_type.HasField(
            "shape") else []
        if dims and dims[0].HasField("dim_param") and dims[0].dim_param:
            batch_symbol = dims[0].dim_param
            break
    floats = (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16, onnx.TensorProto.DOUBLE,
              onnx.TensorProto.BFLOAT16)
    found: dict[str, OutputInfo] = {}
    for out in model.graph.output:
        tt = out.type.tensor_type
        dims = list(tt.shape.dim) if tt.HasField("shape") else []
        rank = len(dims) if tt.HasField("shape") else None
        axes = [i for i, d in enumerate(dims)
                if batch_symbol and d.HasField("dim_param") and d.dim_param == batch_symbol]
        axis = axes[0] if len(axes) == 1 else None
        integer = tt.elem_type not in floats
        last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else 0
        kind: str | None = named.get(out.name)
        if kind is None:
            producer = producers.get(out.name)
            if integer:
                kind = _CLASSES
            elif producer in _CLASS_PRODUCERS and (last == 0 or last >= 2):
                kind = _SEQUENCE if rank == 3 else _CLASSES
            elif producer in _MAP_PRODUCERS and rank is not None and rank >= 3:
                kind = _MAP
            elif rank == 2 and 2 <= last <= _MAX_CLASSES:
                kind = _CLASSES
        found[out.name] = OutputInfo(out.name, kind, axis, integer, rank)
    return found


def _runtime_kind(ref: npt.NDArray[Any], sample_axis: int | None) -> str:
    """The kind of an output the graph leaves open, from its first reference batch:
    rank 3 whose last axis holds probabilities (in [0, 1], summing to 1) -> ``sequence``;
    rank 3-4 with one channel (``[N, 1, H, W]`` / ``[N, H, W]``) holding probabilities ->
    ``map``; else ``embedding`` when a sample holds 2+ elements, ``regression`` otherwise."""
    import numpy as np

    arr = np.asarray(ref, dtype=np.float64)
    finite = arr.size > 0 and bool(np.isfinite(arr).all())
    in_unit = finite and float(arr.min()) >= 0.0 and float(arr.max()) <= 1.0
    if arr.ndim == 3 and arr.shape[-1] >= 2 and in_unit:
        sums = arr.sum(axis=-1)
        if bool(np.all(np.abs(sums - 1.0) <= 1e-3)):
            return _SEQUENCE
    if in_unit and ((arr.ndim == 4 and arr.shape[1] == 1) or arr.ndim == 3):
        return _MAP
    per_sample = arr.size // max(1, arr.shape[sample_axis]) if (
        sample_axis is not None and arr.ndim) else arr.size
    return _EMBEDDING if per_sample >= 2 else _REGRESSION


def classification_outputs(model_path: Path) -> frozenset[str]:
    """Outputs whose last axis is a small class axis: produced by Softmax/LogSoftmax, or a
    rank-2 float output (batch x classes) with 2..1000 classes (logits).

    Detection heads (rank 3, boxes and scores along the last axis) are not classification-like
    unless a softmax produces them.
    """
    return frozenset(name for name, info in output_kinds(model_path).items()
                     if not info.integer and info.kind in (_CLASSES, _SEQUENCE))


# ------------------------------------------------------------------ comparison


def _sample_axis(shape: tuple[int, ...], rows: int | None, kind: str,
                 hint: int | None) -> int | None:
    """The axis samples lie along: the graph's symbolic batch axis, else the leading axis
    (the second for ``[T, N, C]`` sequences) when its length is the inputs' batch size; None
    (the whole output is one sample) when no axis has it."""
    if rows is None or not shape:
        return None
    if hint is not None and hint < len(shape) and shape[hint] == rows:
        return hint
    if shape[0] == rows:
        return 0
    if kind == _SEQUENCE and len(shape) >= 3 and shape[1] == rows:
        return 1
    return None


def _batch_rows(feed: Mapping[str, Any]) -> int | None:
    """The inputs' common leading length (the batch size), None when they do not share one."""
    import numpy as np

    lengths = {np.shape(v)[0] for v in feed.values() if np.ndim(v)}
    return lengths.pop() if len(lengths) == 1 else None


def _row_agreement(ref_rows: npt.NDArray[Any], cand_rows: npt.NDArray[Any]
                   ) -> npt.NDArray[Any]:
    """Per row (last axis = classes): the candidate's arg-max is the reference's, or tied with
    it in the reference (within TIE_FRACTION of the row's range): among near-equal scores no
    precision, not even FP32 on another kernel, keeps the order."""
    import numpy as np

    ref64 = ref_rows.astype(np.float64)
    picked = np.take_along_axis(ref64, np.argmax(cand_rows, axis=-1)[..., None], axis=-1)[..., 0]
    top = ref64.max(axis=-1)
    span = top - ref64.min(axis=-1)
    result: npt.NDArray[Any] = picked >= top - TIE_FRACTION * span
    return result


class _Accumulator:
    def __init__(self, info: OutputInfo) -> None:
        self.info = info
        self.kind = info.kind or ""
        self.max_abs = 0.0
        self.ref_max = 0.0
        self.dot = 0.0
        self.ref_sq = 0.0
        self.cand_sq = 0.0
        self.elements = 0
        self.nonfinite = False
        self.rows = 0
        self.agree = 0
        self.ref_sum = 0.0
        self.cand_sum = 0.0
        self.integer = False
        self.equal = 0
        # per sample
        self.sample_agree: list[Any] = []  # bool arrays (discrete kinds)
        self.sample_cos: list[Any] = []
        self.sample_err: list[Any] = []
        self.sample_norm: list[Any] = []
        self.sample_iou: list[Any] = []
        self.samples = 0

    @property
    def classification(self) -> bool:
        return self.kind in (_CLASSES, _SEQUENCE) and not self.info.integer

    def add(self, ref: npt.NDArray[Any], cand: npt.NDArray[Any], rows: int | None = None
            ) -> None:
        import numpy as np

        ref_arr, cand_arr = np.asarray(ref), np.asarray(cand)
        axis = _sample_axis(ref_arr.shape, rows, self.kind, self.info.batch_axis)
        if not self.kind:
            self.kind = _runtime_kind(ref_arr, axis) if ref_arr.dtype.kind == "f" else _CLASSES
            axis = _sample_axis(ref_arr.shape, rows, self.kind, self.info.batch_axis)
        r = ref_arr.astype(np.float64).reshape(-1)
        c = cand_arr.astype(np.float64).reshape(-1)
        if ref_arr.shape != cand_arr.shape:
            self.nonfinite = True
            n = ref_arr.shape[axis] if axis is not None else 1
            self._add_disagreeing(n)
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
            self.ref_sum += float(r.sum())
            self.cand_sum += float(c.sum())
        if ref_arr.dtype.kind in "biu":
            self.integer = True
            self.equal += int(np.sum(ref_arr == cand_arr))
        self.elements += r.size
        if self.classification and ref_arr.ndim >= 1 and ref_arr.size:
            classes = ref_arr.shape[-1]
            agree = _row_agreement(ref_arr.reshape(-1, classes), cand_arr.reshape(-1, classes))
            self.rows += agree.shape[0]
            self.agree += int(np.sum(agree))
        self._add_samples(ref_arr, cand_arr, axis)

    def _add_disagreeing(self, n: int) -> None:
        import numpy as np

        self.samples += n
        self.sample_agree.append(np.zeros(n, bool))
        self.sample_cos.append(np.full(n, -1.0))
        self.sample_err.append(np.full(n, np.inf))
        self.sample_norm.append(np.ones(n))
        self.sample_iou.append(np.zeros(n))

    def _add_samples(self, ref: npt.NDArray[Any], cand: npt.NDArray[Any], axis: int | None
                     ) -> None:
        import numpy as np

        if axis is None:
            r, c = ref[None], cand[None]
        else:
            r, c = np.moveaxis(ref, axis, 0), np.moveaxis(cand, axis, 0)
        n = r.shape[0]
        if n == 0 or r.size == 0:
            return
        threshold = MAP_LOGIT_THRESHOLD
        if self.kind == _MAP:
            with np.errstate(invalid="ignore"):
                unit = bool(np.isfinite(r).all()) and float(r.min()) >= 0 and float(r.max()) <= 1
            threshold = MAP_PROBABILITY_THRESHOLD if unit else MAP_LOGIT_THRESHOLD
        # Chunks of samples keep the float64 working copies bounded: a CTC batch
        # [48, 80, 6625] is 25M elements.
        step = max(1, _CHUNK_ELEMENTS // max(1, r.size // n))
        for start in range(0, n, step):
            self._add_chunk(r[start:start + step], c[start:start + step], threshold)

    def _add_chunk(self, r: npt.NDArray[Any], c: npt.NDArray[Any], threshold: float) -> None:
        import numpy as np

        n = r.shape[0]
        rf = r.reshape(n, -1).astype(np.float64)
        cf = c.reshape(n, -1).astype(np.float64)
        finite = np.isfinite(rf).all(axis=1) & np.isfinite(cf).all(axis=1)
        rf0, cf0 = np.where(np.isfinite(rf), rf, 0.0), np.where(np.isfinite(cf), cf, 0.0)
        with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
            dot = np.einsum("ij,ij->i", rf0, cf0)
            rr = np.einsum("ij,ij->i", rf0, rf0)
            cc = np.einsum("ij,ij->i", cf0, cf0)
            cos = np.where((rr == 0) & (cc == 0), 1.0,
                           np.where((rr == 0) | (cc == 0), 0.0, dot / np.sqrt(rr * cc)))
            err = np.sqrt(np.einsum("ij,ij->i", cf0 - rf0, cf0 - rf0))
        cos = np.clip(np.where(finite, cos, -1.0), -1.0, 1.0)
        self.sample_cos.append(cos)
        self.sample_err.append(np.where(finite, err, np.inf))
        self.sample_norm.append(np.sqrt(rr))
        if self.info.integer or r.dtype.kind in "biu":
            agree = (r.reshape(n, -1) == c.reshape(n, -1)).all(axis=1)
        elif self.kind in (_CLASSES, _SEQUENCE) and r.ndim >= 2:
            classes = r.shape[-1]
            rows = _row_agreement(r.reshape(n, -1, classes), c.reshape(n, -1, classes))
            agree = rows.all(axis=1)
        elif self.kind == _MAP:
            rm, cm = rf > threshold, cf > threshold
            inter = (rm & cm).sum(axis=1)
            union = (rm | cm).sum(axis=1)
            iou = np.where(union == 0, 1.0, inter / np.maximum(union, 1))
            iou = np.where(finite, iou, 0.0)
            self.sample_iou.append(iou)
            agree = iou >= MIN_MAP_IOU
        else:
            agree = cos >= 1.0  # continuous kinds: decided against the gate's bar later
        self.sample_agree.append(np.asarray(agree, bool) & finite)
        self.samples += n

    def _scores(self) -> tuple[float, ...]:
        import numpy as np

        if not self.samples:
            return ()
        if self.kind in _DISCRETE_KINDS or self.integer:
            return tuple(float(v) for v in np.concatenate(self.sample_agree))
        cos = np.concatenate(self.sample_cos)
        if self.kind == _EMBEDDING:
            return tuple(float(v) for v in cos)
        # regression: the cosine a relative error e corresponds to for equal norms,
        # 1 - e²/2, with e = |c - r| / max(|r|, a tenth of the RMS sample norm)
        err = np.concatenate(self.sample_err)
        norm = np.concatenate(self.sample_norm)
        rms = float(np.sqrt(np.mean(norm ** 2))) if norm.size else 0.0
        scale = np.maximum(norm, _REGRESSION_NORM_FLOOR * rms)
        with np.errstate(invalid="ignore", divide="ignore"):
            rel = np.where(scale > 0, err / np.where(scale > 0, scale, 1.0),
                           np.where(err == 0, 0.0, np.inf))
        quality = np.clip(1.0 - rel ** 2 / 2.0, -1.0, 1.0)
        return tuple(float(v) for v in np.where(np.isfinite(quality), quality, -1.0))

    def result(self, name: str) -> OutputAccuracy:
        import numpy as np

        kind = _CLASSES if self.integer else (self.kind or _EMBEDDING)
        self.kind = kind
        per_sample: dict[str, Any] = {"kind": kind, "samples": self.samples,
                                      "sample_scores": self._scores()}
        if self.samples and not self.integer:
            cos = np.concatenate(self.sample_cos)
            per_sample["sample_cosine_min"] = float(cos.min())
            per_sample["sample_cosine_p05"] = float(np.percentile(cos, 5))
        if self.sample_iou:
            per_sample["sample_iou_min"] = float(np.concatenate(self.sample_iou).min())
        top1 = (self.agree / self.rows) if self.classification and self.rows else None
        if self.nonfinite:
            return OutputAccuracy(name, math.inf, math.inf, -1.0, self.elements,
                                  0.0 if self.classification else None, self.rows,
                                  **per_sample)
        if self.ref_sq == 0.0 and self.cand_sq == 0.0:
            cosine = 1.0
        elif self.ref_sq == 0.0 or self.cand_sq == 0.0:
            cosine = 0.0
        else:
            cosine = self.dot / math.sqrt(self.ref_sq * self.cand_sq)
        rel = self.max_abs / self.ref_max if self.ref_max > 0 else (
            0.0 if self.max_abs == 0 else math.inf
        )
        exact = (self.equal / self.elements) if self.integer and self.elements else None
        return OutputAccuracy(name, self.max_abs, rel, max(-1.0, min(1.0, cosine)),
                              self.elements, top1, self.rows, self._centered(), exact,
                              **per_sample)

    def _centered(self) -> float | None:
        """Cosine after subtracting the reference's mean from both outputs (None: constant
        reference, where centering leaves nothing to compare)."""
        if self.integer or not self.elements:
            return None
        n, mean = self.elements, self.ref_sum / self.elements
        # sum((r - m)(c - m)), sum((r - m)^2), sum((c - m)^2) from the running sums
        dot = self.dot - mean * (self.ref_sum + self.cand_sum) + n * mean * mean
        ref_sq = self.ref_sq - 2 * mean * self.ref_sum + n * mean * mean
        cand_sq = self.cand_sq - 2 * mean * self.cand_sum + n * mean * mean
        # below float64's resolution of the uncentred sums the reference is constant
        if ref_sq <= 1e-12 * max(self.ref_sq, 1e-300):
            return None
        if cand_sq <= 0.0:
            return 0.0
        return max(-1.0, min(1.0, dot / math.sqrt(ref_sq * cand_sq)))


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


Metric = Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]],
                   Sequence[Mapping[str, Any]]], Any]
Runner = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def compare_outputs(
    reference_model: Path, names: Sequence[str], batches: Iterable[Batch],
    run_reference: Runner, run_candidate: Runner, *, data: str = "held-out", model: str = "",
    metric: tuple[str, Metric] | None = None, kinds: Iterable[tuple[str, str]] = (),
    gate: AccuracyGate | None = None, candidate_label: str = "converted",
) -> AccuracyReport:
    """Run the reference and the candidate on every batch and compare ``names`` per output
    and per sample. ``run_*`` take an inputs mapping and return ``{output name: array}``;
    their failures are wrapped naming the model. Zero batches or zero compared elements are
    an error, never a score."""
    infos = output_kinds(reference_model, tuple(kinds))
    acc = {n: _Accumulator(infos.get(n) or OutputInfo(n, None, None, False, None))
           for n in names}
    count = 0
    refs: list[dict[str, Any]] = []
    cands: list[dict[str, Any]] = []
    feeds: list[dict[str, Any]] = []
    for batch in batches:
        feed = dict(batch)
        outs: dict[str, Mapping[str, Any]] = {}
        for label, run in (("reference", run_reference), (candidate_label, run_candidate)):
            try:
                outs[label] = run(feed)
            except TrtProvisionError:
                raise
            except Exception as exc:  # ORT / engines raise their own error types
                raise EngineBuildError(
                    f"the {label} model failed on {data} batch {count}: "
                    f"{type(exc).__name__}: {exc}",
                    model=model or str(reference_model),
                ) from exc
        ref_out, cand_out = outs["reference"], outs[candidate_label]
        missing = [n for n in names if n not in cand_out]
        if missing:
            raise EngineBuildError(f"the {candidate_label} model lost an output",
                                   output=missing[0], model=model or str(reference_model))
        rows = _batch_rows(feed)
        for name in names:
            acc[name].add(ref_out[name], cand_out[name], rows)
        if metric is not None:
            refs.append({n: ref_out[n] for n in names})
            cands.append({n: cand_out[n] for n in names})
            feeds.append(feed)
        count += 1
    outputs = tuple(acc[n].result(n) for n in names)
    if count == 0 or sum(o.elements for o in outputs) == 0:
        raise AccuracyGateError(
            f"the accuracy check on {data} data compared zero elements ({count} batches); "
            "an empty comparison proves nothing",
            model=model or str(reference_model), data=data, batches=count,
        )
    result = None
    if metric is not None:
        from trt_provision.calibration.metric import run_metric

        result = run_metric(metric[0], metric[1], refs, cands, feeds, model=model)
    report = AccuracyReport(outputs, count, data, result, gate)
    evidence = f"; {gate.summary(report)}" if gate is not None else ""
    logger.info(
        "accuracy check: worst cosine %.6f over %d %s batches, %d samples%s",
        report.worst_cosine, count, data, report.samples, evidence,
        extra={"event": "calibration.accuracy", "batches": count, "samples": report.samples,
               "worst_cosine": report.worst_cosine, "top1": report.worst_top1, "data": data},
    )
    return report


def compare_models(
    reference: Path, candidate: Path, batches: Iterable[Batch], *, data: str = "held-out",
    model: str = "", metric: tuple[str, Metric] | None = None,
    kinds: Iterable[tuple[str, str]] | None = None, gate: AccuracyGate | None = None,
) -> AccuracyReport:
    """Run both models on every batch and compare their outputs by name.

    ``metric`` (a name and a callable, see ``metric.py``) receives the reference outputs, the
    candidate outputs and the inputs, batch by batch. ``kinds`` names outputs' kinds (default:
    the gate's ``output_kinds``); with ``gate`` the report records its evidence. Inference
    failures are wrapped with the model's name; zero batches or zero compared elements are an
    error, never a score.
    """
    ref_sess, cand_sess = _session(reference), _session(candidate)
    names = [o.name for o in ref_sess.get_outputs()]
    cand_names = {o.name for o in cand_sess.get_outputs()}
    missing = [n for n in names if n not in cand_names]
    if missing:
        raise EngineBuildError("converted model lost an output", output=missing[0])

    def runner(sess: Any) -> Runner:
        def run(feed: Mapping[str, Any]) -> Mapping[str, Any]:
            return dict(zip(names, sess.run(names, dict(feed)), strict=True))
        return run

    if kinds is None:
        kinds = gate.output_kinds if gate is not None else ()
    return compare_outputs(reference, names, batches, runner(ref_sess), runner(cand_sess),
                           data=data, model=model, metric=metric, kinds=kinds, gate=gate)


def check_accuracy_gate(
    report: AccuracyReport, config: BuildConfig | AccuracyGate | None, *, model: str = ""
) -> None:
    """Raise AccuracyGateError naming every output that fails the gate."""
    gate = accuracy_gate(config) if config is not None and not isinstance(
        config, AccuracyGate) else config
    if gate is None:
        return
    failures = gate.failures(report)
    if failures:
        evidence = gate.evidence(report)
        raise AccuracyGateError(
            f"fails the accuracy gate on {report.data} data: " + "; ".join(failures),
            model=model, data=report.data, gate=gate.to_dict(),
            cosine=report.worst_cosine, top1_agreement=report.worst_top1,
            **{k: evidence[k] for k in ("samples", "bound", "threshold", "required_samples")
               if k in evidence},
        )


_SANE_INT = 1  # int inputs of synthetic batches: a valid index / count / flag everywhere


def synthetic_batches(
    specs: Sequence[InputSpec], config: BuildConfig | None = None, *, count: int = 4,
    seed: int = 0, dim_fallback: int = 1,
) -> list[dict[str, npt.NDArray[Any]]]:
    """Seeded stand-in inputs for a smoke check when no data is configured.

    Shapes come from the profiles' opt shapes; a dynamic dim without a profile gets
    ``dim_fallback``. Integer inputs hold small positive values (ids, lengths, rates are
    rarely valid at 0); boolean inputs are True. Never an accuracy figure.
    """
    import numpy as np

    rng = np.random.default_rng(seed)
    batches: list[dict[str, npt.NDArray[Any]]] = []
    for _ in range(count):
        batch: dict[str, npt.NDArray[Any]] = {}
        for spec in specs:
            profile = config.profile_for(spec.name) if config is not None else None
            if profile is not None and len(profile.opt_shape) == spec.rank:
                shape = tuple(profile.opt_shape)
            else:
                shape = tuple(d if d is not None else dim_fallback for d in spec.shape)
            dtype = np.dtype(spec.dtype)
            if dtype.kind == "f":
                batch[spec.name] = rng.standard_normal(shape).astype(dtype)
            elif dtype.kind == "b":
                batch[spec.name] = np.ones(shape, dtype=dtype)
            else:
                batch[spec.name] = np.full(shape, _SANE_INT, dtype=dtype)
        batches.append(batch)
    return batches
