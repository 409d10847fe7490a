"""``precision = "auto"`` through the real CLI on the demo corpus (ONNX Runtime strategy)."""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from trt_provision import auto_precision, compose
from trt_provision.auto_precision import (
    MIN_SPEEDUP,
    candidates_for,
    decision_of,
    judge,
    summary_line,
)
from trt_provision.cli.main import main
from trt_provision.host import probe_host
from trt_provision.types import (
    BuildConfig,
    CalibrationSpec,
    HostCapabilities,
    OptimizationProfile,
    PrecisionMode,
    RuntimeTarget,
)

pytestmark = pytest.mark.tier1

_VNNI = ("avx2", "fma", "avx512f", "avx512bw", "avx512vl", "avx512_vnni")


@pytest.fixture
def corpus(tmp_path: Path, demo_dir: Path) -> Path:
    work = tmp_path / "corpus"
    shutil.copytree(demo_dir / "models", work / "models")
    shutil.copytree(demo_dir / "calibration", work / "calibration")
    return work


@pytest.fixture
def vnni_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The candidate set depends on the CPU: pin it, so the tests do not depend on the runner.
    real = probe_host()
    host = dataclasses.replace(real, cpu_arch="x86_64", cpu_isa=_VNNI)
    monkeypatch.setattr(compose, "probe_host", lambda: host)
    yield


def _manifest(work: Path, *, min_cosine: float | None = None, data: str = "demo_cnn.npz",
              extra: str = "") -> Path:
    gate = f"min_cosine = {min_cosine}\n" if min_cosine is not None else ""
    gate += extra
    path = work / "auto.toml"
    path.write_text(f"""
[[models]]
name = "demo_cnn"
path = "models/demo_cnn.onnx"
precision = "auto"
{gate}calibration = {{ data = "calibration/{data}", algorithm = "minmax" }}
[[models.profiles]]
input = "image"
min = [1, 3, 32, 32]
opt = [4, 3, 32, 32]
max = [8, 3, 32, 32]

[[models]]
name = "dynamic_mlp"
path = "models/dynamic_mlp.onnx"
precision = "auto"
[[models.profiles]]
input = "features"
min = [1, 64]
opt = [16, 64]
max = [64, 64]
""")
    return path


def _provision(
    manifest: Path, cache: Path, capsys: pytest.CaptureFixture[str], *, rc: int = 0
) -> dict[str, Any]:
    code = main(["provision", str(manifest), "--json", "--cache-dir", str(cache)])
    out = capsys.readouterr()
    assert code == rc, out.err
    data: dict[str, Any] = json.loads(out.out) if rc == 0 else {"stderr": out.err}
    return data


def _rows(engine: Path) -> dict[str, dict[str, Any]]:
    decision = decision_of(engine)
    assert decision is not None
    return {r["precision"]: r for r in decision["table"]}


def test_auto_builds_judges_times_and_publishes_the_decision(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str]
) -> None:
    data = _provision(_manifest(corpus), cache_dir, capsys)
    results = {r["name"]: r for r in data["results"]}
    cnn = Path(results["demo_cnn"]["engine"])
    assert ".auto." in cnn.name and results["demo_cnn"]["outcome"] == "built"
    decision = decision_of(cnn)
    assert decision is not None
    assert decision["candidates"] == ["fp32", "int8"]
    assert "fp16" in decision["skipped"]  # x86 CPU EP: no FP16 kernels
    rows = _rows(cnn)
    assert rows["fp32"]["why"] == "reference"
    # int8 is judged by the pipeline's gate: on the test split, with the default thresholds.
    assert rows["int8"]["accuracy_data"] == "test"
    assert rows["int8"]["gate"]["min_cosine"] is not None
    chosen = rows[decision["chosen"]]
    assert chosen["verdict"] == "chosen"
    # Never slower than FP32: a winner other than FP32 beat it by the noise margin.
    if decision["chosen"] != "fp32":
        assert chosen["median_ms"] * MIN_SPEEDUP <= rows["fp32"]["median_ms"] * (1 + 1e-6)
        assert chosen["gate_verdict"] == "passed"
    assert results["demo_cnn"]["notes"][0] == summary_line(decision)
    # The published engine is the winner's engine, byte for byte.
    winner = cnn.parent / chosen["engine"]
    assert winner.read_bytes() == cnn.read_bytes()
    meta = json.loads(cnn.with_name(cnn.name + ".json").read_text())
    assert meta["build_config"]["precision"] == "auto" and meta["io"]["inputs"]
    # Without calibration data int8 is no candidate: FP32 only, and it says why.
    mlp = decision_of(Path(results["dynamic_mlp"]["engine"]))
    assert mlp is not None and mlp["chosen"] == "fp32" and "int8" in mlp["skipped"]


def test_summary_table_shows_the_auto_decision(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def fixed(runtime: Any, entries: Sequence[Any], feed: Any) -> list[float | None]:
        times: list[float | None] = [1.9e-3, 1.0e-3] if "image" in feed else [1.0e-3]
        return times[: len(entries)]

    monkeypatch.setattr(auto_precision, "time_candidates", fixed)
    monkeypatch.setenv("COLUMNS", "240")  # the table is not cut to a narrow terminal
    code = main(["provision", str(_manifest(corpus)), "--cache-dir", str(cache_dir)])
    out = capsys.readouterr()
    assert code == 0, out.err
    rows = {line.split()[1]: line for line in out.out.splitlines()
            if line.split()[1:2] in (["demo_cnn"], ["dynamic_mlp"])}
    assert "auto → int8, 1.90× fp32" in rows["demo_cnn"]
    assert "auto → fp32" in rows["dynamic_mlp"]


def test_second_run_reuses_the_choice_without_timing_and_still_verifies(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = _manifest(corpus)
    first = _provision(manifest, cache_dir, capsys)
    engine = Path(first["results"][0]["engine"])

    timed: list[int] = []

    def counting(runtime: Any, entries: Sequence[Any], feed: Any) -> list[float | None]:
        timed.append(len(entries))
        return [1.0e-3] * len(entries)

    monkeypatch.setattr(auto_precision, "time_candidates", counting)
    second = _provision(manifest, cache_dir, capsys)
    assert [r["outcome"] for r in second["results"]] == ["reused", "reused"]
    assert timed == []  # the cached choice is not timed again
    assert second["results"][0]["notes"][0] == first["results"][0]["notes"][0]
    # A damaged cached choice is caught by verification and chosen afresh.
    data = bytearray(engine.read_bytes())
    data[-1] ^= 0xFF
    engine.write_bytes(bytes(data))
    third = _provision(manifest, cache_dir, capsys)
    assert [r["outcome"] for r in third["results"]] == ["built", "reused"]
    assert timed == [2]
    assert engine.read_bytes() != bytes(data)


def test_the_choice_is_keyed_by_data_and_gate(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str]
) -> None:
    base = _provision(_manifest(corpus), cache_dir, capsys)["results"][0]["filename"]
    other = corpus / "calibration" / "other.npz"
    import numpy as np

    with np.load(corpus / "calibration" / "demo_cnn.npz") as src:
        np.savez(other, **{k: src[k][::-1].copy() for k in src.files})
    data_changed = _provision(_manifest(corpus, data="other.npz"), cache_dir, capsys)
    gate_changed = _provision(_manifest(corpus, min_cosine=0.5), cache_dir, capsys)
    names = {base, data_changed["results"][0]["filename"], gate_changed["results"][0]["filename"]}
    assert len(names) == 3


def test_a_candidate_refused_by_the_gate_is_never_chosen(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str]
) -> None:
    # min_cosine = 1.0: no int8 graph of this CNN can pass; auto must fall back to FP32.
    data = _provision(_manifest(corpus, min_cosine=1.0), cache_dir, capsys)
    engine = Path(data["results"][0]["engine"])
    rows = _rows(engine)
    assert rows["int8"]["verdict"] == "refused"
    assert decision_of(engine)["chosen"] == "fp32"  # type: ignore[index]
    assert data["results"][0]["notes"][0] == "auto → fp32"


def test_allow_inaccurate_never_lets_a_failing_candidate_win(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # int8 is twice as fast but fails a gate of min_cosine = 1.0: allow_inaccurate on the
    # auto model must not publish it as a candidate, let alone choose it.
    def fast_int8(runtime: Any, entries: Sequence[Any], feed: Any) -> list[float | None]:
        times: list[float | None] = [2.0e-3, 1.0e-3] if "image" in feed else [1.0e-3]
        return times[: len(entries)]

    monkeypatch.setattr(auto_precision, "time_candidates", fast_int8)
    manifest = _manifest(corpus, min_cosine=1.0, extra="allow_inaccurate = true\n")
    data = _provision(manifest, cache_dir, capsys)
    engine = Path(data["results"][0]["engine"])
    rows = _rows(engine)
    assert rows["int8"]["verdict"] == "refused" and "gate" in rows["int8"]["why"]
    assert decision_of(engine)["chosen"] == "fp32"  # type: ignore[index]
    assert not list(cache_dir.glob("demo_cnn/*.int8.*.engine"))  # its refusal is kept


@pytest.mark.parametrize(
    ("medians", "chosen", "note"),
    [
        ([2.0e-3, 1.0e-3], "int8", "auto → int8, 2.00× fp32"),
        ([1.0e-3, 0.99e-3], "fp32", "auto → fp32"),  # within timing noise
        ([1.0e-3, 1.5e-3], "fp32", "auto → fp32"),  # slower
        ([1.0e-3, None], "fp32", "auto → fp32"),  # does not run at the opt shape
    ],
)
def test_fastest_passing_candidate_wins_and_never_one_slower_than_fp32(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch, medians: list[float | None], chosen: str, note: str,
) -> None:
    def fixed(runtime: Any, entries: Sequence[Any], feed: Any) -> list[float | None]:
        if "features" in feed:  # dynamic_mlp: no calibration data, FP32 only
            return [1.0e-3]
        assert [e.identity.precision.value for e in entries] == ["fp32", "int8"]
        assert feed["image"].shape == (4, 3, 32, 32)  # the opt profile
        return medians

    monkeypatch.setattr(auto_precision, "time_candidates", fixed)
    data = _provision(_manifest(corpus), cache_dir, capsys)
    engine = Path(data["results"][0]["engine"])
    decision = decision_of(engine)
    assert decision is not None and decision["chosen"] == chosen
    assert data["results"][0]["notes"][0] == note
    verdicts = {r["precision"]: r["verdict"] for r in decision["table"]}
    assert verdicts[chosen] == "chosen"
    assert set(verdicts.values()) <= {"chosen", "slower", "not timed"}
    if medians[1] is None:
        assert verdicts["int8"] == "not timed"


def test_compile_precision_auto(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main([
        "compile", str(corpus / "models" / "demo_cnn.onnx"), "--precision", "auto",
        "--calibration-data", str(corpus / "calibration" / "demo_cnn.npz"),
        "--min-shapes", "image:1x3x32x32", "--opt-shapes", "image:2x3x32x32",
        "--max-shapes", "image:4x3x32x32", "--json", "--cache-dir", str(cache_dir),
    ])
    out = capsys.readouterr()
    assert code == 0, out.err
    result = json.loads(out.out)
    assert ".auto." in result["filename"] and result["notes"][0].startswith("auto → ")
    decision = decision_of(Path(result["engine"]))
    assert decision is not None and decision["timing"]["input_shapes"] == {"image": [2, 3, 32, 32]}


def test_bad_precision_is_one_line_user_error(
    corpus: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    path = corpus / "bad.toml"
    path.write_text('[[models]]\nname = "m"\npath = "models/demo_cnn.onnx"\nprecision = "fastest"\n')
    code = main(["provision", str(path), "--cache-dir", str(cache_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "precision" in err[0]


# ---------------------------------------------------------------- candidates and judging

_CPU = RuntimeTarget("ortcpu", "1.20.0", "cpu-avx2", "host")
_DATA = BuildConfig(calibration=CalibrationSpec(source="cal.npz"))


@pytest.mark.parametrize(
    ("target", "host", "config", "expected"),
    [
        (_CPU, HostCapabilities(cpu_arch="x86_64", cpu_isa=_VNNI), _DATA, ["fp32", "int8"]),
        (_CPU, HostCapabilities(cpu_arch="x86_64", cpu_isa=("avx2", "fma")), _DATA, ["fp32"]),
        (_CPU, HostCapabilities(cpu_arch="x86_64", cpu_isa=_VNNI), BuildConfig(), ["fp32"]),
        (RuntimeTarget("ortcpu", "1.20.0", "cpu-neon", "host"),
         HostCapabilities(cpu_arch="aarch64", cpu_isa=("asimd", "asimdhp", "asimddp")),
         _DATA, ["fp32", "fp16", "int8"]),
        (RuntimeTarget("ortcuda", "1.20.0", "sm87", "jp6.2"),
         HostCapabilities(sm="sm87"), _DATA, ["fp32", "fp16"]),
        (RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2"),
         HostCapabilities(sm="sm87"), _DATA, ["fp32", "fp16", "int8", "mixed"]),
        (RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2"),
         HostCapabilities(sm="sm87"), BuildConfig(), ["fp32", "fp16"]),
    ],
)
def test_candidates_by_runtime_and_host(
    target: RuntimeTarget, host: HostCapabilities, config: BuildConfig, expected: list[str]
) -> None:
    cands = candidates_for(config, target, host)
    assert [p.value for p in cands.precisions] == expected
    # Every precision left out says why.
    left_out = {"fp16", "int8"} - set(expected) if target.runtime.startswith("ort") else set()
    assert left_out <= set(dict(cands.skipped))


def _judged(verdict: str = "passed", **over: Any) -> dict[str, Any]:
    """A sidecar accuracy record as the precision pipeline writes it."""
    test = {"data": "test", "batches": 2, "outputs": {"y": {"cosine": 0.9999}}}
    accuracy: dict[str, Any] = {
        **test, "test": test, "validation": {**test, "data": "validation"},
        "gate": {"min_cosine": 0.99, "max_rel_error": None, "min_top1_agreement": 0.95,
                 "origin": "default for int8"},
        "splits": {"judged": True}, "verdict": verdict,
    }
    accuracy.update(over)
    return {"accuracy": accuracy, "build_config": {"allow_inaccurate": False}}


def test_judge_rests_on_the_pipelines_gate_verdict() -> None:
    assert judge(PrecisionMode.FP32, {}) == (True, "reference")
    ok, why = judge(PrecisionMode.INT8, _judged())
    assert ok and "gate passed on validation and test" in why and "min_cosine 0.99" in why
    # A high cosine is not a pass: only the gate's verdict is.
    for verdict in ("failed (allow_inaccurate)", "not gated", "not judged", "smoke only"):
        assert not judge(PrecisionMode.INT8, _judged(verdict))[0], verdict
    assert not judge(PrecisionMode.INT8, _judged(verdict=None))[0]  # type: ignore[arg-type]
    # Published under allow_inaccurate: never a winner, even with a passing record.
    lax = {**_judged(), "build_config": {"allow_inaccurate": True}}
    assert "allow_inaccurate" in judge(PrecisionMode.INT8, lax)[1]
    # Judged on synthetic stand-ins, or never confirmed on held-out data.
    assert "synthetic" in judge(PrecisionMode.FP16, _judged(data="synthetic"))[1]
    calib = _judged(test={"data": "calibration", "outputs": {"y": {"cosine": 1.0}}})
    assert not judge(PrecisionMode.INT8, calib)[0]
    assert not judge(PrecisionMode.INT8, _judged(test=None))[0]
    assert judge(PrecisionMode.INT8, _judged(test={"data": "evaluation"}))[0]
    assert not judge(PrecisionMode.INT8, _judged(splits={"judged": False}))[0]
    # No gate, or a gate without a threshold.
    assert not judge(PrecisionMode.INT8, _judged(gate=None))[0]
    assert not judge(PrecisionMode.INT8, _judged(gate={"min_cosine": None, "origin": "x"}))[0]
    assert not judge(PrecisionMode.INT8, {})[0]
    assert not judge(PrecisionMode.INT8, {"accuracy": "passed"})[0]
    nothing = {**_judged(), "quantization": {"dequantize_nodes": 0}}
    assert not judge(PrecisionMode.INT8, nothing)[0]
    assert judge(PrecisionMode.INT8, {**_judged(), "quantization": {"dequantize_nodes": 3}})[0]


def test_decision_of_ignores_hostile_sidecars(tmp_path: Path) -> None:
    engine = tmp_path / "m.engine"
    sidecar = tmp_path / "m.engine.json"
    assert decision_of(engine) is None
    sidecar.write_text("[1, 2]")
    assert decision_of(engine) is None
    sidecar.write_text('{"auto": "int8"}')
    assert decision_of(engine) is None
    sidecar.write_bytes(b"{" * 100_000)
    assert decision_of(engine) is None
    sidecar.write_text('{"auto": {"chosen": "int8", "speedup_vs_fp32": 1.9}}')
    assert summary_line(decision_of(engine) or {}) == "auto → int8, 1.90× fp32"


def test_timing_feed_keeps_scalar_inputs_scalar(tmp_path: Path) -> None:
    import numpy as np
    import onnx
    from onnx import TensorProto, helper

    from trt_provision.auto_precision import timing_feed

    graph = helper.make_graph(
        [helper.make_node("Cast", ["sr"], ["srf"], to=TensorProto.FLOAT),
         helper.make_node("Mul", ["x", "srf"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 4]),
         helper.make_tensor_value_info("sr", TensorProto.INT64, [])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["n", 4])],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    data = tmp_path / "cal.npz"
    np.savez(data, x=np.ones((3, 2, 4), np.float32), sr=np.array([16000, 8000, 16000]))
    config = BuildConfig(
        calibration=CalibrationSpec(source=str(data)),
        profiles=(OptimizationProfile("x", (1, 4), (2, 4), (8, 4)),),
    )
    feed = timing_feed(model, config)
    assert feed["sr"].shape == () and int(feed["sr"]) == 16000
    assert feed["x"].shape == (2, 4)
    # Without data: seeded stand-ins at the opt shape.
    plain = timing_feed(model, dataclasses.replace(config, calibration=None))
    assert plain["x"].shape == (2, 4) and plain["sr"].shape == ()


def test_auto_is_wired_for_tensorrt(tmp_path: Path, cache_dir: Path) -> None:
    """On the TensorRT strategy (fake TensorRT and CUDA): fp32 and fp16 candidates are built
    by the strategy, loaded and timed through it, and the choice is published."""
    import onnx
    from onnx import TensorProto, helper

    from fakes.fake_cuda import FakeCudaRuntime
    from fakes.fake_tensorrt import make_fake_tensorrt
    from trt_provision.compiler import EngineCompiler
    from trt_provision.gates.engine_gate import DefaultEngineGate
    from trt_provision.runtimes.tensorrt import TensorrtOptions, TensorrtRuntime
    from trt_provision.stores.local import LocalEngineStore
    from trt_provision.types import BackboneSpec, EngineCompileRequest

    model = tmp_path / "m.onnx"
    graph = helper.make_graph(
        [helper.make_node("Relu", ["input"], ["output"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 3, 8, 8])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    cuda = FakeCudaRuntime()
    trt = make_fake_tensorrt("10.16.1.11", cuda=cuda, recorder=cuda.recorder)
    host = HostCapabilities(sm="sm87", trt_version="10.16.1.11")
    gate = DefaultEngineGate(cache_root=cache_dir)
    runtime = TensorrtRuntime(gate=gate, host=host, options=TensorrtOptions(optional_plugins=()),
                              trt_module=trt, cuda_module=cuda)
    compiler = EngineCompiler(runtime=runtime, store=LocalEngineStore(cache_dir), gate=gate,
                              host=host)
    profile = OptimizationProfile("input", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    backbone = BackboneSpec("m", model, BuildConfig(precision=PrecisionMode.AUTO,
                                                    profiles=(profile,)))
    result = compiler.compile_engines_for_corpus(EngineCompileRequest((backbone,))).results[0]
    assert result.entry is not None and ".auto.sm87." in result.entry.engine_path.name
    decision = decision_of(result.entry.engine_path)
    assert decision is not None
    assert decision["candidates"] == ["fp32", "fp16"]
    assert set(decision["skipped"]) == {"int8", "mixed", "dla"}
    rows = {r["precision"]: r for r in decision["table"]}
    assert rows["fp32"]["median_ms"] is not None
    assert decision["timing"]["input_shapes"] == {"input": [2, 3, 8, 8]}
    # The fake FP16 graph records no accuracy: it cannot pass, so FP32 is kept.
    assert rows["fp16"]["verdict"] == "refused" and decision["chosen"] == "fp32"


def test_dla_core_with_auto_is_a_user_error() -> None:
    with pytest.raises(ValueError, match="explicit precision"):
        BuildConfig(precision=PrecisionMode.AUTO, dla_core=0)


def test_a_winner_swapped_after_verification_is_not_published(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    manifest = _manifest(corpus)

    def swap_then_time(runtime: Any, entries: Sequence[Any], feed: Any) -> list[float | None]:
        if "image" in feed:  # after verification, before the copy: the FP32 winner changes
            entries[0].engine_path.write_bytes(b"not the verified engine")
        return [1.0e-3] * len(entries)

    monkeypatch.setattr(auto_precision, "time_candidates", swap_then_time)
    code = main(["provision", str(manifest), "--json", "--cache-dir", str(cache_dir)])
    out = capsys.readouterr()
    assert code == 1, out.err
    rows = {r["name"]: r for r in json.loads(out.out)["results"]}
    assert rows["demo_cnn"]["outcome"] == "failed"
    assert "changed after verification" in rows["demo_cnn"]["error"]
    assert not list(cache_dir.glob("demo_cnn/*.auto.*"))


def _trt_compiler(cache_dir: Path, version: str) -> Any:
    """An EngineCompiler on the TensorRT strategy (fake TensorRT and CUDA), wired as
    ``compose.wire`` wires it: governed calibration and the precision pipeline's graphs."""
    from fakes.fake_cuda import FakeCudaRuntime
    from fakes.fake_tensorrt import make_fake_tensorrt
    from trt_provision.calibration.planner import GovernedCalibrationPlanner
    from trt_provision.calibration.precision import GovernedPrecisionPipeline
    from trt_provision.compiler import EngineCompiler
    from trt_provision.gates.engine_gate import DefaultEngineGate
    from trt_provision.runtimes.tensorrt import TensorrtOptions, TensorrtRuntime
    from trt_provision.stores.local import LocalEngineStore

    cuda = FakeCudaRuntime()
    trt = make_fake_tensorrt(version, cuda=cuda, recorder=cuda.recorder)
    host = HostCapabilities(sm="sm87", trt_version=version)
    gate = DefaultEngineGate(cache_root=cache_dir)
    calibration_dir = cache_dir / ".calibration"
    options = TensorrtOptions(
        optional_plugins=(),
        calibration=compose._tensorrt_calibration(calibration_dir, version),
    )
    runtime = TensorrtRuntime(gate=gate, host=host, options=options, trt_module=trt,
                              cuda_module=cuda)
    return EngineCompiler(runtime=runtime, store=LocalEngineStore(cache_dir), gate=gate,
                          host=host, calibration=GovernedCalibrationPlanner(calibration_dir),
                          precision=GovernedPrecisionPipeline(calibration_dir))


@pytest.mark.parametrize(
    ("version", "strongly_typed", "fp16_judged"),
    [
        ("10.16.1.11", None, True),  # both typed paths: auto builds fp16 strongly typed
        ("11.4.0.106", None, True),  # strongly typed only
        ("10.16.1.11", True, True),
        ("10.16.1.11", False, False),  # weakly typed asked for: nothing judges its FP16
    ],
)
def test_auto_on_fake_tensorrt_judges_fp16_with_calibration_data(
    tmp_path: Path, cache_dir: Path, version: str, strongly_typed: bool | None,
    fp16_judged: bool,
) -> None:
    """With calibration data the fp16 candidate is the pipeline's FP16 graph, judged by the
    gate on the test split like int8: it can win. Asked for the weak path, whose FP16 the
    builder chooses per layer, it records no accuracy and is refused, never chosen."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from trt_provision.types import BackboneSpec, EngineCompileRequest

    rng = np.random.default_rng(7)
    weight = numpy_helper.from_array(rng.standard_normal((4, 3, 1, 1)).astype(np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("Conv", ["input", "w"], ["c"]),
         helper.make_node("Relu", ["c"], ["output"])], "g",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["n", 3, 8, 8])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["n", 4, 8, 8])],
        [weight],
    )
    model = tmp_path / "m.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), model)
    data = tmp_path / "cal.npz"
    # fp16 is judged at 0.99: 381 test samples; 2000 rows give 400
    np.savez(data, input=rng.standard_normal((500, 4, 3, 8, 8)).astype(np.float32))
    compiler = _trt_compiler(cache_dir, version)
    profile = OptimizationProfile("input", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
    config = BuildConfig(precision=PrecisionMode.AUTO, profiles=(profile,),
                         calibration=CalibrationSpec(source=str(data), algorithm="minmax"),
                         strongly_typed=strongly_typed)
    result = compiler.compile_engines_for_corpus(
        EngineCompileRequest((BackboneSpec("m", model, config),))).results[0]
    assert result.entry is not None, result.error
    decision = decision_of(result.entry.engine_path)
    assert decision is not None and decision["candidates"] == ["fp32", "fp16", "int8", "mixed"]
    fp16 = {r["precision"]: r for r in decision["table"]}["fp16"]
    if fp16_judged:
        assert fp16["gate_verdict"] == "passed" and fp16["accuracy_data"] == "test", fp16
        assert fp16["gate"]["origin"] == "default for fp16"
        assert fp16["verdict"] in ("chosen", "slower", "not timed")
        # The built fp16 candidate's own sidecar says it was parsed strongly typed.
        built = result.entry.engine_path.parent / fp16["engine"]
        meta = json.loads(built.with_name(built.name + ".json").read_text())
        assert meta["build_config"]["strongly_typed"] is True
    else:
        assert fp16["verdict"] == "refused" and fp16["why"] == "no accuracy recorded"
        assert decision["chosen"] != "fp16"
