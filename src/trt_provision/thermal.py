"""Thermal state publishers: NVML (discrete GPUs), Jetson sysfs, and a null publisher.

``choose_thermal_publisher`` picks one from the host's capabilities; only the composition
root calls it. A publisher never raises: when its telemetry breaks it reports
``is_telemetry_available=False`` (and logs one WARN per failure streak).
"""

from __future__ import annotations

import logging
import re
import threading
from pathlib import Path

from trt_provision._nvml import (
    NVML_NOT_THROTTLING,
    NvmlClient,
    NvmlLoader,
    NvmlUnavailable,
    decode_throttle_reasons,
    default_nvml_loader,
)
from trt_provision.errors import ThermalLimitError
from trt_provision.seams import ThermalStatePublisher
from trt_provision.types import HostCapabilities, ThermalState

__all__ = [
    "JetsonSysfsThermalPublisher",
    "NullThermalPublisher",
    "NvmlThermalPublisher",
    "check_temperature_limit",
    "choose_thermal_publisher",
]

log = logging.getLogger(__name__)

# Jetson zones report sentinel values (e.g. -256 °C for a powered-down sensor); readings
# outside this range are not temperatures.
_PLAUSIBLE_C = (-40.0, 150.0)
_TRIP_THROTTLING = ("passive", "hot", "critical")


class _FailureLog:
    def __init__(self, source: str) -> None:
        self._source = source
        self._failing = False
        self._lock = threading.Lock()

    def failed(self, reason: str) -> None:
        with self._lock:
            first, self._failing = not self._failing, True
        if first:
            log.warning(
                "thermal telemetry %s unavailable: %s",
                self._source,
                reason,
                extra={"event": "thermal.unavailable", "source": self._source,
                       "reason": reason},
            )

    def ok(self) -> None:
        with self._lock:
            self._failing = False


class NullThermalPublisher:
    """No telemetry on this host (a CPU-only machine, or telemetry switched off)."""

    def thermal_state(self) -> ThermalState:
        return ThermalState(is_telemetry_available=False, source="none")


class NvmlThermalPublisher:
    """GPU temperatures and decoded clocks-throttle reasons of every visible GPU.

    Zones are named ``gpu<index>``. Reasons that lower clocks without the GPU being held
    back (idle, application clocks, display clocks) are not reported as throttling.
    """

    def __init__(
        self,
        *,
        nvml_loader: NvmlLoader = default_nvml_loader,
        device_indices: tuple[int, ...] | None = None,
    ) -> None:
        self._client = NvmlClient(nvml_loader)
        self._indices = device_indices
        self._failures = _FailureLog("nvml")

    def thermal_state(self) -> ThermalState:
        try:
            indices = self._indices
            if indices is None:
                indices = tuple(range(self._client.device_count()))
            temperatures: dict[str, float] = {}
            reasons: list[str] = []
            for index in indices:
                temperatures[f"gpu{index}"] = self._client.temperature_c(index)
                for name in decode_throttle_reasons(self._client.clocks_event_mask(index)):
                    if name not in NVML_NOT_THROTTLING and name not in reasons:
                        reasons.append(name)
        except NvmlUnavailable as exc:
            self._client.close()  # reopen on the next call: the driver may come back
            self._failures.failed(str(exc))
            return ThermalState(is_telemetry_available=False, source="nvml")
        self._failures.ok()
        return ThermalState(
            temperatures_c=temperatures,
            throttle_reasons=tuple(reasons),
            is_telemetry_available=bool(temperatures),
            source="nvml",
        )

    def close(self) -> None:
        self._client.close()


def _zone_number(path: Path) -> int:
    match = re.search(r"(\d+)$", path.name)
    return int(match.group(1)) if match else -1


def _read_millidegrees(path: Path) -> float | None:
    try:
        raw = path.read_text(errors="replace").strip()
        value = int(raw) / 1000.0
    except (OSError, ValueError):
        return None
    lo, hi = _PLAUSIBLE_C
    return value if lo <= value <= hi else None


class JetsonSysfsThermalPublisher:
    """``/sys/class/thermal/thermal_zone*/{type,temp}`` (millidegrees Celsius).

    Unreadable zones (permission denied, EIO from a powered-down sensor, garbage) are
    skipped. A zone at or above one of its ``passive``/``hot``/``critical`` trip points is
    reported as throttling, as ``<zone>:<trip type>``.
    """

    def __init__(self, root: Path = Path("/")) -> None:
        self._base = Path(root) / "sys/class/thermal"
        self._failures = _FailureLog("sysfs")

    def thermal_state(self) -> ThermalState:
        try:
            zones = sorted(self._base.glob("thermal_zone*"), key=_zone_number)
        except OSError as exc:
            self._failures.failed(exc.strerror or str(exc))
            return ThermalState(is_telemetry_available=False, source="sysfs")
        temperatures: dict[str, float] = {}
        reasons: list[str] = []
        for zone in zones:
            temp = _read_millidegrees(zone / "temp")
            if temp is None:
                continue
            try:
                name = (zone / "type").read_text(errors="replace").strip() or zone.name
            except OSError:
                name = zone.name
            if name in temperatures:  # two zones of one type: keep both, apart
                name = f"{name}.{_zone_number(zone)}"
            temperatures[name] = temp
            reasons.extend(f"{name}:{trip}" for trip in self._tripped(zone, temp))
        if not temperatures:
            self._failures.failed("no readable thermal zone")
            return ThermalState(is_telemetry_available=False, source="sysfs")
        self._failures.ok()
        return ThermalState(
            temperatures_c=temperatures,
            throttle_reasons=tuple(reasons),
            is_telemetry_available=True,
            source="sysfs",
        )

    @staticmethod
    def _tripped(zone: Path, temp: float) -> list[str]:
        tripped: list[str] = []
        for type_file in sorted(zone.glob("trip_point_*_type")):
            try:
                kind = type_file.read_text(errors="replace").strip()
            except OSError:
                continue
            if kind not in _TRIP_THROTTLING or kind in tripped:
                continue
            limit = _read_millidegrees(type_file.with_name(type_file.name[:-4] + "temp"))
            if limit is not None and temp >= limit:
                tripped.append(kind)
        return tripped


def choose_thermal_publisher(
    host: HostCapabilities,
    *,
    root: Path = Path("/"),
    nvml_loader: NvmlLoader = default_nvml_loader,
) -> ThermalStatePublisher:
    """Jetson → sysfs; discrete GPU with NVML installed → NVML; otherwise the null one."""
    if host.gpu_integrated or host.jetpack is not None:
        return JetsonSysfsThermalPublisher(root)
    if host.has_gpu and nvml_loader() is not None:
        return NvmlThermalPublisher(nvml_loader=nvml_loader)
    return NullThermalPublisher()


def check_temperature_limit(state: ThermalState, max_temperature_c: float | None) -> None:
    """Raise ThermalLimitError when the hottest zone is above the limit.

    Without telemetry there is nothing to compare: the caller is told by a WARN and the
    build goes ahead (refusing would block every host without sensors).
    """
    if max_temperature_c is None:
        return
    hottest = state.max_temperature_c
    if not state.is_telemetry_available or hottest is None:
        log.warning(
            "no thermal telemetry; the temperature limit of %.1f °C cannot be checked",
            max_temperature_c,
            extra={"event": "thermal.limit.unchecked", "limit_c": max_temperature_c},
        )
        return
    if hottest > max_temperature_c:
        zone = max(state.temperatures_c, key=lambda k: state.temperatures_c[k])
        raise ThermalLimitError(
            f"device is too hot to start a build: {zone} at {hottest:.1f} °C "
            f"is above the limit of {max_temperature_c:.1f} °C",
            zone=zone,
            temperature_c=hottest,
            limit_c=max_temperature_c,
            source=state.source,
        )
