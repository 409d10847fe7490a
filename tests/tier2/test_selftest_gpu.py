"""Tier 2: ``trt-provision selftest`` on a real GPU host.

With TensorRT, cuda-python and a GPU: the whole self-test must pass on the demo corpus.
On a GPU host without TensorRT: it must name TensorRT (not CUDA, not the GPU) as missing.
Each test skips by capability.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trt_provision._lazy import is_available
from trt_provision.host import probe_host

pytestmark = pytest.mark.tier2

ROOT = Path(__file__).resolve().parents[2]


def _gpu_visible() -> bool:
    host = probe_host()
    return host.sm is not None


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(
        p for p in (str(ROOT / "src"), env.get("PYTHONPATH", "")) if p)
    return env


@pytest.mark.skipif(not (is_available("tensorrt") and is_available("cuda")),
                    reason="needs tensorrt and cuda-python")
def test_selftest_passes_on_the_demo_corpus(tmp_path: Path) -> None:
    from trt_provision.measure.selftest import run_selftest

    report = run_selftest(report_dir=tmp_path / "report", work_dir=tmp_path / "work")
    if report.missing:
        pytest.skip("; ".join(f"{r.name}: {r.problem}" for r in report.missing))
    print(report.to_markdown())
    assert report.ok, report.failures
    passed = {c.precision for c in report.cases if c.status == "pass"}
    assert passed == {"fp32", "fp16", "int8", "mixed"}
    checks = {c.name: c.status for c in report.checks}
    assert checks["plugins"] == "pass"
    assert checks["calibration-cache"] == "pass"
    assert checks["timing-cache"] == "pass"
    assert checks["polygraphy"] in ("pass", "skipped")


@pytest.mark.skipif(is_available("tensorrt"), reason="this host has TensorRT")
@pytest.mark.skipif(not _gpu_visible(), reason="needs a GPU visible to the host probe")
def test_gpu_host_without_tensorrt_names_tensorrt(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", "selftest", "--json"],
        capture_output=True, text=True, timeout=600, cwd=tmp_path, env=_env(),
    )
    print(proc.stdout[-4000:], proc.stderr)
    assert proc.returncode == 1
    report = json.loads(proc.stdout)
    assert report["missing"] == ["tensorrt"], report["requirements"]
    line = proc.stderr.strip().splitlines()[-1]
    assert line.startswith("error: TensorRT self-test cannot run on this host: tensorrt:")
    assert "cuda-python" not in line and "gpu:" not in line
    cuda_major = (report["host"].get("cuda_driver_version") or "").split(".")[0]
    if cuda_major in ("12", "13"):
        assert f"trt-provision[tensorrt-cu{cuda_major}]" in line
