"""Stage 5, verdict: the gate on the judging split (validation, where the graph was chosen),
confirmed on the untouched test split; a failure is a refusal (AccuracyGateError) unless
inaccurate engines are allowed. Without data: a smoke check on synthetic inputs, or "not
judged" for a user calibration cache alone."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.calibration.accuracy import AccuracyReport, compare_models
from trt_provision.calibration.splits import DataSplits
from trt_provision.calibration.stages.graph import NOT_JUDGED_NOTE, Graph
from trt_provision.calibration.stages.spec import PrecisionSpec
from trt_provision.errors import AccuracyGateError

__all__ = ["Verdict", "verdict_on"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Verdict:
    """The prepared graph: what the strategy builds from, and what its sidecar records."""

    graph: Graph
    accuracy: Mapping[str, Any]

    @property
    def model_path(self) -> Path:
        return self.graph.path

    @property
    def metadata(self) -> dict[str, Any]:
        return {**self.graph.metadata, "accuracy": dict(self.accuracy)}


def verdict_on(graph: Graph) -> Verdict:
    evidence = graph.ranges.evidence
    spec = evidence.spec
    splits = evidence.splits
    if splits is None:
        if graph.ranges.user is not None:
            logger.warning(
                "%s: %s", spec.name, NOT_JUDGED_NOTE,
                extra={"event": "calibration.user_cache.not_judged", "model": spec.name},
            )
            return Verdict(graph, {"verdict": "not judged", "warning": NOT_JUDGED_NOTE})
        report = compare_models(spec.model, graph.path, evidence.synthetic, data="synthetic",
                                model=spec.name)
        return Verdict(graph, {**report.to_dict(), "verdict": "smoke only", "gate": None})
    validation = graph.validation
    if validation is None:
        validation = compare_models(spec.model, graph.path, splits.validation,
                                    data="validation", model=spec.name, metric=graph.metric,
                                    gate=spec.gate)
    # With the gate, outputs are judged by the kinds the manifest names and the report
    # records the evidence (samples, bound, threshold) the verdict rests on.
    test = compare_models(spec.model, graph.path, splits.test, data="test", model=spec.name,
                          metric=graph.metric, gate=spec.gate)
    return Verdict(graph, judge(spec, validation, test, splits))


def judge(
    spec: PrecisionSpec, validation: AccuracyReport, test: AccuracyReport,
    splits: DataSplits | None,
) -> dict[str, Any]:
    """The verdict on the chosen graph: passes on validation (where it was chosen) and on
    the untouched test split, or a refusal (AccuracyGateError) unless inaccurate engines are
    allowed, in which case the failure is recorded as a warning."""
    gate = spec.gate
    model = spec.name
    judged = splits is None or splits.judged
    failures = [] if gate is None else [
        *(f"validation: {f}" for f in gate.failures(validation)),
        *(f"test: {f}" for f in gate.failures(test)),
    ]
    record: dict[str, Any] = {
        **test.to_dict(),
        "validation": validation.to_dict(),
        "test": test.to_dict(),
        "gate": gate.to_dict() if gate is not None else None,
    }
    if splits is not None:
        record["splits"] = splits.to_metadata()
    if gate is None:
        record["verdict"] = "not gated"
        return record
    if not judged:
        record["verdict"] = "not judged"
        record["warning"] = splits.note if splits is not None else "not judged"
        return record
    if not failures:
        record["verdict"] = "passed"
        return record
    if not spec.allow_inaccurate:
        failing = gate.failing_outputs(validation) or gate.failing_outputs(test)
        judged_on = test if gate.failures(test) else validation
        evidence = gate.evidence(judged_on)
        raise AccuracyGateError(
            f"{spec.precision.value} graph refused by the accuracy gate: "
            + "; ".join(failures),
            model=model, **({"output": failing[0]} if failing else {}), gate=gate.to_dict(),
            cosine=test.worst_cosine, top1_agreement=test.worst_top1,
            **{k: evidence[k] for k in ("samples", "bound", "threshold", "required_samples")
               if k in evidence},
        )
    record["verdict"] = "failed (allow_inaccurate)"
    record["warning"] = "published although it fails the accuracy gate: " + "; ".join(failures)
    logger.warning(
        "%s: %s", model, record["warning"],
        extra={"event": "calibration.accuracy.inaccurate", "model": model},
    )
    return record
