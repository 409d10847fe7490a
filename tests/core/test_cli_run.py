"""``trt-provision run``: through the real CLI on the demo corpus (ONNX Runtime engines)."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from trt_provision.cli.main import main
from trt_provision.integrity import PERF_SUFFIX

pytestmark = pytest.mark.tier1


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def _provision(capsys: pytest.CaptureFixture[str], manifest: Path, cache: Path) -> dict[str, Path]:
    rc, out, err = _cli(capsys, "provision", str(manifest), "--cache-dir", str(cache), "--json")
    assert rc == 0, err
    return {r["name"]: Path(r["engine"]) for r in json.loads(out)["results"]}


@pytest.fixture
def engines(capsys: pytest.CaptureFixture[str], cache_dir: Path, demo_dir: Path) -> dict[str, Path]:
    return _provision(capsys, demo_dir / "demo.toml", cache_dir)


def _one_error_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.startswith("error:")]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_run_engine_reports_latency_compares_and_records(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path]
) -> None:
    engine = engines["demo_cnn"]
    metadata_before = engine.with_name(engine.name + ".json").read_bytes()
    rc, out, err = _cli(capsys, "run", str(engine), "--iterations", "7", "--warmup", "2",
                        "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True
    (result,) = doc["results"]
    lat = result["latency_ms"]
    assert lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p99"] <= lat["max"]
    assert result["iterations"] == 7 and result["warmup"] == 2
    assert result["throughput"]["batch"] == 4 and result["throughput"]["qps"] > 0
    # Synthetic inputs sit at the profile's opt shape.
    assert result["inputs"] == {"image": {"shape": [4, 3, 32, 32], "dtype": "float32"}}
    assert result["memory"]["host_rss_bytes"] > 0
    assert result["memory"]["device_reserved_bytes"] > 0  # what the budget reserved
    comparison = result["comparison"]
    assert comparison["passed"] and comparison["model_sha256_matches"]
    assert set(comparison["outputs"]) == {"logits", "routing"}
    for out_cmp in comparison["outputs"].values():
        assert out_cmp["elements"] > 0 and out_cmp["cosine"] > 0.9999
        assert out_cmp["max_abs_error"] <= comparison["atol"] + comparison["rtol"]
    # Measurements go to their own sidecar; the (signable) metadata is untouched.
    perf = Path(result["recorded"])
    assert perf.name == engine.name + PERF_SUFFIX
    assert engine.with_name(engine.name + ".json").read_bytes() == metadata_before
    recorded = json.loads(perf.read_text())
    assert recorded["engine"] == engine.name and len(recorded["runs"]) == 1
    assert recorded["runs"][0]["latency_ms"] == lat
    # verify still passes: the new file is not taken for a bad sidecar.
    rc, _out, err = _cli(capsys, "verify", "--cache-dir", str(engine.parent.parent))
    assert rc == 0, err


def test_run_manifest_runs_every_cached_engine_with_model_dtypes(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path], cache_dir: Path,
    demo_dir: Path,
) -> None:
    rc, out, err = _cli(capsys, "run", str(demo_dir / "demo.toml"), "--cache-dir",
                        str(cache_dir), "--iterations", "3", "--warmup", "1", "--json")
    assert rc == 0, err
    results = {r["model"]: r for r in json.loads(out)["results"]}
    assert set(results) == {"demo_cnn", "two_inputs", "dynamic_mlp"}
    assert results["dynamic_mlp"]["inputs"]["features"]["shape"] == [16, 64]
    assert results["two_inputs"]["inputs"] == {
        "token_ids": {"shape": [8, 16], "dtype": "int64"},  # the profile's opt shapes
        "mask": {"shape": [8, 16], "dtype": "bool"},
    }
    assert all(r["comparison"]["passed"] for r in results.values())
    assert {Path(r["engine"]) for r in results.values()} == set(engines.values())


def test_run_human_output_has_a_table_and_the_figures(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path]
) -> None:
    rc, out, err = _cli(capsys, "run", str(engines["two_inputs"]), "--iterations", "2")
    assert rc == 0, err
    assert "p50 ms" in out and "two_inputs" in out and "OK" in out
    assert "pooled: cosine" in out and "host RSS" in out


def test_run_on_an_npz_of_inputs(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path], tmp_path: Path
) -> None:
    npz = tmp_path / "batch.npz"
    rng = np.random.default_rng(3)
    np.savez(npz, image=rng.standard_normal((2, 3, 32, 32)).astype(np.float32))
    rc, out, err = _cli(capsys, "run", str(engines["demo_cnn"]), "--inputs", str(npz),
                        "--iterations", "2", "--json")
    assert rc == 0, err
    (result,) = json.loads(out)["results"]
    assert result["inputs"]["image"]["shape"] == [2, 3, 32, 32]
    assert result["input_source"] == str(npz) and result["comparison"]["passed"]


@pytest.mark.parametrize(
    ("arrays", "expected"),
    [
        ({"pixels": np.zeros((2, 3, 32, 32), np.float32)}, "does not have"),
        ({"image": np.zeros((2, 3, 32, 32), np.float64)}, "wrong dtype"),
        ({"image": np.zeros((9, 3, 32, 32), np.float32)}, "outside the profile"),
        ({"image": np.zeros((2, 3, 32), np.float32)}, "rank 3"),
        ({"image": np.zeros((2, 3, 32, 31), np.float32)}, "dim 3 is 31"),
        ({}, "lacks an input"),
    ],
)
def test_a_bad_inputs_file_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path], tmp_path: Path,
    arrays: dict[str, Any], expected: str,
) -> None:
    npz = tmp_path / "bad.npz"
    np.savez(npz, **arrays)
    rc, _out, err = _cli(capsys, "run", str(engines["demo_cnn"]), "--inputs", str(npz))
    assert rc == 1
    line = _one_error_line(err)
    assert expected in line and "bad.npz" in line
    assert not engines["demo_cnn"].with_name(engines["demo_cnn"].name + PERF_SUFFIX).exists()


def test_an_inputs_file_that_is_not_an_npz_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path], tmp_path: Path,
    demo_dir: Path,
) -> None:
    for bad in (demo_dir / "demo.toml", tmp_path / "missing.npz"):
        rc, _out, err = _cli(capsys, "run", str(engines["demo_cnn"]), "--inputs", str(bad))
        assert rc == 1
        assert bad.name in _one_error_line(err)
    # A pickled object array is refused without being unpickled.
    pickled = tmp_path / "objects.npz"
    np.savez(pickled, image=np.array([object()] * 4, dtype=object))
    rc, _out, err = _cli(capsys, "run", str(engines["demo_cnn"]), "--inputs", str(pickled))
    assert rc == 1 and "wrong dtype" in _one_error_line(err)


def _perturbed_copy(model: Path, out: Path) -> Path:
    proto = onnx.load(str(model))
    for init in proto.graph.initializer:
        if init.name.lower().endswith("bias") or len(init.dims) >= 2:
            values = numpy_helper.to_array(init).astype(np.float32)
            init.CopyFrom(numpy_helper.from_array(values * 1.5 + 0.25, init.name))
    onnx.save(proto, str(out))
    return out


def test_outputs_beyond_tolerance_exit_1(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path], tmp_path: Path,
    demo_models: dict[str, Path],
) -> None:
    other = _perturbed_copy(demo_models["dynamic_mlp"], tmp_path / "changed.onnx")
    engine = engines["dynamic_mlp"]
    rc, out, err = _cli(capsys, "run", str(engine), "--model", str(other), "--iterations", "2",
                        "--json")
    assert rc == 1
    line = _one_error_line(err)
    assert "differs from ONNX Runtime FP32" in line and "'scores'" in line
    comparison = json.loads(out)["results"][0]["comparison"]
    assert comparison["model_sha256_matches"] is False
    scores = comparison["outputs"]["scores"]
    assert not scores["passed"] and scores["mismatched"] > 0 and scores["max_abs_error"] > 1e-3
    # The same run within a tolerance that covers the difference passes.
    loose = str(scores["max_abs_error"] * 2)
    rc, out, err = _cli(capsys, "run", str(engine), "--model", str(other), "--iterations", "2",
                        "--atol", loose, "--rtol", "0", "--json")
    assert rc == 0, err
    assert json.loads(out)["results"][0]["comparison"]["atol"] == float(loose)


def test_a_source_model_gone_skips_the_comparison(
    capsys: pytest.CaptureFixture[str], cache_dir: Path, tmp_path: Path,
    demo_models: dict[str, Path],
) -> None:
    model = tmp_path / "mlp.onnx"
    model.write_bytes(demo_models["dynamic_mlp"].read_bytes())
    manifest = tmp_path / "m.toml"
    manifest.write_text('[[models]]\nname = "mlp"\npath = "mlp.onnx"\n'
                        '[[models.profiles]]\ninput = "features"\n'
                        "min = [1, 64]\nopt = [2, 64]\nmax = [4, 64]\n")
    engine = _provision(capsys, manifest, cache_dir)["mlp"]
    model.unlink()
    rc, out, err = _cli(capsys, "run", str(engine), "--iterations", "2", "--json")
    assert rc == 0, err
    result = json.loads(out)["results"][0]
    assert result["comparison"] is None and "--model" in result["comparison_skipped"]
    assert result["inputs"]["features"]["shape"] == [2, 64]  # from the metadata alone
    rc, _out, err = _cli(capsys, "run", str(engine), "--model", str(tmp_path / "nope.onnx"))
    assert rc == 1 and "nope.onnx" in _one_error_line(err)


def test_a_tampered_engine_is_refused_by_the_gate_and_nothing_is_recorded(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path]
) -> None:
    engine = engines["demo_cnn"]
    engine.write_bytes(engine.read_bytes() + b"\0")
    rc, _out, err = _cli(capsys, "run", str(engine))
    assert rc == 1 and "EngineGateError" in _one_error_line(err)
    assert not engine.with_name(engine.name + PERF_SUFFIX).exists()


def test_manifest_runs_the_others_when_one_engine_is_missing(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path], cache_dir: Path,
    demo_dir: Path,
) -> None:
    gone = engines["two_inputs"]
    gone.unlink()
    rc, out, err = _cli(capsys, "run", str(demo_dir / "demo.toml"), "--cache-dir",
                        str(cache_dir), "--iterations", "2", "--json")
    assert rc == 1
    assert "1 of 3 engines failed" in _one_error_line(err)
    results = {r["model"]: r for r in json.loads(out)["results"]}
    assert "provision" in results["two_inputs"]["error"]
    assert results["demo_cnn"]["passed"] and results["dynamic_mlp"]["passed"]


def test_measurements_are_bounded_and_a_planted_file_is_not_trusted(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path]
) -> None:
    engine = engines["dynamic_mlp"]
    perf = engine.with_name(engine.name + PERF_SUFFIX)
    perf.write_bytes(b"[" * (1 << 20))  # huge and deeply nested: refused unread
    rc, out, _err = _cli(capsys, "inspect", str(engine), "--json")
    assert rc == 0 and "too large" in json.loads(out)["measurements_error"]
    for _ in range(10):
        rc, _out, err = _cli(capsys, "run", str(engine), "--iterations", "1", "--warmup", "0",
                             "--no-compare")
        assert rc == 0, err
    runs = json.loads(perf.read_text())["runs"]
    assert len(runs) == 8  # only the newest are kept
    rc, out, _err = _cli(capsys, "inspect", str(engine))
    assert rc == 0 and "measured" in out and "8 run(s) recorded" in out


def test_a_read_only_cache_runs_without_recording(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path]
) -> None:
    if os.geteuid() == 0:  # root ignores permission bits
        pytest.skip("needs a non-root user")
    engine = engines["demo_cnn"]
    engine.parent.chmod(0o555)
    try:
        rc, out, err = _cli(capsys, "run", str(engine), "--iterations", "2", "--json")
    finally:
        engine.parent.chmod(0o755)
    assert rc == 0, err
    result = json.loads(out)["results"][0]
    assert result["recorded"] is None and "cannot write" in result["record_error"]


def test_a_failed_record_keeps_the_run_and_the_engine(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path]
) -> None:
    engine = engines["demo_cnn"]
    blocker = engine.with_name(engine.name + PERF_SUFFIX)
    blocker.mkdir()  # the sidecar cannot be written here, even by root
    rc, out, err = _cli(capsys, "run", str(engine), "--iterations", "2", "--json")
    assert rc == 0, err
    result = json.loads(out)["results"][0]
    assert result["recorded"] is None and "cannot write" in result["record_error"]
    assert blocker.is_dir()
    rc, _out, err = _cli(capsys, "verify", "--cache-dir", str(engine.parent.parent))
    assert rc == 0, err


class _FailingRuntime:
    """The real runtime, except that inference fails on the third call."""

    def __init__(self, inner: Any) -> None:
        self._inner = inner
        self.calls = 0
        self.released: list[Any] = []

    def deserialize_engine(self, entry: Any) -> Any:
        return self._inner.deserialize_engine(entry)

    def infer(self, handle: Any, inputs: Mapping[str, Any]) -> dict[str, Any]:
        self.calls += 1
        if self.calls == 3:
            from trt_provision.errors import InferenceError

            raise InferenceError("device fell over")
        return dict(self._inner.infer(handle, inputs))

    def release_engine(self, handle: Any) -> None:
        self.released.append(handle)
        self._inner.release_engine(handle)


def test_the_engine_and_its_budget_are_released_when_a_run_fails(
    engines: dict[str, Path],
) -> None:
    from trt_provision.compose import wire
    from trt_provision.config import Settings
    from trt_provision.errors import InferenceError
    from trt_provision.measure.runner import RunOptions, entry_for_engine_file, run_engine

    engine = engines["demo_cnn"]
    wired = wire(Settings(cache_dir=engine.parent.parent), use_remote=False)
    runtime = _FailingRuntime(wired.runtime)
    with pytest.raises(InferenceError, match="fell over"):
        run_engine(runtime, entry_for_engine_file(engine),  # type: ignore[arg-type]
                   RunOptions(iterations=5, warmup=1), budget=wired.budget)
    assert len(runtime.released) == 1 and runtime.released[0].released
    assert wired.budget is not None and wired.budget.snapshot().reserved_bytes == 0  # type: ignore[attr-defined]
    wired.runtime.release_engine(runtime.released[0])  # idempotent


def test_usage_errors(capsys: pytest.CaptureFixture[str], engines: dict[str, Path],
                      demo_dir: Path) -> None:
    assert _cli(capsys, "run", str(engines["demo_cnn"]), "--iterations", "0")[0] == 2
    assert _cli(capsys, "run", str(engines["demo_cnn"]), "--atol", "nan")[0] == 2
    rc, _out, err = _cli(capsys, "run", str(demo_dir / "demo.toml"), "--model",
                         str(demo_dir / "models" / "demo_cnn.onnx"))
    assert rc == 1 and "--model" in _one_error_line(err)
    rc, _out, err = _cli(capsys, "run", "nowhere.engine")
    assert rc == 1 and "nowhere.engine" in _one_error_line(err)
    rc, _out, err = _cli(capsys, "run", str(demo_dir / "models" / "demo_cnn.onnx"))
    assert rc == 1 and "provision or compile it first" in _one_error_line(err)


def test_run_through_the_installed_entry_point(engines: dict[str, Path]) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", "run", str(engines["dynamic_mlp"]),
         "--iterations", "3", "--json"],
        capture_output=True, text=True, timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["results"][0]["comparison"]["passed"] is True


# ---------------------------------------------------------------- comparison rules


def test_comparison_rules() -> None:
    from trt_provision.measure.runner import compare_outputs

    ref = {"y": np.array([1.0, -2.0, 0.0], np.float32)}
    (same,) = compare_outputs(ref, {"y": ref["y"].copy()}, atol=0.0, rtol=0.0)
    assert same.passed and same.cosine == 1.0 and same.max_abs_error == 0.0
    (flipped,) = compare_outputs(ref, {"y": -ref["y"]}, atol=1e-3, rtol=1e-3)
    assert not flipped.passed and math.isclose(flipped.cosine, -1.0)
    assert flipped.max_abs_error == 4.0 and flipped.max_rel_error == 2.0
    (nan,) = compare_outputs(ref, {"y": np.array([1.0, np.nan, 0.0])}, atol=1, rtol=1)
    # The figures are over the finite pairs; the NaN is counted in the note, not made a figure.
    assert not nan.passed and nan.max_abs_error == 0.0 and nan.cosine == 1.0
    assert nan.mismatched == 1 and nan.note.startswith("1 element(s) NaN/Inf on one side only")
    (empty,) = compare_outputs({"y": np.zeros((0, 4))}, {"y": np.zeros((0, 4))}, atol=1, rtol=1)
    assert not empty.passed and empty.note == "no elements to compare"
    (shape,) = compare_outputs(ref, {"y": np.zeros(4)}, atol=1, rtol=1)
    assert not shape.passed and "shape" in shape.note
    (missing,) = compare_outputs(ref, {}, atol=1, rtol=1)
    assert not missing.passed
    (within,) = compare_outputs(ref, {"y": ref["y"] + 0.05}, atol=0.1, rtol=0.0)
    assert within.passed and within.mismatched == 0


def test_progress_is_reported_sparingly_and_ends_at_the_total(
    engines: dict[str, Path],
) -> None:
    from trt_provision.compose import wire
    from trt_provision.config import Settings
    from trt_provision.measure.runner import RunOptions, entry_for_engine_file, run_engine

    engine = engines["dynamic_mlp"]
    wired = wire(Settings(cache_dir=engine.parent.parent), use_remote=False)
    calls: list[tuple[int, int]] = []
    report = run_engine(wired.runtime, entry_for_engine_file(engine),
                        RunOptions(iterations=1000, warmup=5, compare=False, record=False),
                        budget=wired.budget, progress=lambda done, total: calls.append((done, total)))
    assert calls[-1] == (1005, 1005) and len(calls) <= 102
    assert [done for done, _ in calls] == sorted(done for done, _ in calls)
    assert report.recorded is None and report.comparison_skipped == "disabled with --no-compare"


def test_run_engine_on_the_tensorrt_strategy(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, demo_dir: Path
) -> None:
    """TensorrtRuntime on the recording fake TensorRT and fake CUDA: the engine's inputs come
    from the source model (TensorRT metadata lists no I/O), the loop runs on the handle, the
    fake's outputs differ from ONNX Runtime's (so the comparison must say so), and release
    gives back the budget and the device buffers."""
    from fakes.fake_cuda import FakeCudaRuntime
    from fakes.fake_tensorrt import FakeModelSpec, FakeTensorSpec, fake_state, make_fake_tensorrt
    from trt_provision.compiler import EngineCompiler
    from trt_provision.config import load_manifest
    from trt_provision.gates.budget import GpuMemoryBudget
    from trt_provision.gates.engine_gate import DefaultEngineGate
    from trt_provision.measure.runner import RunOptions, run_engine
    from trt_provision.runtimes.tensorrt import TensorrtOptions, TensorrtRuntime
    from trt_provision.stores.local import LocalEngineStore
    from trt_provision.types import EngineCompileRequest, HostCapabilities

    cuda = FakeCudaRuntime()
    trt = make_fake_tensorrt("10.16.1.11", cuda=cuda, recorder=cuda.recorder)
    fake_state(trt).model = FakeModelSpec(
        inputs=(FakeTensorSpec("features", (-1, 64)),),
        outputs=(FakeTensorSpec("scores", (-1, 10)),),
    )
    cache = tmp_path / "cache"
    gate = DefaultEngineGate(cache_root=cache)
    budget = GpuMemoryBudget(1 << 30)
    host = HostCapabilities(sm="sm87", trt_version="10.16.1.11")
    runtime = TensorrtRuntime(gate=gate, budget=budget, host=host,
                              options=TensorrtOptions(optional_plugins=()),
                              trt_module=trt, cuda_module=cuda)
    compiler = EngineCompiler(runtime=runtime, store=LocalEngineStore(cache), gate=gate,
                              host=host)
    mlp = next(b for b in load_manifest(demo_dir / "demo.toml").backbones
               if b.name == "dynamic_mlp")
    (result,) = compiler.compile_engines_for_corpus(EngineCompileRequest((mlp,))).results
    assert result.entry is not None and ".trt-10_16_1_11." in result.entry.engine_path.name
    report = run_engine(runtime, result.entry, RunOptions(iterations=4, warmup=1),
                        budget=budget)
    assert report.inputs == {"features": {"shape": [16, 64], "dtype": "float32"}}
    assert len(cuda.recorder.calls_to("IExecutionContext.execute_async_v3")) == 5
    assert report.comparison is not None and not report.passed  # the fake is no MLP
    assert report.comparison.outputs[0].name == "scores"
    assert budget.snapshot().reserved_bytes == 0
    assert cuda.live == {} and cuda.live_streams == set()  # buffers and stream freed
    assert report.memory["device_memory_bytes"] == fake_state(trt).device_memory_bytes
    assert report.recorded is not None and report.recorded.is_file()
    # inspect shows the I/O of a TensorRT engine (its metadata has none) and the measurement
    rc, out, err = _cli(capsys, "inspect", str(result.entry.engine_path))
    assert rc == 0, err
    assert "I/O (from the source model)" in out and "features" in out and "scores" in out
    assert "1 run(s) recorded" in out


@pytest.mark.parametrize("kind", ["fifo", "symlink", "wrong-engine", "not-json", "deep"])
def test_a_planted_measurements_sidecar_is_refused_and_replaced(
    capsys: pytest.CaptureFixture[str], engines: dict[str, Path], tmp_path: Path, kind: str
) -> None:
    engine = engines["dynamic_mlp"]
    perf = engine.with_name(engine.name + PERF_SUFFIX)
    if kind == "fifo":
        os.mkfifo(perf)  # opening it for reading would block forever
    elif kind == "symlink":
        outside = tmp_path / "elsewhere.json"
        outside.write_text("{}")
        perf.symlink_to(outside)
    elif kind == "wrong-engine":
        perf.write_text(json.dumps({"format": 1, "engine": "other.engine", "sha256": "x",
                                    "runs": []}))
    elif kind == "deep":
        perf.write_bytes(b"[" * 30_000 + b"]" * 30_000)  # small, but nested past any parser
    else:
        perf.write_bytes(b"\xff\xfe not json")
    rc, out, _err = _cli(capsys, "inspect", str(engine), "--json")
    assert rc == 0 and "measurements_error" in json.loads(out)
    if kind == "deep":
        assert "nested deeper" in json.loads(out)["measurements_error"]
    rc, _out, err = _cli(capsys, "run", str(engine), "--iterations", "1", "--no-compare")
    assert rc == 0, err
    assert perf.is_file() and not perf.is_symlink()
    assert len(json.loads(perf.read_text())["runs"]) == 1
    if kind == "symlink":
        assert (tmp_path / "elsewhere.json").read_text() == "{}"  # the target is untouched


def test_run_on_a_manifest_with_precision_auto(
    capsys: pytest.CaptureFixture[str], cache_dir: Path, demo_dir: Path, tmp_path: Path
) -> None:
    # An auto engine is compared with the tolerance of the precision it chose; it used to
    # crash with exit 3 (no default tolerance for "auto").
    manifest = tmp_path / "auto.toml"
    manifest.write_text(f"""
[[models]]
name = "dynamic_mlp"
path = "{(demo_dir / 'models' / 'dynamic_mlp.onnx').as_posix()}"
precision = "auto"
[[models.profiles]]
input = "features"
min = [1, 64]
opt = [16, 64]
max = [64, 64]
""")
    engines = _provision(capsys, manifest, cache_dir)
    assert ".auto." in engines["dynamic_mlp"].name
    rc, out, err = _cli(capsys, "run", str(manifest), "--cache-dir", str(cache_dir),
                        "--iterations", "2", "--warmup", "1", "--json")
    assert rc == 0, err
    (result,) = json.loads(out)["results"]
    assert result["precision"] == "auto" and result["comparison"]["passed"]
    assert result["comparison"]["atol"] == 1e-3  # auto chose fp32: fp32's tolerance
