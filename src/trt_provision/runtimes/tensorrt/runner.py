"""Running a loaded engine: staged inputs, ``execute_async_v3``, outputs, release."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from trt_provision.errors import InferenceError, InternalError, TrtProvisionError
from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers
from trt_provision.seams import MemoryBudget
from trt_provision.types import EngineCacheEntry

__all__ = [
    "TensorrtEngineHandle",
    "free",
    "infer_staged",
    "input_views",
    "run",
    "set_input_shape",
]


@dataclass
class TensorrtEngineHandle:
    """A deserialized engine with its context, stream and IO buffers."""

    entry: EngineCacheEntry
    _owner: int = 0
    _engine: Any = None
    _context: Any = None
    _buffers: CudaBuffers | None = None
    _reservation: int | None = None
    _inputs: dict[str, tuple[Any, tuple[tuple[int, ...], tuple[int, ...]]]] = field(
        default_factory=dict
    )
    _outputs: dict[str, Any] = field(default_factory=dict)
    _staged: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _released: bool = False

    @property
    def released(self) -> bool:
        return self._released

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)


def buffers_of(handle: TensorrtEngineHandle) -> CudaBuffers:
    if handle._buffers is None:
        raise InternalError("loaded handle without buffers")
    return handle._buffers


def check_names(handle: TensorrtEngineHandle, given_names: Iterable[str]) -> None:
    expected, given = set(handle._inputs), set(given_names)
    if expected != given:
        raise InferenceError("input names do not match the engine",
                             missing=sorted(expected - given),
                             unexpected=sorted(given - expected))


def _check_shape(
    name: str, shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]
) -> None:
    if len(shape) != len(lo) or any(
        not a <= d <= b for d, a, b in zip(shape, lo, hi, strict=True)
    ):
        raise InferenceError("input shape outside the engine's profile", name=name,
                             shape=shape, min=lo, max=hi)


def _check_inputs(
    handle: TensorrtEngineHandle, inputs: Mapping[str, Any]
) -> dict[str, np.ndarray[Any, Any]]:
    """Contiguous arrays of the engine's dtypes within its profile (names already checked)."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for name, (dtype, (lo, hi)) in handle._inputs.items():
        arr = np.ascontiguousarray(inputs[name])  # a contiguous array (or view) stays itself
        if arr.dtype != dtype:
            raise InferenceError("input dtype does not match the engine", name=name,
                                 expected=str(dtype), found=str(arr.dtype))
        _check_shape(name, tuple(arr.shape), lo, hi)
        arrays[name] = arr
    return arrays


def set_input_shape(
    context: Any, name: str, shape: tuple[int, ...], handle: TensorrtEngineHandle
) -> None:
    if not context.set_input_shape(name, shape):
        raise InferenceError("TensorRT refused the input shape", name=name, shape=shape,
                             path=str(handle.entry.engine_path))


def input_views(
    own: TensorrtEngineHandle, shapes: Mapping[str, Sequence[int]]
) -> dict[str, np.ndarray[Any, Any]]:
    buffers = buffers_of(own)
    check_names(own, shapes)
    views: dict[str, np.ndarray[Any, Any]] = {}
    for name, (dtype, (lo, hi)) in own._inputs.items():
        shape = tuple(int(d) for d in shapes[name])
        _check_shape(name, shape, lo, hi)
        views[name] = buffers.host_view(name, dtype, shape)
    own._staged = {name: tuple(view.shape) for name, view in views.items()}
    return views


def infer_staged(own: TensorrtEngineHandle, copy_outputs: bool) -> dict[str, np.ndarray[Any, Any]]:
    if not own._staged:
        raise InferenceError("no staged inputs: call input_views first",
                             path=str(own.entry.engine_path))
    buffers = buffers_of(own)
    views = {
        name: buffers.host_view(name, own._inputs[name][0], shape)
        for name, shape in own._staged.items()
    }
    return run(own, views, copy_outputs)


def run(
    own: TensorrtEngineHandle, inputs: Mapping[str, Any], copy_outputs: bool
) -> dict[str, np.ndarray[Any, Any]]:
    """H2D, ``execute_async_v3``, D2H and a sync on the handle's own stream."""
    arrays = _check_inputs(own, inputs)
    context, buffers = own._context, buffers_of(own)
    try:
        for name, arr in arrays.items():
            set_input_shape(context, name, tuple(arr.shape), own)
        for name, arr in arrays.items():
            buffers.copy_in(name, arr)  # no host copy when arr already is the pinned view
        if not context.execute_async_v3(buffers.stream_handle):
            raise InferenceError("TensorRT execute_async_v3 reported failure",
                                 path=str(own.entry.engine_path))
        shapes: dict[str, tuple[int, ...]] = {}
        for name, dtype in own._outputs.items():
            shapes[name] = tuple(int(d) for d in context.get_tensor_shape(name))
            buffers.copy_out(name, int(np.prod(shapes[name])) * dtype.itemsize)
        buffers.synchronize()
        return {
            name: buffers.read_out(name, dtype, shapes[name], copy=copy_outputs)
            for name, dtype in own._outputs.items()
        }
    except TrtProvisionError:
        raise
    except Exception as exc:
        raise InferenceError(
            f"inference failed: {type(exc).__name__}: {exc}", path=str(own.entry.engine_path)
        ) from exc


def free(handle: TensorrtEngineHandle, budget: MemoryBudget | None) -> None:
    """Free buffers, drop TensorRT objects, give the reservation back (each at most once)."""
    handle._released = True
    try:
        if handle._buffers is not None:
            handle._buffers.release()
    finally:
        handle._buffers = None
        handle._context = None
        handle._engine = None
        if handle._reservation is not None and budget is not None:
            reservation, handle._reservation = handle._reservation, None
            budget.release(reservation)
