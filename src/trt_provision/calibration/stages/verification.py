"""Stage 6, verification: the BUILT engine, run on its own runtime, judged against the FP32
source model before it is published.

The graph was judged before the build (``verdict``); the engine a runtime made of it can
still differ (FP16 kernels that overflow, a tactic with a bug, a layer fused differently).
This stage takes the verdict's DTO - its judging split (test) and gate - and a callable that
runs the staged engine, and judges with the same per-sample metrics and Wilson-bounded gate
(:func:`trt_provision.calibration.verify_engine.engine_verdict_from_outputs`):

* every output is checked for NaN / Inf where the FP32 reference is finite, with data or
  without: one is a refusal naming the output and the count;
* with data and a gate, the gate's failures (not enough evidence included) refuse, unless
  inaccurate engines are allowed, in which case the failure is recorded;
* without data, synthetic inputs at the profiles' opt shapes: a smoke check;
* an fp32 engine is the model's own arithmetic, reordered: every output must match the
  model almost exactly (cosine >= ``FP32_MIN_COSINE``), on data or synthetic inputs; an fp16
  engine without a gate must not be broken (cosine >= ``FP16_UNGATED_MIN_COSINE``).

Where no verdict was made (fp32; TensorRT's own calibrator on the weakly typed path) the
stage starts from the spec: the data's held-out split when there is data, else synthetic.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.calibration.accuracy import AccuracyGate
from trt_provision.calibration.data import Batch
from trt_provision.calibration.stages.spec import PrecisionSpec, resolve_spec
from trt_provision.calibration.stages.splits import split_data
from trt_provision.calibration.stages.verdict import Verdict
from trt_provision.calibration.verify_engine import EngineVerdict, engine_verdict_from_outputs
from trt_provision.errors import EngineBuildError
from trt_provision.types import BuildConfig, PrecisionMode, PreparedGraph

__all__ = [
    "FP16_UNGATED_MIN_COSINE",
    "FP32_MIN_COSINE",
    "EngineCheck",
    "GovernedEngineVerifier",
    "check_of_spec",
    "check_of_verdict",
    "record_of",
    "verify_engine",
]

logger = logging.getLogger(__name__)

# An fp32 engine computes what the model computes, in another order (and TF32 where it is
# allowed): far above this on any real output; a wrong kernel or a broken fusion is far below.
FP32_MIN_COSINE = 0.9999
# FP16 arithmetic on the same inputs stays far above this on real models; a wrong kernel,
# garbage bytes or a swapped output land far below.
FP16_UNGATED_MIN_COSINE = 0.9

EngineRunner = Callable[[Mapping[str, Any]], Mapping[str, Any]]


def floor_of(check: EngineCheck) -> float | None:
    """The cosine every output must reach besides the gate: fp32 near-exact; an fp16 engine
    without a gate (synthetic inputs, or data too small to judge) must at least not be
    broken - a smoke check, not an accuracy figure."""
    if check.spec.precision is PrecisionMode.FP32:
        return FP32_MIN_COSINE
    if check.spec.precision is PrecisionMode.FP16 and check.gate is None:
        return FP16_UNGATED_MIN_COSINE
    return None


@dataclass(frozen=True)
class EngineCheck:
    """What the engine is judged on: the input of the verification stage."""

    spec: PrecisionSpec
    batches: tuple[Batch, ...] | None  # the judging split; None: synthetic opt-shape inputs
    gate: AccuracyGate | None  # None: NaN / Inf (and fp32 exactness) only


def check_of_verdict(verdict: Verdict) -> EngineCheck:
    """The engine is judged where the graph was confirmed: the test split, the same gate
    (none where the graph was not judged: too little data, or a user cache alone)."""
    evidence = verdict.graph.ranges.evidence
    splits = evidence.splits
    if splits is None:
        return EngineCheck(evidence.spec, None, None)
    gate = evidence.spec.gate if splits.judged else None
    return EngineCheck(evidence.spec, tuple(splits.test), gate)


def check_of_spec(spec: PrecisionSpec) -> EngineCheck:
    """Without a verdict: the held-out split of the data (read here), else synthetic."""
    if not spec.has_data:
        return EngineCheck(spec, None, None)
    splits = split_data(spec, judge=False).splits
    if splits is None or not splits.test:
        return EngineCheck(spec, None, None)
    return EngineCheck(spec, tuple(splits.test), spec.gate if splits.judged else None)


def verify_engine(check: EngineCheck, run_engine: EngineRunner, *, runtime: str) -> EngineVerdict:
    """The verdict on the engine behind ``run_engine``; AccuracyGateError when refused
    (a gate failure under ``allow_inaccurate`` is recorded, NaN / Inf never is)."""
    import numpy as np

    spec = check.spec

    def run(feed: Mapping[str, Any]) -> Mapping[str, Any]:
        # Plain arrays: the data may be memory-mapped, and a runtime takes ndarrays only.
        return run_engine({name: np.asarray(value) for name, value in feed.items()})

    verdict = engine_verdict_from_outputs(
        run, spec.model, runtime=runtime, batches=check.batches, gate=check.gate,
        config=spec.readers, data="test", model=spec.name,
    )
    floor = floor_of(check)
    if floor is not None:
        far = [f"output {o.name!r}: cosine {o.cosine:.6f} < {floor} against the fp32 model "
               "it was built from" for o in verdict.report.outputs
               if o.elements and not o.cosine >= floor]
        if far:
            reason = "; ".join(r for r in (verdict.reason, *far) if r)
            verdict = dataclasses.replace(verdict, verdict="refused", reason=reason)
    if verdict.refused and spec.allow_inaccurate and not verdict.nonfinite:
        logger.warning(
            "%s: engine published although it fails the accuracy gate: %s", spec.name,
            verdict.reason, extra={"event": "engine.verify.inaccurate", "model": spec.name})
        return verdict
    verdict.raise_if_refused(model=spec.name)
    return verdict


def record_of(verdict: EngineVerdict, check: EngineCheck) -> dict[str, Any]:
    """The sidecar's ``accuracy.engine`` record."""
    record = verdict.to_dict()
    if verdict.refused:  # only reached under allow_inaccurate
        record["verdict"] = "failed (allow_inaccurate)"
        record["warning"] = "published although it fails the accuracy gate: " + verdict.reason
    floor = floor_of(check)
    if floor is not None:
        record["min_cosine"] = floor
    evidence = record.get("evidence")
    if isinstance(evidence, Mapping):
        for key in ("bound", "threshold"):
            if key in evidence:
                record[key] = evidence[key]
    return record


class GovernedEngineVerifier:
    """:class:`~trt_provision.seams.EngineVerifier`: the verification stage behind the
    compiler's check of every built engine (governed calibration caches in ``cache_dir``)."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def verify(
        self, model_path: Path, build_config: BuildConfig, prepared: PreparedGraph | None,
        run_engine: EngineRunner, *, runtime: str, workdir: Path,
        model_hash: str | None = None,
    ) -> Mapping[str, Any]:
        verdict = prepared.evidence if prepared is not None else None
        if isinstance(verdict, Verdict):
            check = check_of_verdict(verdict)
        else:
            check = check_of_spec(resolve_spec(
                model_path, build_config, workdir, consumer="onnxruntime-cpu",
                cache_dir=self.cache_dir, model_hash=model_hash))
        try:
            return record_of(verify_engine(check, run_engine, runtime=runtime), check)
        except EngineBuildError as exc:
            # Synthetic inputs are a guess (an int input may be a sample rate, an id, a
            # length): when the fp32 source model itself cannot run them, there is nothing
            # to compare with. An fp32 engine is its source graph: published, said plainly.
            unrunnable = (check.batches is None and build_config.precision is PrecisionMode.FP32
                          and exc.message.startswith("the reference model failed"))
            if not unrunnable:
                raise
            note = ("not verified: the model does not run on synthetic inputs "
                    f"({exc.message.split(': ', 1)[-1][:200]}); give calibration data to "
                    "check the engine on real inputs")
            logger.warning("%s: engine %s", check.spec.name, note,
                           extra={"event": "engine.verify.unrunnable", "model": check.spec.name})
            return {"runtime": runtime, "inputs": "synthetic", "samples": 0,
                    "verdict": "not verified", "note": note}
