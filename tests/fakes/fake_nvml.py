"""An honest fake of the ``pynvml`` module: devices with state, and failures on demand.

It is a real module object, so it can be handed to any ``nvml_loader``. Only the calls
trt-provision makes are implemented; each call is recorded in ``calls``.
"""

from __future__ import annotations

import types
from collections.abc import Callable
from dataclasses import dataclass, field

GiB = 1 << 30

NVML_TEMPERATURE_GPU = 0


class NVMLError(Exception):
    """Stands in for pynvml.NVMLError (whose subclasses carry a numeric code)."""

    def __init__(self, message: str, code: int = 999) -> None:
        super().__init__(message)
        self.value = code


@dataclass
class FakeGpu:
    name: str = "NVIDIA H100 80GB HBM3"
    sm: tuple[int, int] = (9, 0)
    total_bytes: int = 80 * GiB
    used_bytes: int = 1 * GiB
    temperature_c: int = 35
    clocks_event_mask: int = 0x1  # idle
    memory_supported: bool = True

    @property
    def free_bytes(self) -> int:
        return self.total_bytes - self.used_bytes


@dataclass
class _MemoryInfo:
    total: int
    free: int
    used: int


@dataclass
class _Handle:
    index: int


@dataclass
class _State:
    gpus: list[FakeGpu] = field(default_factory=lambda: [FakeGpu()])
    driver: str = "580.95.05"
    cuda_driver: int = 13000
    fail: set[str] = field(default_factory=set)  # names of calls that raise NVMLError
    init_count: int = 0
    shutdown_count: int = 0
    calls: list[str] = field(default_factory=list)


class FakeNvml(types.ModuleType):
    """``FakeNvml()`` behaves like ``import pynvml`` on a host with the given GPUs."""

    NVMLError = NVMLError
    NVML_TEMPERATURE_GPU = NVML_TEMPERATURE_GPU

    def __init__(self, gpus: list[FakeGpu] | None = None, *, new_api: bool = True) -> None:
        super().__init__("pynvml")
        self.state = _State(gpus=list(gpus) if gpus is not None else [FakeGpu()])
        if not new_api:
            # Older bindings: only the "throttle" spelling exists.
            self.nvmlDeviceGetCurrentClocksEventReasons = None

    # ------------------------------------------------------------------ control

    def fail_on(self, *names: str) -> None:
        self.state.fail.update(names)

    def heal(self) -> None:
        self.state.fail.clear()

    @property
    def calls(self) -> list[str]:
        return self.state.calls

    @property
    def initialized(self) -> bool:
        return self.state.init_count > self.state.shutdown_count

    def loader(self) -> Callable[[], types.ModuleType | None]:
        return lambda: self

    def _enter(self, name: str, *, needs_init: bool = True) -> None:
        self.state.calls.append(name)
        if name in self.state.fail:
            raise NVMLError(f"{name}: injected failure")
        if needs_init and not self.initialized:
            raise NVMLError("Uninitialized", code=1)

    def _gpu(self, handle: _Handle) -> FakeGpu:
        return self.state.gpus[handle.index]

    # ------------------------------------------------------------------ pynvml API

    def nvmlInit(self) -> None:
        self._enter("nvmlInit", needs_init=False)
        self.state.init_count += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.state.shutdown_count += 1

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.state.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _Handle:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.state.gpus):
            raise NVMLError("Invalid Argument", code=2)
        return _Handle(index)

    def nvmlDeviceGetCudaComputeCapability(self, handle: _Handle) -> tuple[int, int]:
        self._enter("nvmlDeviceGetCudaComputeCapability")
        return self._gpu(handle).sm

    def nvmlDeviceGetName(self, handle: _Handle) -> str:
        self._enter("nvmlDeviceGetName")
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle: _Handle) -> _MemoryInfo:
        self._enter("nvmlDeviceGetMemoryInfo")
        gpu = self._gpu(handle)
        if not gpu.memory_supported:
            raise NVMLError("Not Supported", code=3)
        return _MemoryInfo(total=gpu.total_bytes, free=gpu.free_bytes, used=gpu.used_bytes)

    def nvmlSystemGetDriverVersion(self) -> str:
        self._enter("nvmlSystemGetDriverVersion")
        return self.state.driver

    def nvmlSystemGetCudaDriverVersion(self) -> int:
        self._enter("nvmlSystemGetCudaDriverVersion")
        return self.state.cuda_driver

    def nvmlDeviceGetTemperature(self, handle: _Handle, sensor: int) -> int:
        self._enter("nvmlDeviceGetTemperature")
        if sensor != NVML_TEMPERATURE_GPU:
            raise NVMLError("Invalid Argument", code=2)
        return self._gpu(handle).temperature_c

    def nvmlDeviceGetCurrentClocksEventReasons(self, handle: _Handle) -> int:
        self._enter("nvmlDeviceGetCurrentClocksEventReasons")
        return self._gpu(handle).clocks_event_mask

    def nvmlDeviceGetCurrentClocksThrottleReasons(self, handle: _Handle) -> int:
        self._enter("nvmlDeviceGetCurrentClocksThrottleReasons")
        return self._gpu(handle).clocks_event_mask
