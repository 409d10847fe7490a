"""INT8 entropy calibrator for the weakly typed path (TensorRT 10; TRT 11 has no calibrators).

TensorRT drives the calibrator: it asks for the cache first (a hit skips calibration), else
pulls batches until ``get_batch`` returns None, then hands back the cache to persist. The
batches come from an iterable of ``{input name: np.ndarray}``, re-batched first by
:func:`calibration_batches` to exactly the shapes TensorRT calibrates at (the ``opt`` shapes
of the calibration profile, or the static input shapes); one device buffer per input is
allocated from the first batch and freed at the end.
The calibration cache itself is owned by the calibration package and reached through a
``(read_cache, write_cache)`` pair of callables.

An exception raised inside a callback cannot cross TensorRT's C++ frames intact, so it is
kept on the feeder and the build re-raises it afterwards
(:meth:`CalibrationFeeder.raise_if_failed`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

import numpy as np

from trt_provision.errors import CalibrationCacheError
from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers

__all__ = ["CalibrationFeeder", "calibration_batches", "make_entropy_calibrator"]

# The whole module is the weakly typed INT8 path (checked by the API conformance scanner).
TRT_PATH = "int8_calibrator"

log = logging.getLogger(__name__)

ReadCache = Callable[[], "bytes | None"]
WriteCache = Callable[[bytes], None]


Batch = Mapping[str, np.ndarray[Any, Any]]


def calibration_batches(
    batches: Iterable[Batch],
    targets: Mapping[str, tuple[tuple[int, ...], np.dtype[Any]]],
) -> Iterator[dict[str, np.ndarray[Any, Any]]]:
    """Re-batch ``batches`` along dim 0 to exactly ``targets`` (input -> (shape, dtype)).

    TensorRT calibrates at one shape per input and reads exactly that many bytes behind each
    pointer, whatever size the data came in. Samples are concatenated and split so that every
    batch yielded has the target shape; all targets share one batch size (dim 0). A batch
    whose other dimensions differ from the target is a :class:`CalibrationCacheError` naming
    the input, the batch index, the expected and the found shape; samples left over short of
    a full batch at the end are dropped (logged at INFO). Data is cast to the input's dtype
    where that is a same-kind cast (float64 -> float32), else refused.
    """
    sizes = {shape[0] for shape, _ in targets.values() if shape}
    if len(sizes) != 1 or any(not shape for shape, _ in targets.values()):
        raise CalibrationCacheError(
            "INT8 calibration re-batches every input along dim 0: all inputs need one batch "
            "size in their calibration (opt) shapes",
            shapes={n: list(shape) for n, (shape, _) in targets.items()},
        )
    (size,) = sizes
    if size < 1:
        raise CalibrationCacheError("calibration batch size must be at least 1",
                                    shapes={n: list(s) for n, (s, _) in targets.items()})
    pending: dict[str, list[np.ndarray[Any, Any]]] = {n: [] for n in targets}
    held = 0
    index = -1
    for index, batch in enumerate(batches):
        missing = [n for n in targets if n not in batch]
        if missing:
            raise CalibrationCacheError("calibration batch lacks network inputs",
                                        missing=missing, batch=index)
        count: int | None = None
        for name, (shape, dtype) in targets.items():
            arr = np.asarray(batch[name])
            if arr.ndim != len(shape) or tuple(arr.shape[1:]) != tuple(shape[1:]):
                raise CalibrationCacheError(
                    "calibration batch does not match the calibration (opt) shape "
                    "outside the batch dimension",
                    input=name, batch=index, expected=list(shape), found=list(arr.shape),
                )
            if arr.dtype != dtype:
                if not np.can_cast(arr.dtype, dtype, "same_kind"):
                    raise CalibrationCacheError(
                        "calibration batch dtype does not fit the network input",
                        input=name, batch=index, expected=str(dtype), found=str(arr.dtype))
                arr = arr.astype(dtype)
            if count is None:
                count = int(arr.shape[0])
            elif int(arr.shape[0]) != count:
                raise CalibrationCacheError(
                    "calibration batch inputs differ in batch size", input=name, batch=index,
                    expected=count, found=int(arr.shape[0]))
            pending[name].append(arr)
        held += count or 0
        while held >= size:
            out: dict[str, np.ndarray[Any, Any]] = {}
            for name in targets:
                joined = np.concatenate(pending[name]) if len(pending[name]) > 1 else (
                    pending[name][0])
                out[name] = np.ascontiguousarray(joined[:size])
                pending[name] = [joined[size:]] if joined.shape[0] > size else []
            held -= size
            yield out
    if held:
        log.info(
            "dropping %d calibration samples short of a full batch of %d", held, size,
            extra={"event": "trt.calibration.leftover", "samples": held, "batch_size": size,
                   "batches_read": index + 1},
        )


class CalibrationFeeder:
    """The TensorRT-independent half: batches → device pointers, cache I/O, cleanup."""

    def __init__(
        self,
        batches: Iterable[Mapping[str, np.ndarray[Any, Any]]],
        read_cache: ReadCache,
        write_cache: WriteCache,
        buffers: CudaBuffers,
        batch_size: int | None = None,
    ) -> None:
        # The iterator is created lazily: a cache hit must not start reading data.
        self._batches = batches
        self._iter: Iterator[Mapping[str, np.ndarray[Any, Any]]] | None = None
        self._batch_size = batch_size
        self._read_cache = read_cache
        self._write_cache = write_cache
        self._buffers = buffers
        self._peeked: Mapping[str, np.ndarray[Any, Any]] | None = None
        self._capacity: dict[str, int] = {}
        self.batches_fed = 0
        self.error: BaseException | None = None
        self._done = False

    def _peek(self) -> Mapping[str, np.ndarray[Any, Any]] | None:
        if self._peeked is None and not self._done:
            if self._iter is None:
                self._iter = iter(self._batches)
            self._peeked = next(self._iter, None)
        return self._peeked

    def batch_size(self) -> int:
        """TensorRT asks for this whether or not the cache is used (NvInfer.h,
        IInt8Calibrator::getBatchSize): answered from the calibration shape, reading no
        data; only without one (a caller that passes none) is the first batch peeked."""
        if self._batch_size is not None:
            return self._batch_size
        try:
            first = self._peek()
            if not first:
                return 1
            arr = next(iter(first.values()))
            return int(arr.shape[0]) if arr.ndim else 1
        except Exception as exc:
            self.error = exc
            return 1

    def next_pointers(self, names: list[str]) -> list[int] | None:
        """Copy the next batch to the device; None when the data (or an error) ends it."""
        try:
            batch = self._peek()
            self._peeked = None
            if batch is None:
                self.finish()
                return None
            missing = [n for n in names if n not in batch]
            if missing:
                raise CalibrationCacheError(
                    "calibration batch lacks network inputs", missing=missing
                )
            arrays = {n: np.ascontiguousarray(batch[n]) for n in names}
            if any(self._capacity.get(n, -1) < a.nbytes for n, a in arrays.items()):
                self._reallocate(arrays)
            for name, arr in arrays.items():
                self._buffers.copy_in(name, arr)
            self._buffers.synchronize()
            self.batches_fed += 1
            return [self._buffers.buffers[n].device_ptr for n in names]
        except Exception as exc:
            self.error = exc
            self.finish()
            return None

    def _reallocate(self, arrays: Mapping[str, np.ndarray[Any, Any]]) -> None:
        if self._capacity:
            # A batch larger than the first: start over with bigger buffers for every input.
            self._buffers.release()
            self._buffers = CudaBuffers(self._buffers._rt)
            self._capacity.clear()
        for name, arr in arrays.items():
            self._buffers.allocate(name, arr.nbytes)
            self._capacity[name] = arr.nbytes

    def read(self) -> bytes | None:
        try:
            data = self._read_cache()
        except Exception as exc:
            self.error = exc
            return None
        if data:
            log.info("calibration cache hit", extra={"event": "calibration.cache.hit"})
        return data or None

    def write(self, cache: Any) -> None:
        try:
            self._write_cache(bytes(cache))
        except Exception as exc:
            self.error = exc

    def finish(self) -> None:
        """Free the device buffers (idempotent)."""
        self._done = True
        self._buffers.release()

    def raise_if_failed(self) -> None:
        if self.error is not None:
            err = self.error
            if isinstance(err, CalibrationCacheError):
                raise err
            raise CalibrationCacheError(
                f"calibration failed: {type(err).__name__}: {err}"
            ) from err


def make_entropy_calibrator(trt: Any, feeder: CalibrationFeeder) -> Any:
    """An ``IInt8EntropyCalibrator2`` subclass instance that delegates to ``feeder``."""

    class EntropyCalibrator(trt.IInt8EntropyCalibrator2):  # type: ignore[misc]
        def __init__(self) -> None:
            # pybind11 trampolines need the base initialiser called explicitly.
            trt.IInt8EntropyCalibrator2.__init__(self)
            self.feeder = feeder

        def get_batch_size(self) -> int:
            return feeder.batch_size()

        def get_batch(self, names: list[str]) -> list[int] | None:
            return feeder.next_pointers(list(names))

        def read_calibration_cache(self) -> bytes | None:
            return feeder.read()

        def write_calibration_cache(self, cache: Any) -> None:
            feeder.write(cache)

    return EntropyCalibrator()
