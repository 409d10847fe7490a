"""EngineVerdictFromOutputs: judge a BUILT engine on its own runtime against the FP32 model.

The graph a build parses was judged before the build; the engine the runtime made of it can
still differ (FP16 kernels that overflow, a tactic with a bug, a layer fused differently). This
stage runs the engine (any callable ``inputs -> {output: array}``) and the source ONNX model
on ONNX Runtime's CPU provider in FP32 on the same batches, and judges with the same
per-sample metrics and Wilson-bounded gate as the graph (``accuracy.py``):

* every engine output is checked for NaN / Inf where the FP32 reference is finite - any is a
  refusal naming the output and the count (FP16 overflow is the classic case), with or
  without a gate, on data or on synthetic inputs;
* with judging batches and a gate: the gate's failures (including "not enough evidence")
  refuse;
* without batches: synthetic inputs at the profiles' opt shapes, a smoke check recorded as
  such (``inputs = "synthetic"``, verdict ``smoke only``), never an accuracy figure.

The result is a frozen :class:`EngineVerdict`; ``to_dict()`` is what the sidecar records.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision.calibration.accuracy import (
    AccuracyGate,
    AccuracyReport,
    compare_outputs,
    synthetic_batches,
)
from trt_provision.calibration.data import Batch, model_input_specs
from trt_provision.errors import AccuracyGateError, EngineBuildError

if TYPE_CHECKING:
    from trt_provision.types import BuildConfig

__all__ = ["EngineRunner", "EngineVerdict", "engine_verdict_from_outputs"]

logger = logging.getLogger(__name__)

EngineRunner = Callable[[Mapping[str, Any]], Mapping[str, Any]]

PASSED, REFUSED, SMOKE_ONLY, NOT_GATED = "passed", "refused", "smoke only", "not gated"


@dataclass(frozen=True)
class EngineVerdict:
    """The verdict on one engine: what ran, on what, how many samples, per-output metrics."""

    runtime: str  # the engine's runtime label, e.g. "tensorrt 10.3.0"
    inputs: str  # "data" | "synthetic"
    samples: int
    batches: int
    verdict: str  # passed | refused | smoke only | not gated
    reason: str
    report: AccuracyReport
    nonfinite: tuple[tuple[str, int], ...] = ()  # (output, NaN/Inf count where ref finite)
    gate: AccuracyGate | None = None

    def __post_init__(self) -> None:
        if self.inputs not in ("data", "synthetic"):
            raise ValueError(f"inputs must be 'data' or 'synthetic', got {self.inputs!r}")
        if self.verdict not in (PASSED, REFUSED, SMOKE_ONLY, NOT_GATED):
            raise ValueError(f"unknown verdict {self.verdict!r}")

    @property
    def refused(self) -> bool:
        return self.verdict == REFUSED

    def to_dict(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "stage": "engine",
            "runtime": self.runtime,
            "reference": "onnxruntime cpu fp32",
            "inputs": self.inputs,
            "samples": self.samples,
            "batches": self.batches,
            "verdict": self.verdict,
            "outputs": {o.name: o.to_dict() for o in self.report.outputs},
            "gate": self.gate.to_dict() if self.gate is not None else None,
        }
        if self.reason:
            out["reason"] = self.reason
        if self.nonfinite:
            out["nonfinite"] = dict(self.nonfinite)
        if self.inputs == "synthetic":
            out["note"] = "smoke, not an accuracy figure (synthetic inputs)"
        if self.gate is not None and self.inputs == "data":
            out["evidence"] = self.gate.evidence(self.report)
        return out

    def raise_if_refused(self, *, model: str = "") -> None:
        """AccuracyGateError (outcome ``refused``) carrying the verdict, when refused."""
        if not self.refused:
            return
        evidence = self.to_dict().get("evidence", {})
        raise AccuracyGateError(
            f"engine refused on {self.runtime}: {self.reason}", model=model,
            runtime=self.runtime, inputs=self.inputs, samples=self.samples,
            **{k: evidence[k] for k in ("bound", "threshold", "required_samples")
               if k in evidence},
        )


class _NonFiniteWatch:
    """Runs the reference then the engine on each batch (``compare_outputs`` calls them in
    that order) and counts engine NaN / Inf where the reference is finite."""

    def __init__(self, reference: Any, names: Sequence[str], engine: EngineRunner) -> None:
        self._session = reference
        self._names = list(names)
        self._engine = engine
        self._last: Mapping[str, Any] = {}
        self.counts: dict[str, int] = {}

    def run_reference(self, feed: Mapping[str, Any]) -> Mapping[str, Any]:
        self._last = dict(zip(self._names, self._session.run(self._names, dict(feed)),
                              strict=True))
        return self._last

    def run_engine(self, feed: Mapping[str, Any]) -> Mapping[str, Any]:
        import numpy as np

        out = self._engine(feed)
        for name in self._names:
            if name not in out or name not in self._last:
                continue
            cand, ref = np.asarray(out[name]), np.asarray(self._last[name])
            if cand.dtype.kind not in "fc" or cand.shape != ref.shape:
                continue
            bad = int(np.count_nonzero(~np.isfinite(cand) & np.isfinite(ref)))
            if bad:
                self.counts[name] = self.counts.get(name, 0) + bad
        return out


def _reference_session(model_path: Path) -> Any:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    try:
        return ort.InferenceSession(str(model_path), options,
                                    providers=["CPUExecutionProvider"])
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
        raise EngineBuildError(
            f"cannot load the reference model for engine verification: "
            f"{type(exc).__name__}: {exc}", model=str(model_path)) from exc


def engine_verdict_from_outputs(
    run_engine: EngineRunner,
    model_path: Path,
    *,
    runtime: str,
    batches: Iterable[Batch] | None,
    gate: AccuracyGate | None,
    config: BuildConfig | None = None,
    kinds: Iterable[tuple[str, str]] | None = None,
    data: str = "test",
    model: str = "",
) -> EngineVerdict:
    """Judge the engine behind ``run_engine`` against ``model_path`` run in FP32 on the CPU.

    ``batches``: the judging split (the same the graph was confirmed on); None runs a smoke
    check on synthetic inputs shaped by ``config``'s profiles. ``gate`` None judges nothing
    but NaN / Inf. ``kinds`` names outputs' kinds (default: the gate's). Failures of either
    runtime are an EngineBuildError naming it.
    """
    model_path = Path(model_path)
    session = _reference_session(model_path)
    names = [o.name for o in session.get_outputs()]
    synthetic = batches is None
    feeds: Iterable[Batch] = (
        synthetic_batches(model_input_specs(model_path), config) if batches is None
        else batches)
    watch = _NonFiniteWatch(session, names, run_engine)
    if kinds is None:
        kinds = gate.output_kinds if gate is not None else ()
    logger.info("verifying the %s engine on %s inputs", runtime,
                "synthetic" if synthetic else data,
                extra={"event": "engine.verify.start", "model": model or str(model_path),
                       "runtime": runtime})
    report = compare_outputs(
        model_path, names, feeds, watch.run_reference, watch.run_engine,
        data="synthetic" if synthetic else data, model=model or str(model_path),
        kinds=kinds, gate=None if synthetic else gate, candidate_label=f"{runtime} engine")
    nonfinite = tuple(sorted(watch.counts.items()))
    reasons: list[str] = [
        f"output {name!r}: {count} NaN/Inf values where the FP32 reference is finite "
        "(an FP16 overflow?)" for name, count in nonfinite]
    if synthetic:
        verdict = REFUSED if reasons else SMOKE_ONLY
    elif gate is None:
        verdict = REFUSED if reasons else NOT_GATED
    else:
        reasons += gate.failures(report)
        verdict = REFUSED if reasons else PASSED
    result = EngineVerdict(
        runtime=runtime, inputs="synthetic" if synthetic else "data", samples=report.samples,
        batches=report.batches, verdict=verdict, reason="; ".join(reasons), report=report,
        nonfinite=nonfinite, gate=gate)
    evidence = gate.summary(report) if gate is not None and not synthetic else (
        f"n={report.samples}")
    logger.info("engine verdict on %s: %s (%s)", runtime, verdict, evidence,
                extra={"event": "engine.verify.finish", "model": model or str(model_path),
                       "runtime": runtime, "verdict": verdict, "samples": report.samples})
    return result
