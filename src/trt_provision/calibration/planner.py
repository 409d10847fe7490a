"""Calibration key resolution, shared by the planner (identity) and the build (cache).

The key enters the engine identity, so a changed dataset, algorithm, pinned keyword or tool
version gives a different engine filename; the build then finds its governed cache stale and
recalibrates.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.calibration.cache import calibration_key
from trt_provision.calibration.data import (
    Batch,
    CalibrationDataset,
    dataset_digest,
    model_input_specs,
)
from trt_provision.calibration.ranges import range_params_for
from trt_provision.errors import CalibrationCacheError
from trt_provision.identity import judged_on_data
from trt_provision.types import BackboneSpec, BuildConfig, CalibrationSpec

__all__ = [
    "GovernedCalibrationPlanner",
    "KeyBasis",
    "ResolvedKey",
    "algorithm_key",
    "calibration_spec_of",
    "key_basis_of",
    "key_for",
    "open_data",
    "open_dataset",
    "resolve_calibration_key",
    "resolve_key",
]

logger = logging.getLogger(__name__)


def calibration_spec_of(config: BuildConfig, model: str = "") -> CalibrationSpec:
    """The calibration spec of a precision that needs one, or a clear error."""
    spec = config.calibration
    if spec is None or (spec.source is None and spec.trt_cache is None):
        raise CalibrationCacheError(
            f"precision {config.precision.value} needs calibration data; set a calibration "
            "source (an .npz, a directory of .npy/.npz, or file.py:function)",
            model=model,
        )
    return spec


def open_dataset(
    model_path: Path, config: BuildConfig, *, source: Any = None, base_dir: Path | None = None
) -> CalibrationDataset:
    return open_data(model_path, config.calibration or CalibrationSpec(), config,
                     source=source, base_dir=base_dir)


def open_data(
    model_path: Path, spec: CalibrationSpec, readers: BuildConfig, *, source: Any = None,
    base_dir: Path | None = None,
) -> CalibrationDataset:
    """The dataset of ``spec`` (or ``source``) for the model's inputs; ``readers`` gives the
    profiles the batches are checked against."""
    return CalibrationDataset(
        source if source is not None else spec.source,
        model_input_specs(model_path),
        readers,
        max_batches=spec.max_batches,
        # Not every CalibrationSpec carries the opt-in; absent means lossless casts only.
        allow_lossy_cast=bool(getattr(spec, "allow_lossy_cast", False)),
        base_dir=base_dir,
    )


@dataclass(frozen=True)
class ResolvedKey:
    key: str
    dataset_version: str
    dataset_digest: str | None  # None when an explicit version was given
    batches: int | None  # known when the dataset was read for its digest


def _needs_digest(spec: CalibrationSpec) -> bool:
    """Whether the dataset version is the digest of the data (read to compute it)."""
    user_cache_only = spec.source is None and spec.trt_cache is not None
    return not user_cache_only and spec.dataset_version is None


def resolve_calibration_key(
    config: BuildConfig,
    model_hash: str,
    *,
    dataset: CalibrationDataset | Sequence[Batch] | None = None,
    model_path: Path | None = None,
    base_dir: Path | None = None,
) -> ResolvedKey:
    """Key of the calibration of ``config`` for a model; reads the data only if needed."""
    spec = calibration_spec_of(config, str(model_path or ""))
    if dataset is None and _needs_digest(spec):
        if model_path is None:
            raise CalibrationCacheError("a dataset or a model path is needed for the digest")
        dataset = open_dataset(model_path, config, base_dir=base_dir)
    return resolve_key(key_basis_of(config), model_hash, dataset=dataset)


@dataclass(frozen=True)
class KeyBasis:
    """What a calibration key depends on besides the model and the data, read once from a
    BuildConfig: the stages key their caches from this, never from the whole config."""

    precision: str
    calibration: CalibrationSpec
    gate: tuple[float | None, float | None, float | None]  # cosine, rel error, top-1
    accuracy_metric: str | None
    plugins: tuple[tuple[str, str, str], ...]
    pinned_keywords: tuple[str, ...]
    excluded_op_types: tuple[str, ...]


def key_basis_of(config: BuildConfig) -> KeyBasis:
    return KeyBasis(
        precision=config.precision.value,
        calibration=config.calibration or CalibrationSpec(),
        gate=(config.min_cosine, config.max_rel_error, config.min_top1_agreement),
        accuracy_metric=config.accuracy_metric,
        plugins=tuple((p.name, p.version, p.namespace) for p in config.plugins),
        pinned_keywords=tuple(config.fp16_pinned_keywords),
        excluded_op_types=tuple(config.excluded_op_types),
    )


def resolve_key(
    basis: KeyBasis, model_hash: str, *, dataset: CalibrationDataset | Sequence[Batch] | None
) -> ResolvedKey:
    """The key of ``basis``'s algorithm; ``dataset`` is digested when its version is not
    given (an explicit ``dataset_version``, or a user's TensorRT cache file)."""
    spec = basis.calibration
    digest: str | None = None
    batches: int | None = None
    if spec.source is None and spec.trt_cache is not None:
        # Ranges from a user's TensorRT calibration cache: the file is the "dataset".
        version = f"trt-cache:sha256:{_user_cache_sha256(spec.trt_cache)}"
    elif spec.dataset_version is not None:
        version = spec.dataset_version
    else:
        if dataset is None:
            raise CalibrationCacheError("a dataset or a model path is needed for the digest")
        digest = dataset_digest(dataset)
        batches = len(dataset)
        version = f"sha256:{digest}"
    key = key_for(basis, model_hash, version, spec.algorithm)
    return ResolvedKey(key=key, dataset_version=version, dataset_digest=digest, batches=batches)


def algorithm_key(
    config: BuildConfig, model_hash: str, dataset_version: str, algorithm: str
) -> str:
    """The calibration key of ``config`` for one algorithm (see :func:`key_for`)."""
    return key_for(key_basis_of(config), model_hash, dataset_version, algorithm)


def key_for(basis: KeyBasis, model_hash: str, dataset_version: str, algorithm: str) -> str:
    """The calibration key for one algorithm (``auto`` keys the choice; each concrete
    algorithm keys its own governed ranges, so switching never replaces another's cache)."""
    spec = basis.calibration
    params = range_params_for(spec, algorithm)
    if algorithm == "auto" or spec.evaluation_data:
        # The choice among algorithms and the judgement depend on the gate.
        params["gate"] = [*basis.gate, basis.accuracy_metric, bool(spec.evaluation_data)]
        if basis.accuracy_metric is not None:
            from trt_provision.calibration.metric import metric_file_sha256

            params["gate"].append(metric_file_sha256(basis.accuracy_metric))
    if spec.trt_cache is not None:  # another cache file gives other ranges: another key
        params["trt_cache_sha256"] = _user_cache_sha256(spec.trt_cache)
    return calibration_key(
        model_hash=model_hash,
        precision=basis.precision,
        dataset_version=dataset_version,
        algorithm=algorithm,
        algorithm_params=params,
        plugins=list(basis.plugins),
        pinned_keywords=basis.pinned_keywords,
        excluded_op_types=basis.excluded_op_types,
    )


def _user_cache_sha256(path: str) -> str:
    from trt_provision.calibration.user_cache import read_user_trt_cache

    return read_user_trt_cache(path).sha256


class GovernedCalibrationPlanner:
    """:class:`~trt_provision.seams.CalibrationPlanner` over the governed calibration cache.

    ``cache_dir`` is where builds keep their calibration caches (the build reads and writes
    them; the planner only derives keys). Dataset digests are remembered per source and
    model, so planning a corpus reads each dataset once.
    """

    def __init__(self, cache_dir: Path, *, base_dir: Path | None = None) -> None:
        self.cache_dir = Path(cache_dir)
        self.base_dir = base_dir
        self._memo: dict[tuple[Any, ...], str] = {}

    def calibration_key(self, backbone: BackboneSpec, model_hash: str) -> str | None:
        config = backbone.build_config
        if not judged_on_data(config):
            return None
        spec = calibration_spec_of(config, backbone.name)
        memo_key = (
            model_hash, config.precision.value, str(spec.source), spec.dataset_version,
            spec.algorithm, spec.num_bins, spec.percentile, spec.max_batches,
            spec.evaluation_data, spec.trt_cache, config.min_cosine, config.max_rel_error,
            config.min_top1_agreement, config.accuracy_metric,
            tuple((p.input_name, p.min_shape, p.max_shape) for p in config.profiles),
            tuple(config.fp16_pinned_keywords), tuple(config.excluded_op_types),
            tuple((p.name, p.version, p.namespace) for p in config.plugins),
        )
        cached = self._memo.get(memo_key)
        if cached is not None:
            return cached
        resolved = resolve_calibration_key(
            config, model_hash, model_path=backbone.model_path, base_dir=self.base_dir
        )
        logger.debug(
            "calibration key resolved",
            extra={"event": "calibration.key", "model": backbone.name, "key": resolved.key,
                   "dataset_version": resolved.dataset_version},
        )
        self._memo[memo_key] = resolved.key
        return resolved.key
