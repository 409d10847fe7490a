"""``trt-provision report``: coverage matrix, engine rows, JSON schema, markdown, HTML."""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from report.conftest import clone_for_target, engine_of, manifest_text, rewrite_metadata
from report.schema_check import validate
from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1

ROOT = Path(__file__).resolve().parents[2]
SCHEMA = json.loads((ROOT / "_docs" / "report.schema.json").read_text())
MODELS = ("demo_cnn", "two_inputs", "dynamic_mlp")


def _cells(doc: dict[str, Any]) -> dict[tuple[str, str], str]:
    return {(c["model"], c["target"]["target"]): c["state"] for c in doc["matrix"]}


def _engine(doc: dict[str, Any], filename: str) -> dict[str, Any]:
    return next(e for e in doc["engines"] if e["filename"] == filename)


def test_json_follows_the_schema_and_covers_every_model(
    corpus: tuple[Path, Path], report_json: Callable[..., dict[str, Any]]
) -> None:
    manifest, cache = corpus
    doc = report_json(manifest, cache)
    assert validate(doc, SCHEMA) == []
    assert doc["schema_version"] == 1
    assert [m["name"] for m in doc["models"]] == list(MODELS)
    host = doc["host_targets"][0]["target"]
    assert {m: _cells(doc)[(m, host)] for m in MODELS} == dict.fromkeys(MODELS, "verified")
    auto = _engine(doc, engine_of(cache, "demo_cnn", "auto").name)
    assert auto["role"] == "current" and auto["chosen_precision"] in ("fp32", "int8")
    verdicts = {c["precision"]: c for c in auto["auto"]}
    assert verdicts["fp32"]["speedup"] == 1.0
    assert verdicts["int8"]["verdict"] in ("chosen", "slower", "refused")
    assert verdicts["int8"]["worst_cosine"] is not None
    int8 = _engine(doc, engine_of(cache, "demo_cnn", "int8").name)
    assert int8["role"] == "auto candidate" and int8["state"] == "verified"
    assert int8["accuracy"]["verdict"] == "passed"
    assert set(int8["accuracy"]["splits"]) == {"calibration", "validation", "test"}
    # The per-sample gate records its evidence: samples and bound come from the sidecar.
    assert int8["accuracy"]["samples"] and int8["accuracy"]["bound"] is not None
    fp32 = _engine(doc, engine_of(cache, "two_inputs", "fp32").name)
    assert fp32["latency"]["iterations"] == 5 and fp32["latency"]["p50_ms"] > 0
    assert fp32["signature"]["state"] == "unsigned" and fp32["size_bytes"] > 0
    assert fp32["provenance"]["builder"] == "onnxruntime"


def test_accuracy_keys_are_shown_when_the_sidecar_has_them(
    corpus: tuple[Path, Path], report_json: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest, cache = corpus
    engine = engine_of(cache, "demo_cnn", "int8")
    rewrite_metadata(engine, lambda m: m["accuracy"].update(  # type: ignore[union-attr]
        samples=12, bound=0.9871, threshold=0.99))
    acc = _engine(report_json(manifest, cache), engine.name)["accuracy"]
    assert (acc["samples"], acc["bound"], acc["threshold"]) == (12, 0.9871, 0.99)
    # Recorded with the test split instead of the section's top: found there too.
    candidate = engine_of(cache, "demo_cnn", "fp32")
    rewrite_metadata(candidate, lambda m: m.update(accuracy={
        "verdict": "passed", "test": {"samples": 40, "bound": 0.9990, "threshold": 0.999}}))
    acc = _engine(report_json(manifest, cache), candidate.name)["accuracy"]
    assert (acc["samples"], acc["bound"], acc["threshold"]) == (40, 0.999, 0.999)
    capsys.readouterr()
    assert main(["report", str(manifest), "--cache-dir", str(cache), "--markdown"]) == 0
    line = next(ln for ln in capsys.readouterr().out.splitlines()
                if "| int8 |" in ln and "not judged" not in ln)  # not auto's int8 trial
    assert "| 12 | 0.9871 |" in line


def test_stale_bad_and_missing_cells(
    corpus: tuple[Path, Path], tmp_path: Path, report_json: Callable[..., dict[str, Any]]
) -> None:
    import onnx

    _, cache = corpus
    # dynamic_mlp changed since its engine was built: the engine is superseded.
    model = onnx.load(str(ROOT / "examples" / "models" / "dynamic_mlp.onnx"))
    model.doc_string = "retrained"
    changed = tmp_path / "dynamic_mlp.onnx"
    onnx.save(model, str(changed))
    manifest = tmp_path / "m.toml"
    manifest.write_text(manifest_text(
        {"dynamic_mlp": str(changed),
         "extra_model": str(ROOT / "examples" / "models" / "demo_cnn.onnx")}))
    # two_inputs' engine is damaged.
    engine = engine_of(cache, "two_inputs", "fp32")
    data = bytearray(engine.read_bytes())
    data[-1] ^= 0xFF
    engine.write_bytes(bytes(data))
    doc = report_json(manifest, cache)
    assert validate(doc, SCHEMA) == []
    host = doc["host_targets"][0]["target"]
    cells = _cells(doc)
    assert cells[("demo_cnn", host)] == "verified"
    assert cells[("two_inputs", host)] == "bad"
    assert cells[("dynamic_mlp", host)] == "stale"
    assert cells[("extra_model", host)] == "missing"
    bad = _engine(doc, engine.name)
    assert any("sha256" in p for p in bad["problems"])
    stale = next(e for e in doc["engines"] if e["model"] == "dynamic_mlp")
    assert stale["role"] == "superseded: older model hash" and stale["state"] == "stale"


def test_other_targets_are_columns_of_the_matrix(
    corpus: tuple[Path, Path], report_json: Callable[..., dict[str, Any]],
    capsys: pytest.CaptureFixture[str],
) -> None:
    manifest, cache = corpus
    clone = clone_for_target(
        engine_of(cache, "two_inputs", "fp32"), target="sm87-dla0", platform="jp6.2",
        runtime="trt", version="10.3.0",
        extra_meta={"builder": "trtexec", "trt_path": "weakly-typed",
                    "timing_cache": "/builder/cache/.timing/sm87.timing"},
    )
    doc = report_json(manifest, cache)
    assert validate(doc, SCHEMA) == []
    labels = [t["label"] for t in doc["targets"]]
    assert "sm87 DLA0 · JetPack 6.2 · TensorRT 10.3.0" in labels
    cells = _cells(doc)
    assert cells[("two_inputs", "sm87-dla0")] == "verified"
    assert cells[("demo_cnn", "sm87-dla0")] == "missing"
    row = _engine(doc, clone.name)
    assert row["provenance"] == {"builder": "trtexec", "trt_path": "weakly-typed",
                                 "timing_cache": "sm87.timing"}
    capsys.readouterr()
    assert main(["report", str(manifest), "--cache-dir", str(cache), "--markdown"]) == 0
    out = capsys.readouterr().out
    header = next(ln for ln in out.splitlines() if ln.startswith("| model |"))
    assert "TensorRT 10.3.0" in header and header.count("|") == len(labels) + 2


def test_signatures_are_checked_under_the_manifest_trust_policy(
    corpus: tuple[Path, Path], tmp_path: Path, report_json: Callable[..., dict[str, Any]]
) -> None:
    _, cache = corpus
    key = tmp_path / "fleet.key"
    assert main(["keys", "generate", str(key), "-q"]) == 0
    signed = engine_of(cache, "dynamic_mlp", "fp32")
    tampered = engine_of(cache, "two_inputs", "fp32")
    assert main(["keys", "sign", "--key", str(key), str(signed), str(tampered), "-q"]) == 0
    rewrite_metadata(tampered, lambda m: m.update(note="changed after signing"))
    manifest = tmp_path / "signed.toml"
    manifest.write_text(manifest_text(settings=f'public_key = "{key}.pub"'))
    doc = report_json(manifest, cache)
    assert doc["trust"]["policy"] == "verify-if-signed" and len(doc["trust"]["key_ids"]) == 1
    good = _engine(doc, signed.name)["signature"]
    assert good["state"] == "verified" and good["key_id"] == doc["trust"]["key_ids"][0]
    bad = _engine(doc, tampered.name)
    assert bad["signature"]["state"] == "bad" and bad["state"] == "bad"
    host = doc["host_targets"][0]["target"]
    assert _cells(doc)[("two_inputs", host)] == "bad"
    assert _engine(doc, engine_of(cache, "demo_cnn", "auto").name)["signature"]["state"] == \
        "unsigned"
    # trust = "require": an unsigned engine is bad too.
    manifest.write_text(manifest_text(settings=f'public_key = "{key}.pub"\ntrust = "require"'))
    doc = report_json(manifest, cache)
    assert _cells(doc)[("demo_cnn", host)] == "bad"
    assert _cells(doc)[("dynamic_mlp", host)] == "verified"


def test_markdown_for_ci_logs(
    corpus: tuple[Path, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, cache = corpus
    capsys.readouterr()
    assert main(["report", str(manifest), "--cache-dir", str(cache), "--markdown"]) == 0
    out = capsys.readouterr().out
    assert "verified 3, bad 0, stale 0, missing 0" in out
    for model in MODELS:
        assert f"| {model.replace('_', chr(92) + '_')} (" in out
    assert "auto → " in out


def test_html_is_one_self_contained_file(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, cache = corpus
    out = tmp_path / "report.html"
    assert main(["report", str(manifest), "--cache-dir", str(cache), "-o", str(out), "-q"]) == 0
    page = out.read_text()
    assert page.startswith("<!DOCTYPE html>")
    assert '<meta name="viewport" content="width=device-width, initial-scale=1">' in page
    assert "@media print" in page and "@media (max-width" in page
    assert "default-src 'none'" in page
    lowered = page.lower()
    for needle in ("<script", "<link", "src=", "href=", "url(", "@import", "http://",
                   "https://"):
        assert needle not in lowered, needle
    for model in MODELS:
        assert model in page
    assert page.count("<svg") == 4  # latency of each of the three models, and the auto chart
    assert "auto candidates: accuracy vs speed-up" in page


def test_report_never_changes_the_cache(
    corpus: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, cache = corpus

    def snapshot() -> dict[str, tuple[int, int, int]]:
        return {str(p.relative_to(cache)): (p.lstat().st_size, p.lstat().st_mtime_ns,
                                            p.lstat().st_mode)
                for p in sorted(cache.rglob("*"))}

    before = snapshot()
    for extra in (["--json"], ["--markdown"], ["-o", str(tmp_path / "r.html")]):
        assert main(["report", str(manifest), "--cache-dir", str(cache), *extra]) == 0
    assert snapshot() == before
    # An empty cache directory is reported (every cell missing), not created or filled.
    empty = tmp_path / "empty"
    empty.mkdir()
    capsys.readouterr()
    assert main(["report", str(manifest), "--cache-dir", str(empty), "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert {c["state"] for c in doc["matrix"]} == {"missing"} and doc["engines"] == []
    assert os.listdir(empty) == []


def test_user_errors_are_one_line(
    corpus: tuple[Path, Path], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest, cache = corpus
    capsys.readouterr()
    assert main(["report", str(manifest), "--cache-dir", str(cache)]) == 1
    assert "-o FILE" in capsys.readouterr().err
    assert main(["report", str(manifest), "--cache-dir", str(tmp_path / "nope"), "--json"]) == 1
    assert "--cache-dir" in capsys.readouterr().err
    assert main(["report", str(manifest), "--cache-dir", str(cache), "-o", str(tmp_path)]) == 1
    assert "is a directory" in capsys.readouterr().err
    assert main(["report", str(manifest), "--json", "--markdown"]) == 2
