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
    candidates_for,
    decision_of,
    evidence_of,
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
    # fp16's gate (bar 0.99) needs 381 held-out samples: the demo's 1040 rows give 208, so
    # the tests that want fp16 judged get twice the rows (perturbed: no duplicated rows).
    import numpy as np

    with np.load(work / "calibration" / "demo_cnn.npz") as src:
        image = src["image"].astype(np.float32)
    noise = np.random.default_rng(3).standard_normal(image.shape).astype(np.float32) * 0.05
    np.savez(work / "calibration" / "demo_cnn_2k.npz",
             image=np.concatenate([image, image + noise]))
    return work


@pytest.fixture
def vnni_host(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    # The candidate set depends on the CPU: pin it, so the tests do not depend on the runner.
    real = probe_host()
    host = dataclasses.replace(real, cpu_arch="x86_64", cpu_isa=_VNNI)
    monkeypatch.setattr(compose, "probe_host", lambda: host)
    yield


def _manifest(work: Path, *, min_cosine: float | None = None, data: str = "demo_cnn_2k.npz",
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


class _Clock:
    """Stands in for the budget's clock: moves only when a test says so."""

    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def timing(monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """The timing seam: medians per precision as the test sets them (no wall clock), and a
    counter on the one judge call, so a test sees which candidates were judged."""
    state: dict[str, Any] = {"ms": {"fp32": 2.0, "fp16": 1.0, "int8": 0.5, "mixed": 0.6},
                             "rounds": [], "judged": [], "clock": _Clock(),
                             "advance_on_round": 0.0}

    def fixed(runtime: Any, entries: Sequence[Any], feed: Any) -> list[float | None]:
        names = [e.identity.precision.value for e in entries]
        state["rounds"].append(names)
        state["clock"].now += state["advance_on_round"]
        out: list[float | None] = []
        for name in names:
            ms = state["ms"].get(name)
            out.append(None if ms is None else ms * 1e-3)
        return out

    real_judge = auto_precision.judge_candidate

    def counting(compiler: Any, backbone: Any) -> Any:
        state["judged"].append(backbone.build_config.precision.value)
        return real_judge(compiler, backbone)

    monkeypatch.setattr(auto_precision, "time_candidates", fixed)
    monkeypatch.setattr(auto_precision, "judge_candidate", counting)
    monkeypatch.setattr(auto_precision, "clock", state["clock"])
    return state


def test_auto_times_first_judges_the_fastest_and_publishes_the_decision(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
) -> None:
    data = _provision(_manifest(corpus), cache_dir, capsys)
    results = {r["name"]: r for r in data["results"]}
    cnn = Path(results["demo_cnn"]["engine"])
    assert ".auto." in cnn.name and results["demo_cnn"]["outcome"] == "built"
    decision = decision_of(cnn)
    assert decision is not None
    # fp16 is a candidate on an x86 CPU: timing decides, not the ISA.
    assert decision["candidates"] == ["fp32", "fp16", "int8", "mixed"]
    # Trials of fp32 + every candidate timed together; then the judged winner against fp32.
    # (The second model, without data, adds its own round: fp32 alone.)
    assert timing["rounds"] == [["fp32", "fp16", "int8", "mixed"], ["fp32", "int8"], ["fp32"]]
    # Only the fastest was judged (fp32 is the reference): it passed, so the slower ones
    # were never judged.
    assert timing["judged"] == ["fp32", "int8", "fp32"]
    rows = _rows(cnn)
    assert decision["chosen"] == "int8" and rows["int8"]["verdict"] == "chosen"
    assert rows["int8"]["accuracy_data"] == "test" and rows["int8"]["gate_verdict"] == "passed"
    assert rows["int8"]["why"].startswith("int8: picked, 4.00× fp32, gate passed on ")
    assert rows["mixed"]["verdict"] == rows["fp16"]["verdict"] == "slower"
    assert rows["mixed"]["why"] == "mixed: slower than int8 (3.33× vs 4.00×), not judged"
    assert rows["fp16"]["why"] == "fp16: slower than int8 (2.00× vs 4.00×), not judged"
    assert rows["fp32"]["verdict"] == "reference"
    # The trial engines are not the judged ones: never the same identity.
    assert rows["fp16"]["engine"] == rows["fp16"]["trial_engine"]
    assert rows["int8"]["engine"] != rows["int8"]["trial_engine"]
    trial = cnn.parent / rows["fp16"]["trial_engine"]
    trial_meta = json.loads(trial.with_name(trial.name + ".json").read_text())
    assert trial_meta["accuracy"]["verdict"] == "not judged"
    assert not judge(PrecisionMode.FP16, trial_meta)[0]
    # The summary (--json notes): the choice, then one line per candidate.
    notes = results["demo_cnn"]["notes"]
    assert notes[0] == summary_line(decision) == "auto → int8, 4.00× fp32"
    assert notes[1:5] == [rows[p]["why"] for p in ("fp32", "fp16", "int8", "mixed")]
    # The published engine is the judged winner's engine, byte for byte.
    winner = cnn.parent / rows["int8"]["engine"]
    assert winner.read_bytes() == cnn.read_bytes()
    meta = json.loads(cnn.with_name(cnn.name + ".json").read_text())
    assert meta["build_config"]["precision"] == "auto" and meta["io"]["inputs"]
    # Without calibration data nothing can be judged: FP32 only, and it says why.
    mlp = decision_of(Path(results["dynamic_mlp"]["engine"]))
    assert mlp is not None and mlp["chosen"] == "fp32"
    assert set(mlp["skipped"]) == {"fp16", "int8", "mixed"}
    assert any(n.startswith("fp16: not a candidate: no calibration data")
               for n in results["dynamic_mlp"]["notes"])


def test_a_candidate_slower_than_fp32_is_never_judged(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
) -> None:
    timing["ms"] = {"fp32": 1.0, "fp16": 1.5, "int8": 0.99, "mixed": 3.0}
    data = _provision(_manifest(corpus), cache_dir, capsys)
    assert timing["judged"] == ["fp32", "fp32"]  # the references of the two models only
    assert timing["rounds"][0] == ["fp32", "fp16", "int8", "mixed"]
    engine = Path(data["results"][0]["engine"])
    rows = _rows(engine)
    assert decision_of(engine)["chosen"] == "fp32"  # type: ignore[index]
    assert rows["fp16"]["why"] == "fp16: slower than fp32 (0.67× fp32), not judged"
    assert rows["mixed"]["why"] == "mixed: slower than fp32 (0.33× fp32), not judged"
    # Within the noise margin is not faster.
    assert rows["int8"]["why"] == "int8: slower than fp32 by the margin (1.01× fp32 < 1.05×), " \
        "not judged"
    assert {r["verdict"] for p, r in rows.items() if p != "fp32"} == {"slower"}
    assert rows["fp32"]["why"] == "fp32: picked, no faster candidate passed the gate"


def test_a_refused_candidate_is_never_chosen_and_the_next_fastest_is_judged(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
) -> None:
    # min_cosine = 1.0: no int8 graph of this CNN can pass; fp16 is judged next and is
    # refused too, so auto keeps FP32 and says why for each.
    data = _provision(_manifest(corpus, min_cosine=1.0), cache_dir, capsys)
    engine = Path(data["results"][0]["engine"])
    rows = _rows(engine)
    assert timing["judged"][:4] == ["fp32", "int8", "mixed", "fp16"]
    assert rows["int8"]["verdict"] == "refused"
    assert rows["int8"]["why"].startswith("int8 refused: ")
    assert decision_of(engine)["chosen"] == "fp32"  # type: ignore[index]
    assert data["results"][0]["notes"][0] == "auto → fp32"
    assert rows["int8"]["why"] in data["results"][0]["notes"]


def test_the_budget_cuts_the_search_and_the_table_says_what(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
) -> None:
    # The clock passes the budget during the first timing round: every trial is built and
    # timed, but no judgement starts.
    timing["advance_on_round"] = 100.0
    manifest = _manifest(corpus, extra="auto_budget_s = 60\n")
    data = _provision(manifest, cache_dir, capsys)
    engine = Path(data["results"][0]["engine"])
    decision = decision_of(engine)
    assert decision is not None and decision["chosen"] == "fp32"
    assert timing["judged"][:1] == ["fp32"] and "int8" not in timing["judged"]
    rows = _rows(engine)
    assert rows["int8"]["verdict"] == "cut"
    assert rows["int8"]["why"] == "int8: cut by auto_budget_s=60 (before its judgement)"
    assert decision["budget"]["auto_budget_s"] == 60 and "int8" in decision["budget"]["cut"]
    # The slower ones lose on speed before the budget matters.
    assert rows["fp16"]["verdict"] == "cut" or "not judged" in rows["fp16"]["why"]
    assert rows["int8"]["why"] in data["results"][0]["notes"]


def test_a_budget_from_settings_cuts_trials_and_never_fp32(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    timing["clock"].now = 0.0
    manifest = _manifest(corpus)
    manifest.write_text("[settings]\nauto_budget_s = 5\n" + manifest.read_text())

    real_judge = auto_precision.judge_candidate

    def slow_reference(compiler: Any, backbone: Any) -> Any:
        timing["clock"].now += 10.0  # the fp32 build alone spends the budget
        return real_judge(compiler, backbone)

    monkeypatch.setattr(auto_precision, "judge_candidate", slow_reference)
    data = _provision(manifest, cache_dir, capsys)
    engine = Path(data["results"][0]["engine"])
    decision = decision_of(engine)
    assert decision is not None and decision["chosen"] == "fp32"
    assert decision["budget"]["cut"] == ["fp16", "int8", "mixed"]
    assert _rows(engine)["fp16"]["why"] == "fp16: cut by auto_budget_s=5 (before its trial build)"
    assert timing["rounds"][0] == ["fp32"]
    assert not list(cache_dir.glob("demo_cnn/*.int8.*"))


def test_provision_table_and_compile_print_one_line_per_candidate(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    timing["ms"] = {"fp32": 1.9, "fp16": 3.0, "int8": 1.0, "mixed": 3.0}
    monkeypatch.setenv("COLUMNS", "240")  # the table is not cut to a narrow terminal
    code = main(["provision", str(_manifest(corpus)), "--cache-dir", str(cache_dir)])
    out = capsys.readouterr()
    assert code == 0, out.err
    lines = out.out.splitlines()
    assert any("demo_cnn" in line and "auto → int8, 1.90× fp32" in line for line in lines)
    explained = [line for line in lines if line.startswith("demo_cnn: ")]
    assert [line.split(":")[1].split()[0] for line in explained] == [
        "fp32", "fp16", "int8", "mixed"]
    assert "demo_cnn: int8: picked, 1.90× fp32, gate passed on " in out.out
    assert "demo_cnn: fp16: slower than fp32 (0.63× fp32), not judged" in out.out
    # compile --precision auto says the same (the choice is reused from the cache).
    code = main([
        "compile", str(corpus / "models" / "demo_cnn.onnx"), "--precision", "auto",
        "--calibration-data", str(corpus / "calibration" / "demo_cnn_2k.npz"),
        "--min-shapes", "image:1x3x32x32", "--opt-shapes", "image:4x3x32x32",
        "--max-shapes", "image:8x3x32x32", "--cache-dir", str(cache_dir),
    ])
    out = capsys.readouterr()
    assert code == 0, out.err
    assert "  auto → int8, 1.90× fp32" in out.out
    assert "  fp16: slower than fp32 (0.63× fp32), not judged" in out.out


def test_second_run_reuses_the_choice_without_timing_and_still_verifies(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
) -> None:
    manifest = _manifest(corpus)
    first = _provision(manifest, cache_dir, capsys)
    engine = Path(first["results"][0]["engine"])
    timing["rounds"].clear()
    second = _provision(manifest, cache_dir, capsys)
    assert [r["outcome"] for r in second["results"]] == ["reused", "reused"]
    assert timing["rounds"] == []  # the cached choice is not timed again
    # The same explanation, read back from the cached choice ("built: ..." was the first
    # run's own note).
    assert second["results"][0]["notes"] == first["results"][0]["notes"][:5]
    # A damaged cached choice is caught by verification and chosen afresh, from the
    # cached trials and judged engines (nothing is built again but the auto copy).
    data = bytearray(engine.read_bytes())
    data[-1] ^= 0xFF
    engine.write_bytes(bytes(data))
    third = _provision(manifest, cache_dir, capsys)
    assert [r["outcome"] for r in third["results"]] == ["built", "reused"]
    assert timing["rounds"][0] == ["fp32", "fp16", "int8", "mixed"]
    assert engine.read_bytes() != bytes(data)
    rows = _rows(engine)
    assert rows["fp16"]["trial_reused"] is True and rows["int8"]["reused"] is True


def test_the_choice_is_keyed_by_data_gate_and_budget(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
) -> None:
    base = _provision(_manifest(corpus), cache_dir, capsys)["results"][0]["filename"]
    other = corpus / "calibration" / "other.npz"
    import numpy as np

    with np.load(corpus / "calibration" / "demo_cnn_2k.npz") as src:
        np.savez(other, **{k: src[k][::-1].copy() for k in src.files})
    data_changed = _provision(_manifest(corpus, data="other.npz"), cache_dir, capsys)
    gate_changed = _provision(_manifest(corpus, min_cosine=0.5), cache_dir, capsys)
    budget_changed = _provision(_manifest(corpus, extra="auto_budget_s = 30\n"), cache_dir,
                                capsys)
    names = {base, data_changed["results"][0]["filename"],
             gate_changed["results"][0]["filename"], budget_changed["results"][0]["filename"]}
    assert len(names) == 4


def test_allow_inaccurate_never_lets_a_failing_candidate_win(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
) -> None:
    # int8 is the fastest but fails a gate of min_cosine = 1.0: allow_inaccurate on the
    # auto model must not publish it as a candidate, let alone choose it.
    manifest = _manifest(corpus, min_cosine=1.0, extra="allow_inaccurate = true\n")
    data = _provision(manifest, cache_dir, capsys)
    engine = Path(data["results"][0]["engine"])
    rows = _rows(engine)
    assert rows["int8"]["verdict"] == "refused" and "gate" in rows["int8"]["why"]
    assert decision_of(engine)["chosen"] == "fp32"  # type: ignore[index]
    judged_int8 = [p for p in cache_dir.glob("demo_cnn/*.int8.*.engine")
                   if p.name != rows["int8"]["trial_engine"]]
    assert judged_int8 == []  # its refusal is kept (.refused.json), never an engine


@pytest.mark.parametrize(
    ("ms", "chosen", "note"),
    [
        ({"fp32": 2.0, "fp16": 4.0, "int8": 1.0, "mixed": 4.0}, "int8", "auto → int8, 2.00× fp32"),
        ({"fp32": 1.0, "fp16": 1.0, "int8": 0.99, "mixed": 1.0}, "fp32", "auto → fp32"),
        ({"fp32": 1.0, "fp16": 1.5, "int8": 1.5, "mixed": 1.5}, "fp32", "auto → fp32"),
        ({"fp32": 1.0, "fp16": 1.5, "mixed": 1.5}, "fp32", "auto → fp32"),  # int8 won't run
    ],
)
def test_fastest_passing_candidate_wins_and_never_one_slower_than_fp32(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any], ms: dict[str, float], chosen: str, note: str,
) -> None:
    timing["ms"] = ms
    data = _provision(_manifest(corpus), cache_dir, capsys)
    engine = Path(data["results"][0]["engine"])
    decision = decision_of(engine)
    assert decision is not None and decision["chosen"] == chosen
    assert data["results"][0]["notes"][0] == note
    verdicts = {r["precision"]: r["verdict"] for r in decision["table"]}
    assert verdicts[chosen] == "chosen"
    assert set(verdicts.values()) <= {"chosen", "reference", "slower", "not timed"}
    if "int8" not in ms:
        assert verdicts["int8"] == "not timed"
    if chosen == "fp32":
        assert timing["judged"] == ["fp32", "fp32"]  # nothing else could win: none judged


def test_a_judged_engine_slower_than_its_trial_is_not_picked(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The judged graph may keep layers in higher precision: the engine that would be
    published is timed again, and one no longer faster than FP32 loses to the next."""
    timing["ms"] = {"fp32": 2.0, "fp16": 1.0, "int8": 0.5, "mixed": 3.0}
    real = auto_precision.time_candidates

    def judged_int8_is_slow(runtime: Any, entries: Sequence[Any], feed: Any) -> Any:
        out = list(real(runtime, entries, feed))
        if (len(timing["rounds"]) > 1 and len(entries) == 2
                and entries[1].identity.precision is PrecisionMode.INT8):
            out[1] = 2.5e-3
        return out

    monkeypatch.setattr(auto_precision, "time_candidates", judged_int8_is_slow)
    data = _provision(_manifest(corpus), cache_dir, capsys)
    rows = _rows(Path(data["results"][0]["engine"]))
    assert rows["int8"]["verdict"] == "slower"
    assert rows["int8"]["why"] == ("int8: gate passed, but the judged engine runs 0.80× fp32 "
                                   "(under 1.05×), not picked")
    assert rows["fp16"]["verdict"] == "chosen"
    assert timing["judged"][:3] == ["fp32", "int8", "fp16"]


def test_a_candidate_the_data_cannot_judge_is_refused_before_its_trial(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
) -> None:
    """The demo data holds 208 test samples: enough for int8's gate (bar 0.95), too few for
    fp16's (0.99). The pipeline refuses fp16 for real, before anything is calibrated or
    timed, and auto's table and summary say so."""
    data = _provision(_manifest(corpus, data="demo_cnn.npz"), cache_dir, capsys)
    rows = _rows(Path(data["results"][0]["engine"]))
    line = "fp16 refused: not enough evidence: 208 test samples, need 381 for this gate"
    assert rows["fp16"]["verdict"] == "refused" and rows["fp16"]["why"] == line
    assert rows["fp16"]["evidence"]["samples"] == 208
    assert line in data["results"][0]["notes"]
    assert timing["rounds"][0] == ["fp32", "int8", "mixed"]  # fp16 never timed
    assert "fp16" not in timing["judged"] and rows["int8"]["verdict"] == "chosen"
    assert not list(cache_dir.glob("demo_cnn/*.fp16.*"))


def test_compile_precision_auto(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any],
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
    assert ".auto." in result["filename"] and result["notes"][0] == "auto → int8, 4.00× fp32"
    assert [n.split(":")[0].split()[0] for n in result["notes"][1:5]] == [
        "fp32", "fp16", "int8", "mixed"]
    decision = decision_of(Path(result["engine"]))
    assert decision is not None and decision["timing"]["input_shapes"] == {"image": [2, 3, 32, 32]}


def test_a_bad_budget_is_one_line_user_error(
    corpus: Path, cache_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    for bad in ("auto_budget_s = -1", "auto_budget_s = \"soon\""):
        manifest = _manifest(corpus, extra=bad + "\n")
        code = main(["provision", str(manifest), "--cache-dir", str(cache_dir)])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 1 and len(err) == 1 and "auto_budget_s" in err[0], err
    settings = corpus / "settings.toml"
    settings.write_text("[settings]\nauto_budget_s = 0\n" + _manifest(corpus).read_text())
    code = main(["provision", str(settings), "--cache-dir", str(cache_dir)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "auto_budget_s" in err[0], err


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


_ALL = ["fp32", "fp16", "int8", "mixed"]


@pytest.mark.parametrize(
    ("target", "host", "config", "expected"),
    [
        (_CPU, HostCapabilities(cpu_arch="x86_64", cpu_isa=_VNNI), _DATA, _ALL),
        # No VNNI, no FP16 arithmetic: still candidates; timing decides.
        (_CPU, HostCapabilities(cpu_arch="x86_64", cpu_isa=("avx2", "fma")), _DATA, _ALL),
        (_CPU, HostCapabilities(cpu_arch="x86_64", cpu_isa=_VNNI), BuildConfig(), ["fp32"]),
        (RuntimeTarget("ortcpu", "1.20.0", "cpu-neon", "host"),
         HostCapabilities(cpu_arch="aarch64", cpu_isa=("asimd", "asimdhp", "asimddp")),
         _DATA, _ALL),
        (RuntimeTarget("ortcuda", "1.20.0", "sm87", "jp6.2"),
         HostCapabilities(sm="sm87"), _DATA, _ALL),
        (RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2"),
         HostCapabilities(sm="sm87"), _DATA, _ALL),
        (RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2"),
         HostCapabilities(sm="sm87"), BuildConfig(), ["fp32"]),
    ],
)
def test_candidates_by_runtime_and_host(
    target: RuntimeTarget, host: HostCapabilities, config: BuildConfig, expected: list[str]
) -> None:
    cands = candidates_for(config, target, host)
    assert [p.value for p in cands.precisions] == expected
    # Every precision left out says why.
    assert set(_ALL) - set(expected) <= set(dict(cands.skipped))
    assert ("dla" in dict(cands.skipped)) == (target.runtime == "trt")


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


# The held-out report as the per-sample gate records it: its evidence (Wilson bound) nested
# and the bound / threshold flat beside it.
_NEW_TEST = {"data": "test", "batches": 5, "samples": 400,
             "outputs": {"y": {"cosine": 0.9991, "kind": "classes", "samples": 400}},
             "evidence": {"samples": 400, "agreeing": 399, "bound": 0.9912, "threshold": 0.99,
                          "required_samples": 381, "enough": True},
             "bound": 0.9912, "threshold": 0.99}


def test_judge_and_evidence_read_old_and_new_accuracy_records() -> None:
    # New shape: the verdict names its samples and bound.
    new = _judged(test=_NEW_TEST, gate={"min_cosine": 0.99, "agreement_bar": 0.99,
                                        "required_samples": 381, "origin": "default",
                                        "confidence": "wilson lower bound"})
    ok, why = judge(PrecisionMode.FP16, new)
    assert ok and "gate passed on validation and 400 test samples (bound 0.991 ≥ 0.99)" in why
    assert evidence_of(new["accuracy"]) == {
        "samples": 400, "agreeing": 399, "bound": 0.9912, "threshold": 0.99,
        "required_samples": 381, "data": "test", "worst_cosine": 0.9991}
    # Fewer samples than the gate needs is never a pass, whatever the verdict says.
    short = _judged(test={**_NEW_TEST, "evidence": {**_NEW_TEST["evidence"], "samples": 40}})
    ok, why = judge(PrecisionMode.INT8, short)
    assert not ok and why == "not enough evidence: 40 test samples, need 381"
    # Old shape: no per-sample figures, so the split and the worst cosine are given.
    ok, why = judge(PrecisionMode.INT8, _judged())
    assert ok and "gate passed on validation and test (worst cosine 0.99990)" in why
    assert evidence_of(_judged()["accuracy"]) == {"data": "test", "worst_cosine": 0.9999}
    assert evidence_of(None) == {} and evidence_of({"test": "x"}) == {}


@pytest.mark.parametrize(
    ("message", "context", "line"),
    [
        ("not enough evidence: 4 test samples, need 73 for this gate; give more calibration "
         "data or `evaluation_data`", {"samples": 4, "required_samples": 73, "bound": 0.51,
                                       "threshold": 0.95},
         "int8 refused: not enough evidence: 4 test samples, need 73 for this gate"),
        ("fails the accuracy gate on test data: output 'y': 40 of 80 samples agree",
         {"samples": 80, "bound": 0.39, "threshold": 0.95},
         "int8 refused: 80 samples, bound 0.39 < 0.95"),
        ("int8 graph refused by the accuracy gate: test: output 'y': cosine 0.9 < 0.99",
         {"cosine": 0.9}, "int8 refused: int8 graph refused by the accuracy gate: test: "
                          "output 'y': cosine 0.9 < 0.99"),
    ],
)
def test_a_refusal_is_one_line_with_its_evidence(
    message: str, context: dict[str, Any], line: str
) -> None:
    from trt_provision.errors import AccuracyGateError

    got, ev = auto_precision._refusal(PrecisionMode.INT8, AccuracyGateError(message, **context))
    assert got == line
    assert ev.get("samples") == context.get("samples")


def test_a_not_enough_evidence_refusal_shows_in_the_table(
    corpus: Path, cache_dir: Path, vnni_host: None, capsys: pytest.CaptureFixture[str],
    timing: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The per-sample gate refuses a verdict on too few held-out samples: auto's table and
    summary carry that refusal, and the candidate is never chosen."""
    from trt_provision.errors import AccuracyGateError

    real = auto_precision.judge_candidate

    def refuse_int8(compiler: Any, backbone: Any) -> Any:
        if backbone.build_config.precision is PrecisionMode.INT8:
            raise AccuracyGateError(
                "not enough evidence: 4 test samples, need 73 for this gate; give more "
                "calibration data or `evaluation_data`", samples=4, required_samples=73,
                bound=0.5101, threshold=0.95)
        return real(compiler, backbone)

    monkeypatch.setattr(auto_precision, "judge_candidate", refuse_int8)
    data = _provision(_manifest(corpus), cache_dir, capsys)
    rows = _rows(Path(data["results"][0]["engine"]))
    line = "int8 refused: not enough evidence: 4 test samples, need 73 for this gate"
    assert rows["int8"]["verdict"] == "refused" and rows["int8"]["why"] == line
    assert rows["int8"]["evidence"]["samples"] == 4
    assert line in data["results"][0]["notes"]
    assert rows["mixed"]["verdict"] == "chosen"  # the next fastest, judged and passed


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
    # Without calibration data nothing but FP32 can be judged: FP32 alone, timed.
    assert decision["candidates"] == ["fp32"]
    assert set(decision["skipped"]) == {"fp16", "int8", "mixed", "dla"}
    rows = {r["precision"]: r for r in decision["table"]}
    assert rows["fp32"]["median_ms"] is not None
    assert decision["timing"]["input_shapes"] == {"input": [2, 3, 8, 8]}
    assert decision["chosen"] == "fp32"


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
        calibration=compose._tensorrt_calibration(calibration_dir),
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
    fp16_judged: bool, timing: dict[str, Any],
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
    timing["ms"] = {"fp32": 2.0, "fp16": 1.0, "int8": 3.0, "mixed": 3.0}  # fp16 is judged
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
        assert fp16["verdict"] == "chosen"
        assert timing["judged"] == ["fp32", "fp16"]  # int8 and mixed: slower, not judged
        # The built fp16 candidate's own sidecar says it was parsed strongly typed.
        built = result.entry.engine_path.parent / fp16["engine"]
        meta = json.loads(built.with_name(built.name + ".json").read_text())
        assert meta["build_config"]["strongly_typed"] is True
    else:
        assert fp16["verdict"] == "refused" and fp16["why"] == "fp16 refused: no accuracy recorded"
        assert decision["chosen"] != "fp16"
