"""Through the real provision CLI on ONNX Runtime: every built engine - fp32 included - carries
its own verdict, measured on the engine; a refusal is remembered and answered at once; an fp16
engine judged on data is not the smoke-tested one."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trt_provision.calibration import precision as precision_mod
from trt_provision.cli.main import main

from .models import make_mlp_classifier
from .test_engine_verification import make_overflow

pytestmark = pytest.mark.tier1


def _manifest(tmp_path: Path, precision: str, *, model: str = "mlp", data: str | None = None,
              rows: int = 8, extra: str = "") -> Path:
    if model == "mlp":
        make_mlp_classifier(tmp_path / "mlp.onnx")
    else:
        make_overflow(tmp_path / f"{model}.onnx")
    calibration = (f'calibration = {{ data = "{data}", algorithm = "minmax" }}\n'
                   if data else "")
    path = tmp_path / f"{precision}.toml"
    path.write_text(f"""
[settings]
runtime = "onnxruntime"

[[models]]
name = "{model}"
path = "{model}.onnx"
precision = "{precision}"
{calibration}{extra}
[[models.profiles]]
input = "x"
min = [1, 16]
opt = [{rows}, 16]
max = [{rows}, 16]
""")
    return path


def _data(tmp_path: Path, name: str, rows: int, *, seed: int = 0, scale: float = 1.0) -> str:
    rng = np.random.default_rng(seed)
    np.save(tmp_path / name, (scale * rng.standard_normal((10, rows, 16))).astype(np.float32))
    return name


def _provision(manifest: Path, cache: Path, capsys: pytest.CaptureFixture[str],
               monkeypatch: pytest.MonkeyPatch, *flags: str) -> tuple[int, dict[str, Any]]:
    monkeypatch.setenv("TRT_PROVISION_CACHE_DIR", str(cache))
    capsys.readouterr()
    code = main(["provision", str(manifest), "--json", "--no-remote", *flags])
    result = json.loads(capsys.readouterr().out)["results"][0]
    return code, result


def _accuracy(result: dict[str, Any]) -> dict[str, Any]:
    engine = Path(result["engine"])
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    accuracy: dict[str, Any] = meta["accuracy"]
    return accuracy


def test_an_fp32_build_records_the_engines_own_verdict(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    code, result = _provision(_manifest(tmp_path, "fp32"), tmp_path / "cache", capsys,
                              monkeypatch)
    assert code == 0 and result["outcome"] == "built"
    engine = _accuracy(result)["engine"]
    assert engine["runtime"].startswith("ortcpu ") and engine["inputs"] == "synthetic"
    assert engine["verdict"] == "smoke only" and engine["samples"] == 4 * 8
    assert engine["min_cosine"] == 0.9999
    assert engine["outputs"]["logits"]["cosine"] >= 0.9999
    assert "nonfinite" not in engine


def test_an_int8_engine_that_passes_records_its_samples_and_bound(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    data = _data(tmp_path, "d.npy", 200)
    code, result = _provision(_manifest(tmp_path, "int8", data=data, rows=200),
                              tmp_path / "cache", capsys, monkeypatch)
    assert code == 0 and result["outcome"] == "built", result.get("error")
    accuracy = _accuracy(result)
    engine = accuracy["engine"]
    assert engine["inputs"] == "data" and engine["verdict"] == "passed"
    assert engine["samples"] == accuracy["test"]["samples"] == 400  # the verdict's test split
    assert engine["threshold"] == 0.95 and engine["bound"] >= 0.95
    assert engine["gate"] == accuracy["gate"]
    assert engine["evidence"]["enough"] is True


def test_an_fp16_model_beyond_the_fp16_range_is_never_published_with_inf_outputs(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # ONNX Runtime's CPU provider: the converter keeps the overflowing nodes FP32, and the
    # engine's own check confirms every output finite; run it far beyond the smoke inputs.
    cache = tmp_path / "cache"
    code, result = _provision(_manifest(tmp_path, "fp16", model="ov"), cache, capsys,
                              monkeypatch)
    assert code == 0 and result["outcome"] == "built", result.get("error")
    engine = Path(result["engine"])
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert {b["node"] for b in meta["fp16"]["kept_fp32"]} >= {"scale_up", "bias"}
    assert meta["accuracy"]["engine"]["verdict"] == "smoke only"
    assert "nonfinite" not in meta["accuracy"]["engine"]
    import onnxruntime as ort

    session = ort.InferenceSession(str(engine), providers=["CPUExecutionProvider"])
    big = np.full((8, 16), 10.0, np.float32)
    assert np.isfinite(session.run(None, {"x": big})[0]).all()


def test_a_refusal_is_answered_at_once_the_next_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    manifest = _manifest(tmp_path, "int8", data=_data(tmp_path, "d.npy", 8))
    calls: list[int] = []
    real = precision_mod.split_data

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(precision_mod, "split_data", counting)
    code, first = _provision(manifest, cache, capsys, monkeypatch)
    assert code == 1 and first["outcome"] == "refused"
    assert first["error"].startswith("not enough evidence: 16 test samples")
    assert len(calls) == 1
    code, again = _provision(manifest, cache, capsys, monkeypatch)
    assert code == 1 and again["outcome"] == "refused"
    assert again["error"].startswith("refused earlier: not enough evidence: 16 test samples")
    assert "samples=16" in again["error"] and "bound=0.8064" in again["error"]  # its evidence
    assert len(calls) == 1  # the pipeline did not run again
    code, forced = _provision(manifest, cache, capsys, monkeypatch, "--force-rebuild")
    assert code == 1 and not forced["error"].startswith("refused earlier")
    assert len(calls) == 2
    assert not list(cache.rglob("*.engine"))


def test_fp16_judged_on_data_is_not_the_smoke_tested_engine(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    code, smoke = _provision(_manifest(tmp_path, "fp16", rows=200), cache, capsys, monkeypatch)
    assert code == 0 and _accuracy(smoke)["verdict"] == "smoke only"
    data = _data(tmp_path, "d.npy", 200)
    code, judged = _provision(_manifest(tmp_path, "fp16", data=data, rows=200), cache, capsys,
                              monkeypatch)
    assert code == 0 and judged["outcome"] == "built", judged.get("error")
    assert judged["filename"] != smoke["filename"]
    accuracy = _accuracy(judged)
    assert accuracy["verdict"] == "passed" and accuracy["engine"]["inputs"] == "data"
    # Other data is another verdict: judged again, not reused.
    other = _data(tmp_path, "e.npy", 200, seed=1)
    code, again = _provision(_manifest(tmp_path, "fp16", data=other, rows=200), cache, capsys,
                             monkeypatch)
    assert code == 0 and again["outcome"] == "built"
    assert again["filename"] not in {smoke["filename"], judged["filename"]}


def test_every_auto_candidate_is_verified_as_a_build_of_its_own(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    cache = tmp_path / "cache"
    data = _data(tmp_path, "d.npy", 200)
    code, result = _provision(_manifest(tmp_path, "auto", data=data, rows=200), cache, capsys,
                              monkeypatch)
    assert code == 0 and result["outcome"] == "built", result.get("error")
    from trt_provision.calibration.precision import PREVIEW_NOTE

    sidecars = {p: json.loads(p.read_text()) for p in cache.glob("mlp/*.engine.json")
                if ".auto." not in p.name}
    # auto's trial engines are timed, never judged nor served: their sidecar says so.
    trials = [p for p, meta in sidecars.items()
              if meta["accuracy"].get("warning") == PREVIEW_NOTE]
    candidates = [p for p in sidecars if p not in trials]
    assert any(".fp32." in p.name for p in candidates)
    for p in trials:
        assert sidecars[p]["accuracy"]["verdict"] == "not judged"
    for sidecar in candidates:
        engine = sidecars[sidecar]["accuracy"]["engine"]
        assert engine["inputs"] == "data" and engine["samples"] == 400, sidecar.name
        assert engine["verdict"] in ("passed", "not gated"), sidecar.name
        assert "nonfinite" not in engine


@pytest.mark.parametrize("with_data", [False, True])
def test_an_fp16_engine_that_overflows_is_refused_through_the_cli(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch,
    with_data: bool,
) -> None:
    # The strategy compose wires is a runtime whose fp16 engine stores its outputs in
    # float16 (as TensorRT's do); everything else is the real CLI, gate, budget and store.
    from fakes.fake_runtime import FakeRuntime
    from trt_provision import compose

    monkeypatch.setattr(compose, "OnnxRuntimeRuntime",
                        lambda **kw: FakeRuntime(gate=kw["gate"], budget=kw["budget"]))
    data = _data(tmp_path, "d.npy", 200) if with_data else None
    cache = tmp_path / "cache"
    code, result = _provision(_manifest(tmp_path, "fp16", model="ov", data=data, rows=200),
                              cache, capsys, monkeypatch)
    assert code == 1 and result["outcome"] == "refused", result
    assert result["error"].startswith("engine refused on fake 1.0: output 'y': ")
    assert "NaN/Inf values where the FP32 reference is finite" in result["error"]
    assert f"inputs={'data' if with_data else 'synthetic'}" in result["error"]
    assert not list(cache.rglob("*.engine")) and not list(cache.rglob(".tmp-*"))
