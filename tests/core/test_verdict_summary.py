"""Every verdict shows what it rests on: the summary table and ``--json`` carry the sample
count, the Wilson bound and the bar, read from the engine's sidecar (hostile input)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trt_provision.types import verdict_cell, verdict_of

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.tier0
def test_engine_check_is_preferred_over_the_graph_verdict() -> None:
    meta = {"accuracy": {"verdict": "passed", "samples": 208, "bound": 0.98,
                         "gate": {"agreement_bar": 0.95},
                         "engine": {"verdict": "passed", "samples": 210, "bound": 0.981,
                                    "threshold": 0.95}}}
    assert verdict_of(meta) == {"verdict": "passed", "judged": "engine", "samples": 210,
                                "bound": 0.981, "threshold": 0.95}
    del meta["accuracy"]["engine"]
    graph = verdict_of(meta)
    assert graph is not None and graph["judged"] == "graph" and graph["threshold"] == 0.95
    assert verdict_cell(graph) == "passed n=208 bound 0.980/0.95"


@pytest.mark.tier0
@pytest.mark.parametrize("accuracy", [
    None, 3, [], {"verdict": 1}, {"verdict": "passed", "samples": True, "bound": "x"},
    {"verdict": "passed", "bound": float("nan"), "gate": [1]},
    {"verdict": "passed", "engine": "not a mapping", "samples": -1.5},
])
def test_a_malformed_accuracy_section_reads_as_absent_or_partial(accuracy: object) -> None:
    found = verdict_of({"accuracy": accuracy})
    if found is not None:
        assert found["bound"] is None and found["samples"] is None
        assert verdict_cell(found) == "passed"
    assert verdict_cell(None) == "-"


@pytest.mark.tier1
def test_provision_prints_and_records_what_each_verdict_rests_on(tmp_path: Path) -> None:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(tmp_path / "cache")}
    manifest = ROOT / "examples" / "precision.toml"
    table = subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                            "--no-remote"], capture_output=True, text=True, env=env,
                           timeout=600)
    assert table.returncode == 0, table.stderr
    assert "passed n=208 bound" in table.stdout and "/0.95" in table.stdout
    data = subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--no-remote", "--json"], capture_output=True, text=True, env=env,
                          timeout=600)
    results = {r["name"]: r for r in json.loads(data.stdout)["results"]}
    cnn = results["demo_cnn"]["verdict"]
    assert cnn["verdict"] == "passed" and cnn["samples"] == 208
    assert cnn["bound"] >= cnn["threshold"] == 0.95
