"""A recording fake of the slice of ``cuda.bindings.runtime`` (cuda-python) the runtime uses.

Host and "device" allocations are real ctypes buffers, so code that builds numpy views on the
returned pointers works unchanged; copies happen at once (a stream is just a counter). Every
call is recorded (an async copy with its stream as the last argument, also listed in
``copy_streams``); an async copy or a sync on a stream that was never created, or already
destroyed, fails with ``cudaErrorInvalidValue``; ``fail(name, error)`` makes a call return that CUDA error code, or raise.
``live`` lists allocations not yet freed, for leak checks.
"""

from __future__ import annotations

import ctypes
import enum
from typing import Any

try:  # share the recorder type with the fake tensorrt when both are used
    from fakes.fake_tensorrt import Recorder
except ImportError:  # pragma: no cover - imported as a top-level module
    from fake_tensorrt import Recorder  # type: ignore[no-redef]

__all__ = ["FakeCudaRuntime"]


class cudaError_t(enum.IntEnum):
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorNoDevice = 100


class cudaMemcpyKind(enum.IntEnum):
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


class cudaDeviceAttr(enum.IntEnum):
    cudaDevAttrComputeCapabilityMajor = 75
    cudaDevAttrComputeCapabilityMinor = 76


class FakeCudaRuntime:
    """Stands in for the ``cuda.bindings.runtime`` module (pass it where a module goes)."""

    cudaError_t = cudaError_t
    cudaMemcpyKind = cudaMemcpyKind
    cudaDeviceAttr = cudaDeviceAttr

    def __init__(
        self, recorder: Recorder | None = None, *, device_count: int = 1,
        compute_capability: tuple[int, int] = (8, 7),
    ) -> None:
        self.recorder = recorder or Recorder()
        self.device_count = device_count
        self.compute_capability = compute_capability
        self._buffers: dict[int, ctypes.Array[ctypes.c_char]] = {}
        self.kinds: dict[int, str] = {}
        self._sizes: dict[int, int] = {}
        self._errors: dict[str, cudaError_t] = {}
        self._next_stream = 1
        self.live_streams: set[int] = set()
        # (call name, stream) of every async copy, in order.
        self.copy_streams: list[tuple[str, int]] = []

    # ----------------------------------------------------------------- test controls
    def fail(self, name: str, error: cudaError_t = cudaError_t.cudaErrorMemoryAllocation) -> None:
        self._errors[name] = error

    def fail_raise(self, name: str, exc: BaseException | None = None) -> None:
        self.recorder.fail(name, exc)

    @property
    def live(self) -> dict[int, str]:
        return dict(self.kinds)

    def write_device(self, ptr: int, data: bytes) -> None:
        ctypes.memmove(ptr, data, len(data))

    def allocation_size(self, ptr: int) -> int | None:
        """Bytes requested for the live allocation starting at ``ptr`` (None: not one)."""
        if ptr not in self.kinds:
            return None
        return self._sizes[ptr]

    def read_device(self, ptr: int, count: int) -> bytes:
        return ctypes.string_at(ptr, count)

    def _call(self, name: str, *args: Any) -> cudaError_t:
        self.recorder.record(name, *args)
        return self._errors.get(name, cudaError_t.cudaSuccess)

    def _alloc(self, name: str, size: int, kind: str) -> tuple[cudaError_t, int]:
        err = self._call(name, size)
        if err != cudaError_t.cudaSuccess:
            return err, 0
        buf = ctypes.create_string_buffer(max(size, 1))
        ptr = ctypes.addressof(buf)
        self._buffers[ptr] = buf
        self.kinds[ptr] = kind
        self._sizes[ptr] = size
        return err, ptr

    def _free(self, name: str, ptr: int, kind: str) -> tuple[cudaError_t]:
        err = self._call(name, ptr)
        if err == cudaError_t.cudaSuccess:
            if self.kinds.get(ptr) != kind:
                return (cudaError_t.cudaErrorInvalidValue,)
            del self._buffers[ptr]
            del self.kinds[ptr]
            del self._sizes[ptr]
        return (err,)

    # ----------------------------------------------------------------- runtime API
    def cudaGetErrorString(self, error: cudaError_t) -> tuple[cudaError_t, bytes]:
        return cudaError_t.cudaSuccess, f"fake {cudaError_t(error).name}".encode()

    def cudaGetDeviceCount(self) -> tuple[cudaError_t, int]:
        err = self._call("cudaGetDeviceCount")
        if self.device_count == 0:
            return cudaError_t.cudaErrorNoDevice, 0
        return err, self.device_count

    def cudaDeviceGetAttribute(self, attr: cudaDeviceAttr, device: int) -> tuple[cudaError_t, int]:
        err = self._call("cudaDeviceGetAttribute", attr, device)
        major, minor = self.compute_capability
        value = major if attr == cudaDeviceAttr.cudaDevAttrComputeCapabilityMajor else minor
        return err, value

    def cudaMallocHost(self, size: int) -> tuple[cudaError_t, int]:
        return self._alloc("cudaMallocHost", size, "host")

    def cudaMalloc(self, size: int) -> tuple[cudaError_t, int]:
        return self._alloc("cudaMalloc", size, "device")

    def cudaFreeHost(self, ptr: int) -> tuple[cudaError_t]:
        return self._free("cudaFreeHost", ptr, "host")

    def cudaFree(self, ptr: int) -> tuple[cudaError_t]:
        return self._free("cudaFree", ptr, "device")

    def cudaStreamCreate(self) -> tuple[cudaError_t, int]:
        err = self._call("cudaStreamCreate")
        if err != cudaError_t.cudaSuccess:
            return err, 0
        stream = self._next_stream
        self._next_stream += 1
        self.live_streams.add(stream)
        return err, stream

    def cudaStreamDestroy(self, stream: int) -> tuple[cudaError_t]:
        err = self._call("cudaStreamDestroy", stream)
        self.live_streams.discard(int(stream))
        return (err,)

    def cudaStreamSynchronize(self, stream: int) -> tuple[cudaError_t]:
        err = self._call("cudaStreamSynchronize", stream)
        if err == cudaError_t.cudaSuccess and int(stream) not in self.live_streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        return (err,)

    def cudaMemcpyAsync(
        self, dst: int, src: int, count: int, kind: cudaMemcpyKind, stream: int
    ) -> tuple[cudaError_t]:
        name = f"cudaMemcpyAsync.{cudaMemcpyKind(kind).name}"
        err = self._call(name, dst, src, count, int(stream))
        self.copy_streams.append((name, int(stream)))
        if err == cudaError_t.cudaSuccess and int(stream) not in self.live_streams:
            return (cudaError_t.cudaErrorInvalidValue,)
        if err == cudaError_t.cudaSuccess:
            ctypes.memmove(dst, src, count)
        return (err,)

    def cudaMemcpy(
        self, dst: int, src: int, count: int, kind: cudaMemcpyKind
    ) -> tuple[cudaError_t]:
        err = self._call(f"cudaMemcpy.{cudaMemcpyKind(kind).name}", dst, src, count)
        if err == cudaError_t.cudaSuccess:
            ctypes.memmove(dst, src, count)
        return (err,)
