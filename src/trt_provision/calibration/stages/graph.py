"""Stage 4, graph: the Q/DQ or FP16 graph for the consumer, with pinned layers and excluded
op types; for int8 one graph per algorithm, the best chosen on validation (and a sensitivity
search when it fails the gate there). Never a graph labelled reduced precision in which
nothing was converted."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.calibration.accuracy import AccuracyReport, compare_models
from trt_provision.calibration.graph import PinnedNode, load_model, match_pinned_nodes, save_model
from trt_provision.calibration.ranges import TensorRanges
from trt_provision.calibration.stages.ranges import Ranges
from trt_provision.calibration.stages.search import (
    Candidate,
    best_of,
    remembered_sensitivity_search,
    sensitivity_key,
)
from trt_provision.calibration.stages.spec import PrecisionSpec
from trt_provision.errors import EngineBuildError

__all__ = ["NOT_JUDGED_NOTE", "Graph", "graph_for"]

NOT_JUDGED_NOTE = "ranges from a user calibration cache; not judged"
_MAX_LISTED_BLOCKED = 50  # metadata stays readable on big graphs


@dataclass(frozen=True)
class Graph:
    """The input of the ``verdict`` stage: the graph and its precision metadata."""

    ranges: Ranges
    path: Path
    metadata: Mapping[str, Any]  # everything but the accuracy record, which the verdict adds
    validation: AccuracyReport | None = None  # measured where the graph was chosen
    metric: tuple[str, Any] | None = None  # (script name, function), loaded once


def graph_for(ranges: Ranges) -> Graph:
    spec = ranges.evidence.spec
    if not spec.precision.needs_calibration:
        return _fp16(ranges)
    if ranges.user is not None:
        return _int8_from_user_cache(ranges)
    return _int8(ranges)


def _metric(spec: PrecisionSpec) -> tuple[str, Any] | None:
    if spec.metric is None:
        return None
    from trt_provision.calibration.metric import load_metric

    return Path(spec.metric).name, load_metric(spec.metric, model=spec.name)


def _pinned(spec: PrecisionSpec, preprocessed: Path) -> Sequence[PinnedNode]:
    loaded = load_model(preprocessed)
    return match_pinned_nodes(loaded, spec.pinned_keywords, spec.excluded_op_types)


def _pinned_evidence(
    pinned: Sequence[PinnedNode], applied: Mapping[str, str], default: str = "fp32"
) -> list[dict[str, str]]:
    return [{**p.to_dict(), "precision": applied.get(p.node, default)} for p in pinned]


def _check_quantized(qdq: Any, spec: PrecisionSpec) -> None:
    """Never publish a graph labelled int8 in which nothing was quantized."""
    if qdq.quantized_ops == 0:
        where = (" (its compute is inside If/Loop/Scan subgraphs, which the Q/DQ quantizer "
                 "does not enter)" if qdq.subgraph_nodes else "")
        raise EngineBuildError(
            f"nothing to quantize: no node of the model was quantized for "
            f"{spec.precision.value}{where}; build it as fp16 or fp32",
            model=spec.name, subgraph_nodes=qdq.subgraph_nodes,
        )


def _quantization(qdq: Any) -> dict[str, Any]:
    return {"format": "qdq", **(qdq.options.to_metadata() if qdq.options is not None else {})}


def _int8(ranges: Ranges) -> Graph:
    from trt_provision.calibration.qdq import WEIGHTED_OPS, quantize_qdq, weighted_nodes

    evidence = ranges.evidence
    spec = evidence.spec
    splits = evidence.splits
    assert splits is not None and evidence.resolved is not None
    preprocessed = evidence.preprocessed
    governed = ranges.governed
    workdir = spec.workdir
    pinned = _pinned(spec, preprocessed)
    gate = spec.gate
    metric = _metric(spec)

    def build(label: str, ranges: TensorRanges, keep: Sequence[str] = ()) -> Candidate:
        out = workdir / f"{spec.model.stem}.{spec.precision.value}.{label}.onnx"
        sensitive = [PinnedNode(n, "", "sensitivity") for n in keep]
        result = quantize_qdq(
            preprocessed, ranges, out,
            excluded=(*pinned, *sensitive) if spec.consumer == "tensorrt" else pinned,
            pinned_fp16=spec.pinned_fp16, workdir=workdir / f"qdq-{label}",
            consumer=spec.consumer, keep_float=() if spec.consumer == "tensorrt" else keep,
        )
        report = compare_models(spec.model, out, splits.validation, data="validation",
                                model=spec.name, metric=metric, gate=gate)
        return Candidate(label, result, out, report, gate is None or gate.passes(report))

    candidates = [build(algo, g.ranges) for algo, g in governed.items()]
    scores = {c.label: {"validation": c.validation.to_dict(), "passes_gate": c.passes,
                        **({"note": governed[c.label].note} if governed[c.label].note else {})}
              for c in candidates}
    best = best_of(candidates)
    chosen_algorithm = best.label
    sensitivity: dict[str, Any] = {}
    if gate is not None and not best.passes and splits.judged:
        best, sensitivity = _search(spec, evidence, governed[chosen_algorithm], best, build, [
            n for n in weighted_nodes(preprocessed) if n not in {p.node for p in pinned}])
    qdq = best.qdq
    _check_quantized(qdq, spec)
    chosen = governed[chosen_algorithm]
    requested = spec.calibration.algorithm if spec.calibration is not None else "minmax"
    metadata: dict[str, Any] = {
        "precision": spec.precision.value,
        "calibration_key": evidence.resolved.key,
        "dataset_version": evidence.resolved.dataset_version,
        "calibration_cache": str(chosen.cache_path),
        "calibration_cache_reused": chosen.reused,
        "calibration": {
            **chosen.to_metadata(),
            "requested_algorithm": requested,
            "chosen_algorithm": chosen_algorithm,
            "chosen_on": "validation",
            "algorithms": scores,
            "caches": {a: g.to_metadata() for a, g in governed.items()},
        },
        "quantization": {**_quantization(qdq),
                         "weighted_only": bool(qdq.options is not None
                                               and qdq.options.op_types == WEIGHTED_OPS),
                         "dequantize_nodes": qdq.quantized_nodes,
                         "quantized_nodes": qdq.quantized_ops,
                         "quantized_in_subgraphs": qdq.quantized_in_subgraphs,
                         "unquantized_without_range": list(qdq.unranged),
                         "kept_float_for_accuracy": list(sensitivity.get("kept", [])),
                         "rewrites": dict(qdq.rewrites),
                         "sensitivity": sensitivity},
        "pinned_layers": _pinned_evidence(pinned, qdq.pinned_precision),
    }
    return Graph(ranges, best.path, metadata, best.validation, metric)


def _search(spec: PrecisionSpec, evidence: Any, chosen: Any, base: Candidate, build: Any,
            layers: Sequence[str]) -> tuple[Candidate, dict[str, Any]]:
    """The sensitivity search, remembered in the governed calibration cache."""
    from trt_provision.calibration.cache import cache_path_for

    assert spec.model_hash is not None and evidence.splits is not None
    judged_by: dict[str, Any] = {
        "gate": spec.gate.to_dict() if spec.gate is not None else None,
        "splits": evidence.splits.to_metadata(),
    }
    if spec.metric is not None:
        from trt_provision.identity import metric_file_sha256

        judged_by["metric_sha256"] = metric_file_sha256(spec.metric)
    cache_dir = spec.cache_dir or spec.workdir / "calibration"
    return remembered_sensitivity_search(
        base, chosen.ranges, build, layers, spec.consumer,
        cache_path=cache_path_for(cache_dir, spec.model.stem, spec.precision.value,
                                  model_hash=spec.model_hash,
                                  kind=f"{chosen.ranges.algorithm}-{spec.consumer}-sensitivity"),
        key=sensitivity_key(chosen.key, spec.consumer, layers, judged_by),
        dataset_version=chosen.dataset_version,
    )


def _int8_from_user_cache(ranges: Ranges) -> Graph:
    """The Q/DQ graph with the user cache's scales as its ranges (range = scale * 127,
    symmetric). Judged only when calibration data is given too."""
    from trt_provision.calibration.qdq import quantize_qdq
    from trt_provision.calibration.user_cache import known_ranges

    evidence = ranges.evidence
    spec = evidence.spec
    user = ranges.user
    assert user is not None and evidence.resolved is not None
    pinned = _pinned(spec, evidence.preprocessed)
    # TensorRT's own tensor names are dropped; a cache of another model fails here, at once.
    usable = known_ranges(user, load_model(evidence.preprocessed))
    out = spec.workdir / f"{spec.model.stem}.{spec.precision.value}.trt-cache.onnx"
    qdq = quantize_qdq(
        evidence.preprocessed, usable, out, excluded=pinned,
        pinned_fp16=spec.pinned_fp16, workdir=spec.workdir / "qdq-trt-cache",
        consumer=spec.consumer,
    )
    _check_quantized(qdq, spec)
    metadata: dict[str, Any] = {
        "precision": spec.precision.value,
        "calibration_key": evidence.resolved.key,
        "dataset_version": evidence.resolved.dataset_version,
        "calibration": {
            "source": "user TensorRT calibration cache",
            "trt_cache": str(user.path),
            "trt_cache_sha256": user.sha256,
            "algorithm": user.ranges.algorithm,
            "params": dict(user.ranges.params),
            "tensors": len(user.ranges.ranges),
            "note": NOT_JUDGED_NOTE if not spec.has_data else
            "ranges from a user calibration cache; judged on the calibration data",
        },
        "quantization": {**_quantization(qdq),
                         "dequantize_nodes": qdq.quantized_nodes,
                         "quantized_nodes": qdq.quantized_ops,
                         "quantized_in_subgraphs": qdq.quantized_in_subgraphs,
                         "unquantized_without_range": list(qdq.unranged)},
        "pinned_layers": _pinned_evidence(pinned, qdq.pinned_precision),
    }
    return Graph(ranges, out, metadata, metric=_metric(spec) if spec.has_data else None)


def _fp16(ranges: Ranges) -> Graph:
    from trt_provision.calibration.fp16 import convert_to_fp16

    evidence = ranges.evidence
    spec = evidence.spec
    model = load_model(evidence.preprocessed)
    pinned = match_pinned_nodes(model, spec.pinned_keywords, spec.excluded_op_types)
    # fp16: pinned layers are FP16 like the rest (they are pinned *to* FP16 in int8/mixed);
    # only excluded op types stay FP32.
    block = {p.node: f"excluded ({p.keyword})" for p in pinned if p.keyword.startswith("op:")}
    model, conversion = convert_to_fp16(model, block_nodes=block,
                                        activation_extremes=ranges.extremes)
    if not conversion.converted:
        # Truth in labels, as for int8's "nothing to quantize": every node kept FP32 (values
        # beyond the FP16 range, excluded ops) is the FP32 model under an fp16 label.
        reasons = sorted({b.reason for b in conversion.blocked})[:3]
        raise EngineBuildError(
            "nothing to convert: no node of the model was converted to fp16 ("
            + ("; ".join(reasons) or "no float compute") + "); build it as fp32",
            model=spec.name, kept_fp32=len(conversion.blocked))
    out = save_model(model, spec.workdir / f"{spec.model.stem}.fp16.onnx")
    applied = {p.node: ("fp16" if p.node in conversion.converted
                        else f"fp32 ({conversion.reason_for(p.node) or 'kept'})")
               for p in pinned}
    metadata: dict[str, Any] = {
        "precision": "fp16",
        "fp16": {
            "converted_nodes": len(conversion.converted),
            "kept_fp32": [b.to_dict() for b in conversion.blocked[:_MAX_LISTED_BLOCKED]],
            "kept_fp32_total": len(conversion.blocked),
            "casts_inserted": conversion.casts_inserted,
            "preprocess": evidence.preprocess_steps,
        },
        "pinned_layers": _pinned_evidence(pinned, applied),
    }
    return Graph(ranges, out, metadata, metric=_metric(spec) if evidence.splits else None)
