"""Habits users bring from trtexec and Polygraphy, and user code that misbehaves, through
the real CLI: a calibration loader that exits or parses arguments, profiles whose shared
dimensions disagree, TensorRT-only flags on ONNX Runtime, dynamic inputs without a profile,
``--saveEngine`` copies run and inspected like cached engines."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.tier1


def _run(*argv: str, cache: Path, cwd: Path | None = None,
         env_columns: int | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)}
    if env_columns is not None:  # a wide table: one row per line
        env["COLUMNS"] = str(env_columns)
    return subprocess.run(
        [sys.executable, "-m", "trt_provision", *argv],
        capture_output=True, text=True, timeout=300, cwd=cwd, env=env,
    )


def _loader_manifest(tmp_path: Path, demo_dir: Path, loader_body: str) -> Path:
    """demo_cnn at fp32, then dynamic_mlp at fp16 calibrated from ``loader.py:load``."""
    (tmp_path / "loader.py").write_text(loader_body)
    models = demo_dir / "models"
    manifest = tmp_path / "corpus.toml"
    manifest.write_text(f"""
[[models]]
name = "demo_cnn"
path = "{models / 'demo_cnn.onnx'}"
profiles = [{{ input = "image", min = [1, 3, 32, 32], opt = [4, 3, 32, 32], max = [8, 3, 32, 32] }}]

[[models]]
name = "dynamic_mlp"
path = "{models / 'dynamic_mlp.onnx'}"
precision = "fp16"
calibration = {{ data = "loader.py:load" }}
profiles = [{{ input = "features", min = [1, 64], opt = [16, 64], max = [64, 64] }}]
""")
    return manifest


@pytest.mark.parametrize(
    ("body", "said"),
    [
        ("import sys\nsys.exit(0)\n", "exited (sys.exit(0))"),
        ("import sys\nsys.exit(3)\n", "exited (sys.exit(3))"),
        # A loader written as a script: argparse on sys.argv at import. It must see its own
        # (empty) command line, not provision's, and its usage error is the model's failure.
        ("import argparse\np = argparse.ArgumentParser()\np.add_argument('--data', required=True)"
         "\np.parse_args()\n", "exited (sys.exit(2))"),
        ("def load():\n    import sys\n    sys.exit(0)\n", "exited (sys.exit(0))"),
        ("def load():\n    import sys\n    yield from ()\n    sys.exit(5)\n",
         "exited (sys.exit(5))"),
    ],
    ids=["exit0-at-import", "exit3-at-import", "argparse-at-import", "exit-in-call",
         "exit-in-generator"],
)
def test_a_calibration_loader_that_exits_fails_its_model_only(
    tmp_path: Path, demo_dir: Path, cache_dir: Path, body: str, said: str
) -> None:
    manifest = _loader_manifest(tmp_path, demo_dir, body)
    proc = _run("provision", str(manifest), "--json", cache=cache_dir)
    assert proc.returncode == 1, (proc.stdout, proc.stderr)
    doc = json.loads(proc.stdout)
    outcomes = {r["name"]: r for r in doc["results"]}
    assert outcomes["demo_cnn"]["outcome"] == "built"
    failed = outcomes["dynamic_mlp"]
    assert failed["outcome"] == "failed" and failed["error_type"] == "CalibrationCacheError"
    assert f"loader.py:load {said}" in failed["error"]
    assert "not provisioned: dynamic_mlp (failed)" in proc.stderr


def test_a_loader_sees_a_neutral_command_line(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    seen = tmp_path / "argv.json"
    body = (f"import json, sys\nopen({str(seen)!r}, 'w').write(json.dumps(sys.argv))\n"
            "import numpy as np\n"
            "def load():\n"
            "    return {'features': np.ones((16, 64), np.float32)}\n")
    manifest = _loader_manifest(tmp_path, demo_dir, body)
    proc = _run("provision", str(manifest), "--json", "--dry-run", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    assert not seen.exists()  # a dry run never executes the loader
    _run("provision", str(manifest), "--json", cache=cache_dir)
    assert json.loads(seen.read_text()) == [str(tmp_path / "loader.py")]


# ---------------------------------------------------------------- shared dynamic dimensions


@pytest.mark.parametrize(
    ("flags", "differ"),
    [
        (["--shapes", "token_ids:8x16,mask:4x16"], "min token_ids 8 vs mask 4"),
        (["--minShapes", "token_ids:1x16,mask:1x16", "--optShapes", "token_ids:8x16,mask:8x16",
          "--maxShapes", "token_ids:32x16,mask:16x16"], "max token_ids 32 vs mask 16"),
    ],
    ids=["static", "max-only"],
)
def test_profiles_that_disagree_on_a_shared_dimension_are_refused(
    tmp_path: Path, demo_dir: Path, cache_dir: Path, flags: list[str], differ: str
) -> None:
    proc = _run("compile", str(demo_dir / "models" / "two_inputs.onnx"), *flags, cache=cache_dir)
    assert proc.returncode == 1, proc.stderr
    (line,) = [x for x in proc.stderr.splitlines() if x.startswith("error:")]
    assert "inputs 'token_ids', 'mask' share the dynamic dimension 'batch'" in line
    assert differ in line
    assert not list(cache_dir.rglob("*.engine"))  # nothing published


def test_run_reports_an_onnx_runtime_failure_once_without_its_coloured_log(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    import numpy as np

    proc = _run("compile", str(demo_dir / "models" / "two_inputs.onnx"), "--json",
                "--minShapes", "token_ids:1x16,mask:1x16", "--optShapes",
                "token_ids:8x16,mask:8x16", "--maxShapes", "token_ids:32x16,mask:32x16",
                cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    engine = json.loads(proc.stdout)["engine"]
    # Each input inside its profile, together impossible: ONNX Runtime fails in the graph.
    np.savez(tmp_path / "bad.npz", token_ids=np.ones((8, 16), np.int64),
             mask=np.ones((4, 16), bool))
    proc = _run("run", engine, "--inputs", str(tmp_path / "bad.npz"), "--iterations", "1",
                "--warmup", "0", "--no-record", cache=cache_dir)
    assert proc.returncode == 1
    assert "\x1b[" not in proc.stderr and "[E:onnxruntime" not in proc.stderr, proc.stderr
    lines = proc.stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: InferenceError: inference failed")


# ---------------------------------------------------------------- dynamic inputs, no profile


def test_compile_defaults_a_missing_profile_with_a_warning(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    import numpy as np

    model = demo_dir / "models" / "dynamic_mlp.onnx"
    proc = _run("compile", str(model), "--json", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    (warning,) = [x for x in proc.stderr.splitlines() if x.startswith("WARNING")]
    assert "input 'features' [batch, 64] has dynamic dimensions and no optimization profile" \
        in warning
    assert "using [1, 64]" in warning and "--minShapes/--optShapes/--maxShapes" in warning
    engine = Path(json.loads(proc.stdout)["engine"])
    metadata = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert metadata["build_config"]["profiles"] == [
        {"input": "features", "min": [1, 64], "opt": [1, 64], "max": [1, 64], "defaulted": True}
    ]
    # The defaulted profile is part of the identity: a user's own [1, 64] is another engine.
    given = _run("compile", str(model), "--json", "--shapes", "features:1x64", cache=cache_dir)
    assert given.returncode == 0 and "WARNING" not in given.stderr, given.stderr
    assert json.loads(given.stdout)["engine"] != str(engine)
    # Reused, not rebuilt, on the next run (the same defaulted identity).
    again = _run("compile", str(model), "--json", cache=cache_dir)
    assert json.loads(again.stdout)["outcome"] == "reused"
    # ONNX Runtime serves any batch: the defaulted profile does not restrict inference.
    np.savez(tmp_path / "b16.npz", features=np.ones((16, 64), np.float32))
    ran = _run("run", str(engine), "--inputs", str(tmp_path / "b16.npz"), "--iterations", "1",
               "--warmup", "0", "--json", "--no-record", cache=cache_dir)
    assert ran.returncode == 0, ran.stderr
    (result,) = json.loads(ran.stdout)["results"]
    assert result["inputs"]["features"]["shape"] == [16, 64] and result["passed"]


def test_provision_defaults_a_missing_profile_per_model(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text(f'[[models]]\nname = "mlp"\npath = "{demo_dir / "models" / "dynamic_mlp.onnx"}"\n'
                        f'[[models]]\nname = "two"\npath = "{demo_dir / "models" / "two_inputs.onnx"}"\n')
    proc = _run("provision", str(manifest), "--json", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    warned = [x for x in proc.stderr.splitlines() if x.startswith("WARNING")]
    assert len(warned) == 3, proc.stderr  # features; token_ids and mask
    assert any("two: input 'mask' [batch, 16]" in w and "[[models.profiles]]" in w
               for w in warned)
    assert {r["outcome"] for r in json.loads(proc.stdout)["results"]} == {"built"}
    # `run MANIFEST` finds the same (defaulted) identities.
    ran = _run("run", str(manifest), "--iterations", "1", "--warmup", "0", "--json",
               cache=cache_dir)
    assert ran.returncode == 0, ran.stderr


# ---------------------------------------------------------------- TensorRT-only flags


def test_tensorrt_only_flags_warn_once_on_onnx_runtime(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    timing = tmp_path / "timing.cache"
    proc = _run("compile", str(demo_dir / "models" / "demo_cnn.onnx"), "--fp16",
                "--shapes", "image:4x3x32x32", "--useDLACore", "0", "--timingCacheFile",
                str(timing), "--builderOptimizationLevel", "5", "--noTF32", "--runtime",
                "onnxruntime", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    (warning,) = [x for x in proc.stderr.splitlines() if x.startswith("WARNING")]
    assert "ignored on the ONNX Runtime runtime (TensorRT only)" in warning
    for flag in ("--useDLACore", "--timingCacheFile", "--builderOptimizationLevel", "--noTF32"):
        assert flag in warning
    assert "no timing cache is read or created" in warning and not timing.exists()
    # Flags ONNX Runtime honours warn about nothing.
    quiet = _run("compile", str(demo_dir / "models" / "demo_cnn.onnx"), "--fp16", "--shapes",
                 "image:4x3x32x32", "--runtime", "onnxruntime", cache=cache_dir)
    assert quiet.returncode == 0 and "WARNING" not in quiet.stderr, quiet.stderr


# ---------------------------------------------------------------- smaller habits


@pytest.mark.parametrize(("cuda", "extra"), [("12.4", "cu12"), ("13.0", "cu13")])
def test_selftest_table_names_the_extra_this_host_needs(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path,
    cuda: str, extra: str,
) -> None:
    import trt_provision.compose  # noqa: F401  (bound to the real probe before it is patched)
    from trt_provision.cli.main import main
    from trt_provision.types import HostCapabilities

    monkeypatch.setattr("trt_provision.measure.selftest.is_available", lambda name: False)
    monkeypatch.setattr("trt_provision.host.probe_host",
                        lambda: HostCapabilities(cuda_driver_version=cuda))
    monkeypatch.setenv("COLUMNS", "400")  # one table row per line
    assert main(["selftest", "--report-dir", str(tmp_path / "r")]) == 1
    table = capsys.readouterr().out
    (row,) = [x for x in table.splitlines() if "tensorrt Python module" in x]
    assert f"pip install 'trt-provision[tensorrt-{extra}]'" in row
    (row,) = [x for x in table.splitlines() if "cuda-python (cuda.bindings)" in x]
    assert f"pip install 'trt-provision[cuda-{extra}]'" in row


def test_run_with_nan_inputs_prints_no_invented_figures(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    import numpy as np

    proc = _run("compile", str(demo_dir / "models" / "dynamic_mlp.onnx"), "--json",
                "--shapes", "features:16x64", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    engine = json.loads(proc.stdout)["engine"]
    np.savez(tmp_path / "nan.npz", features=np.full((16, 64), np.nan, np.float32))
    argv = ("run", engine, "--inputs", str(tmp_path / "nan.npz"), "--iterations", "1",
            "--warmup", "0", "--no-record")
    table = _run(*argv, cache=cache_dir, env_columns=200)
    assert table.returncode == 1
    (line,) = [x for x in table.stdout.splitlines() if x.strip().startswith("scores:")]
    assert "cosine n/a, max abs n/a, max rel n/a" in line and "no finite elements" in line
    assert "-1" not in line and "inf" not in line
    assert "max abs error n/a" in table.stderr and "inf" not in table.stderr
    doc = json.loads(_run(*argv, "--json", cache=cache_dir).stdout)
    scores = doc["results"][0]["comparison"]["outputs"]["scores"]
    assert scores["cosine"] is None and scores["max_abs_error"] is None
    assert scores["passed"] is False


@pytest.mark.parametrize("command", [
    ["provision", "{demo}/demo.toml"], ["compile", "{demo}/models/demo_cnn.onnx"],
    ["run", "{demo}/demo.toml"], ["cache", "ls"], ["verify"],
    ["prepare", "{demo}/models/demo_cnn.onnx", "--precision", "fp16", "-o", "{tmp}/out.onnx"],
], ids=lambda c: c[0])
def test_an_empty_cache_dir_is_refused_not_the_current_directory(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    demo_dir: Path, command: list[str],
) -> None:
    from trt_provision.cli.main import main

    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    argv = [a.format(demo=demo_dir, tmp=tmp_path) for a in command]
    assert main([*argv, "--cache-dir", ""]) == 1
    assert capsys.readouterr().err.strip() == "error: --cache-dir: empty path"
    assert list(work.iterdir()) == []


def test_the_progress_bar_advances_as_each_model_finishes(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
    demo_dir: Path, cache_dir: Path,
) -> None:
    """A model already in the cache is counted when it is verified, not after the builds of
    the models listed before it."""
    import rich.progress

    from trt_provision.cli.main import main
    from trt_provision.runtimes.onnxruntime import OnnxRuntimeRuntime

    models = demo_dir / "models"
    cnn = (f'[[models]]\nname = "demo_cnn"\npath = "{models / "demo_cnn.onnx"}"\n'
           'profiles = [{ input = "image", min = [1, 3, 32, 32], opt = [4, 3, 32, 32], '
           'max = [8, 3, 32, 32] }]\n')
    mlp = (f'[[models]]\nname = "dynamic_mlp"\npath = "{models / "dynamic_mlp.onnx"}"\n'
           'profiles = [{ input = "features", min = [1, 64], opt = [16, 64], max = [64, 64] }]\n')
    (tmp_path / "mlp.toml").write_text(mlp)
    (tmp_path / "both.toml").write_text(cnn + mlp)
    assert main(["provision", str(tmp_path / "mlp.toml"), "--cache-dir", str(cache_dir),
                 "--json"]) == 0
    capsys.readouterr()

    seen: list[str] = []
    real_update, real_compile = rich.progress.Progress.update, OnnxRuntimeRuntime.compile_engine

    def update(self: Any, task: Any, **kwargs: Any) -> None:
        if kwargs.get("advance"):
            seen.append(str(kwargs.get("description")))
        real_update(self, task, **kwargs)

    def compile_engine(self: Any, model: Path, *args: Any, **kwargs: Any) -> Any:
        seen.append(f"building {Path(model).stem}")
        return real_compile(self, model, *args, **kwargs)

    monkeypatch.setattr(rich.progress.Progress, "update", update)
    monkeypatch.setattr(OnnxRuntimeRuntime, "compile_engine", compile_engine)
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)
    assert main(["provision", str(tmp_path / "both.toml"), "--cache-dir", str(cache_dir)]) == 0
    assert seen == ["dynamic_mlp: reused", "building demo_cnn", "demo_cnn: built"]
    table = capsys.readouterr().out  # the summary table keeps the manifest's order
    assert table.index("demo_cnn") < table.index("dynamic_mlp")


# ---------------------------------------------------------------- --saveEngine copies


@pytest.mark.parametrize("name", ["model.engine", "model.plan"])
def test_a_save_engine_copy_runs_and_inspects_like_the_cached_engine(
    tmp_path: Path, demo_dir: Path, cache_dir: Path, name: str
) -> None:
    """trtexec habit: ``--saveEngine=FILE``, then ``--loadEngine=FILE`` (here: run FILE)."""
    out = tmp_path / "out"
    out.mkdir()
    copy = out / name
    built = _run("compile", str(demo_dir / "models" / "demo_cnn.onnx"), "--json", "--shapes",
                 "image:4x3x32x32", f"--saveEngine={copy}", cache=cache_dir)
    assert built.returncode == 0, built.stderr
    cached = Path(json.loads(built.stdout)["engine"])
    ran = _run("run", str(copy), "--iterations", "2", "--warmup", "0", "--json",
               cache=cache_dir)
    assert ran.returncode == 0, ran.stderr
    (result,) = json.loads(ran.stdout)["results"]
    assert result["engine"] == str(copy) and result["copy_of"] == cached.name
    assert result["comparison"]["passed"]
    # Measurements go beside the copy, under its name; nothing is left behind elsewhere.
    assert Path(result["recorded"]) == out / f"{name}.perf.json"
    assert json.loads((out / f"{name}.perf.json").read_text())["engine"] == name
    assert sorted(p.name for p in out.iterdir()) == sorted(
        name + s for s in ("", ".json", ".sha256", ".perf.json"))
    shown = _run("inspect", str(copy), "--json", cache=cache_dir)
    assert shown.returncode == 0, shown.stderr
    doc = json.loads(shown.stdout)
    assert doc["copy_of"] == cached.name and doc["sha256"]["ok"] is True
    assert doc["identity"]["model_name"] == "demo_cnn"
    assert doc["measurements"]["for_these_bytes"] is True
    # A copy whose bytes changed is refused by both, naming why.
    copy.write_bytes(copy.read_bytes() + b"\0")
    ran = _run("run", str(copy), "--iterations", "1", "--warmup", "0", cache=cache_dir)
    assert ran.returncode == 1
    assert ran.stderr.strip().splitlines() == [
        f"error: EngineGateError: engine copy: its bytes do not match its .sha256 sidecar "
        f"(path={copy}, expected={json.loads(built.stdout)['sha256']}, "
        f"found={hashlib.sha256(copy.read_bytes()).hexdigest()})"]
    shown = _run("inspect", str(copy), "--json", cache=cache_dir)
    assert shown.returncode == 1 and json.loads(shown.stdout)["sha256"]["ok"] is False


def test_a_defaulted_profile_follows_a_given_one_on_a_shared_dimension(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    """Only token_ids given: mask, which shares 'batch' with it, takes token_ids' sizes
    rather than 1 (which the shared-dimension rule would then refuse)."""
    proc = _run("compile", str(demo_dir / "models" / "two_inputs.onnx"), "--json",
                "--minShapes", "token_ids:1x16", "--optShapes", "token_ids:8x16",
                "--maxShapes", "token_ids:32x16", cache=cache_dir)
    assert proc.returncode == 0, proc.stderr
    (warning,) = [x for x in proc.stderr.splitlines() if x.startswith("WARNING")]
    assert "input 'mask' [batch, 16]" in warning
    assert "using min [1, 16] opt [8, 16] max [32, 16]" in warning
    engine = Path(json.loads(proc.stdout)["engine"])
    profiles = json.loads(engine.with_name(engine.name + ".json").read_text())[
        "build_config"]["profiles"]
    assert profiles[1] == {"input": "mask", "min": [1, 16], "opt": [8, 16], "max": [32, 16],
                           "defaulted": True}


@pytest.mark.tier0
@pytest.mark.parametrize("anonymous", ["?", "-1", "None"])
def test_an_exporters_anonymous_dim_name_is_not_a_shared_dimension(anonymous: str) -> None:
    """Paddle2ONNX names every dynamic dim "?": a batch and a width of one input are not
    one dimension (the RapidOCR direction classifier, [?, 3, 48, ?], profiled 1..192 wide)."""
    from trt_provision.types import OptimizationProfile, profile_problems

    profile = OptimizationProfile("x", (1, 3, 48, 192), (1, 3, 48, 192), (1, 3, 48, 192))
    inputs = {"x": (anonymous, 3, 48, anonymous)}
    assert profile_problems((profile,), inputs) == []
    named = {"x": ("n", 3, 48, "n")}  # a real shared name still has to agree
    assert profile_problems((profile,), named)
