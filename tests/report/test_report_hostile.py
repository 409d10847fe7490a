"""Sidecars are hostile input: whatever they hold, the report escapes it, clips it and keeps
to its schema; and a remote store that fails is a note, not a crash."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from report.conftest import engine_of, rewrite_metadata
from report.schema_check import validate
from trt_provision.cli.main import main
from trt_provision.errors import StoreError
from trt_provision.report.collect import ModelInfo, collect_report
from trt_provision.report.render_html import render_html
from trt_provision.report.render_md import render_markdown
from trt_provision.types import EngineIdentity, PrecisionMode, RuntimeTarget

pytestmark = pytest.mark.tier1

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "_docs" / "report.schema.json").read_text())
XSS = '</td></table><script>alert(1)</script><img src=x onerror=alert(2)>"\'|`*'
HUGE = "A" * 200_000


def _hostile(meta: dict[str, Any]) -> None:
    meta["accuracy"] = {"verdict": XSS, "data": HUGE, "samples": float("nan"),
                        "bound": float("inf"), "threshold": "0.99", "gate": {XSS: XSS},
                        "splits": {"test": {"rows": XSS}}, "outputs": [XSS]}
    meta["auto"] = {"chosen": XSS, "speedup_vs_fp32": "fast",
                    "table": [1, "x", None, {"precision": XSS, "verdict": XSS,
                                             "vs_fp32": 1e308, "worst_cosine": -1e308,
                                             "why": HUGE}]}
    meta["builder"] = XSS
    meta["trt_path"] = {"nested": [XSS]}
    meta["timing_cache"] = "/x/" + XSS
    meta["timings"] = {"built_at": XSS}


def test_hostile_sidecar_strings_are_escaped_and_clipped(
    corpus: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, cache = corpus
    engine = engine_of(cache, "demo_cnn", "auto")
    rewrite_metadata(engine, _hostile)
    engine.with_name(engine.name + ".perf.json").write_text(json.dumps(
        {"format": 1, "engine": engine.name, "sha256": "0" * 64,
         "runs": [{"latency_ms": {"p50": XSS, "p99": -0.0}, "measured_at": XSS}]}))
    out = tmp_path / "r.html"
    assert main(["report", str(manifest), "--cache-dir", str(cache), "-o", str(out)]) == 0
    page = out.read_text()
    lowered = page.lower()
    assert "<script" not in lowered and "<img" not in lowered
    assert "&lt;script&gt;alert(1)&lt;/script&gt;" in page
    assert "</td></table>" not in page
    # Clipped: the 200 kB strings do not reach the page.
    assert "A" * 400 not in page and len(page) < 200_000
    capsys.readouterr()
    assert main(["report", str(manifest), "--cache-dir", str(cache), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert validate(doc, SCHEMA) == []
    row = next(e for e in doc["engines"] if e["filename"] == engine.name)
    assert row["accuracy"]["samples"] is None and row["accuracy"]["bound"] is None
    assert row["accuracy"]["threshold"] is None  # a string is not a number
    assert len(row["accuracy"]["data"]) <= 300 and len(row["auto"]) == 1
    assert row["latency"]["p50_ms"] is None
    assert row["provenance"]["trt_path"] is None
    capsys.readouterr()
    assert main(["report", str(manifest), "--cache-dir", str(cache), "--markdown"]) == 0
    md = capsys.readouterr().out
    table = [ln for ln in md.splitlines() if ln.startswith("| ")]
    widths = {ln.count("|") - ln.count("\\|") for ln in table if "precision |" not in ln}
    assert len(widths) <= 2  # the matrix and the engine table keep their columns
    assert "<script>" not in md


def test_a_sidecar_that_is_not_ours_is_a_bad_row_not_a_crash(
    corpus: tuple[Path, Path], report_json: Callable[..., dict[str, Any]]
) -> None:
    manifest, cache = corpus
    engine = engine_of(cache, "dynamic_mlp", "fp32")
    meta = engine.with_name(engine.name + ".json")
    meta.write_text("[" * 100_000)  # nesting bomb
    (engine.with_name(engine.name + ".perf.json")).write_text("{" * 100_000)
    doc = report_json(manifest, cache)
    assert validate(doc, SCHEMA) == []
    row = next(e for e in doc["engines"] if e["filename"] == engine.name)
    assert row["state"] == "bad" and row["problems"]
    assert any("perf.json" in n or "measurements" in n for n in doc["notes"])


class FakeRemoteProbe:
    """Answers from a set of engine filenames; ``down`` makes every question fail."""

    def __init__(self, names: set[str], down: bool = False) -> None:
        self.names = names
        self.down = down
        self.asked: list[str] = []

    def exists(self, identity: EngineIdentity) -> bool:
        self.asked.append(identity.filename)
        if self.down:
            raise StoreError("remote store check failed: connection refused")
        return identity.filename in self.names


def _collect(cache: Path, remote: FakeRemoteProbe, expected: dict[str, Any]) -> Any:
    target = RuntimeTarget("ortcpu", "1.32.0", "cpu-avx512", "host")
    models = [ModelInfo(m, "fp32", None, None) for m in ("two_inputs", "dynamic_mlp")]
    return collect_report(manifest_path=Path("m.toml"), models=models, cache_dir=cache,
                          host_targets=[target], expected=expected, remote=remote, now=0.0)


def test_remote_presence_of_each_engine_and_of_the_expected_one(
    corpus: tuple[Path, Path]
) -> None:
    _, cache = corpus
    local = engine_of(cache, "two_inputs", "fp32")
    wanted = EngineIdentity(model_name="dynamic_mlp", model_sha256="ab" * 32,
                            precision=PrecisionMode.FP32,
                            runtime="ortcpu", runtime_version="1.32.0", target="cpu-avx512",
                            platform="host", options_digest="0123456789ab")
    remote = FakeRemoteProbe({local.name, wanted.filename})
    report = _collect(cache, remote, {"dynamic_mlp": wanted})
    rows = {e.filename: e for e in report.engines}
    assert rows[local.name].on_remote is True
    assert rows[engine_of(cache, "dynamic_mlp", "fp32").name].on_remote is False
    cell = next(c for c in report.cells if c.model == "dynamic_mlp")
    assert cell.on_remote is True  # not in the cache here, but the remote has it
    assert "remote: has it" in render_html(report)
    assert "(remote)" in render_markdown(report)


def test_a_remote_that_fails_is_asked_once_and_noted(corpus: tuple[Path, Path]) -> None:
    _, cache = corpus
    remote = FakeRemoteProbe(set(), down=True)
    report = _collect(cache, remote, {})
    assert len(remote.asked) == 1
    assert all(e.on_remote is None for e in report.engines)
    assert any("connection refused" in n for n in report.notes)
    assert re.search("connection refused", render_html(report))
