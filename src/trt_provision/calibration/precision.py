"""Apply a precision to a model: data (splits) -> ranges (per algorithm, governed cache)
-> graph (per consumer) -> judge (gate on validation, confirmed on test) -> choose.

* ``fp32``  - the model as it is.
* ``fp16``  - an FP16 graph (IO types kept; sensitive ops and values beyond the FP16 range
  stay FP32; pinned layers are FP16 like the rest). Without data: a smoke check only.
* ``int8``  - a Q/DQ graph from governed calibration ranges; ``algorithm = "auto"`` builds
  one graph per algorithm and keeps the best on validation. Pinned layers are FP32 on the
  CPU and FP16 for TensorRT.
* ``mixed`` - as int8, with pinned layers in FP16 (FP32 where FP16 would overflow).

A graph that fails the accuracy gate gets a sensitivity search (layers kept in higher
precision, chosen on validation); the result is confirmed on the untouched test split and
refused (:class:`AccuracyGateError`) unless ``allow_inaccurate`` is set.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_provision.calibration.accuracy import (
    AccuracyGate,
    AccuracyReport,
    accuracy_gate,
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
    ResolvedKey,
    algorithm_key,
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
from trt_provision.calibration.splits import DataSplits, split_for_judging
from trt_provision.calibration.splits import logger as splits_logger
from trt_provision.errors import AccuracyGateError, EngineBuildError, TrtProvisionError
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

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
    """Activation ranges of one algorithm and where they came from (usable by every path)."""

    ranges: TensorRanges
    key: str
    dataset_version: str
    cache_path: Path
    cache_status: str  # hit | legacy | miss | stale | incomplete
    reused: bool
    batches: int
    preprocessed_path: Path
    note: str = ""

    def to_metadata(self) -> dict[str, Any]:
        out = {
            "key": self.key,
            "dataset_version": self.dataset_version,
            "cache_path": str(self.cache_path),
            "cache_reused": self.reused,
            "cache_status": self.cache_status,
            "algorithm": self.ranges.algorithm,
            "params": dict(self.ranges.params),
            "tensors": len(self.ranges.ranges),
            "batches": self.batches,
        }
        if self.note:
            out["note"] = self.note
        return out


ALGORITHMS: tuple[str, ...] = ("minmax", "percentile", "entropy")
# Without a judge (the weakly typed TensorRT calibrator), ``auto`` means min-max: the best of
# the three on most real models measured (see _docs/calibration.md).
UNJUDGED_AUTO = "minmax"


def _algorithms(spec: CalibrationSpec) -> list[str]:
    return list(ALGORITHMS) if spec.algorithm == "auto" else [spec.algorithm]


def governed_ranges_for(
    model_path: Path,
    config: BuildConfig,
    workdir: Path,
    calibration_batches: Sequence[Batch],
    *,
    algorithms: Sequence[str],
    dataset_version: str,
    preprocessed: Path,
    calibration_cache_dir: Path | None,
    model_hash: str,
) -> dict[str, GovernedRanges]:
    """Per algorithm: reuse its governed cache, or compute it (one pass for all misses).

    Each algorithm has its own cache file and key, so switching algorithm (or ``auto``)
    never replaces another algorithm's calibration.
    """
    from trt_provision.calibration.ranges import compute_ranges_for_algorithms

    spec = calibration_spec_of(config, str(model_path))
    cache_dir = calibration_cache_dir or workdir / "calibration"
    found: dict[str, tuple[GovernedCalibrationCache, str, Any, TensorRanges | None]] = {}
    for algo in algorithms:
        key = algorithm_key(config, model_hash, dataset_version, algo)
        path = cache_path_for(cache_dir, model_path.stem, config.precision.value,
                              model_hash=model_hash, kind=algo)
        cache = GovernedCalibrationCache(path, governed=spec.governed)
        lookup = cache.load(key, dataset_version)
        ranges: TensorRanges | None = None
        if lookup.usable and lookup.payload is not None:
            kind = lookup.header.payload_kind if lookup.header else PAYLOAD_TRT_CACHE
            ranges = (
                TensorRanges.from_json(lookup.payload) if kind == PAYLOAD_RANGES
                else parse_trt_calibration_cache(lookup.payload)
            )
        found[algo] = (cache, key, lookup, ranges)
    if not spec.governed and all(v[3] is None for v in found.values()):
        legacy = cache_path_for(cache_dir, model_path.stem, config.precision.value)
        if legacy.exists():
            # Ungoverned builds still find a cache under the older, hash-less file name;
            # it holds one set of ranges, so it is the only candidate.
            cache = GovernedCalibrationCache(legacy, governed=False)
            key = algorithm_key(config, model_hash, dataset_version, algorithms[0])
            lookup = cache.load(key, dataset_version)
            if lookup.usable and lookup.payload is not None:
                kind = lookup.header.payload_kind if lookup.header else PAYLOAD_TRT_CACHE
                ranges = (TensorRanges.from_json(lookup.payload) if kind == PAYLOAD_RANGES
                          else parse_trt_calibration_cache(lookup.payload))
                return {algorithms[0]: GovernedRanges(
                    ranges=ranges, key=key, dataset_version=dataset_version,
                    cache_path=legacy, cache_status=lookup.status, reused=True,
                    batches=len(calibration_batches), preprocessed_path=preprocessed)}
    missing = [a for a, v in found.items() if v[3] is None]
    computed: dict[str, TensorRanges] = {}
    notes: dict[str, str] = {}
    if missing:
        started = time.perf_counter()
        if missing == ["minmax"]:
            computed = {"minmax": compute_activation_ranges(
                preprocessed, calibration_batches,
                dataclasses.replace(spec, algorithm="minmax"), workdir / "ranges")}
        else:
            computed, notes = compute_ranges_for_algorithms(
                preprocessed, list(calibration_batches), spec, missing, workdir / "ranges")
        seconds = round(time.perf_counter() - started, 3)
        for algo in missing:
            r = computed[algo]
            computed[algo] = TensorRanges(r.algorithm, r.ranges, {**r.params, "seconds": seconds})
    out: dict[str, GovernedRanges] = {}
    for algo, (cache, key, lookup, ranges) in found.items():
        if ranges is None:
            ranges = computed[algo]
            with cache.lock():
                cache.store(
                    CacheHeader(key=key, algorithm=algo, dataset_version=dataset_version,
                                payload_kind=PAYLOAD_RANGES),
                    ranges.to_json(),
                )
        out[algo] = GovernedRanges(
            ranges=ranges, key=key, dataset_version=dataset_version, cache_path=cache.path,
            cache_status=lookup.status, reused=lookup.usable, batches=len(calibration_batches),
            preprocessed_path=preprocessed,
            note=notes.get(algo, str(ranges.params.get("note", ""))),
        )
    return out


def governed_ranges(
    model_path: Path,
    config: BuildConfig,
    workdir: Path,
    *,
    calibration_cache_dir: Path | None,
    model_hash: str | None = None,
    base_dir: Path | None = None,
) -> GovernedRanges:
    """The governed ranges of ``config``'s algorithm over the calibration split.

    Used where nothing judges the result (the weakly typed TensorRT calibrator): ``auto``
    then means min-max. The split is the same as the judged paths use, so they share caches.
    """
    from trt_provision.identity import model_sha256

    spec = calibration_spec_of(config, str(model_path))
    workdir.mkdir(parents=True, exist_ok=True)
    preprocessed = workdir / "preprocessed.onnx"
    preprocess_model(model_path, preprocessed)
    model_hash = model_hash or model_sha256(model_path)
    data = load_splits(model_path, config, model_hash, base_dir=base_dir, judge=False)
    algo = UNJUDGED_AUTO if spec.algorithm == "auto" else spec.algorithm
    return governed_ranges_for(
        model_path, config, workdir, data.splits.calibration, algorithms=[algo],
        dataset_version=data.resolved.dataset_version, preprocessed=preprocessed,
        calibration_cache_dir=calibration_cache_dir, model_hash=model_hash,
    )[algo]


@dataclass(frozen=True)
class LoadedData:
    splits: DataSplits
    resolved: ResolvedKey
    description: str


def load_splits(
    model_path: Path, config: BuildConfig, model_hash: str, *, base_dir: Path | None = None,
    judge: bool = True,
) -> LoadedData:
    """Read and validate the calibration (and evaluation) data once, key it, split it."""
    spec = calibration_spec_of(config, str(model_path))
    dataset = open_dataset(model_path, config, base_dir=base_dir)
    batches = list(dataset)  # validated; an empty source raises here, naming the file
    resolved = resolve_calibration_key(config, model_hash, dataset=batches)
    evaluation = None
    if spec.evaluation_data:
        evaluation = list(open_dataset(model_path, config, source=spec.evaluation_data,
                                       base_dir=base_dir))
    if judge:
        splits = split_for_judging(batches, dataset.specs, config, evaluation=evaluation,
                                   model=str(model_path), source=dataset.description)
    else:
        relaxed = dataclasses.replace(config, allow_inaccurate=True)
        with _quiet(splits_logger):
            splits = split_for_judging(batches, dataset.specs, relaxed, evaluation=evaluation)
    return LoadedData(splits, resolved, dataset.description)


@contextlib.contextmanager
def _quiet(target: logging.Logger) -> Iterator[None]:
    previous = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(previous)


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
    pinned: Sequence[PinnedNode], applied: Mapping[str, str], default: str = "fp32"
) -> list[dict[str, str]]:
    return [{**p.to_dict(), "precision": applied.get(p.node, default)} for p in pinned]


def _judge(
    model: str, config: BuildConfig, gate: AccuracyGate | None, validation: AccuracyReport,
    test: AccuracyReport, splits: DataSplits | None,
) -> dict[str, Any]:
    """The verdict on the chosen graph: passes on validation (where it was chosen) and on
    the untouched test split, or a refusal (AccuracyGateError) unless inaccurate engines are
    allowed, in which case the failure is recorded as a warning."""
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
    if not config.allow_inaccurate:
        failing = gate.failing_outputs(validation) or gate.failing_outputs(test)
        raise AccuracyGateError(
            f"{config.precision.value} graph refused by the accuracy gate: " + "; ".join(failures),
            model=model, **({"output": failing[0]} if failing else {}), gate=gate.to_dict(),
            cosine=test.worst_cosine, top1_agreement=test.worst_top1,
        )
    record["verdict"] = "failed (allow_inaccurate)"
    record["warning"] = "published although it fails the accuracy gate: " + "; ".join(failures)
    logger.warning(
        "%s: %s", model, record["warning"],
        extra={"event": "calibration.accuracy.inaccurate", "model": model},
    )
    return record


def _metric(config: BuildConfig, model: str) -> tuple[str, Any] | None:
    if config.accuracy_metric is None:
        return None
    from trt_provision.calibration.metric import load_metric

    return Path(config.accuracy_metric).name, load_metric(config.accuracy_metric, model=model)


@dataclass
class _Candidate:
    label: str
    qdq: Any
    path: Path
    validation: AccuracyReport
    passes: bool

    def rank(self) -> tuple[bool, tuple[float, float, float]]:
        return (self.passes, self.validation.score())


def _prepare_int8(
    model_path: Path, config: BuildConfig, workdir: Path, cache_dir: Path | None, *,
    consumer: str, model_hash: str | None,
) -> PreparedModel:
    from trt_provision.calibration.qdq import WEIGHTED_OPS, quantize_qdq, weighted_nodes
    from trt_provision.identity import model_sha256

    name = str(model_path)
    spec = calibration_spec_of(config, name)
    model_hash = model_hash or model_sha256(model_path)
    if spec.trt_cache is not None:  # trtexec --calib: the user's scales, not our calibration
        from trt_provision.calibration.user_cache import prepare_int8_from_user_cache

        prepared: PreparedModel = prepare_int8_from_user_cache(
            model_path, config, workdir, consumer=consumer, model_hash=model_hash)
        return prepared
    preprocessed = workdir / "preprocessed.onnx"
    preprocess_model(model_path, preprocessed)
    data = load_splits(model_path, config, model_hash)
    splits = data.splits
    governed = governed_ranges_for(
        model_path, config, workdir, splits.calibration, algorithms=_algorithms(spec),
        dataset_version=data.resolved.dataset_version, preprocessed=preprocessed,
        calibration_cache_dir=cache_dir, model_hash=model_hash,
    )
    loaded = load_model(preprocessed)
    pinned = match_pinned_nodes(loaded, config.fp16_pinned_keywords, config.excluded_op_types)
    del loaded
    gate = accuracy_gate(config)
    metric = _metric(config, name)
    # TensorRT computes pinned layers in FP16 in int8 and mixed builds alike (one meaning of
    # "pinned" for both typed paths); the CPU keeps them FP32 in int8, FP16 in mixed.
    pinned_fp16 = consumer == "tensorrt" or config.precision is PrecisionMode.MIXED

    def build(label: str, ranges: TensorRanges, keep: Sequence[str] = ()) -> _Candidate:
        out = workdir / f"{model_path.stem}.{config.precision.value}.{label}.onnx"
        sensitive = [PinnedNode(n, "", "sensitivity") for n in keep]
        result = quantize_qdq(
            preprocessed, ranges, out,
            excluded=(*pinned, *sensitive) if consumer == "tensorrt" else pinned,
            pinned_fp16=pinned_fp16, workdir=workdir / f"qdq-{label}", consumer=consumer,
            keep_float=() if consumer == "tensorrt" else keep,
        )
        report = compare_models(model_path, out, splits.validation, data="validation",
                                model=name, metric=metric)
        return _Candidate(label, result, out, report, gate is None or gate.passes(report))

    candidates = [build(algo, g.ranges) for algo, g in governed.items()]
    scores = {c.label: {"validation": c.validation.to_dict(), "passes_gate": c.passes,
                        **({"note": governed[c.label].note} if governed[c.label].note else {})}
              for c in candidates}
    # Ties keep the order of ALGORITHMS (min-max first: the most robust on real models).
    best = max(candidates, key=_Candidate.rank)
    chosen_algorithm = best.label
    sensitivity: dict[str, Any] = {}
    if gate is not None and not best.passes and splits.judged:
        best, sensitivity = _sensitivity_search(
            best, governed[chosen_algorithm].ranges, build,
            [n for n in weighted_nodes(preprocessed) if n not in {p.node for p in pinned}],
            consumer,
        )
    test = compare_models(model_path, best.path, splits.test, data="test", model=name,
                          metric=metric)
    qdq = best.qdq
    _check_quantized(qdq, name, config)
    chosen = governed[chosen_algorithm]
    metadata: dict[str, Any] = {
        "precision": config.precision.value,
        "calibration_key": data.resolved.key,
        "dataset_version": data.resolved.dataset_version,
        "calibration_cache": str(chosen.cache_path),
        "calibration_cache_reused": chosen.reused,
        "calibration": {
            **chosen.to_metadata(),
            "requested_algorithm": spec.algorithm,
            "chosen_algorithm": chosen_algorithm,
            "chosen_on": "validation",
            "algorithms": scores,
            "caches": {a: g.to_metadata() for a, g in governed.items()},
        },
        "quantization": {"format": "qdq",
                         **(qdq.options.to_metadata() if qdq.options is not None else {}),
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
    metadata["accuracy"] = _judge(name, config, gate, best.validation, test, splits)
    return PreparedModel(model_path=best.path, metadata=metadata)


# Sensitivity search budget: layers measured one at a time, then graphs tried while keeping
# the most sensitive ones in higher precision (1, 2, 4, ... up to half the weighted layers).
SENSITIVITY_MAX_LAYERS = 32


def _sensitivity_search(
    base: _Candidate, ranges: TensorRanges, build: Any, layers: Sequence[str], consumer: str,
) -> tuple[_Candidate, dict[str, Any]]:
    """Leave-one-out sensitivity on the validation split, then keep the most sensitive
    layers in higher precision (FP16 for TensorRT, FP32 on the CPU) until the gate passes
    or the budget is spent. Like Polygraphy's ``debug precision``, but judged on validation
    only: the test split never steers the search."""
    measured = list(layers[:SENSITIVITY_MAX_LAYERS])
    base_score = base.validation.score()
    per_layer: list[tuple[tuple[float, ...], str, AccuracyReport]] = []
    for layer in measured:
        cand = build(f"loo-{len(per_layer)}", ranges, [layer])
        gain = tuple(a - b for a, b in zip(cand.validation.score(), base_score, strict=True))
        per_layer.append((gain, layer, cand.validation))
    per_layer.sort(key=lambda t: t[0], reverse=True)
    order = [layer for _, layer, _ in per_layer]
    steps = [1 << i for i in range(16) if (1 << i) <= max(1, len(order) // 2)]
    tried: list[dict[str, Any]] = []
    best = base
    for count in steps:
        keep = order[:count]
        cand = build(f"keep-{count}", ranges, keep)
        tried.append({"kept": count, "cosine": cand.validation.worst_cosine,
                      "top1_agreement": cand.validation.worst_top1, "passes_gate": cand.passes})
        if cand.rank() > best.rank():
            best = cand
        if cand.passes:
            break
    kept = list(best.qdq.kept_float) or [p.node for p in best.qdq.excluded
                                          if p.keyword == "sensitivity"]
    info = {
        "measured_on": "validation",
        "method": "leave-one-layer-out",
        "higher_precision": "fp16" if consumer == "tensorrt" else "fp32",
        "budget_layers": SENSITIVITY_MAX_LAYERS,
        "layers": [{"node": layer, "cosine": rep.worst_cosine,
                    "top1_agreement": rep.worst_top1,
                    "gain": [round(g, 6) for g in gain]}
                   for gain, layer, rep in per_layer],
        "steps": tried,
        "kept": kept,
        "passes_gate": best.passes,
    }
    logger.info(
        "sensitivity search kept %d layer(s) in higher precision; gate %s on validation",
        len(kept), "passes" if best.passes else "still fails",
        extra={"event": "calibration.sensitivity", "kept": kept},
    )
    return best, info


def _check_quantized(qdq: Any, model: str, config: BuildConfig) -> None:
    """Never publish a graph labelled int8 in which nothing was quantized."""
    if qdq.quantized_ops == 0:
        where = (" (its compute is inside If/Loop/Scan subgraphs, which the Q/DQ quantizer "
                 "does not enter)" if qdq.subgraph_nodes else "")
        raise EngineBuildError(
            f"nothing to quantize: no node of the model was quantized for "
            f"{config.precision.value}{where}; build it as fp16 or fp32",
            model=model, subgraph_nodes=qdq.subgraph_nodes,
        )


def _prepare_fp16(model_path: Path, config: BuildConfig, workdir: Path) -> PreparedModel:
    from trt_provision.calibration.fp16 import convert_to_fp16, observe_activation_extremes

    name = str(model_path)
    preprocessed = workdir / "preprocessed.onnx"
    steps = preprocess_model(model_path, preprocessed)
    spec = config.calibration
    splits: DataSplits | None = None
    if spec is not None and spec.source is not None:
        from trt_provision.identity import model_sha256

        data = load_splits(model_path, config, model_sha256(model_path))
        splits = data.splits
        observe: list[Batch] = list(splits.calibration)
        validation_batches: Sequence[Batch] = splits.validation
        test_batches: Sequence[Batch] = splits.test
    else:
        observe = list(synthetic_batches(model_input_specs(model_path), config))
        validation_batches = test_batches = observe
    try:
        extremes = observe_activation_extremes(preprocessed, observe)
    except TrtProvisionError:
        raise
    except Exception as exc:  # ORT errors on inputs the model cannot take
        raise EngineBuildError(
            f"cannot run the model on {'synthetic' if splits is None else 'calibration'} "
            f"inputs: {type(exc).__name__}: {exc}", model=name) from exc
    model = load_model(preprocessed)
    pinned = match_pinned_nodes(model, config.fp16_pinned_keywords, config.excluded_op_types)
    # fp16: pinned layers are FP16 like the rest (they are pinned *to* FP16 in int8/mixed);
    # only excluded op types stay FP32.
    block = {p.node: f"excluded ({p.keyword})" for p in pinned if p.keyword.startswith("op:")}
    model, conversion = convert_to_fp16(model, block_nodes=block, activation_extremes=extremes)
    if not conversion.converted:
        # Truth in labels, as for int8's "nothing to quantize": every node kept FP32 (values
        # beyond the FP16 range, excluded ops) is the FP32 model under an fp16 label.
        reasons = sorted({b.reason for b in conversion.blocked})[:3]
        raise EngineBuildError(
            "nothing to convert: no node of the model was converted to fp16 ("
            + ("; ".join(reasons) or "no float compute") + "); build it as fp32",
            model=name, kept_fp32=len(conversion.blocked))
    out = save_model(model, workdir / f"{model_path.stem}.fp16.onnx")
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
            "preprocess": steps,
        },
        "pinned_layers": _pinned_evidence(pinned, applied),
    }
    if splits is None:
        report = compare_models(model_path, out, validation_batches, data="synthetic",
                                model=name)
        metadata["accuracy"] = {**report.to_dict(), "verdict": "smoke only",
                                "gate": None}
        return PreparedModel(model_path=out, metadata=metadata)
    gate = accuracy_gate(config)
    metric = _metric(config, name)
    validation = compare_models(model_path, out, validation_batches, data="validation",
                                model=name, metric=metric)
    test = compare_models(model_path, out, test_batches, data="test", model=name,
                          metric=metric)
    metadata["accuracy"] = _judge(name, config, gate, validation, test, splits)
    return PreparedModel(model_path=out, metadata=metadata)
