"""Thermal publishers on fake NVML and fake Jetson sysfs trees."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from fakes.fake_nvml import FakeGpu, FakeNvml
from trt_provision import thermal as thermal_module
from trt_provision._nvml import decode_throttle_reasons
from trt_provision.errors import ThermalLimitError
from trt_provision.seams import ThermalStatePublisher
from trt_provision.thermal import (
    JetsonSysfsThermalPublisher,
    NullThermalPublisher,
    NvmlThermalPublisher,
    check_temperature_limit,
    choose_thermal_publisher,
)
from trt_provision.types import HostCapabilities, ThermalState

pytestmark = pytest.mark.tier1


# ------------------------------------------------------------------ null


def test_null_publisher_says_telemetry_is_unavailable() -> None:
    state = NullThermalPublisher().thermal_state()
    assert not state.is_telemetry_available
    assert state.temperatures_c == {}
    assert state.max_temperature_c is None
    assert state.source == "none"
    assert isinstance(NullThermalPublisher(), ThermalStatePublisher)


# ------------------------------------------------------------------ NVML


def test_decode_throttle_reasons() -> None:
    assert decode_throttle_reasons(0) == ()
    assert decode_throttle_reasons(0x1) == ("gpu_idle",)
    assert decode_throttle_reasons(0x4 | 0x20 | 0x40) == (
        "sw_power_cap", "sw_thermal_slowdown", "hw_thermal_slowdown",
    )
    assert decode_throttle_reasons(0x8 | 0x800) == ("hw_slowdown", "bit_0x800")


def test_nvml_temperatures_and_throttling() -> None:
    nvml = FakeNvml([
        FakeGpu(temperature_c=41, clocks_event_mask=0x1),
        FakeGpu(temperature_c=87, clocks_event_mask=0x20 | 0x4 | 0x1),
    ])
    state = NvmlThermalPublisher(nvml_loader=nvml.loader()).thermal_state()
    assert state.is_telemetry_available
    assert state.source == "nvml"
    assert state.temperatures_c == {"gpu0": 41.0, "gpu1": 87.0}
    assert state.max_temperature_c == 87.0
    # idle is a clock reason, not throttling
    assert state.throttle_reasons == ("sw_power_cap", "sw_thermal_slowdown")
    assert state.is_throttling


def test_nvml_idle_gpu_is_not_throttling() -> None:
    nvml = FakeNvml([FakeGpu(temperature_c=30, clocks_event_mask=0x1 | 0x2 | 0x100)])
    state = NvmlThermalPublisher(nvml_loader=nvml.loader()).thermal_state()
    assert not state.is_throttling


def test_nvml_old_bindings_use_the_throttle_spelling() -> None:
    nvml = FakeNvml([FakeGpu(clocks_event_mask=0x40)], new_api=False)
    state = NvmlThermalPublisher(nvml_loader=nvml.loader()).thermal_state()
    assert state.throttle_reasons == ("hw_thermal_slowdown",)
    assert "nvmlDeviceGetCurrentClocksThrottleReasons" in nvml.calls


def test_nvml_selected_devices_only() -> None:
    nvml = FakeNvml([FakeGpu(temperature_c=40), FakeGpu(temperature_c=60)])
    publisher = NvmlThermalPublisher(nvml_loader=nvml.loader(), device_indices=(1,))
    assert publisher.thermal_state().temperatures_c == {"gpu1": 60.0}


def test_nvml_failing_mid_run_reports_unavailable_and_recovers(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpu = FakeGpu(temperature_c=50)
    nvml = FakeNvml([gpu])
    publisher = NvmlThermalPublisher(nvml_loader=nvml.loader())
    assert publisher.thermal_state().is_telemetry_available
    nvml.fail_on("nvmlDeviceGetTemperature")
    with caplog.at_level(logging.WARNING, logger=thermal_module.__name__):
        states = [publisher.thermal_state() for _ in range(3)]
    assert all(not s.is_telemetry_available and s.source == "nvml" for s in states)
    assert len(caplog.records) == 1
    assert getattr(caplog.records[0], "event", None) == "thermal.unavailable"
    nvml.heal()
    gpu.temperature_c = 55
    assert publisher.thermal_state().temperatures_c == {"gpu0": 55.0}
    publisher.close()
    assert not nvml.initialized


def test_nvml_missing_reports_unavailable() -> None:
    state = NvmlThermalPublisher(nvml_loader=lambda: None).thermal_state()
    assert not state.is_telemetry_available


# ------------------------------------------------------------------ Jetson sysfs


def zone(root: Path, n: int, kind: str | None, temp: str | None,
         trips: tuple[tuple[str, int], ...] = ()) -> Path:
    path = root / "sys/class/thermal" / f"thermal_zone{n}"
    path.mkdir(parents=True)
    if kind is not None:
        (path / "type").write_text(kind + "\n")
    if temp is not None:
        (path / "temp").write_text(temp + "\n")
    for i, (trip_type, trip_temp) in enumerate(trips):
        (path / f"trip_point_{i}_type").write_text(trip_type + "\n")
        (path / f"trip_point_{i}_temp").write_text(f"{trip_temp}\n")
    return path


@pytest.fixture
def orin(tmp_path: Path) -> Path:
    """An Orin-like tree with the kinds of broken zones real boards have."""
    zone(tmp_path, 0, "cpu-thermal", "48500", trips=(("passive", 99000),
                                                     ("critical", 105000)))
    zone(tmp_path, 1, "gpu-thermal", "47250", trips=(("passive", 99000),))
    zone(tmp_path, 2, "cv0-thermal", "-256000")  # powered-down sensor sentinel
    zone(tmp_path, 3, "soc0-thermal", "N/A")  # garbage
    unreadable = zone(tmp_path, 4, "soc1-thermal", None)
    (unreadable / "temp").mkdir()  # reading raises OSError (EISDIR)
    zone(tmp_path, 5, None, "45000")  # no type file: named after the zone
    zone(tmp_path, 10, "tj-thermal", "49000")
    zone(tmp_path, 11, "cpu-thermal", "46000")  # duplicate type
    return tmp_path


def test_jetson_sysfs_reads_zones_and_skips_unreadable(orin: Path) -> None:
    state = JetsonSysfsThermalPublisher(orin).thermal_state()
    assert state.is_telemetry_available
    assert state.source == "sysfs"
    assert state.temperatures_c == {
        "cpu-thermal": 48.5,
        "gpu-thermal": 47.25,
        "thermal_zone5": 45.0,
        "tj-thermal": 49.0,
        "cpu-thermal.11": 46.0,
    }
    assert state.max_temperature_c == 49.0
    assert state.throttle_reasons == ()


def test_jetson_zone_above_passive_trip_is_throttling(tmp_path: Path) -> None:
    zone(tmp_path, 0, "gpu-thermal", "99500", trips=(("active", 50000), ("passive", 99000),
                                                     ("critical", 105000)))
    state = JetsonSysfsThermalPublisher(tmp_path).thermal_state()
    assert state.throttle_reasons == ("gpu-thermal:passive",)
    assert state.is_throttling


def test_jetson_without_readable_zones(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    zone(tmp_path, 0, "cv0-thermal", "-256000")
    with caplog.at_level(logging.WARNING, logger=thermal_module.__name__):
        state = JetsonSysfsThermalPublisher(tmp_path).thermal_state()
    assert not state.is_telemetry_available
    assert len(caplog.records) == 1
    assert not JetsonSysfsThermalPublisher(tmp_path / "nothing").thermal_state(
    ).is_telemetry_available


# ------------------------------------------------------------------ choice and limit


def test_choose_publisher_by_host(tmp_path: Path) -> None:
    nvml = FakeNvml()
    jetson = HostCapabilities(sm="sm87", gpu_integrated=True, jetpack="6.2")
    dgpu = HostCapabilities(sm="sm90")
    cpu = HostCapabilities()
    assert isinstance(choose_thermal_publisher(jetson, root=tmp_path),
                      JetsonSysfsThermalPublisher)
    assert isinstance(choose_thermal_publisher(dgpu, nvml_loader=nvml.loader()),
                      NvmlThermalPublisher)
    assert isinstance(choose_thermal_publisher(dgpu, nvml_loader=lambda: None),
                      NullThermalPublisher)
    assert isinstance(choose_thermal_publisher(cpu), NullThermalPublisher)


def test_temperature_limit() -> None:
    hot = ThermalState({"gpu0": 91.0, "gpu1": 60.0}, (), True, "nvml")
    with pytest.raises(ThermalLimitError) as info:
        check_temperature_limit(hot, 85.0)
    assert info.value.context["zone"] == "gpu0"
    assert "91.0 °C" in info.value.message
    check_temperature_limit(hot, 95.0)
    check_temperature_limit(hot, None)


def test_temperature_limit_without_telemetry_warns(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger=thermal_module.__name__):
        check_temperature_limit(ThermalState(), 80.0)
    assert [getattr(r, "event", None) for r in caplog.records] == ["thermal.limit.unchecked"]
