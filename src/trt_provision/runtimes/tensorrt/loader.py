"""Deserializing engines: plugins first, then the engine, its context and its I/O buffers.

Like Polygraphy's ``EngineFromBytes`` (NVIDIA/TensorRT tools/Polygraphy/polygraphy/backend/
trt/loader.py), plugins are registered before any ``deserialize_cuda_engine`` (once per
process, :func:`~._process.ensure_plugins`): an engine with plugin layers does not
deserialize otherwise. The same holds for the memory stamp read back right after a build.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from trt_provision.errors import EngineBuildError, InferenceError, TrtProvisionError
from trt_provision.runtimes.tensorrt._context import TrtContext
from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers
from trt_provision.runtimes.tensorrt.runner import TensorrtEngineHandle, set_input_shape

__all__ = [
    "check_io_dtype",
    "input_shape_range",
    "load_into",
    "memory_stamp",
    "set_runtime_dla_core",
]

# No numpy dtype exists for these (``trt.nptype`` maps only FLOAT, HALF, INT8, INT32, INT64,
# BOOL and UINT8 and raises TypeError otherwise: NVIDIA/TensorRT v10.3.0..v11.1
# python/packaging/bindings_wheel/tensorrt/__init__.py, ``nptype``), so host staging buffers
# cannot be typed; refused by name.
_UNSTAGEABLE_DTYPES = frozenset({"BF16", "FP8", "INT4", "FP4", "E8M0"})


def _dtype_name(dtype: Any) -> str:
    return str(getattr(dtype, "name", dtype)).rsplit(".", 1)[-1]


def check_io_dtype(trt: Any, name: str, dtype: Any) -> np.dtype[Any]:
    """The numpy dtype of an I/O tensor, or an InferenceError naming the tensor."""
    type_name = _dtype_name(dtype)
    if type_name in _UNSTAGEABLE_DTYPES:
        raise InferenceError(
            f"I/O tensor {name!r} is {type_name}, which has no numpy type; keep model inputs "
            "and outputs FP32/FP16/INT8/INT32/INT64/BOOL/UINT8", tensor=name, dtype=type_name)
    try:
        found: np.dtype[Any] = np.dtype(trt.nptype(dtype))
        return found
    except (TypeError, KeyError) as exc:
        raise InferenceError(f"I/O tensor {name!r} has an unsupported type {type_name}",
                             tensor=name, dtype=type_name) from exc


def load_into(ctx: TrtContext, handle: TensorrtEngineHandle) -> None:
    trt = ctx.trt()
    ctx.register_plugins(trt)
    runtime = trt.Runtime(ctx.logger(trt))
    runtime.engine_host_code_allowed = bool(ctx.options.allow_engine_host_code)
    set_runtime_dla_core(runtime, handle.entry.identity.dla_core)
    path = str(handle.entry.engine_path)
    data = Path(handle.entry.engine_path).read_bytes()
    engine = runtime.deserialize_cuda_engine(data)
    if engine is None:
        raise InferenceError("TensorRT could not deserialize the engine", path=path)
    handle._engine = engine
    names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
    input_mode = trt.TensorIOMode.INPUT
    dtypes: dict[str, np.dtype[Any]] = {}
    for name in names:
        if engine.is_shape_inference_io(name):
            raise InferenceError(
                "engine has a shape-tensor input or output (host memory); such engines are "
                "not supported", path=path, tensor=name)
        dtypes[name] = check_io_dtype(trt, name, engine.get_tensor_dtype(name))
    context = engine.create_execution_context()
    if context is None:
        raise InferenceError("TensorRT could not create an execution context", path=path)
    handle._context = context
    handle._buffers = CudaBuffers(ctx.cuda())
    _ = handle._buffers.stream  # the handle's own stream, created with it
    for name in names:
        if engine.get_tensor_mode(name) == input_mode:
            lo, hi = input_shape_range(engine, name)
            handle._inputs[name] = (dtypes[name], (lo, hi))
            set_input_shape(context, name, tuple(hi), handle)
    for name in names:
        if name in handle._inputs:
            dtype, (_lo, hi) = handle._inputs[name]
            nbytes = int(np.prod(hi)) * dtype.itemsize
        else:
            dtype = dtypes[name]
            handle._outputs[name] = dtype
            shape = tuple(int(d) for d in context.get_tensor_shape(name))
            if any(d < 0 for d in shape):
                # Data-dependent output shapes need an output allocator, not a buffer
                # sized at load time; refuse instead of allocating a wrong one.
                raise InferenceError(
                    "engine has an output whose shape depends on the data (-1 even at "
                    "the max input shapes); such engines are not supported",
                    path=path, output=name, shape=shape)
            nbytes = int(np.prod(shape)) * dtype.itemsize
        buf = handle._buffers.allocate(name, nbytes)
        if not context.set_tensor_address(name, buf.device_ptr):
            raise InferenceError("TensorRT refused the tensor address", name=name, path=path)


def input_shape_range(engine: Any, name: str) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """(min, max) shape of an input: its static shape when it has no dynamic dimension (an
    engine built without a profile has no profile shapes: ``getProfileShape`` returns
    Dims{-1, {}}, NvInferRuntime.h v10.3.0), else profile 0's min and max."""
    shape = tuple(int(d) for d in engine.get_tensor_shape(name))
    if all(d >= 0 for d in shape):
        return shape, shape
    lo, _opt, hi = engine.get_tensor_profile_shape(name, 0)
    return tuple(int(d) for d in lo), tuple(int(d) for d in hi)


def set_runtime_dla_core(runtime: Any, dla_core: int | None) -> None:
    """The DLA core a DLA engine executes on is chosen by the runtime that deserializes it
    (NVIDIA/TensorRT include/NvInferRuntime.h, ``IRuntime::setDLACore``; trtexec sets it
    before every load: samples/common/sampleEngines.cpp). The identity names the core the
    engine was built for, so it is the core it runs on."""
    if dla_core is not None:
        runtime.DLA_core = int(dla_core)


def memory_stamp(
    trt: Any, logger: Any, data: bytes, *, integrated: bool = False,
    dla_core: int | None = None,
) -> dict[str, Any]:
    """Device memory and I/O bytes at max shapes, read back from the built engine.

    Every I/O tensor gets a device buffer and a pinned host copy of the same size
    (:class:`CudaBuffers`). On a GPU that shares RAM with the host (Jetson) both come out of
    the same memory, so ``io_bytes_at_max_shapes`` counts both there.
    """
    try:
        runtime = trt.Runtime(logger)
        set_runtime_dla_core(runtime, dla_core)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineBuildError("the freshly built engine does not deserialize")
        per_profile = [
            int(engine.get_device_memory_size_for_profile_v2(i))
            for i in range(engine.num_optimization_profiles)
        ]
        context = engine.create_execution_context()
        input_mode = trt.TensorIOMode.INPUT
        io_bytes = 0
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) == input_mode:
                hi = input_shape_range(engine, name)[1]
                if context is not None and not context.set_input_shape(name, hi):
                    # Output sizes read after a refused shape would be the wrong ones.
                    raise EngineBuildError(
                        "TensorRT refused the max input shape of the freshly built engine",
                        input=name, shape=list(hi))
        for name in names:
            itemsize = check_io_dtype(trt, name, engine.get_tensor_dtype(name)).itemsize
            if engine.get_tensor_mode(name) == input_mode:
                shape = input_shape_range(engine, name)[1]
            elif context is not None:
                shape = tuple(context.get_tensor_shape(name))
            else:
                shape = tuple(engine.get_tensor_shape(name))
            io_bytes += int(np.prod([max(int(d), 1) for d in shape])) * itemsize
        return {
            "device_memory_bytes": int(engine.device_memory_size_v2),
            "device_memory_bytes_per_profile": per_profile,
            "io_bytes_at_max_shapes": 2 * io_bytes if integrated else io_bytes,
            "io_device_bytes": io_bytes,
            "pinned_host_bytes": io_bytes,
            "pinned_host_counted": integrated,
        }
    except TrtProvisionError as exc:
        if isinstance(exc, EngineBuildError):
            raise
        raise EngineBuildError(exc.message, **exc.context) from exc
    except Exception as exc:
        raise EngineBuildError(
            f"cannot read memory needs from the built engine: {type(exc).__name__}: {exc}"
        ) from exc
