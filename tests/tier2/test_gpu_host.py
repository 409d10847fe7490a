"""Tier 2 on a real discrete GPU (no TensorRT needed): host probe, budget, NVML thermal.

Skips unless pynvml imports and NVML sees a GPU; the allocation test also needs cupy.
Readings are printed and, when ``TRT_PROVISION_READINGS`` names a file, appended to it as
JSON lines (the benchmark notes are written from them).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from trt_provision._lazy import is_available
from trt_provision._nvml import NVML_THROTTLE_REASONS, NvmlClient, decode_throttle_reasons
from trt_provision.errors import OutOfMemoryError
from trt_provision.gates.budget import (
    GpuMemoryBudget,
    NvmlFreeMemoryProbe,
    choose_free_memory_probe,
)
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.host import probe_host
from trt_provision.stores.local import LocalEngineStore
from trt_provision.thermal import NvmlThermalPublisher, choose_thermal_publisher
from trt_provision.types import EngineIdentity, PrecisionMode, RuntimeTarget

GiB = 1 << 30
MiB = 1 << 20


def _gpu_visible() -> bool:
    if not is_available("pynvml"):
        return False
    client = NvmlClient()
    try:
        return client.device_count() > 0
    except Exception:
        return False
    finally:
        client.close()


pytestmark = [
    pytest.mark.tier2,
    pytest.mark.skipif(not _gpu_visible(), reason="needs pynvml and a visible NVIDIA GPU"),
]

Record = Callable[..., None]


@pytest.fixture
def record(request: pytest.FixtureRequest) -> Record:
    def _record(**values: Any) -> None:
        line = json.dumps({"test": request.node.name, **values}, sort_keys=True, default=str)
        print(line)
        target = os.environ.get("TRT_PROVISION_READINGS")
        if target:
            with open(target, "a") as fh:
                fh.write(line + "\n")

    return _record


def test_probe_reports_this_gpu(record: Record) -> None:
    host = probe_host()
    client = NvmlClient()
    try:
        major, minor = client.compute_capability(0)
    finally:
        client.close()
    record(**host.to_dict())
    assert host.sm == f"sm{major}{minor}"
    if any(name in (host.gpu_name or "") for name in ("H100", "H200")):
        assert host.sm == "sm90"
    assert host.gpu_name
    assert host.gpu_memory_bytes is not None and host.gpu_memory_bytes > 8 * GiB
    assert host.nvidia_driver_version and host.nvidia_driver_version[0].isdigit()
    assert host.cuda_driver_version and host.cuda_driver_version[0].isdigit()
    assert host.jetpack is None and host.l4t is None
    assert not host.gpu_integrated
    assert isinstance(choose_free_memory_probe(host), NvmlFreeMemoryProbe)
    assert isinstance(choose_thermal_publisher(host), NvmlThermalPublisher)


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.filterwarnings("ignore::DeprecationWarning")
def test_budget_tracks_a_real_8_gib_allocation(tmp_path: Path, record: Record) -> None:
    cupy = pytest.importorskip("cupy")
    cupy.zeros(1)  # create the CUDA context first: its own memory is not what we measure
    cupy.cuda.runtime.deviceSynchronize()
    probe = NvmlFreeMemoryProbe()
    host = probe_host()
    sm = host.sm or "sm90"
    free0 = probe.free_bytes()
    assert free0 is not None and free0 > 12 * GiB

    # A real engine file through the real gate, whose metadata says it needs all but
    # 4 GiB of what is free now: it fits before the allocation, not during it.
    cache = tmp_path / "cache"
    store = LocalEngineStore(cache)
    ident = EngineIdentity(
        model_name="big_model", model_sha256="ab" * 32, precision=PrecisionMode.FP16,
        runtime="trt", runtime_version="10.3.0", target=sm, platform="dgpu",
        options_digest="0123456789ab",
    )
    staged = store.staging_path(ident)
    staged.write_bytes(os.urandom(1 * MiB))
    device_bytes = free0 - 4 * GiB - 1 * MiB
    published = store.publish(
        ident, staged, {"device_memory_bytes": device_bytes, "io_bytes_at_max_shapes": 0}
    )
    entry = DefaultEngineGate(cache_root=cache).validate(
        published.engine_path, RuntimeTarget("trt", "10.3.0", sm, "dgpu")
    )
    budget = GpuMemoryBudget(host.gpu_memory_bytes or 200 * GiB, probe=probe)
    predicted = budget.predicted_bytes(entry)
    budget.release(budget.reserve(entry))

    started = time.perf_counter()
    ptr = cupy.cuda.runtime.malloc(8 * GiB)  # plain cudaMalloc, not the pool
    try:
        cupy.cuda.runtime.deviceSynchronize()
        free1 = probe.free_bytes()
        assert free1 is not None
        with pytest.raises(OutOfMemoryError) as info:
            budget.reserve(entry)
        refusal = dict(info.value.context)
    finally:
        cupy.cuda.runtime.free(ptr)
        cupy.cuda.runtime.deviceSynchronize()
    free2 = probe.free_bytes()
    assert free2 is not None
    rid = budget.reserve(entry)
    budget.release(rid)
    elapsed = time.perf_counter() - started
    drop = free0 - free1
    record(
        free_before=free0, free_during=free1, free_after=free2, drop=drop,
        drop_gib=round(drop / GiB, 4), recovered=free2 - free1, predicted=predicted,
        refusal=refusal, seconds=round(elapsed, 3),
    )
    assert abs(drop - 8 * GiB) < 256 * MiB
    assert abs(free2 - free0) < 256 * MiB
    assert refusal["predicted_bytes"] == predicted
    assert refusal["free_bytes"] == free1


def test_nvml_thermal_is_plausible(record: Record) -> None:
    client = NvmlClient()
    try:
        mask = client.clocks_event_mask(0)
    finally:
        client.close()
    publisher = NvmlThermalPublisher()
    state = publisher.thermal_state()
    publisher.close()
    decoded = decode_throttle_reasons(mask)
    record(state=state.to_dict(), raw_mask=hex(mask), decoded=list(decoded))
    assert state.is_telemetry_available
    assert state.source == "nvml"
    assert state.max_temperature_c is not None
    assert 10.0 <= state.max_temperature_c <= 100.0
    known = {name for _, name in NVML_THROTTLE_REASONS}
    assert set(state.throttle_reasons) <= known | {n for n in decoded if n.startswith("bit_")}
    assert (mask == 0) == (decoded == ())


def test_gate_hash_throughput(tmp_path: Path, record: Record) -> None:
    """How long the gate takes on a 1 GiB engine (it reads the bytes exactly once)."""
    cache = tmp_path / "cache"
    store = LocalEngineStore(cache)
    ident = EngineIdentity(
        model_name="large", model_sha256="cd" * 32, precision=PrecisionMode.FP16,
        runtime="trt", runtime_version="10.3.0", target="sm90", platform="dgpu",
        options_digest="0123456789ab",
    )
    staged = store.staging_path(ident)
    block = os.urandom(8 * MiB)
    with open(staged, "wb") as fh:
        for _ in range(128):
            fh.write(block)
    published = store.publish(ident, staged, {})
    gate = DefaultEngineGate(cache_root=cache)
    started = time.perf_counter()
    gate.validate(published.engine_path, RuntimeTarget("trt", "10.3.0", "sm90", "dgpu"))
    seconds = time.perf_counter() - started
    record(engine_bytes=1 * GiB, validate_seconds=round(seconds, 4),
           gib_per_s=round(1 / seconds, 3))
    # A recorded figure, not a bound: speed targets live in scripts/bench_*.py.
