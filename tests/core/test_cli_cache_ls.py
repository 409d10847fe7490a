"""``trt-provision cache ls``: readable at 80 columns, ``--wide`` and ``--json``."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tier1


def _cli(*args: str, columns: int = 80) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": str(columns)}
    proc = subprocess.run([sys.executable, "-m", "trt_provision", *args], capture_output=True,
                          text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return proc


@pytest.fixture
def engines(cache_dir: Path, demo_dir: Path) -> list[Path]:
    out = _cli("provision", str(demo_dir / "demo.toml"), "--cache-dir", str(cache_dir),
               "--json").stdout
    return [Path(r["engine"]) for r in json.loads(out)["results"]]


def test_ls_fits_80_columns(cache_dir: Path, engines: list[Path]) -> None:
    out = _cli("cache", "ls", "--cache-dir", str(cache_dir)).stdout
    lines = out.splitlines()
    assert max(len(line.rstrip()) for line in lines) <= 80, out
    header = next(line for line in lines if line.startswith("model"))
    assert header.split() == ["model", "precision", "target", "size", "last", "used", "state"]
    rows = {line.split()[0]: line.split() for line in lines
            if line.split() and line.split()[0] in {"demo_cnn", "two_inputs", "dynamic_mlp"}}
    assert set(rows) == {"demo_cnn", "two_inputs", "dynamic_mlp"}
    assert rows["demo_cnn"][1:3] == ["fp32", engines[0].name.split(".")[3]]
    assert rows["demo_cnn"][-1] == "ok"
    assert not any(e.name in out for e in engines)  # full names only with --wide
    assert "3 engine(s)" in out


def test_ls_wide_shows_full_filenames_unfolded(cache_dir: Path, engines: list[Path]) -> None:
    out = _cli("cache", "ls", "--cache-dir", str(cache_dir), "--wide").stdout
    for engine in engines:
        line = next(line for line in out.splitlines() if engine.name in line)
        assert line.split()[0] == engine.name.split(".")[0]
        assert engine.name.split(".")[1] in line.split()  # the model hash column


def test_ls_json_is_unchanged(cache_dir: Path, engines: list[Path]) -> None:
    doc = json.loads(_cli("cache", "ls", "--cache-dir", str(cache_dir), "--json").stdout)
    assert sorted(Path(e["engine"]) for e in doc["engines"]) == sorted(engines)
    first = doc["engines"][0]
    assert {"engine", "model_name", "precision", "target", "size_bytes", "last_used",
            "complete", "signed"} <= set(first)
    assert doc["total_bytes"] == sum(e["size_bytes"] for e in doc["engines"])
