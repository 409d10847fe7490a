"""Lazy, shared access to NVML (``pynvml`` from the ``nvml`` extra).

The host probe, the free-memory probe and the thermal publisher all read NVML through
:class:`NvmlClient`, which imports nothing until first used and turns every NVML failure
into :class:`NvmlUnavailable` so callers can fall back instead of crashing mid-run.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from types import ModuleType
from typing import Any

from trt_provision._lazy import is_available

__all__ = [
    "NVML_NOT_THROTTLING",
    "NVML_THROTTLE_REASONS",
    "NvmlClient",
    "NvmlLoader",
    "NvmlUnavailable",
    "decode_throttle_reasons",
    "default_nvml_loader",
]

log = logging.getLogger(__name__)

NvmlLoader = Callable[[], ModuleType | None]

# Bits of nvmlDeviceGetCurrentClocksEventReasons (formerly ...ThrottleReasons); the values
# are part of NVML's stable C API.
NVML_THROTTLE_REASONS: tuple[tuple[int, str], ...] = (
    (0x0001, "gpu_idle"),
    (0x0002, "applications_clocks_setting"),
    (0x0004, "sw_power_cap"),
    (0x0008, "hw_slowdown"),
    (0x0010, "sync_boost"),
    (0x0020, "sw_thermal_slowdown"),
    (0x0040, "hw_thermal_slowdown"),
    (0x0080, "hw_power_brake_slowdown"),
    (0x0100, "display_clock_setting"),
)

# Reasons that lower clocks without the GPU being held back by heat or power.
NVML_NOT_THROTTLING: frozenset[str] = frozenset(
    {"gpu_idle", "applications_clocks_setting", "display_clock_setting"}
)

_NVML_TEMPERATURE_GPU = 0


class NvmlUnavailable(Exception):
    """NVML is not installed, has no driver, or failed; callers fall back."""


def default_nvml_loader() -> ModuleType | None:
    """Import ``pynvml`` if it is installed; None otherwise (never raises)."""
    if not is_available("pynvml"):
        return None
    try:
        import pynvml

        module: ModuleType = pynvml
        return module
    except ImportError:
        return None


def decode_throttle_reasons(mask: int) -> tuple[str, ...]:
    """Names of every bit set in an NVML clocks-event mask; unknown bits as ``bit_0x..``."""
    names = [name for bit, name in NVML_THROTTLE_REASONS if mask & bit]
    known = 0
    for bit, _ in NVML_THROTTLE_REASONS:
        known |= bit
    rest = mask & ~known
    bit = 1
    while rest:
        if rest & bit:
            names.append(f"bit_{bit:#x}")
            rest &= ~bit
        bit <<= 1
    return tuple(names)


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class NvmlClient:
    """One initialised NVML session, opened on first use and reused (thread-safe)."""

    def __init__(self, loader: NvmlLoader = default_nvml_loader) -> None:
        self._loader = loader
        self._lock = threading.Lock()
        self._nvml: Any = None

    def _module(self) -> Any:
        with self._lock:
            if self._nvml is not None:
                return self._nvml
            module = self._loader()
            if module is None:
                raise NvmlUnavailable("pynvml is not installed")
            try:
                module.nvmlInit()
            except Exception as exc:  # NVMLError_LibraryNotFound, DriverNotLoaded...
                raise NvmlUnavailable(f"nvmlInit failed: {exc}") from exc
            self._nvml = module
            return module

    def _call(self, what: str, fn: Callable[[Any], Any]) -> Any:
        nvml = self._module()
        try:
            return fn(nvml)
        except Exception as exc:  # NVMLError_GpuIsLost, Unknown, NotSupported...
            raise NvmlUnavailable(f"{what} failed: {exc}") from exc

    def device_count(self) -> int:
        return int(self._call("nvmlDeviceGetCount", lambda n: n.nvmlDeviceGetCount()))

    def _handle(self, nvml: Any, index: int) -> Any:
        return nvml.nvmlDeviceGetHandleByIndex(index)

    def memory_info(self, index: int = 0) -> tuple[int, int]:
        """(free, total) bytes of one device."""
        info = self._call(
            "nvmlDeviceGetMemoryInfo",
            lambda n: n.nvmlDeviceGetMemoryInfo(self._handle(n, index)),
        )
        return int(info.free), int(info.total)

    def temperature_c(self, index: int = 0) -> float:
        return float(
            self._call(
                "nvmlDeviceGetTemperature",
                lambda n: n.nvmlDeviceGetTemperature(
                    self._handle(n, index),
                    getattr(n, "NVML_TEMPERATURE_GPU", _NVML_TEMPERATURE_GPU),
                ),
            )
        )

    def clocks_event_mask(self, index: int = 0) -> int:
        def query(n: Any) -> Any:
            handle = self._handle(n, index)
            # The newer name first; older bindings only have the "throttle" spelling.
            fn = getattr(n, "nvmlDeviceGetCurrentClocksEventReasons", None)
            if fn is None:
                fn = n.nvmlDeviceGetCurrentClocksThrottleReasons
            return fn(handle)

        return int(self._call("nvmlDeviceGetCurrentClocksEventReasons", query))

    def compute_capability(self, index: int = 0) -> tuple[int, int]:
        major, minor = self._call(
            "nvmlDeviceGetCudaComputeCapability",
            lambda n: n.nvmlDeviceGetCudaComputeCapability(self._handle(n, index)),
        )
        return int(major), int(minor)

    def name(self, index: int = 0) -> str:
        return _text(
            self._call(
                "nvmlDeviceGetName", lambda n: n.nvmlDeviceGetName(self._handle(n, index))
            )
        )

    def driver_version(self) -> str:
        return _text(
            self._call("nvmlSystemGetDriverVersion", lambda n: n.nvmlSystemGetDriverVersion())
        )

    def cuda_driver_version(self) -> str:
        raw = int(
            self._call(
                "nvmlSystemGetCudaDriverVersion", lambda n: n.nvmlSystemGetCudaDriverVersion()
            )
        )
        return f"{raw // 1000}.{(raw % 1000) // 10}"

    def close(self) -> None:
        """Shut the session down; a later call opens a new one."""
        with self._lock:
            nvml, self._nvml = self._nvml, None
        if nvml is None:
            return
        try:
            nvml.nvmlShutdown()
        except Exception:
            log.debug("nvmlShutdown failed", exc_info=True)
