"""CudaBuffers against the fake CUDA runtime: error checks, partial failure, release."""

from __future__ import annotations

import numpy as np
import pytest

from fakes.fake_cuda import FakeCudaRuntime, cudaError_t
from trt_provision.errors import InferenceError
from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers, device_compute_capability

pytestmark = pytest.mark.tier1


def test_round_trip_and_release() -> None:
    cuda = FakeCudaRuntime()
    buffers = CudaBuffers(cuda)
    buffers.allocate("x", 64)
    data = np.arange(16, dtype=np.float32)
    buffers.copy_in("x", data)
    buffers.host_view("x", np.float32, (16,))[:] = 0
    buffers.copy_out("x", data.nbytes)
    buffers.synchronize()
    np.testing.assert_array_equal(buffers.host_view("x", np.float32, (16,)), data)
    buffers.release()
    buffers.release()
    assert cuda.live == {} and cuda.live_streams == set()


def test_device_failure_frees_the_host_half() -> None:
    cuda = FakeCudaRuntime()
    cuda.fail("cudaMalloc")
    buffers = CudaBuffers(cuda)
    with pytest.raises(InferenceError, match="cudaMalloc") as info:
        buffers.allocate("x", 64)
    assert info.value.context["error"] == int(cudaError_t.cudaErrorMemoryAllocation)
    assert "fake" in info.value.context["reason"]
    assert cuda.live == {}


def test_oversized_and_duplicate_and_released_use() -> None:
    buffers = CudaBuffers(FakeCudaRuntime())
    buffers.allocate("x", 8)
    with pytest.raises(InferenceError, match="does not fit"):
        buffers.copy_in("x", np.zeros(4, np.float32))
    with pytest.raises(InferenceError, match="already allocated"):
        buffers.allocate("x", 8)
    buffers.release()
    with pytest.raises(InferenceError, match="released"):
        buffers.allocate("y", 8)


def test_release_keeps_going_after_an_error() -> None:
    cuda = FakeCudaRuntime()
    buffers = CudaBuffers(cuda)
    buffers.allocate("a", 8)
    buffers.allocate("b", 8)
    cuda.fail("cudaFree", cudaError_t.cudaErrorInvalidValue)
    buffers.release()
    assert set(cuda.live.values()) == {"device"}  # host halves still freed
    assert len(cuda.recorder.calls_to("cudaFreeHost")) == 2


def test_compute_capability_from_attributes() -> None:
    assert device_compute_capability(FakeCudaRuntime(compute_capability=(9, 0))) == (9, 0)


def test_staged_views_skip_the_host_copy_and_others_are_counted() -> None:
    cuda = FakeCudaRuntime()
    buffers = CudaBuffers(cuda)
    buf = buffers.allocate("x", 64)
    view = buffers.host_view("x", np.float32, (16,))
    view[:] = np.arange(16)
    assert buffers.is_staged("x", view) and not buffers.is_staged("y", view)
    assert not buffers.is_staged("x", view[1:]) and not buffers.is_staged("x", view[::2])
    assert not buffers.is_staged("x", np.arange(16, dtype=np.float32))
    buffers.copy_in("x", view)
    assert buffers.host_copies == 0
    (h2d,) = cuda.recorder.calls_to("cudaMemcpyAsync.cudaMemcpyHostToDevice")
    assert h2d.args[1:] == (buf.host_ptr, 64, buffers.stream_handle)
    buffers.copy_in("x", np.zeros(4, np.float32))
    assert (buffers.host_copies, buffers.host_copy_bytes) == (1, 16)
    buffers.copy_out("x", 64)
    buffers.synchronize()
    same = buffers.read_out("x", np.float32, (4,), copy=False)
    assert int(same.__array_interface__["data"][0]) == buf.host_ptr
    assert buffers.host_copies == 1
    copied = buffers.read_out("x", np.float32, (4,))
    assert buffers.host_copies == 2 and not np.shares_memory(copied, same)
    buffers.release()


def test_fake_cuda_refuses_copies_and_syncs_on_a_stream_it_does_not_hold() -> None:
    cuda = FakeCudaRuntime()
    _, src = cuda.cudaMallocHost(4)
    _, dst = cuda.cudaMalloc(4)
    _, stream = cuda.cudaStreamCreate()
    kind = cuda.cudaMemcpyKind.cudaMemcpyHostToDevice
    assert cuda.cudaMemcpyAsync(dst, src, 4, kind, stream) == (cudaError_t.cudaSuccess,)
    assert cuda.cudaMemcpyAsync(dst, src, 4, kind, stream + 1) == (
        cudaError_t.cudaErrorInvalidValue,)
    assert cuda.copy_streams == [("cudaMemcpyAsync.cudaMemcpyHostToDevice", stream),
                                 ("cudaMemcpyAsync.cudaMemcpyHostToDevice", stream + 1)]
    cuda.cudaStreamDestroy(stream)
    assert cuda.cudaStreamSynchronize(stream) == (cudaError_t.cudaErrorInvalidValue,)
