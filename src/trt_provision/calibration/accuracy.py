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

A comparison over zero elements is an error, never a perfect score. The gate
(:class:`AccuracyGate`) is on by default for int8/mixed and for fp16 measured on real data;
its defaults and the evidence behind them are in ``_docs/calibration.md``.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision.calibration.data import Batch, InputSpec
from trt_provision.errors import AccuracyGateError, EngineBuildError

if TYPE_CHECKING:
    import numpy.typing as npt

    from trt_provision.types import BuildConfig

__all__ = [
    "DEFAULT_GATES",
    "AccuracyGate",
    "AccuracyReport",
    "MetricResult",
    "OutputAccuracy",
    "accuracy_gate",
    "check_accuracy_gate",
    "classification_outputs",
    "compare_models",
    "synthetic_batches",
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
        return out


def _round(value: float) -> float | str:
    return round(value, 8) if math.isfinite(value) else str(value)


@dataclass(frozen=True)
class MetricResult:
    """What a user's task metric returned for one split."""

    name: str
    score: float
    passed: bool

    def to_dict(self) -> dict[str, Any]:
        return {"metric": self.name, "score": _round(self.score), "passed": self.passed}


@dataclass(frozen=True)
class AccuracyReport:
    outputs: tuple[OutputAccuracy, ...]
    batches: int
    data: str  # "validation" | "test" | "evaluation" | "calibration" | "synthetic" ...
    metric: MetricResult | None = None

    @property
    def worst_cosine(self) -> float:
        return min((min(o.cosine, 1.0 if o.centered_cosine is None else o.centered_cosine)
                    for o in self.outputs if o.elements), default=1.0)

    @property
    def worst_top1(self) -> float | None:
        values = [v for o in self.outputs for v in (o.top1_agreement, o.exact_agreement)
                  if v is not None]
        return min(values) if values else None

    def score(self) -> tuple[float, float, float]:
        """Sort key, higher is better: metric score, top-1 agreement, cosine."""
        top1 = self.worst_top1
        metric = self.metric.score if self.metric is not None else 0.0
        return (metric, 1.0 if top1 is None else top1, self.worst_cosine)

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "batches": self.batches,
            "data": self.data,
            "outputs": {o.name: o.to_dict() for o in self.outputs},
        }
        if self.data == "synthetic":
            out["note"] = "smoke, not an accuracy figure (synthetic inputs)"
        if self.metric is not None:
            out["task_metric"] = self.metric.to_dict()
        return out


# The centered-cosine bar for classification-like outputs whose top-1 agreement is gated.
CLASSIFIER_MIN_CENTERED_COSINE = 0.95


@dataclass(frozen=True)
class AccuracyGate:
    """Thresholds a converted graph must meet on every output (None: not checked)."""

    min_cosine: float | None = None
    max_rel_error: float | None = None
    min_top1_agreement: float | None = None
    origin: str = "configured"  # "configured" | "default for <precision>"

    def _centered_bar(self, out: OutputAccuracy) -> float:
        # Logits of a classifier carry a shared offset by construction, and their task measure
        # is top-1 agreement (judged separately): the centered cosine there only has to rule out
        # noise (CLASSIFIER_MIN_CENTERED_COSINE). Any other output is held to min_cosine.
        assert self.min_cosine is not None
        if out.top1_agreement is not None and self.min_top1_agreement is not None:
            return min(self.min_cosine, CLASSIFIER_MIN_CENTERED_COSINE)
        return self.min_cosine

    def failures(self, report: AccuracyReport) -> list[str]:
        found: list[str] = []
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
        return {"min_cosine": self.min_cosine, "max_rel_error": self.max_rel_error,
                "min_top1_agreement": self.min_top1_agreement, "origin": self.origin}


def accuracy_gate(config: BuildConfig, *, measured_on_data: bool = True) -> AccuracyGate | None:
    """The gate of ``config``: configured thresholds, else the precision's defaults.

    fp16 measured on synthetic inputs gets no default gate (a smoke check only); fp32 none.
    """
    configured = (config.min_cosine, config.max_rel_error, config.min_top1_agreement)
    precision = config.precision.value
    defaults = DEFAULT_GATES.get(precision) if measured_on_data else None
    if all(v is None for v in configured):
        if defaults is None:
            return None
        return AccuracyGate(min_cosine=defaults[0], min_top1_agreement=defaults[1],
                            origin=f"default for {precision}")
    min_top1 = config.min_top1_agreement
    if min_top1 is None and defaults is not None:
        min_top1 = defaults[1]  # a configured cosine does not switch the label check off
    return AccuracyGate(min_cosine=config.min_cosine, max_rel_error=config.max_rel_error,
                        min_top1_agreement=min_top1)


class _Accumulator:
    def __init__(self, classification: bool) -> None:
        self.max_abs = 0.0
        self.ref_max = 0.0
        self.dot = 0.0
        self.ref_sq = 0.0
        self.cand_sq = 0.0
        self.elements = 0
        self.nonfinite = False
        self.classification = classification
        self.rows = 0
        self.agree = 0
        self.ref_sum = 0.0
        self.cand_sum = 0.0
        self.integer = False
        self.equal = 0

    def add(self, ref: npt.NDArray[Any], cand: npt.NDArray[Any]) -> None:
        import numpy as np

        ref_arr, cand_arr = np.asarray(ref), np.asarray(cand)
        r = ref_arr.astype(np.float64).reshape(-1)
        c = cand_arr.astype(np.float64).reshape(-1)
        if ref_arr.shape != cand_arr.shape:
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
            self.ref_sum += float(r.sum())
            self.cand_sum += float(c.sum())
        if ref_arr.dtype.kind in "biu":
            self.integer = True
            self.equal += int(np.sum(ref_arr == cand_arr))
        self.elements += r.size
        if self.classification and ref_arr.ndim >= 1 and ref_arr.size:
            classes = ref_arr.shape[-1]
            ref_rows = ref_arr.reshape(-1, classes)
            cand_rows = cand_arr.reshape(-1, classes)
            self.rows += ref_rows.shape[0]
            # A row agrees when the candidate's class is the reference's, or is tied with it
            # in the reference (within TIE_FRACTION of the row's range): among near-equal
            # scores no precision, not even FP32 on another kernel, keeps the order.
            ref64 = ref_rows.astype(np.float64)
            picked = np.take_along_axis(
                ref64, np.argmax(cand_rows, axis=1)[:, None], axis=1)[:, 0]
            span = ref64.max(axis=1) - ref64.min(axis=1)
            self.agree += int(np.sum(picked >= ref64.max(axis=1) - TIE_FRACTION * span))

    def result(self, name: str) -> OutputAccuracy:
        top1 = (self.agree / self.rows) if self.classification and self.rows else None
        if self.nonfinite:
            return OutputAccuracy(name, math.inf, math.inf, -1.0, self.elements,
                                  0.0 if self.classification else None, self.rows)
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
                              self.elements, top1, self.rows, self._centered(), exact)

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


def classification_outputs(model_path: Path) -> frozenset[str]:
    """Outputs whose last axis is a small class axis: produced by Softmax/LogSoftmax, or a
    rank-2 float output (batch x classes) with 2..1000 classes (logits).

    Detection heads (rank 3, boxes and scores along the last axis) are not classification-like
    unless a softmax produces them.
    """
    import onnx

    model = onnx.load(str(model_path), load_external_data=False)
    producers = {o: n.op_type for n in model.graph.node for o in n.output}
    found: set[str] = set()
    for out in model.graph.output:
        tt = out.type.tensor_type
        if tt.elem_type not in (onnx.TensorProto.FLOAT, onnx.TensorProto.FLOAT16,
                                onnx.TensorProto.DOUBLE):
            continue
        dims = list(tt.shape.dim) if tt.HasField("shape") else []
        last = dims[-1].dim_value if dims and dims[-1].HasField("dim_value") else 0
        softmax = producers.get(out.name) in _CLASS_PRODUCERS and (last == 0 or last >= 2)
        if softmax or (len(dims) == 2 and 2 <= last <= _MAX_CLASSES):
            found.add(out.name)
    return frozenset(found)


Metric = Callable[[Sequence[Mapping[str, Any]], Sequence[Mapping[str, Any]],
                   Sequence[Mapping[str, Any]]], Any]


def compare_models(
    reference: Path, candidate: Path, batches: Iterable[Batch], *, data: str = "held-out",
    model: str = "", metric: tuple[str, Metric] | None = None,
) -> AccuracyReport:
    """Run both models on every batch and compare their outputs by name.

    ``metric`` (a name and a callable, see ``metric.py``) receives the reference outputs, the
    candidate outputs and the inputs, batch by batch. Inference failures are wrapped with the
    model's name; zero batches or zero compared elements are an error, never a score.
    """
    ref_sess, cand_sess = _session(reference), _session(candidate)
    names = [o.name for o in ref_sess.get_outputs()]
    cand_names = {o.name for o in cand_sess.get_outputs()}
    missing = [n for n in names if n not in cand_names]
    if missing:
        raise EngineBuildError("converted model lost an output", output=missing[0])
    classes = classification_outputs(reference)
    acc = {n: _Accumulator(n in classes) for n in names}
    count = 0
    refs: list[dict[str, Any]] = []
    cands: list[dict[str, Any]] = []
    feeds: list[dict[str, Any]] = []
    for batch in batches:
        feed = dict(batch)
        for label, sess in (("reference", ref_sess), ("converted", cand_sess)):
            try:
                out = sess.run(names, feed)
            except Exception as exc:  # ORT raises its own Fail / RuntimeException types
                raise EngineBuildError(
                    f"the {label} model failed on {data} batch {count}: "
                    f"{type(exc).__name__}: {exc}",
                    model=model or str(reference),
                ) from exc
            if label == "reference":
                ref_out = out
            else:
                cand_out = out
        for name, r, c in zip(names, ref_out, cand_out, strict=True):
            acc[name].add(r, c)
        if metric is not None:
            refs.append(dict(zip(names, ref_out, strict=True)))
            cands.append(dict(zip(names, cand_out, strict=True)))
            feeds.append(feed)
        count += 1
    outputs = tuple(acc[n].result(n) for n in names)
    if count == 0 or sum(o.elements for o in outputs) == 0:
        raise AccuracyGateError(
            f"the accuracy check on {data} data compared zero elements ({count} batches); "
            "an empty comparison proves nothing",
            model=model or str(reference), data=data, batches=count,
        )
    result = None
    if metric is not None:
        from trt_provision.calibration.metric import run_metric

        result = run_metric(metric[0], metric[1], refs, cands, feeds, model=model)
    report = AccuracyReport(outputs, count, data, result)
    logger.info(
        "accuracy check: worst cosine %.6f over %d %s batches",
        report.worst_cosine, count, data,
        extra={"event": "calibration.accuracy", "batches": count,
               "worst_cosine": report.worst_cosine, "top1": report.worst_top1, "data": data},
    )
    return report


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
        raise AccuracyGateError(
            f"fails the accuracy gate on {report.data} data: " + "; ".join(failures),
            model=model, data=report.data, gate=gate.to_dict(),
            cosine=report.worst_cosine, top1_agreement=report.worst_top1,
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
