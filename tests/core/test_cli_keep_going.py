"""Keep going: one failing model never stops the run. Every model is provisioned, each
failure is reported with its type and message, and the exit code says how it went
(1: a model failed or was refused, 3: a bug of ours); --fail-fast stops at the first."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trt_provision.cli.main import main
from trt_provision.errors import AccuracyGateError
from trt_provision.runtimes.onnxruntime import OnnxRuntimeRuntime

pytestmark = pytest.mark.tier1


def _manifest(tmp_path: Path, demo_dir: Path, middle: str) -> Path:
    """demo_cnn, then a model described by ``middle``, then dynamic_mlp."""
    models = demo_dir / "models"
    text = f"""
[[models]]
name = "demo_cnn"
path = "{models / 'demo_cnn.onnx'}"
profiles = [{{ input = "image", min = [1, 3, 32, 32], opt = [4, 3, 32, 32], max = [8, 3, 32, 32] }}]

{middle}

[[models]]
name = "dynamic_mlp"
path = "{models / 'dynamic_mlp.onnx'}"
profiles = [{{ input = "features", min = [1, 64], opt = [16, 64], max = [64, 64] }}]
"""
    path = tmp_path / "corpus.toml"
    path.write_text(text)
    return path


_GHOST = '[[models]]\nname = "ghost"\npath = "nowhere/ghost.onnx"\n'


def _run(*argv: str, cache: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trt_provision", *argv],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)},
    )


def test_a_failing_model_does_not_stop_the_run(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    manifest = _manifest(tmp_path, demo_dir, _GHOST)
    proc = _run("provision", str(manifest), "--json", cache=cache_dir)
    assert proc.returncode == 1, proc.stderr
    data = json.loads(proc.stdout)
    outcomes = {r["name"]: r["outcome"] for r in data["results"]}
    assert outcomes == {"demo_cnn": "built", "ghost": "failed", "dynamic_mlp": "built"}
    ghost = next(r for r in data["results"] if r["name"] == "ghost")
    assert ghost["error_type"] == "ModelError" and "not found" in ghost["error"]
    assert data["failed"] == 1 and data["built"] == 2 and data["exit_code"] == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "error: 1 of 3 model(s) not provisioned: ghost (failed)"
    )
    assert "Traceback" not in proc.stderr


def test_the_table_names_each_failure(tmp_path: Path, demo_dir: Path, cache_dir: Path) -> None:
    manifest = _manifest(tmp_path, demo_dir, _GHOST)
    proc = _run("provision", str(manifest), cache=cache_dir)
    assert proc.returncode == 1
    assert "FAILED" in proc.stdout and "ghost: failed: ModelError:" in proc.stdout
    assert "built 2, reused 0, fetched 0, failed 1" in proc.stdout


def test_fail_fast_stops_at_the_first_failure(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    bad_profile = (
        '[[models]]\nname = "two_inputs"\n'
        f'path = "{demo_dir / "models" / "two_inputs.onnx"}"\n'
        'profiles = [{ input = "token_ids", min = [8, 16], opt = [8, 16], max = [8, 16] },\n'
        '            { input = "mask", min = [4, 16], opt = [4, 16], max = [4, 16] }]\n'
    )  # inputs sharing the dimension 'batch' at different sizes: refused before the build
    manifest = _manifest(tmp_path, demo_dir, bad_profile)
    proc = _run("provision", str(manifest), "--json", "--fail-fast", cache=cache_dir)
    assert proc.returncode == 1
    assert proc.stdout == ""  # as before: the run stopped, no summary
    assert proc.stderr.strip().splitlines()[-1].startswith("error: EngineBuildError: ")
    built = {p.parent.name for p in cache_dir.rglob("*.engine")}
    assert built == {"demo_cnn"}  # dynamic_mlp, after the failure, was not attempted
    again = _run("provision", str(manifest), "--json", cache=cache_dir)
    results = {r["name"]: r for r in json.loads(again.stdout)["results"]}
    assert results["demo_cnn"]["outcome"] == "reused"
    assert results["two_inputs"]["outcome"] == "failed"
    assert results["dynamic_mlp"]["outcome"] == "built"


def test_refused_and_internal_errors(
    tmp_path: Path, demo_dir: Path, cache_dir: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """The accuracy gate's refusal is REFUSED (exit 1); an unexpected exception is our bug:
    the model is reported failed with the type and the run ends with exit 3."""
    real = OnnxRuntimeRuntime.compile_engine
    failures: dict[str, BaseException] = {}

    def compile_engine(self: Any, model_path: Path, config: Any, staged: Path) -> Any:
        exc = failures.get(Path(model_path).stem)
        if exc is not None:
            raise exc
        return real(self, model_path, config, staged)

    monkeypatch.setattr(OnnxRuntimeRuntime, "compile_engine", compile_engine)
    manifest = demo_dir / "demo.toml"
    argv = ["provision", str(manifest), "--json", "--cache-dir", str(cache_dir),
            "--runtime", "onnxruntime"]
    failures["two_inputs"] = AccuracyGateError("cosine 0.42 below 0.99", model="two_inputs")
    assert main(argv) == 1
    data = json.loads(capsys.readouterr().out)
    outcomes = {r["name"]: r["outcome"] for r in data["results"]}
    assert outcomes == {"demo_cnn": "built", "two_inputs": "refused", "dynamic_mlp": "built"}
    assert data["refused"] == 1
    failures["two_inputs"] = KeyError("boom")
    # The refusal is remembered; judged again, the build now hits our bug.
    assert main([*argv, "--force-rebuild"]) == 3
    captured = capsys.readouterr()
    data = json.loads(captured.out)
    row = next(r for r in data["results"] if r["name"] == "two_inputs")
    assert row["outcome"] == "failed" and row["error_type"] == "KeyError"
    assert row["internal_error"] is True and data["exit_code"] == 3
    assert captured.err.strip().splitlines()[-1].startswith("internal error (a bug in trt-")
    assert "Traceback" not in captured.err


def test_json_notes_say_why_an_engine_was_built(
    demo_dir: Path, cache_dir: Path
) -> None:
    manifest = str(demo_dir / "demo.toml")

    def notes(*extra: str) -> dict[str, list[str]]:
        proc = _run("provision", manifest, "--json", *extra, cache=cache_dir)
        assert proc.returncode == 0, proc.stderr
        return {r["name"]: r["notes"] for r in json.loads(proc.stdout)["results"]}

    assert notes("--dry-run")["demo_cnn"] == ["would be built: no engine in cache"]
    assert notes()["demo_cnn"] == ["built: no engine in cache"]
    assert notes()["demo_cnn"] == []  # reused
    assert notes("--force-rebuild")["two_inputs"] == ["rebuilt: --force-rebuild"]
    engine = next((cache_dir / "dynamic_mlp").glob("*.engine"))
    sidecar = engine.with_name(engine.name + ".sha256")
    sidecar.write_text("0" * 64 + f"  {engine.name}\n")
    (note,) = notes()["dynamic_mlp"]
    assert note.startswith("rebuilt: cached engine did not verify (")
