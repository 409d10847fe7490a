"""The GPU memory budget: prediction, accounting, refusals, probes and thread safety."""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest

from fakes.fake_nvml import FakeGpu, FakeNvml
from trt_provision.errors import ManifestError, OutOfMemoryError
from trt_provision.gates import budget as budget_module
from trt_provision.gates.budget import (
    FALLBACK_MARGIN_BYTES,
    GpuMemoryBudget,
    MemAvailableProbe,
    NoFreeMemoryProbe,
    NvmlFreeMemoryProbe,
    choose_free_memory_probe,
    predict_engine_bytes,
    reserved_for_load,
)
from trt_provision.seams import MemoryBudget
from trt_provision.types import EngineCacheEntry, EngineIdentity, HostCapabilities, PrecisionMode

pytestmark = pytest.mark.tier1

MiB = 1 << 20
GiB = 1 << 30


def entry(
    size: int = 100 * MiB,
    metadata: Mapping[str, Any] | None = None,
    name: str = "demo",
) -> EngineCacheEntry:
    ident = EngineIdentity(
        model_name=name,
        model_sha256="ab" * 32,
        precision=PrecisionMode.FP16,
        runtime="trt",
        runtime_version="10.3.0",
        target="sm90",
        platform="dgpu",
        options_digest="0123456789ab",
    )
    meta = {"device_memory_bytes": 50 * MiB, "io_bytes_at_max_shapes": 10 * MiB}
    if metadata is not None:
        meta = dict(metadata)
    return EngineCacheEntry(
        engine_path=Path("/cache") / name / ident.filename,
        sha256="cd" * 32,
        identity=ident,
        size_bytes=size,
        extras={"metadata": meta},
    )


class StaticProbe:
    """A free-memory probe whose reading the test sets."""

    def __init__(self, free: int | None) -> None:
        self.free = free
        self.calls = 0

    @property
    def source(self) -> str:
        return "static"

    def free_bytes(self) -> int | None:
        self.calls += 1
        return self.free


# ------------------------------------------------------------------ prediction


def test_prediction_from_metadata() -> None:
    assert predict_engine_bytes(entry()) == (160 * MiB, False)
    assert GpuMemoryBudget().predicted_bytes(entry()) == 160 * MiB


def test_prediction_from_nested_memory_section() -> None:
    e = entry(metadata={"memory": {"device_memory_bytes": 1 * MiB, "io_bytes_at_max_shapes": 0}})
    assert predict_engine_bytes(e) == (101 * MiB, False)


@pytest.mark.parametrize(
    "metadata",
    [
        {},
        {"device_memory_bytes": 50 * MiB},
        {"io_bytes_at_max_shapes": 10 * MiB},
        {"device_memory_bytes": -1, "io_bytes_at_max_shapes": 0},
        {"device_memory_bytes": True, "io_bytes_at_max_shapes": 0},
        {"device_memory_bytes": "50", "io_bytes_at_max_shapes": 0},
    ],
)
def test_conservative_fallback_when_metadata_lacks_figures(metadata: dict[str, Any]) -> None:
    predicted, fallback = predict_engine_bytes(entry(metadata=metadata))
    assert fallback
    assert predicted == 2 * 100 * MiB + FALLBACK_MARGIN_BYTES


def test_fallback_never_below_known_figures() -> None:
    e = entry(size=10 * MiB, metadata={"device_memory_bytes": 2 * GiB})
    assert predict_engine_bytes(e) == (10 * MiB + 2 * GiB, True)


def test_fallback_without_metadata_and_size_from_disk(tmp_path: Path) -> None:
    path = tmp_path / "x.engine"
    path.write_bytes(b"x" * 1000)
    e = EngineCacheEntry(engine_path=path, sha256="0" * 64, identity=entry().identity)
    assert predict_engine_bytes(e) == (2000 + FALLBACK_MARGIN_BYTES, True)


# ------------------------------------------------------------------ configuration


@pytest.mark.parametrize("bad", [0, -1, -(4 << 30), True, 1.5])
def test_budget_must_be_a_positive_integer(bad: Any) -> None:
    with pytest.raises(ManifestError) as info:
        GpuMemoryBudget(bad)
    assert info.value.context["key"] == "memory_budget_bytes"


def test_default_budget_is_4_gib() -> None:
    budget = GpuMemoryBudget()
    assert budget.budget_bytes == 4 * GiB
    assert isinstance(budget, MemoryBudget)


# ------------------------------------------------------------------ accounting


def test_reserve_release_accounting() -> None:
    budget = GpuMemoryBudget(1 * GiB)
    a = budget.reserve(entry(name="a"))
    b = budget.reserve(entry(name="b"))
    assert a != b
    assert budget.reserved_bytes == 320 * MiB
    budget.release(a)
    assert budget.reserved_bytes == 160 * MiB
    budget.release(a)  # idempotent
    budget.release(12345)  # unknown: no-op
    assert budget.reserved_bytes == 160 * MiB
    budget.release(b)
    assert budget.reserved_bytes == 0
    assert budget.snapshot().reservations == 0


def test_refusal_names_engine_predicted_and_left() -> None:
    budget = GpuMemoryBudget(400 * MiB)
    budget.reserve(entry(name="first"))
    budget.reserve(entry(name="second"))
    big = entry(name="third")
    with pytest.raises(OutOfMemoryError) as info:
        budget.reserve(big)
    ctx = info.value.context
    assert ctx["engine"] == big.engine_path.name
    assert ctx["predicted_bytes"] == 160 * MiB
    assert ctx["available_bytes"] == 80 * MiB
    assert ctx["reserved_bytes"] == 320 * MiB
    assert "third" in str(info.value)
    assert budget.reserved_bytes == 320 * MiB  # a refusal reserves nothing


def test_limit_is_the_smaller_of_budget_and_free_memory() -> None:
    probe = StaticProbe(free=100 * MiB)
    budget = GpuMemoryBudget(4 * GiB, probe=probe)
    with pytest.raises(OutOfMemoryError) as info:
        budget.reserve(entry())
    assert info.value.context["free_bytes"] == 100 * MiB
    assert info.value.context["available_bytes"] == 100 * MiB
    probe.free = 1 * GiB
    rid = budget.reserve(entry())
    snap = budget.snapshot()
    assert (snap.free_bytes, snap.available_bytes, snap.free_source) == (1 * GiB, 1 * GiB,
                                                                         "static")
    budget.release(rid)


def test_failed_load_gives_its_reservation_back() -> None:
    budget = GpuMemoryBudget(1 * GiB)
    with pytest.raises(RuntimeError), reserved_for_load(budget, entry()):
        raise RuntimeError("deserialize failed")
    assert budget.reserved_bytes == 0
    with reserved_for_load(budget, entry()) as rid:
        pass
    assert budget.reserved_bytes == 160 * MiB  # kept until release_engine
    budget.release(rid)


def test_refusal_happens_before_the_runtime_is_called() -> None:
    calls: list[str] = []
    budget = GpuMemoryBudget(10 * MiB)
    with pytest.raises(OutOfMemoryError), reserved_for_load(budget, entry()):
        calls.append("deserialize")
    assert calls == []


# ------------------------------------------------------------------ thread safety


def test_concurrent_reservations_never_exceed_the_budget() -> None:
    one = entry()  # 160 MiB
    budget = GpuMemoryBudget(10 * 160 * MiB)
    barrier = threading.Barrier(32)
    granted: list[int] = []
    refused: list[int] = []
    lock = threading.Lock()

    def worker() -> None:
        barrier.wait()
        try:
            rid = budget.reserve(one)
        except OutOfMemoryError:
            with lock:
                refused.append(1)
            return
        with lock:
            granted.append(rid)

    threads = [threading.Thread(target=worker) for _ in range(32)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert (len(granted), len(refused)) == (10, 22)
    assert len(set(granted)) == 10
    assert budget.reserved_bytes == 10 * 160 * MiB
    for rid in granted:
        budget.release(rid)
    assert budget.reserved_bytes == 0


def test_reserve_release_churn_keeps_the_books_balanced() -> None:
    budget = GpuMemoryBudget(5 * 160 * MiB)
    peak: list[int] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(300):
                try:
                    rid = budget.reserve(entry())
                except OutOfMemoryError:
                    continue
                peak.append(budget.reserved_bytes)
                budget.release(rid)
                budget.release(rid)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert max(peak) <= 5 * 160 * MiB
    assert budget.reserved_bytes == 0


# ------------------------------------------------------------------ NVML probe


def test_nvml_probe_tracks_device_free_memory() -> None:
    gpu = FakeGpu(total_bytes=80 * GiB, used_bytes=1 * GiB)
    nvml = FakeNvml([gpu])
    probe = NvmlFreeMemoryProbe(nvml_loader=nvml.loader())
    budget = GpuMemoryBudget(100 * GiB, probe=probe)
    e = entry(size=1 * GiB, metadata={"device_memory_bytes": 70 * GiB,
                                       "io_bytes_at_max_shapes": 0})
    rid = budget.reserve(e)
    budget.release(rid)
    gpu.used_bytes = 20 * GiB  # someone else allocated 19 GiB
    with pytest.raises(OutOfMemoryError) as info:
        budget.reserve(e)
    assert info.value.context["free_bytes"] == 60 * GiB
    assert info.value.context["free_source"] == "nvml:0"
    assert nvml.state.init_count == 1  # one NVML session, reused


def test_nvml_failing_mid_run_falls_back_to_the_budget_with_one_warning(
    caplog: pytest.LogCaptureFixture,
) -> None:
    gpu = FakeGpu(total_bytes=80 * GiB, used_bytes=79 * GiB)
    nvml = FakeNvml([gpu])
    probe = NvmlFreeMemoryProbe(nvml_loader=nvml.loader())
    budget = GpuMemoryBudget(4 * GiB, probe=probe)
    with pytest.raises(OutOfMemoryError) as info:
        budget.reserve(entry(size=2 * GiB))  # fits the budget, not the 1 GiB NVML reports
    assert info.value.context["free_bytes"] == 1 * GiB
    nvml.fail_on("nvmlDeviceGetMemoryInfo")
    with caplog.at_level(logging.WARNING, logger=budget_module.__name__):
        rids = [budget.reserve(entry()) for _ in range(3)]
    warnings = [r for r in caplog.records if getattr(r, "event", "") == "budget.probe.failed"]
    assert len(warnings) == 1
    assert "using the configured budget" in warnings[0].getMessage()
    assert budget.reserved_bytes == 3 * 160 * MiB
    assert budget.snapshot().free_bytes is None
    nvml.heal()
    assert probe.free_bytes() == 1 * GiB
    assert nvml.state.init_count >= 2  # the broken session was closed and reopened
    for rid in rids:
        budget.release(rid)


def test_nvml_missing_falls_back(caplog: pytest.LogCaptureFixture) -> None:
    probe = NvmlFreeMemoryProbe(nvml_loader=lambda: None)
    with caplog.at_level(logging.WARNING, logger=budget_module.__name__):
        assert probe.free_bytes() is None
        assert probe.free_bytes() is None
    assert len(caplog.records) == 1
    budget = GpuMemoryBudget(1 * GiB, probe=probe)
    budget.release(budget.reserve(entry()))


def test_nvml_init_failure_falls_back() -> None:
    nvml = FakeNvml()
    nvml.fail_on("nvmlInit")
    assert NvmlFreeMemoryProbe(nvml_loader=nvml.loader()).free_bytes() is None


def test_nvml_probe_rejects_negative_index() -> None:
    with pytest.raises(ValueError):
        NvmlFreeMemoryProbe(-1)


# ------------------------------------------------------------------ Jetson probe


def meminfo(root: Path, available_kib: int | None) -> None:
    (root / "proc").mkdir(parents=True, exist_ok=True)
    lines = ["MemTotal:       64000000 kB", "MemFree:         1000000 kB"]
    if available_kib is not None:
        lines.append(f"MemAvailable:   {available_kib} kB")
    (root / "proc/meminfo").write_text("\n".join(lines) + "\n")


def test_memavailable_minus_os_reserve(tmp_path: Path) -> None:
    meminfo(tmp_path, 8 * 1024 * 1024)  # 8 GiB
    probe = MemAvailableProbe(root=tmp_path, os_reserve_bytes=1 * GiB)
    assert probe.free_bytes() == 7 * GiB
    meminfo(tmp_path, 512 * 1024)  # below the reserve: nothing left, never negative
    assert probe.free_bytes() == 0
    budget = GpuMemoryBudget(4 * GiB, probe=probe)
    with pytest.raises(OutOfMemoryError) as info:
        budget.reserve(entry())
    assert info.value.context["free_source"] == "meminfo"


def test_memavailable_unreadable_falls_back(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    probe = MemAvailableProbe(root=tmp_path)
    with caplog.at_level(logging.WARNING, logger=budget_module.__name__):
        assert probe.free_bytes() is None
    meminfo(tmp_path, None)
    assert probe.free_bytes() is None
    assert len(caplog.records) == 1  # one warning per failure streak


@pytest.mark.parametrize("bad", [-1, True])
def test_os_reserve_validated(tmp_path: Path, bad: int) -> None:
    with pytest.raises(ManifestError):
        MemAvailableProbe(root=tmp_path, os_reserve_bytes=bad)


# ------------------------------------------------------------------ probe choice


def test_choose_probe_by_host(tmp_path: Path) -> None:
    jetson = HostCapabilities(sm="sm87", gpu_integrated=True, jetpack="6.2")
    dgpu = HostCapabilities(sm="sm90")
    cpu = HostCapabilities()
    assert isinstance(choose_free_memory_probe(jetson, root=tmp_path), MemAvailableProbe)
    assert isinstance(
        choose_free_memory_probe(dgpu, nvml_loader=FakeNvml().loader()), NvmlFreeMemoryProbe
    )
    probe = choose_free_memory_probe(cpu)
    assert isinstance(probe, NoFreeMemoryProbe)
    assert probe.free_bytes() is None
