"""Apply a precision to a model: the stages of :mod:`trt_provision.calibration.stages`,
each a function of the previous one's DTO::

    spec (from the BuildConfig, once) -> splits -> ranges -> graph -> verdict

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

import dataclasses
import logging
import time
from pathlib import Path

from trt_provision.calibration.qdq import CONSUMERS
from trt_provision.calibration.stages.graph import graph_for
from trt_provision.calibration.stages.ranges import GovernedRanges, ranges_for
from trt_provision.calibration.stages.spec import UNJUDGED_AUTO, resolve_spec
from trt_provision.calibration.stages.splits import split_data
from trt_provision.calibration.stages.verdict import verdict_on
from trt_provision.types import BuildConfig, PrecisionMode, PreparedGraph

__all__ = [
    "GovernedPrecisionPipeline",
    "GovernedRanges",
    "PreparedModel",
    "governed_ranges",
    "prepare_model_for_precision",
    "preview_model_for_precision",
]

logger = logging.getLogger(__name__)


# The pipeline's result: the prepared graph and its metadata (the seams' DTO).
PreparedModel = PreparedGraph


class GovernedPrecisionPipeline:
    """:class:`~trt_provision.seams.PrecisionPipeline` over the governed calibration caches
    in ``cache_dir``: the compiler calls it and hands the graph to the strategy."""

    def __init__(self, cache_dir: Path) -> None:
        self.cache_dir = Path(cache_dir)

    def prepare(
        self, model_path: Path, build_config: BuildConfig, workdir: Path, *, consumer: str,
        model_hash: str | None = None,
    ) -> PreparedGraph:
        return prepare_model_for_precision(
            model_path, build_config, workdir, calibration_cache_dir=self.cache_dir,
            consumer=consumer, model_hash=model_hash,
        )


    def preview(
        self, model_path: Path, build_config: BuildConfig, workdir: Path, *, consumer: str,
        model_hash: str | None = None,
    ) -> PreparedGraph:
        return preview_model_for_precision(
            model_path, build_config, workdir, calibration_cache_dir=self.cache_dir,
            consumer=consumer, model_hash=model_hash,
        )


# What a previewed graph's sidecar records: it was never judged, so it never passes a judge.
PREVIEW_NOTE = "unjudged preview for timing (precision = auto); never served"


def preview_model_for_precision(
    model_path: Path,
    config: BuildConfig,
    workdir: Path,
    *,
    calibration_cache_dir: Path | None,
    consumer: str = "onnxruntime-cpu",
    model_hash: str | None = None,
) -> PreparedModel:
    """``config.precision``'s graph without the judging work: the same spec, splits and
    governed ranges as :func:`prepare_model_for_precision`, but of one algorithm (the first;
    min-max for ``auto``, the cheapest: ranges do not change a graph's speed, and its
    governed cache serves the judged build that may follow), one graph, no gate (so no
    sensitivity search) and no verdict. Its speed is the candidate's; its accuracy is not
    known. Too little data for a verdict is the same refusal (AccuracyGateError) as in
    a build."""
    if config.precision is PrecisionMode.FP32:
        return PreparedModel(model_path=model_path)
    spec = resolve_spec(model_path, config, workdir, consumer=consumer,
                        cache_dir=calibration_cache_dir, model_hash=model_hash)
    spec = dataclasses.replace(spec, gate=None, metric=None)
    # Split as for judging: data too small for a verdict is refused here, before any
    # calibration, as the judged build would refuse it - a candidate that cannot be judged
    # is not worth timing.
    graph = graph_for(ranges_for(split_data(spec), algorithms=spec.algorithms[:1]))
    return PreparedModel(model_path=graph.path, metadata={
        **graph.metadata, "accuracy": {"verdict": "not judged", "warning": PREVIEW_NOTE},
    })


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
    spec = resolve_spec(model_path, config, workdir, consumer="tensorrt",
                        cache_dir=calibration_cache_dir, model_hash=model_hash,
                        base_dir=base_dir)
    algorithm = spec.algorithms[0] if len(spec.algorithms) == 1 else UNJUDGED_AUTO
    ranges = ranges_for(split_data(spec, judge=False), algorithms=[algorithm])
    return ranges.governed[algorithm]


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
    started = time.perf_counter()
    logger.info(
        "preparing %s model", config.precision.value,
        extra={"event": "calibration.prepare.start", "model": str(model_path),
               "precision": config.precision.value},
    )
    spec = resolve_spec(model_path, config, workdir, consumer=consumer,
                        cache_dir=calibration_cache_dir, model_hash=model_hash)
    verdict = verdict_on(graph_for(ranges_for(split_data(spec))))
    elapsed = time.perf_counter() - started
    logger.info(
        "prepared %s model in %.2f s", config.precision.value, elapsed,
        extra={"event": "calibration.prepare.finish", "model": str(model_path),
               "precision": config.precision.value, "seconds": round(elapsed, 3)},
    )
    return PreparedModel(model_path=verdict.model_path, metadata=verdict.metadata,
                         evidence=verdict)
