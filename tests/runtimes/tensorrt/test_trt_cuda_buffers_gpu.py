"""The cuda-python buffer path on a real GPU (no TensorRT needed)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from trt_provision._lazy import is_available

pytestmark = pytest.mark.tier2


def _cudart_or_skip() -> Any:
    if not is_available("cuda"):
        pytest.skip("cuda-python is not installed")
    from trt_provision.runtimes.tensorrt.cuda_buffers import load_cudart

    try:
        rt = load_cudart()
        err, count = rt.cudaGetDeviceCount()
    except Exception as exc:  # an import or driver failure means: no usable GPU here
        pytest.skip(f"CUDA runtime unusable: {exc}")
    if int(err) != 0 or count < 1:
        pytest.skip("no visible GPU")
    return rt


@pytest.fixture
def cudart() -> Any:
    return _cudart_or_skip()


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.int64, np.uint8])
def test_round_trip(cudart: Any, dtype: Any) -> None:
    from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers

    data = (np.arange(3 * 257 * 31) % 120).astype(dtype).reshape(3, 257, 31)
    buffers = CudaBuffers(cudart)
    try:
        buffers.allocate("a", data.nbytes)
        buffers.allocate("b", data.nbytes)
        buffers.copy_in("a", data)
        # device a -> host b through device b: D2D then D2H exercises both pointers
        bufs = buffers.buffers
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        buffers._check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(
            bufs["b"].device_ptr, bufs["a"].device_ptr, data.nbytes, kind, buffers.stream))
        buffers.copy_out("b", data.nbytes)
        buffers.synchronize()
        out = buffers.host_view("b", dtype, data.shape).copy()
        np.testing.assert_array_equal(out, data)
    finally:
        buffers.release()


def test_large_round_trip_and_release(cudart: Any) -> None:
    from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers

    data = np.random.default_rng(1).integers(0, 255, 64 << 20, dtype=np.uint8)
    _, free_before, _ = cudart.cudaMemGetInfo()
    buffers = CudaBuffers(cudart)
    buffers.allocate("x", data.nbytes)
    buffers.copy_in("x", data)
    buffers.host_view("x", np.uint8, data.shape)[:] = 0  # prove the result comes back
    buffers.copy_out("x", data.nbytes)
    buffers.synchronize()
    np.testing.assert_array_equal(buffers.host_view("x", np.uint8, data.shape), data)
    assert isinstance(buffers.stream_handle, int)
    buffers.release()
    buffers.release()  # idempotent
    _, free_after, _ = cudart.cudaMemGetInfo()
    assert free_after >= free_before - (8 << 20)


def test_cuda_errors_become_inference_errors(cudart: Any) -> None:
    from trt_provision.errors import InferenceError
    from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers

    buffers = CudaBuffers(cudart)
    try:
        with pytest.raises(InferenceError, match="cudaMalloc"):
            buffers.allocate("huge", 1 << 50)
        assert buffers.buffers == {}
    finally:
        buffers.release()


def test_compute_capability(cudart: Any) -> None:
    from trt_provision.runtimes.tensorrt.cuda_buffers import device_compute_capability

    major, minor = device_compute_capability(cudart)
    assert major >= 3 and minor >= 0


def test_zero_copy_round_trip_makes_no_host_copy(cudart: Any) -> None:
    from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers

    data = np.random.default_rng(2).standard_normal((64, 1024)).astype(np.float32)
    buffers = CudaBuffers(cudart)
    try:
        buffers.allocate("in", data.nbytes)
        buffers.allocate("out", data.nbytes)
        staged = buffers.host_view("in", np.float32, data.shape)
        staged[:] = data  # the caller produces its input straight into pinned memory
        assert buffers.is_staged("in", staged)
        buffers.copy_in("in", staged)
        bufs = buffers.buffers
        kind = cudart.cudaMemcpyKind.cudaMemcpyDeviceToDevice
        buffers._check("cudaMemcpyAsync", cudart.cudaMemcpyAsync(
            bufs["out"].device_ptr, bufs["in"].device_ptr, data.nbytes, kind, buffers.stream))
        buffers.copy_out("out", data.nbytes)
        buffers.synchronize()
        out = buffers.read_out("out", np.float32, data.shape, copy=False)
        np.testing.assert_array_equal(out, data)
        assert buffers.host_copies == 0
    finally:
        buffers.release()
