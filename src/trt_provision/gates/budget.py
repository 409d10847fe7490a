"""GPU memory budget: admit an engine only if it fits, before any runtime call.

Prediction per engine (bytes)::

    engine file size + device_memory_bytes + io_bytes_at_max_shapes

The two figures come from the engine's metadata sidecar (``entry.extras["metadata"]``),
stamped by the runtime at compile time. When either is missing or malformed the budget
assumes ``2 x file size + 128 MiB`` (never less than what the known figures add up to): an
engine's activation memory is usually well below its weight size, and the margin covers
the execution context and small IO buffers of a model whose weights are tiny.

The limit is the smaller of the configured budget and what the device has free now, read
through a :class:`FreeMemoryProbe`: NVML free memory on a discrete GPU; on a Jetson, whose
GPU shares RAM with the OS, ``MemAvailable`` minus a reserve for the OS; nothing on a
CPU-only host. A probe that fails (NVML missing or failing mid-run) logs a WARN and the
configured budget alone decides.

What is left for one more engine is ``min(budget - reserved, free now)``: device memory
already reflects engines that finished loading, so their reservations are not subtracted
twice. Reservations not loaded yet are invisible to the device; the budget's own
accounting (``budget - reserved``) is what bounds those.
"""

from __future__ import annotations

import contextlib
import itertools
import logging
import re
import threading
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

from trt_provision._nvml import NvmlClient, NvmlLoader, NvmlUnavailable, default_nvml_loader
from trt_provision.errors import ManifestError, OutOfMemoryError
from trt_provision.seams import MemoryBudget
from trt_provision.types import EngineCacheEntry, HostCapabilities

__all__ = [
    "DEFAULT_BUDGET_BYTES",
    "DEFAULT_OS_RESERVE_BYTES",
    "FALLBACK_FACTOR",
    "FALLBACK_MARGIN_BYTES",
    "BudgetSnapshot",
    "FreeMemoryProbe",
    "GpuMemoryBudget",
    "MemAvailableProbe",
    "NoFreeMemoryProbe",
    "NvmlFreeMemoryProbe",
    "choose_free_memory_probe",
    "predict_engine_bytes",
    "reserved_for_load",
]

log = logging.getLogger(__name__)

DEFAULT_BUDGET_BYTES = 4 << 30
DEFAULT_OS_RESERVE_BYTES = 1 << 30
FALLBACK_FACTOR = 2
FALLBACK_MARGIN_BYTES = 128 << 20

_MEMORY_KEYS = ("device_memory_bytes", "io_bytes_at_max_shapes")


# ---------------------------------------------------------------- free-memory probes


@runtime_checkable
class FreeMemoryProbe(Protocol):
    """How many bytes the device can still give us now; None when unknown."""

    @property
    def source(self) -> str: ...

    def free_bytes(self) -> int | None: ...


class NoFreeMemoryProbe:
    """CPU-only hosts (or no telemetry): the configured budget alone decides."""

    @property
    def source(self) -> str:
        return "none"

    def free_bytes(self) -> int | None:
        return None


class _WarnOnce:
    """Log a probe failure once per failure streak, not on every reservation."""

    def __init__(self) -> None:
        self._failing = False
        self._lock = threading.Lock()

    def failed(self, source: str, reason: str) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            log.warning(
                "free-memory probe %s failed (%s); using the configured budget alone",
                source,
                reason,
                extra={"event": "budget.probe.failed", "source": source, "reason": reason},
            )

    def ok(self, source: str) -> None:
        with self._lock:
            recovered, self._failing = self._failing, False
        if recovered:
            log.info(
                "free-memory probe %s works again",
                source,
                extra={"event": "budget.probe.recovered", "source": source},
            )


class NvmlFreeMemoryProbe:
    """Free memory of one discrete GPU as NVML reports it."""

    def __init__(
        self, device_index: int = 0, *, nvml_loader: NvmlLoader = default_nvml_loader
    ) -> None:
        if device_index < 0:
            raise ValueError(f"device_index must be >= 0, got {device_index}")
        self._index = device_index
        self._client = NvmlClient(nvml_loader)
        self._warn = _WarnOnce()

    @property
    def source(self) -> str:
        return f"nvml:{self._index}"

    def free_bytes(self) -> int | None:
        try:
            free, _total = self._client.memory_info(self._index)
        except NvmlUnavailable as exc:
            # A lost GPU or a driver reload can break the session: open a new one next time.
            self._client.close()
            self._warn.failed(self.source, str(exc))
            return None
        self._warn.ok(self.source)
        return free

    def close(self) -> None:
        self._client.close()


class MemAvailableProbe:
    """Integrated GPUs (Jetson): ``MemAvailable`` from ``/proc/meminfo`` minus an OS reserve.

    The GPU allocates from the same RAM as every process; leaving ``os_reserve_bytes``
    keeps the OS (and its OOM killer) out of the way of an engine that barely fits.
    """

    def __init__(
        self, *, root: Path = Path("/"), os_reserve_bytes: int = DEFAULT_OS_RESERVE_BYTES
    ) -> None:
        if isinstance(os_reserve_bytes, bool) or os_reserve_bytes < 0:
            raise ManifestError(
                "OS memory reserve must be >= 0 bytes",
                key="os_reserve_bytes",
                found=os_reserve_bytes,
            )
        self._meminfo = Path(root) / "proc/meminfo"
        self._reserve = os_reserve_bytes
        self._warn = _WarnOnce()

    @property
    def source(self) -> str:
        return "meminfo"

    def free_bytes(self) -> int | None:
        try:
            text = self._meminfo.read_text(errors="replace")
        except OSError as exc:
            self._warn.failed(self.source, exc.strerror or str(exc))
            return None
        match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
        if match is None:
            self._warn.failed(self.source, "no MemAvailable line")
            return None
        self._warn.ok(self.source)
        return max(0, int(match.group(1)) * 1024 - self._reserve)


def choose_free_memory_probe(
    host: HostCapabilities,
    *,
    root: Path = Path("/"),
    os_reserve_bytes: int = DEFAULT_OS_RESERVE_BYTES,
    nvml_loader: NvmlLoader = default_nvml_loader,
    device_index: int = 0,
) -> FreeMemoryProbe:
    """Integrated GPU → meminfo; discrete GPU → NVML; no GPU → none."""
    if host.gpu_integrated:
        return MemAvailableProbe(root=root, os_reserve_bytes=os_reserve_bytes)
    if host.has_gpu:
        return NvmlFreeMemoryProbe(device_index, nvml_loader=nvml_loader)
    return NoFreeMemoryProbe()


# ---------------------------------------------------------------- prediction


def _memory_figure(metadata: Mapping[str, Any], key: str) -> int | None:
    value: Any = metadata.get(key)
    if value is None:
        memory = metadata.get("memory")
        if isinstance(memory, Mapping):
            value = memory.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        return None
    return value


def _file_size(entry: EngineCacheEntry) -> int:
    if entry.size_bytes > 0:
        return entry.size_bytes
    try:
        return entry.engine_path.stat().st_size
    except OSError:
        return 0


def predict_engine_bytes(entry: EngineCacheEntry) -> tuple[int, bool]:
    """(predicted bytes, whether the conservative fallback was used)."""
    size = _file_size(entry)
    metadata = entry.extras.get("metadata")
    if not isinstance(metadata, Mapping):
        metadata = {}
    figures = [_memory_figure(metadata, key) for key in _MEMORY_KEYS]
    known = size + sum(f for f in figures if f is not None)
    if all(f is not None for f in figures):
        return known, False
    fallback = FALLBACK_FACTOR * size + FALLBACK_MARGIN_BYTES
    return max(fallback, known), True


# ---------------------------------------------------------------- the budget


@dataclass(frozen=True)
class _Reservation:
    engine: str
    nbytes: int


@dataclass(frozen=True)
class BudgetSnapshot:
    """What the budget knows right now (for ``probe`` and logs)."""

    budget_bytes: int
    reserved_bytes: int
    reservations: int
    free_bytes: int | None
    free_source: str
    available_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "budget_bytes": self.budget_bytes,
            "reserved_bytes": self.reserved_bytes,
            "reservations": self.reservations,
            "free_bytes": self.free_bytes,
            "free_source": self.free_source,
            "available_bytes": self.available_bytes,
        }


class GpuMemoryBudget:
    """Thread-safe resident accounting of engine memory (implements ``MemoryBudget``)."""

    def __init__(
        self,
        budget_bytes: int = DEFAULT_BUDGET_BYTES,
        *,
        probe: FreeMemoryProbe | None = None,
    ) -> None:
        if isinstance(budget_bytes, bool) or not isinstance(budget_bytes, int):
            raise ManifestError(
                "memory budget must be an integer number of bytes",
                key="memory_budget_bytes",
                found=repr(budget_bytes),
            )
        if budget_bytes <= 0:
            raise ManifestError(
                "memory budget must be > 0 bytes",
                key="memory_budget_bytes",
                expected="> 0",
                found=budget_bytes,
            )
        self._budget = budget_bytes
        self._probe: FreeMemoryProbe = probe if probe is not None else NoFreeMemoryProbe()
        self._lock = threading.Lock()
        self._ids = itertools.count(1)
        self._held: dict[int, _Reservation] = {}
        self._reserved = 0

    @property
    def budget_bytes(self) -> int:
        return self._budget

    @property
    def reserved_bytes(self) -> int:
        with self._lock:
            return self._reserved

    def predicted_bytes(self, entry: EngineCacheEntry) -> int:
        return predict_engine_bytes(entry)[0]

    def _available(self, free: int | None) -> int:
        left = self._budget - self._reserved
        return left if free is None else min(left, free)

    def snapshot(self) -> BudgetSnapshot:
        with self._lock:
            free = self._probe.free_bytes()
            return BudgetSnapshot(
                budget_bytes=self._budget,
                reserved_bytes=self._reserved,
                reservations=len(self._held),
                free_bytes=free,
                free_source=self._probe.source,
                available_bytes=max(0, self._available(free)),
            )

    def reserve(self, entry: EngineCacheEntry) -> int:
        predicted, fallback = predict_engine_bytes(entry)
        engine = entry.engine_path.name
        with self._lock:
            free = self._probe.free_bytes()
            available = self._available(free)
            if predicted > available:
                reserved = self._reserved
                log.warning(
                    "memory budget refused %s: needs %d bytes, %d left",
                    engine,
                    predicted,
                    max(0, available),
                    extra={"event": "budget.refused", "engine": engine,
                           "predicted_bytes": predicted, "available_bytes": available,
                           "free_bytes": free, "reserved_bytes": reserved},
                )
                raise OutOfMemoryError(
                    "engine does not fit in the memory budget",
                    engine=engine,
                    predicted_bytes=predicted,
                    available_bytes=max(0, available),
                    budget_bytes=self._budget,
                    reserved_bytes=reserved,
                    free_bytes=free,
                    free_source=self._probe.source,
                    estimate="fallback" if fallback else "metadata",
                )
            rid = next(self._ids)
            self._held[rid] = _Reservation(engine=engine, nbytes=predicted)
            self._reserved += predicted
            reserved = self._reserved
        log.debug(
            "reserved %d bytes for %s",
            predicted,
            engine,
            extra={"event": "budget.reserve", "engine": engine, "reservation": rid,
                   "predicted_bytes": predicted, "reserved_bytes": reserved,
                   "estimate": "fallback" if fallback else "metadata"},
        )
        return rid

    def release(self, reservation: int) -> None:
        with self._lock:
            held = self._held.pop(reservation, None)
            if held is None:
                return  # released already (or never ours): releasing is idempotent
            self._reserved -= held.nbytes
            reserved = self._reserved
        log.debug(
            "released %d bytes of %s",
            held.nbytes,
            held.engine,
            extra={"event": "budget.release", "engine": held.engine,
                   "reservation": reservation, "reserved_bytes": reserved},
        )


@contextlib.contextmanager
def reserved_for_load(budget: MemoryBudget, entry: EngineCacheEntry) -> Iterator[int]:
    """Reserve for a load; give the reservation back if the load raises.

    On success the reservation stays held: the runtime releases it in ``release_engine``.
    """
    rid = budget.reserve(entry)
    try:
        yield rid
    except BaseException:
        budget.release(rid)
        raise
