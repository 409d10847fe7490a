"""Entry point the ONNX Runtime strategy calls to apply a precision to a model.

* ``fp32``  - the model as it is.
* ``fp16``  - an FP16 graph (IO types kept; sensitive ops, pinned layers and values beyond
  the FP16 range stay FP32).
* ``int8``  - a Q/DQ graph from governed calibration ranges; pinned layers and excluded op
  types are not quantized and stay FP32.
* ``mixed`` - as int8, with pinned layers in FP16 (FP32 where FP16 would overflow).

Every converted graph is compared with the FP32 model before it is returned; the numbers
go into the metadata and the optional accuracy gate (``min_cosine``, ``max_rel_error``)
refuses a graph that fails it.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_provision.calibration.accuracy import (
    AccuracyReport,
    check_accuracy_gate,
    compare_models,
    synthetic_batches,
)
from trt_provision.calibration.cache import (
    CacheHeader,
    GovernedCalibrationCache,
    cache_path_for,
)
from trt_provision.calibration.data import Batch, model_input_specs
from trt_provision.calibration.graph import (
    PinnedNode,
    load_model,
    match_pinned_nodes,
    preprocess_model,
    save_model,
)
from trt_provision.calibration.planner import (
    calibration_spec_of,
    open_dataset,
    resolve_calibration_key,
)
from trt_provision.calibration.qdq import CONSUMERS
from trt_provision.calibration.ranges import (
    TensorRanges,
    compute_activation_ranges,
    parse_trt_calibration_cache,
)
from trt_provision.types import BuildConfig, PrecisionMode

__all__ = ["GovernedRanges", "PreparedModel", "governed_ranges", "prepare_model_for_precision"]

logger = logging.getLogger(__name__)

PAYLOAD_RANGES = "ranges-json"
PAYLOAD_TRT_CACHE = "trt-calibration-cache"
_MAX_LISTED_BLOCKED = 50  # metadata stays readable on big graphs


@dataclass(frozen=True)
class PreparedModel:
    model_path: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GovernedRanges:
    """Activation ranges and where they came from (usable by every build path)."""

    ranges: TensorRanges
    key: str
    dataset_version: str
    cache_path: Path
    cache_status: str  # hit | legacy | miss | stale | incomplete
    reused: bool
    batches: int
    held_out: tuple[Batch, ...]
    preprocessed_path: Path

    def to_metadata(self) -> dict[str, Any]:
        return {
            "key": self.key,
            "dataset_version": self.dataset_version,
            "cache_path": str(self.cache_path),
            "cache_reused": self.reused,
            "cache_status": self.cache_status,
            "algorithm": self.ranges.algorithm,
            "params": dict(self.ranges.params),
            "tensors": len(self.ranges.ranges),
            "batches": self.batches,
            "held_out_batches": len(self.held_out),
        }


def _held_out_count(total: int) -> int:
    # With few batches every batch calibrates; the check then reuses them (reported so).
    return max(1, total // 5) if total >= 5 else 0


def governed_ranges(
    model_path: Path,
    config: BuildConfig,
    workdir: Path,
    *,
    calibration_cache_dir: Path | None,
    model_hash: str | None = None,
    base_dir: Path | None = None,
) -> GovernedRanges:
    """Reuse the governed calibration of this model, or calibrate and store it."""
    from trt_provision.identity import model_sha256

    spec = calibration_spec_of(config, str(model_path))
    workdir.mkdir(parents=True, exist_ok=True)
    preprocessed = workdir / "preprocessed.onnx"
    preprocess_model(model_path, preprocessed)
    dataset = open_dataset(model_path, config, base_dir=base_dir)
    model_hash = model_hash or model_sha256(model_path)
    resolved = resolve_calibration_key(config, model_hash, dataset=dataset)
    total = resolved.batches if resolved.batches is not None else len(dataset)
    n_held = _held_out_count(total)
    held_out = tuple(itertools.islice(dataset, total - n_held, total)) if n_held else ()
    cache_dir = calibration_cache_dir or workdir / "calibration"
    path = cache_path_for(cache_dir, model_path.stem, config.precision.value,
                          model_hash=model_hash)
    legacy_path = cache_path_for(cache_dir, model_path.stem, config.precision.value)
    if not spec.governed and not path.exists() and legacy_path.exists():
        # Ungoverned builds still find a cache under the older, hash-less file name.
        path = legacy_path
    cache = GovernedCalibrationCache(path, governed=spec.governed)
    with cache.lock():
        lookup = cache.load(resolved.key, resolved.dataset_version)
        ranges: TensorRanges | None = None
        if lookup.usable and lookup.payload is not None:
            kind = lookup.header.payload_kind if lookup.header else PAYLOAD_TRT_CACHE
            ranges = (
                TensorRanges.from_json(lookup.payload) if kind == PAYLOAD_RANGES
                else parse_trt_calibration_cache(lookup.payload)
            )
        if ranges is None:
            started = time.perf_counter()
            ranges = compute_activation_ranges(
                preprocessed, itertools.islice(dataset, total - n_held), spec,
                workdir / "ranges",
            )
            ranges = TensorRanges(
                ranges.algorithm, ranges.ranges,
                {**ranges.params, "seconds": round(time.perf_counter() - started, 3)},
            )
            cache.store(
                CacheHeader(
                    key=resolved.key, algorithm=spec.algorithm,
                    dataset_version=resolved.dataset_version, payload_kind=PAYLOAD_RANGES,
                ),
                ranges.to_json(),
            )
    return GovernedRanges(
        ranges=ranges,
        key=resolved.key,
        dataset_version=resolved.dataset_version,
        cache_path=cache.path,
        cache_status=lookup.status,
        reused=lookup.usable,
        batches=total,
        held_out=held_out,
        preprocessed_path=preprocessed,
    )


def prepare_model_for_precision(
    model_path: Path,
    config: BuildConfig,
    workdir: Path,
    *,
    calibration_cache_dir: Path | None,
    consumer: str = "onnxruntime-cpu",
    model_hash: str | None = None,
) -> PreparedModel:
    """Apply ``config.precision`` to ``model_path`` for ``consumer``.

    ``consumer`` picks the Q/DQ option set of int8/mixed graphs: "onnxruntime-cpu" (the
    ONNX Runtime strategy) or "tensorrt" (the strongly typed TensorRT path). ``model_hash``
    (the model's sha256) saves hashing the model again when the caller already has it.
    """
    if consumer not in CONSUMERS:
        raise ValueError(f"consumer must be one of {CONSUMERS}, got {consumer!r}")
    if config.precision is PrecisionMode.FP32:
        return PreparedModel(model_path=model_path)
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    logger.info(
        "preparing %s model", config.precision.value,
        extra={"event": "calibration.prepare.start", "model": str(model_path),
               "precision": config.precision.value},
    )
    if config.precision is PrecisionMode.FP16:
        prepared = _prepare_fp16(model_path, config, workdir)
    else:
        prepared = _prepare_int8(model_path, config, workdir, calibration_cache_dir,
                                 consumer=consumer, model_hash=model_hash)
    elapsed = time.perf_counter() - started
    logger.info(
        "prepared %s model in %.2f s", config.precision.value, elapsed,
        extra={"event": "calibration.prepare.finish", "model": str(model_path),
               "precision": config.precision.value, "seconds": round(elapsed, 3)},
    )
    return prepared


def _pinned_evidence(
    pinned: Sequence[PinnedNode], applied: Mapping[str, str]
) -> list[dict[str, str]]:
    return [{**p.to_dict(), "precision": applied.get(p.node, "fp32")} for p in pinned]


def _finish(
    model_path: Path, candidate: Path, config: BuildConfig, report: AccuracyReport,
    metadata: dict[str, Any],
) -> PreparedModel:
    metadata["accuracy"] = report.to_dict()
    check_accuracy_gate(report, config, model=str(model_path))
    return PreparedModel(model_path=candidate, metadata=metadata)


def _prepare_int8(
    model_path: Path, config: BuildConfig, workdir: Path, cache_dir: Path | None, *,
    consumer: str, model_hash: str | None,
) -> PreparedModel:
    from trt_provision.calibration.qdq import WEIGHTED_OPS, quantize_qdq, weighted_nodes

    governed = governed_ranges(model_path, config, workdir, calibration_cache_dir=cache_dir,
                               model_hash=model_hash)
    model = load_model(governed.preprocessed_path)
    pinned = match_pinned_nodes(model, config.fp16_pinned_keywords, config.excluded_op_types)
    del model
    out = workdir / f"{model_path.stem}.{config.precision.value}.onnx"
    if governed.held_out:
        eval_batches: Sequence[Batch] = governed.held_out
        data = "held-out"
    else:
        dataset = open_dataset(model_path, config)
        eval_batches = list(itertools.islice(dataset, 8))
        data = "calibration"

    def build(
        keep_float: Sequence[str], weighted_only: bool, float_ops: Sequence[str] = ()
    ) -> tuple[Any, AccuracyReport]:
        result = quantize_qdq(
            governed.preprocessed_path, governed.ranges, out,
            excluded=pinned, pinned_fp16=config.precision is PrecisionMode.MIXED,
            workdir=workdir / "qdq", consumer=consumer, keep_float=keep_float,
            weighted_only=weighted_only, float_op_types=float_ops,
        )
        return result, compare_models(model_path, out, eval_batches, data=data)

    qdq, report = build((), False)
    fallback: list[dict[str, Any]] = []
    if config.min_cosine is not None and report.worst_cosine < config.min_cosine:
        # Elementwise ops between weighted ones are where activation ranges hurt most:
        # first leave Add float (residual and feature-pyramid sums; the other elementwise
        # ops keep the data quantized), then quantize the weighted ops only. In each stage,
        # since the error compounds from the input side, leave the first 0, 1, 2, 4...
        # weighted layers float (up to half). The first graph that passes is kept.
        skip = {p.node for p in pinned}
        candidates = [n for n in weighted_nodes(governed.preprocessed_path) if n not in skip]
        steps = [0] + [1 << i for i in range(16) if (1 << i) <= len(candidates) // 2]
        stages: list[tuple[str, ...]] = []
        if "Add" in (qdq.options.op_types if qdq.options is not None else ()):
            stages.append(("Add",))
        stages.append(())  # () = weighted ops only
        plans = [(stage, count) for stage in stages for count in steps]
        for float_ops, count in plans:
            weighted_only = not float_ops
            fallback.append({"weighted_only": weighted_only, "float_op_types": list(float_ops),
                             "kept_float": count, "cosine_before": report.worst_cosine})
            qdq, report = build(candidates[:count], weighted_only, float_ops)
            logger.info(
                "accuracy fallback: %s float, %d input-side layers kept float, cosine %.5f",
                "non-weighted ops" if weighted_only else "/".join(float_ops), count,
                report.worst_cosine,
                extra={"event": "calibration.qdq.fallback", "kept_float": count,
                       "float_op_types": list(float_ops), "weighted_only": weighted_only,
                       "cosine": report.worst_cosine},
            )
            if report.worst_cosine >= config.min_cosine:
                break
    calibration = governed.to_metadata()
    options = qdq.options.to_metadata() if qdq.options is not None else {}
    metadata: dict[str, Any] = {
        "precision": config.precision.value,
        "calibration_key": governed.key,
        "dataset_version": governed.dataset_version,
        "calibration_cache": str(governed.cache_path),
        "calibration_cache_reused": governed.reused,
        "calibration": calibration,
        "quantization": {"format": "qdq", **options,
                         "weighted_only": bool(qdq.options is not None
                                               and qdq.options.op_types == WEIGHTED_OPS),
                         "dequantize_nodes": qdq.quantized_nodes,
                         "unquantized_without_range": list(qdq.unranged),
                         "float_op_types": [o for o in _all_ops(consumer)
                                            if qdq.options is None
                                            or o not in qdq.options.op_types],
                         "kept_float_for_accuracy": list(qdq.kept_float),
                         "rewrites": dict(qdq.rewrites),
                         "fallback_steps": fallback},
        "pinned_layers": _pinned_evidence(pinned, qdq.pinned_precision),
    }
    return _finish(model_path, out, config, report, metadata)


def _all_ops(consumer: str) -> tuple[str, ...]:
    from trt_provision.calibration.qdq import qdq_option_set

    return qdq_option_set(consumer).op_types


def _prepare_fp16(model_path: Path, config: BuildConfig, workdir: Path) -> PreparedModel:
    from trt_provision.calibration.fp16 import convert_to_fp16, observe_activation_extremes

    preprocessed = workdir / "preprocessed.onnx"
    steps = preprocess_model(model_path, preprocessed)
    spec = config.calibration
    if spec is not None and spec.source is not None:
        dataset = open_dataset(model_path, config)
        batches: list[Batch] = list(itertools.islice(dataset, 16))
        data = "calibration"
    else:
        batches = list(synthetic_batches(model_input_specs(model_path), config))
        data = "synthetic"
    extremes = observe_activation_extremes(preprocessed, batches)
    model = load_model(preprocessed)
    pinned = match_pinned_nodes(model, config.fp16_pinned_keywords, config.excluded_op_types)
    block = {p.node: f"pinned ({p.keyword})" for p in pinned}
    model, conversion = convert_to_fp16(model, block_nodes=block, activation_extremes=extremes)
    out = save_model(model, workdir / f"{model_path.stem}.fp16.onnx")
    report = compare_models(model_path, out, batches, data=data)
    metadata: dict[str, Any] = {
        "precision": "fp16",
        "fp16": {
            "converted_nodes": len(conversion.converted),
            "kept_fp32": [b.to_dict() for b in conversion.blocked[:_MAX_LISTED_BLOCKED]],
            "kept_fp32_total": len(conversion.blocked),
            "casts_inserted": conversion.casts_inserted,
            "preprocess": steps,
        },
        "pinned_layers": _pinned_evidence(pinned, {}),
    }
    return _finish(model_path, out, config, report, metadata)
