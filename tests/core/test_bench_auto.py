"""``scripts/bench_auto.py --smoke`` runs and reports what the benchmark section needs (the
figures themselves are checked by the script against its targets, never here)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tier1

ROOT = Path(__file__).resolve().parents[2]


def test_bench_auto_smoke(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src"), "TMPDIR": str(tmp_path)}
    done = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_auto.py"), "--smoke"],
        capture_output=True, text=True, env=env, timeout=600, check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    (result,) = json.loads(done.stdout)["results"]
    assert result["model"] == "demo_cnn" and result["int8_outcome"] == "built"
    assert result["int8_s"] > 0 and result["auto_s"] > 0 and result["fp32_s"] > 0
    assert result["never_slower_than_fp32"] and result["picked_passed_gate"]
    # One line per candidate, the pick among them.
    assert [line.split(":")[0].split()[0] for line in result["lines"]] == [
        "fp32", "fp16", "int8", "mixed"]
    assert any(f"{result['chosen']}: picked" in line for line in result["lines"])
    assert result["budget"]["cut"] == []
