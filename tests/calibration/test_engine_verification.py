"""The built engine is verified on its own runtime before it is published: loaded the way
``run`` loads it (engine gate, memory budget, deserialize, infer, release), judged against the
FP32 model with the verdict's split and gate (synthetic inputs without data), every output
checked for NaN / Inf. A refusal publishes nothing and is remembered under its identity."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from fakes.fake_runtime import FakeRuntime
from trt_provision.calibration.precision import GovernedPrecisionPipeline
from trt_provision.calibration.stages.verification import GovernedEngineVerifier
from trt_provision.compiler import EngineCompiler
from trt_provision.errors import OutOfMemoryError
from trt_provision.gates.budget import GpuMemoryBudget
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import (
    BackboneSpec,
    BuildConfig,
    CalibrationSpec,
    CompileOutcome,
    EngineCompileRequest,
    HostCapabilities,
    OptimizationProfile,
    PrecisionMode,
)

from .models import make_mlp_classifier

pytestmark = pytest.mark.tier1

PROFILE = (OptimizationProfile("x", (1, 16), (8, 16), (8, 16)),)


def make_overflow(path: Path) -> Path:
    """y = (x @ I) * 1e5 + 0.5: finite in FP32, beyond FP16's 65504 wherever |x| > 0.66."""
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["m"], name="fc"),
         helper.make_node("Mul", ["m", "big"], ["h"], name="scale_up"),
         helper.make_node("Add", ["h", "b"], ["y"], name="bias")],
        "overflow",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 16])],
        [numpy_helper.from_array(np.eye(16, dtype=np.float32), "w"),
         numpy_helper.from_array(np.array(1e5, np.float32), "big"),
         numpy_helper.from_array(np.full(16, 0.5, np.float32), "b")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def _compiler(cache: Path, runtime: FakeRuntime, budget: GpuMemoryBudget | None = None,
              ) -> EngineCompiler:
    gate = DefaultEngineGate(cache_root=cache)
    runtime.gate = gate
    runtime.budget = budget or GpuMemoryBudget(1 << 30)
    return EngineCompiler(runtime=runtime, store=LocalEngineStore(cache), gate=gate,
                          host=HostCapabilities(sm="sm90"),
                          precision=GovernedPrecisionPipeline(cache / ".calibration"),
                          verifier=GovernedEngineVerifier(cache / ".calibration"))


def _compile(compiler: EngineCompiler, backbone: BackboneSpec, *, force: bool = False,
             ) -> object:
    request = EngineCompileRequest((backbone,), force_rebuild=force)
    return compiler.compile_engines_for_corpus(request).results[0]


def _published(cache: Path) -> list[Path]:
    return sorted(p for p in cache.rglob("*.engine"))


def _no_leftovers(cache: Path) -> None:
    left = [p for p in cache.rglob(".tmp-*")]
    assert not left, left


def _sidecar(cache: Path) -> dict[str, object]:
    (engine,) = _published(cache)
    loaded: dict[str, object] = json.loads(engine.with_name(engine.name + ".json").read_text())
    return loaded


# ------------------------------------------------------------------ FP16 overflow, NaN


def test_an_fp16_engine_that_overflows_is_refused_without_data(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime()  # an fp16 engine stores its outputs in float16
    backbone = BackboneSpec("ov", make_overflow(tmp_path / "ov.onnx"),
                            BuildConfig(precision=PrecisionMode.FP16, profiles=PROFILE))
    result = _compile(_compiler(cache, runtime), backbone)
    assert result.outcome is CompileOutcome.REFUSED, result.error
    assert result.error_type == "AccuracyGateError"
    assert "output 'y'" in result.error and "NaN/Inf values" in result.error
    assert "synthetic" in result.error  # the smoke check on opt-shape inputs found it
    assert _published(cache) == []
    _no_leftovers(cache)
    # It ran through the runtime's load path: deserialized, run, released.
    assert runtime.count("deserialize_engine") == 1 and runtime.count("infer") >= 1
    assert runtime.count("release_engine") == 1


def test_an_fp16_engine_that_overflows_is_refused_with_data(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    data = tmp_path / "d.npy"
    np.save(data, np.random.default_rng(0).standard_normal((100, 8, 16)).astype(np.float32))
    runtime = FakeRuntime()
    config = BuildConfig(precision=PrecisionMode.FP16, profiles=PROFILE,
                         calibration=CalibrationSpec(source=str(data)))
    result = _compile(_compiler(cache, runtime), BackboneSpec(
        "ov", make_overflow(tmp_path / "ov.onnx"), config))
    assert result.outcome is CompileOutcome.REFUSED, result.error
    assert "output 'y'" in result.error and "NaN/Inf values" in result.error
    assert "inputs=data" in result.error
    assert _published(cache) == []
    _no_leftovers(cache)


def test_an_engine_that_returns_nan_is_refused_even_at_fp32(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime(nan_outputs=True)
    backbone = BackboneSpec("mlp", make_mlp_classifier(tmp_path / "mlp.onnx"),
                            BuildConfig(precision=PrecisionMode.FP32, profiles=PROFILE))
    result = _compile(_compiler(cache, runtime), backbone)
    assert result.outcome is CompileOutcome.REFUSED, result.error
    assert "output 'logits'" in result.error and "NaN/Inf" in result.error
    assert _published(cache) == []


def test_a_broken_fp16_engine_is_refused_by_the_smoke_check(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime(negate_outputs=True)  # finite, but not the model
    backbone = BackboneSpec("mlp", make_mlp_classifier(tmp_path / "mlp.onnx"),
                            BuildConfig(precision=PrecisionMode.FP16, profiles=PROFILE))
    result = _compile(_compiler(cache, runtime), backbone)
    assert result.outcome is CompileOutcome.REFUSED, result.error
    assert "output 'logits': cosine -1.000000 < 0.9" in result.error
    assert _published(cache) == []


def test_a_sound_fp32_engine_on_the_fake_runtime_is_published_with_its_verdict(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime()
    backbone = BackboneSpec("mlp", make_mlp_classifier(tmp_path / "mlp.onnx"),
                            BuildConfig(precision=PrecisionMode.FP32, profiles=PROFILE))
    result = _compile(_compiler(cache, runtime), backbone)
    assert result.outcome is CompileOutcome.BUILT, result.error
    engine = _sidecar(cache)["accuracy"]["engine"]  # type: ignore[index]
    assert engine["runtime"] == "fake 1.0" and engine["inputs"] == "synthetic"
    assert engine["verdict"] == "smoke only" and engine["samples"] == 32
    assert engine["outputs"]["logits"]["cosine"] == 1.0
    _no_leftovers(cache)


def test_a_budget_that_refuses_the_engine_fails_the_build_and_publishes_nothing(
    tmp_path: Path,
) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime()
    backbone = BackboneSpec("mlp", make_mlp_classifier(tmp_path / "mlp.onnx"),
                            BuildConfig(precision=PrecisionMode.FP32, profiles=PROFILE))
    compiler = _compiler(cache, runtime, budget=GpuMemoryBudget(16))
    result = _compile(compiler, backbone)
    assert result.outcome is CompileOutcome.FAILED
    assert result.error_type == OutOfMemoryError.__name__
    assert result.error.startswith("cannot load the built engine to verify it, nothing "
                                   "published: engine does not fit in the memory budget")
    assert runtime.count("infer") == 0  # the budget refused before anything ran
    assert _published(cache) == []
    _no_leftovers(cache)


def test_a_staged_engine_the_gate_refuses_is_never_run(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime()
    backbone = BackboneSpec("mlp", make_mlp_classifier(tmp_path / "mlp.onnx"),
                            BuildConfig(precision=PrecisionMode.FP32, profiles=PROFILE))
    compiler = _compiler(cache, runtime)
    runtime.gate = DefaultEngineGate(cache_root=cache, max_engine_bytes=8)
    result = _compile(compiler, backbone)
    assert result.outcome is CompileOutcome.FAILED
    assert result.error_type == "EngineGateError" and "larger than" in result.error
    assert runtime.count("infer") == 0
    assert _published(cache) == []


# ------------------------------------------------------------------ verdict memory


def test_a_refusal_is_remembered_and_force_rebuild_judges_again(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime()
    backbone = BackboneSpec("ov", make_overflow(tmp_path / "ov.onnx"),
                            BuildConfig(precision=PrecisionMode.FP16, profiles=PROFILE))
    compiler = _compiler(cache, runtime)
    first = _compile(compiler, backbone)
    assert first.outcome is CompileOutcome.REFUSED
    (record,) = cache.rglob("*.refused.json")
    assert record.name == first.identity.filename + ".refused.json"
    assert json.loads(record.read_text())["reason"] == first.error.split(" (model=")[0]

    again = _compile(compiler, backbone)
    assert again.outcome is CompileOutcome.REFUSED
    assert again.error.startswith("refused earlier: engine refused on fake 1.0: output 'y'")
    assert runtime.count("compile_engine") == 1  # answered at once, nothing built

    dry = compiler.compile_engines_for_corpus(
        EngineCompileRequest((backbone,), dry_run=True)).results[0]
    assert dry.outcome is CompileOutcome.PLANNED
    assert dry.notes[0].startswith("would be refused: refused earlier: engine refused on fake")

    forced = _compile(compiler, backbone, force=True)
    assert forced.outcome is CompileOutcome.REFUSED
    assert not forced.error.startswith("refused earlier")
    assert runtime.count("compile_engine") == 2


@pytest.mark.parametrize("damage", ["corrupt", "other", "symlink", "huge"])
def test_a_refusal_record_that_cannot_be_trusted_is_ignored(tmp_path: Path, damage: str) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime()
    backbone = BackboneSpec("ov", make_overflow(tmp_path / "ov.onnx"),
                            BuildConfig(precision=PrecisionMode.FP16, profiles=PROFILE))
    compiler = _compiler(cache, runtime)
    _compile(compiler, backbone)
    (record,) = cache.rglob("*.refused.json")
    body = json.loads(record.read_text())
    if damage == "corrupt":
        record.write_text("{ not json")
    elif damage == "other":
        record.write_text(json.dumps({**body, "engine": "other.engine"}))
    elif damage == "symlink":
        elsewhere = tmp_path / "planted.json"
        elsewhere.write_text(json.dumps(body))
        record.unlink()
        record.symlink_to(elsewhere)
    else:
        record.write_text(json.dumps({**body, "padding": "x" * (1 << 20)}))
    again = _compile(compiler, backbone)
    assert again.outcome is CompileOutcome.REFUSED
    assert not again.error.startswith("refused earlier")  # judged again
    assert runtime.count("compile_engine") == 2


def test_cache_gc_and_clear_treat_refusal_records_as_ours(tmp_path: Path) -> None:
    from trt_provision.stores.maintenance import clear_cache, plan_gc

    cache = tmp_path / "cache"
    runtime = FakeRuntime()
    backbone = BackboneSpec("ov", make_overflow(tmp_path / "ov.onnx"),
                            BuildConfig(precision=PrecisionMode.FP16, profiles=PROFILE))
    _compile(_compiler(cache, runtime), backbone)
    (record,) = cache.rglob("*.refused.json")
    # Current for this host and model: kept; for a target the host does not accept: gone.
    assert record not in {i.path for i in plan_gc(cache, host_targets=(runtime.target,)).items}
    from trt_provision.types import RuntimeTarget

    other = RuntimeTarget("fake", "2.0", "sm90", "dgpu")
    assert record in {i.path for i in plan_gc(cache, host_targets=(other,)).items}
    clear_cache(cache)
    assert not record.exists()


def test_an_engine_that_passes_when_judged_again_drops_the_refusal(tmp_path: Path) -> None:
    cache = tmp_path / "cache"
    runtime = FakeRuntime(nan_outputs=True)
    backbone = BackboneSpec("mlp", make_mlp_classifier(tmp_path / "mlp.onnx"),
                            BuildConfig(precision=PrecisionMode.FP32, profiles=PROFILE))
    compiler = _compiler(cache, runtime)
    assert _compile(compiler, backbone).outcome is CompileOutcome.REFUSED
    assert list(cache.rglob("*.refused.json"))
    runtime.nan_outputs = False  # the kernel fixed, say: judged again on request
    assert _compile(compiler, backbone, force=True).outcome is CompileOutcome.BUILT
    assert not list(cache.rglob("*.refused.json"))
    assert _compile(compiler, backbone).outcome is CompileOutcome.REUSED


def test_a_dead_writers_engine_check_directory_is_collected(tmp_path: Path) -> None:
    from trt_provision.stores.maintenance import stale_temps

    model_dir = tmp_path / "cache" / "mlp"
    model_dir.mkdir(parents=True)
    dead = model_dir / ".tmp-999999999-chk-abc123_x"
    dead.mkdir()
    (dead / "mlp.engine").write_bytes(b"x")
    live = model_dir / f".tmp-{os.getpid()}-chk-def456_y"
    live.mkdir()
    assert stale_temps(tmp_path / "cache") == [dead]
