"""Stage 1, spec: everything the later stages need, read once from a BuildConfig.

No later stage sees the BuildConfig. The data readers (``data.py``, ``splits.py``) take a
BuildConfig for the input shapes of the profiles and the too-little-data policy, so the spec
hands them ``readers``: a BuildConfig carrying only precision, profiles and
``allow_inaccurate``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from trt_provision.calibration.accuracy import AccuracyGate, accuracy_gate
from trt_provision.calibration.planner import KeyBasis, calibration_spec_of, key_basis_of
from trt_provision.calibration.qdq import CONSUMERS
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

__all__ = ["ALGORITHMS", "UNJUDGED_AUTO", "PrecisionSpec", "resolve_spec"]

ALGORITHMS: tuple[str, ...] = ("minmax", "percentile", "entropy")
# Without a judge (the weakly typed TensorRT calibrator), ``auto`` means min-max: the best of
# the three on most real models measured (see _docs/calibration.md).
UNJUDGED_AUTO = "minmax"


@dataclass(frozen=True)
class PrecisionSpec:
    """One model's precision request, resolved: the input of the ``splits`` stage."""

    model: Path
    precision: PrecisionMode
    consumer: str  # "onnxruntime-cpu" or "tensorrt": the Q/DQ option set of the graph
    workdir: Path
    cache_dir: Path | None  # governed calibration caches (workdir/calibration when None)
    calibration: CalibrationSpec | None
    key: KeyBasis
    pinned_keywords: tuple[str, ...]
    excluded_op_types: tuple[str, ...]
    gate: AccuracyGate | None
    metric: str | None  # "file.py:function", loaded only where a graph is judged
    allow_inaccurate: bool
    readers: BuildConfig  # precision, profiles, allow_inaccurate: for the data readers
    model_hash: str | None = None  # known where the model's data is keyed
    base_dir: Path | None = None  # relative calibration sources resolve against it

    @property
    def name(self) -> str:
        return str(self.model)

    @property
    def has_data(self) -> bool:
        return self.calibration is not None and self.calibration.source is not None

    @property
    def user_cache(self) -> str | None:
        """A user's TensorRT calibration cache (trtexec ``--calib``) giving the ranges."""
        return None if self.calibration is None else self.calibration.trt_cache

    @property
    def algorithms(self) -> tuple[str, ...]:
        algorithm = "minmax" if self.calibration is None else self.calibration.algorithm
        return ALGORITHMS if algorithm == "auto" else (algorithm,)

    @property
    def pinned_fp16(self) -> bool:
        # TensorRT computes pinned layers in FP16 in int8 and mixed builds alike (one meaning
        # of "pinned" for both typed paths); the CPU keeps them FP32 in int8, FP16 in mixed.
        return self.consumer == "tensorrt" or self.precision is PrecisionMode.MIXED


def resolve_spec(
    model: Path,
    config: BuildConfig,
    workdir: Path,
    *,
    consumer: str,
    cache_dir: Path | None,
    model_hash: str | None = None,
    base_dir: Path | None = None,
) -> PrecisionSpec:
    """The spec of ``config`` for ``model``; a calibrated precision without data (or a user
    calibration cache) is a CalibrationCacheError here, before any work."""
    if consumer not in CONSUMERS:
        raise ValueError(f"consumer must be one of {CONSUMERS}, got {consumer!r}")
    model = Path(model)
    calibration = config.calibration
    if config.precision.needs_calibration:
        calibration = calibration_spec_of(config, str(model))
    if model_hash is None and (config.precision.needs_calibration
                               or (calibration is not None and calibration.source is not None)):
        from trt_provision.identity import model_sha256

        model_hash = model_sha256(model)
    readers = BuildConfig(precision=config.precision, profiles=config.profiles,
                          allow_inaccurate=config.allow_inaccurate)
    return PrecisionSpec(
        model=model,
        precision=config.precision,
        consumer=consumer,
        workdir=Path(workdir),
        cache_dir=cache_dir,
        calibration=calibration,
        key=key_basis_of(config),
        pinned_keywords=tuple(config.fp16_pinned_keywords),
        excluded_op_types=tuple(config.excluded_op_types),
        gate=accuracy_gate(config),
        metric=config.accuracy_metric,
        allow_inaccurate=config.allow_inaccurate,
        readers=readers,
        model_hash=model_hash,
        base_dir=base_dir,
    )
