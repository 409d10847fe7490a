"""Calibration input for the weakly typed TensorRT path (TensorRT <= 10).

:func:`tensorrt_calibration_input` gives the TensorRT runtime what its INT8 calibrator needs:
the validated calibration batches and a ``read_cache`` / ``write_cache`` pair over a governed
calibration cache (payload kind ``trt-calibration-cache``). ``read_cache`` offers, in order:

1. a governed TensorRT cache whose key matches (written by an earlier build);
2. a cache computed here on the CPU from the governed activation ranges (the same ranges the
   Q/DQ and ONNX Runtime paths use), stored governed, so TensorRT skips on-device
   calibration;
3. nothing (``None``): TensorRT calibrates on the device and hands the result to
   ``write_cache``.

The key of the cache entry is the calibration key extended with the TensorRT version, so a
TensorRT upgrade never reads another version's calibration table as a hit. This module never
imports ``tensorrt``; its version is passed in (``trt_version``, the runtime knows it) or read
from the installed distribution's metadata (``"unknown"`` when neither says).
"""

from __future__ import annotations

import hashlib
import logging
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from trt_provision.calibration.cache import CacheHeader, GovernedCalibrationCache, cache_path_for
from trt_provision.calibration.data import Batch
from trt_provision.calibration.planner import (
    ResolvedKey,
    calibration_spec_of,
    open_dataset,
    resolve_calibration_key,
)
from trt_provision.errors import CalibrationCacheError, TrtProvisionError
from trt_provision.types import BuildConfig, CalibrationInput

__all__ = ["PAYLOAD_TRT_CACHE", "installed_tensorrt_version", "tensorrt_calibration_input"]

logger = logging.getLogger(__name__)

PAYLOAD_TRT_CACHE = "trt-calibration-cache"
CACHE_KIND = "trt"
_TRT_DISTRIBUTIONS = ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11",
                      "tensorrt-libs", "tensorrt-cu12-libs")


def installed_tensorrt_version() -> str | None:
    """TensorRT's version from package metadata, without importing it (None if absent)."""
    from importlib import metadata

    for name in _TRT_DISTRIBUTIONS:
        try:
            return metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
    return None


class _TrtCalibrationSource:
    """State behind the closures: the key (computed once) and the governed cache."""

    def __init__(
        self, model_path: Path, config: BuildConfig, cache_dir: Path, *,
        model_hash: str | None, trt_version: str | None, precompute: bool,
        base_dir: Path | None,
    ) -> None:
        self.model_path = Path(model_path)
        self.config = config
        self.cache_dir = Path(cache_dir)
        self.base_dir = base_dir
        self.precompute = precompute
        self.trt_version = trt_version
        self._model_hash = model_hash
        self._resolved: ResolvedKey | None = None
        self._cache: GovernedCalibrationCache | None = None

    @property
    def model_hash(self) -> str:
        if self._model_hash is None:
            from trt_provision.identity import model_sha256

            self._model_hash = model_sha256(self.model_path)
        return self._model_hash

    @property
    def resolved(self) -> ResolvedKey:
        if self._resolved is None:
            self._resolved = resolve_calibration_key(
                self.config, self.model_hash, model_path=self.model_path,
                base_dir=self.base_dir,
            )
        return self._resolved

    @property
    def version(self) -> str | None:
        return self.trt_version or installed_tensorrt_version()

    @property
    def key(self) -> str:
        """The calibration key bound to the TensorRT version that reads and writes the table."""
        bound = f"{self.resolved.key}\0tensorrt={self.version or 'unknown'}"
        return hashlib.sha256(bound.encode()).hexdigest()

    @property
    def cache(self) -> GovernedCalibrationCache:
        if self._cache is None:
            spec = calibration_spec_of(self.config, str(self.model_path))
            self._cache = GovernedCalibrationCache(
                cache_path_for(self.cache_dir, self.model_path.stem,
                               self.config.precision.value, model_hash=self.model_hash,
                               kind=CACHE_KIND),
                governed=spec.governed,
            )
        return self._cache

    @property
    def user_cache(self) -> bytes | None:
        """The user's TensorRT calibration cache (trtexec --calib), validated; else None."""
        spec = calibration_spec_of(self.config, str(self.model_path))
        if spec.trt_cache is None:
            return None
        from trt_provision.calibration.user_cache import read_user_trt_cache

        return read_user_trt_cache(spec.trt_cache).blob

    def batches(self) -> Iterator[Batch]:
        if calibration_spec_of(self.config, str(self.model_path)).source is None:
            return  # ranges from a user cache only: TensorRT reads them, never calibrates
        # Opened on first use: a cache hit never reads the data.
        yield from open_dataset(self.model_path, self.config, base_dir=self.base_dir)

    def _header(self) -> CacheHeader:
        spec = calibration_spec_of(self.config, str(self.model_path))
        return CacheHeader(
            key=self.key, algorithm=spec.algorithm,
            dataset_version=self.resolved.dataset_version, payload_kind=PAYLOAD_TRT_CACHE,
        )

    def read_cache(self) -> bytes | None:
        user = self.user_cache
        if user is not None:  # handed to the builder as is: these are the build's ranges
            return user
        with self.cache.lock():
            lookup = self.cache.load(self.key, self.resolved.dataset_version)
            if lookup.usable and lookup.payload is not None:
                kind = lookup.header.payload_kind if lookup.header else PAYLOAD_TRT_CACHE
                if kind == PAYLOAD_TRT_CACHE:
                    return lookup.payload
            if not self.precompute:
                return None
            payload = self._precomputed()
            if payload is not None:
                self.cache.store(self._header(), payload)
            return payload

    def _precomputed(self) -> bytes | None:
        """TensorRT cache text from the governed CPU ranges; None when that is not possible."""
        from trt_provision.calibration.precision import governed_ranges
        from trt_provision.calibration.ranges import write_trt_calibration_cache

        version = self.version
        if version is None:
            logger.info(
                "TensorRT version unknown; leaving calibration to TensorRT",
                extra={"event": "calibration.trt.precompute.skip", "reason": "no-version"},
            )
            return None
        try:
            with tempfile.TemporaryDirectory(prefix="trtp-calib-") as tmp:
                governed = governed_ranges(
                    self.model_path, self.config, Path(tmp),
                    calibration_cache_dir=self.cache_dir, model_hash=self.model_hash,
                    base_dir=self.base_dir,
                )
        except CalibrationCacheError:
            raise  # bad data or a corrupt cache: TensorRT would fail on it too
        except (TrtProvisionError, ImportError) as exc:
            # e.g. a model with TensorRT plugins ONNX Runtime cannot run, or no onnxruntime
            logger.info(
                "cannot precompute the TensorRT calibration cache on the CPU: %s", exc,
                extra={"event": "calibration.trt.precompute.skip", "reason": type(exc).__name__},
            )
            return None
        logger.info(
            "TensorRT calibration cache computed on the CPU",
            extra={"event": "calibration.trt.precompute", "tensors": len(governed.ranges.ranges),
                   "ranges_reused": governed.reused},
        )
        return write_trt_calibration_cache(governed.ranges, version)

    def write_cache(self, blob: bytes) -> None:
        if not blob or self.user_cache is not None:
            return  # the user's file stays the source of the ranges; nothing to govern
        with self.cache.lock():
            self.cache.store(self._header(), bytes(blob))


def tensorrt_calibration_input(
    model_path: Path,
    config: BuildConfig,
    cache_dir: Path,
    *,
    model_hash: str | None = None,
    trt_version: str | None = None,
    precompute: bool = True,
    base_dir: Path | None = None,
) -> CalibrationInput | None:
    """Calibration batches and governed cache access for a weakly typed TensorRT build.

    None when ``config.precision`` needs no calibration. ``precompute=False`` leaves a
    missing or stale cache to TensorRT's on-device calibration (``read_cache`` gives None).
    ``trt_version`` is the TensorRT version of the runtime that builds (part of the cache
    key); without it the installed distribution's version is used.
    """
    if not config.precision.needs_calibration:
        return None

    calibration_spec_of(config, str(model_path))  # no data configured: a clear error now
    source = _TrtCalibrationSource(
        model_path, config, cache_dir, model_hash=model_hash, trt_version=trt_version,
        precompute=precompute, base_dir=base_dir,
    )
    batches: Any = _Batches(source)
    return CalibrationInput(batches=batches, read_cache=source.read_cache,
                            write_cache=source.write_cache)


class _Batches:
    """Re-iterable view of the validated calibration batches."""

    def __init__(self, source: _TrtCalibrationSource) -> None:
        self._source = source

    def __iter__(self) -> Iterator[Batch]:
        return self._source.batches()
