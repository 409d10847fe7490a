"""Pinned host and device buffers, async copies and streams through cuda-python.

cuda-python 12.6+ and 13 expose the runtime API as ``cuda.bindings.runtime``; older releases
as ``cuda.cudart``. Both return ``(error, value...)`` tuples; :class:`CudaBuffers` checks each
result and raises :class:`~trt_provision.errors.InferenceError` naming the call.

Host memory is page-locked (``cudaMallocHost``) so ``cudaMemcpyAsync`` can run truly
asynchronously on the buffer's stream; numpy views are built over the pinned pointer, so
copying an input in is one ``np.copyto`` and reading an output back needs no extra copy
until the caller asks for one. A caller that writes its data straight into
:meth:`CudaBuffers.host_view` and calls :meth:`CudaBuffers.upload` skips the staging copy
entirely (:meth:`CudaBuffers.is_staged` tells whether an array already is such a view).

Host-side copies made here (staging an input, copying an output out of pinned memory) are
counted in :attr:`CudaBuffers.host_copies` / :attr:`CudaBuffers.host_copy_bytes`.
"""

from __future__ import annotations

import ctypes
import logging
from dataclasses import dataclass
from typing import Any

import numpy as np

from trt_provision._lazy import import_optional
from trt_provision.errors import InferenceError, MissingDependencyError

__all__ = ["CudaBuffers", "DeviceBuffer", "load_cudart"]

log = logging.getLogger(__name__)


def load_cudart() -> Any:
    """The cuda-python runtime module, whichever layout the installed release uses."""
    try:
        return import_optional("cuda.bindings.runtime", "cuda")
    except MissingDependencyError:
        # cuda-python < 12.6 ships the same API as cuda.cudart.
        return import_optional("cuda.cudart", "cuda")


@dataclass(frozen=True)
class DeviceBuffer:
    """One pinned host buffer and one device buffer of the same capacity."""

    name: str
    nbytes: int
    host_ptr: int
    device_ptr: int


class CudaBuffers:
    """Owns one stream and the buffers allocated on it; :meth:`release` frees everything."""

    def __init__(self, cudart: Any | None = None) -> None:
        self._rt = cudart if cudart is not None else load_cudart()
        self._buffers: dict[str, DeviceBuffer] = {}
        self._stream: Any = None
        self._released = False
        self.host_copies = 0
        self.host_copy_bytes = 0

    # ----------------------------------------------------------------- helpers
    def _check(self, call: str, result: Any) -> Any:
        """Unpack a cuda-python ``(err, value...)`` result; raise on a CUDA error."""
        if isinstance(result, tuple):
            err, rest = result[0], result[1:]
        else:
            err, rest = result, ()
        if int(err) != 0:
            text = ""
            try:
                text_result = self._rt.cudaGetErrorString(err)
                raw = text_result[1] if isinstance(text_result, tuple) else text_result
                text = raw.decode() if isinstance(raw, bytes) else str(raw)
            except Exception:  # the message is a courtesy; the code is what matters
                text = ""
            raise InferenceError(f"CUDA call {call} failed", error=int(err), reason=text)
        if not rest:
            return None
        return rest[0] if len(rest) == 1 else rest

    @property
    def stream(self) -> Any:
        if self._released:
            raise InferenceError("CUDA buffers were already released")
        if self._stream is None:
            self._stream = self._check("cudaStreamCreate", self._rt.cudaStreamCreate())
        return self._stream

    @property
    def stream_handle(self) -> int:
        """The stream as the integer handle TensorRT's ``execute_async_v3`` expects."""
        return int(self.stream)

    @property
    def buffers(self) -> dict[str, DeviceBuffer]:
        return dict(self._buffers)

    def allocate(self, name: str, nbytes: int) -> DeviceBuffer:
        """Pinned host + device memory of ``nbytes``; freed on partial failure."""
        if self._released:
            raise InferenceError("CUDA buffers were already released")
        if name in self._buffers:
            raise InferenceError("buffer already allocated", name=name)
        size = max(int(nbytes), 1)
        host = self._check("cudaMallocHost", self._rt.cudaMallocHost(size))
        try:
            device = self._check("cudaMalloc", self._rt.cudaMalloc(size))
        except BaseException:
            self._rt.cudaFreeHost(host)
            raise
        buf = DeviceBuffer(name, size, int(host), int(device))
        self._buffers[name] = buf
        return buf

    def host_view(self, name: str, dtype: Any, shape: tuple[int, ...]) -> np.ndarray[Any, Any]:
        """A numpy array over the pinned host memory of ``name`` (no copy)."""
        buf = self._buffers[name]
        dt = np.dtype(dtype)
        count = int(np.prod(shape, dtype=np.int64)) if shape else 1
        if count * dt.itemsize > buf.nbytes:
            raise InferenceError(
                "tensor does not fit its buffer",
                name=name, needed=count * dt.itemsize, capacity=buf.nbytes,
            )
        raw = (ctypes.c_byte * buf.nbytes).from_address(buf.host_ptr)
        flat: np.ndarray[Any, Any] = np.frombuffer(
            memoryview(raw).cast("B"), dtype=dt, count=count
        )
        return flat.reshape(shape)

    def is_staged(self, name: str, array: np.ndarray[Any, Any]) -> bool:
        """Whether ``array`` is a C-contiguous view starting at the pinned memory of ``name``."""
        buf = self._buffers.get(name)
        if buf is None or not array.flags.c_contiguous:
            return False
        address = int(array.__array_interface__["data"][0])
        return address == buf.host_ptr and array.nbytes <= buf.nbytes

    def copy_in(self, name: str, array: np.ndarray[Any, Any]) -> None:
        """Stage ``array`` in pinned memory (unless it is already there) and queue its H2D copy."""
        if not self.is_staged(name, array):
            view = self.host_view(name, array.dtype, tuple(array.shape))
            np.copyto(view, array, casting="no")
            self.host_copies += 1
            self.host_copy_bytes += array.nbytes
        self.upload(name, array.nbytes)

    def read_out(
        self, name: str, dtype: Any, shape: tuple[int, ...], *, copy: bool = True
    ) -> np.ndarray[Any, Any]:
        """The first ``shape`` elements of ``name``'s pinned memory: a copy, or the view itself.

        A view stays valid until the next copy into this buffer or :meth:`release`.
        """
        view = self.host_view(name, dtype, shape)
        if not copy:
            return view
        self.host_copies += 1
        self.host_copy_bytes += view.nbytes
        copied: np.ndarray[Any, Any] = view.copy()
        return copied

    def upload(self, name: str, nbytes: int) -> None:
        """Queue the host-to-device copy of the first ``nbytes`` already staged in ``name``."""
        buf = self._buffers[name]
        if nbytes > buf.nbytes:
            raise InferenceError("input larger than its buffer", name=name, needed=nbytes)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._check(
            "cudaMemcpyAsync(H2D)",
            self._rt.cudaMemcpyAsync(buf.device_ptr, buf.host_ptr, nbytes, kind, self.stream),
        )

    def copy_out(self, name: str, nbytes: int) -> None:
        """Queue the device-to-host copy of the first ``nbytes`` of ``name``."""
        buf = self._buffers[name]
        if nbytes > buf.nbytes:
            raise InferenceError("output larger than its buffer", name=name, needed=nbytes)
        kind = self._rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._check(
            "cudaMemcpyAsync(D2H)",
            self._rt.cudaMemcpyAsync(buf.host_ptr, buf.device_ptr, nbytes, kind, self.stream),
        )

    def synchronize(self) -> None:
        self._check("cudaStreamSynchronize", self._rt.cudaStreamSynchronize(self.stream))

    def release(self) -> None:
        """Free every buffer and the stream; idempotent, and tries everything even on errors."""
        if self._released:
            return
        self._released = True
        failures: list[str] = []
        for buf in self._buffers.values():
            for call, ptr in (("cudaFree", buf.device_ptr), ("cudaFreeHost", buf.host_ptr)):
                try:
                    self._check(call, getattr(self._rt, call)(ptr))
                except Exception as exc:  # keep freeing the rest
                    failures.append(f"{call}: {exc}")
        self._buffers.clear()
        if self._stream is not None:
            try:
                self._check("cudaStreamDestroy", self._rt.cudaStreamDestroy(self._stream))
            except Exception as exc:
                failures.append(f"cudaStreamDestroy: {exc}")
            self._stream = None
        if failures:
            log.warning(
                "cuda buffers released with errors",
                extra={"event": "cuda.release.error", "errors": failures},
            )


def device_compute_capability(cudart: Any, device: int = 0) -> tuple[int, int]:
    """(major, minor) of ``device`` via the CUDA runtime."""
    attrs = cudart.cudaDeviceAttr
    helper = CudaBuffers(cudart)
    major = helper._check(
        "cudaDeviceGetAttribute",
        cudart.cudaDeviceGetAttribute(attrs.cudaDevAttrComputeCapabilityMajor, device),
    )
    minor = helper._check(
        "cudaDeviceGetAttribute",
        cudart.cudaDeviceGetAttribute(attrs.cudaDevAttrComputeCapabilityMinor, device),
    )
    return int(major), int(minor)
