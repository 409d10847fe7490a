"""Stage 2, splits: the model preprocessed once, the data read and validated once, keyed
(the dataset version enters the calibration key) and split into calibrate / validate / test.
Without data (fp16 only), seeded stand-in inputs for a smoke check."""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.calibration.accuracy import synthetic_batches
from trt_provision.calibration.data import Batch, model_input_specs
from trt_provision.calibration.graph import preprocess_model
from trt_provision.calibration.planner import ResolvedKey, open_data, resolve_key
from trt_provision.calibration.splits import (
    DataSplits,
    SourceRead,
    read_source,
    split_for_judging,
)
from trt_provision.calibration.splits import logger as splits_logger
from trt_provision.calibration.stages.spec import PrecisionSpec

__all__ = ["Evidence", "split_data"]


@dataclass(frozen=True)
class Evidence:
    """The input of the ``ranges`` stage: the preprocessed model and its data."""

    spec: PrecisionSpec
    preprocessed: Path
    preprocess_steps: Any
    splits: DataSplits | None  # None: no data (fp16 smoke check, or a user cache alone)
    resolved: ResolvedKey | None  # the calibration key and dataset version
    synthetic: tuple[Batch, ...] = ()  # stand-in inputs where there is no data


def split_data(spec: PrecisionSpec, *, judge: bool = True) -> Evidence:
    """``judge=False``: splits for an unjudged use (the weakly typed TensorRT calibrator):
    too little data is not refused there, and not reported."""
    spec.workdir.mkdir(parents=True, exist_ok=True)
    preprocessed = spec.workdir / "preprocessed.onnx"
    steps = preprocess_model(spec.model, preprocessed)
    if spec.has_data:
        return _with_data(spec, preprocessed, steps, judge=judge)
    resolved = None
    if spec.precision.needs_calibration:  # a user's cache file alone: it is the "dataset"
        assert spec.model_hash is not None
        resolved = resolve_key(spec.key, spec.model_hash, dataset=None)
    synthetic: tuple[Batch, ...] = ()
    if not spec.precision.needs_calibration:
        synthetic = tuple(synthetic_batches(model_input_specs(spec.model), spec.readers))
    return Evidence(spec, preprocessed, steps, None, resolved, synthetic)


def _with_data(spec: PrecisionSpec, preprocessed: Path, steps: Any, *, judge: bool) -> Evidence:
    assert spec.calibration is not None and spec.model_hash is not None
    dataset = open_data(spec.model, spec.calibration, spec.readers, base_dir=spec.base_dir)
    # Validated; an empty source raises here, naming the file. Batches after the first
    # max_batches are evidence only (judged builds): the key digests the first ones alone.
    read = (read_source(dataset, spec.calibration.max_batches) if judge
            else SourceRead(tuple(dataset)))
    batches = list(read.batches)
    resolved = resolve_key(spec.key, spec.model_hash, dataset=batches)
    evaluation = None
    if spec.calibration.evaluation_data:
        evaluation = list(open_data(spec.model, spec.calibration, spec.readers,
                                    source=spec.calibration.evaluation_data,
                                    base_dir=spec.base_dir))
    if judge:
        splits = split_for_judging(batches, dataset.specs, spec.readers, evaluation=evaluation,
                                   model=spec.name, source=dataset.description,
                                   beyond=read.beyond, evidence_limit=read.limit)
    else:
        relaxed = dataclasses.replace(spec.readers, allow_inaccurate=True)
        with _quiet(splits_logger):
            splits = split_for_judging(batches, dataset.specs, relaxed, evaluation=evaluation)
    return Evidence(spec, preprocessed, steps, splits, resolved)


@contextlib.contextmanager
def _quiet(target: logging.Logger) -> Iterator[None]:
    previous = target.level
    target.setLevel(logging.ERROR)
    try:
        yield
    finally:
        target.setLevel(previous)
