from __future__ import annotations

import dataclasses
import logging
from pathlib import Path

import pytest

from fakes.fake_remote import FakeRemote
from fakes.fake_runtime import FakeRuntime
from fakes.fake_thermal import FakeThermal
from trt_provision.compiler import EngineCompiler
from trt_provision.config import load_manifest
from trt_provision.errors import (
    AccuracyGateError,
    EngineBuildError,
    ModelError,
    ThermalLimitError,
)
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import (
    BackboneSpec,
    BuildArtifact,
    BuildConfig,
    CompileOutcome,
    EngineCompileRequest,
    HostCapabilities,
    PrecisionMode,
    PreparedGraph,
    ThermalState,
)

pytestmark = pytest.mark.tier1

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.toml"


def _compiler(cache: Path, runtime: FakeRuntime, **kw: object) -> EngineCompiler:
    return EngineCompiler(
        runtime=runtime,
        store=LocalEngineStore(cache),
        gate=DefaultEngineGate(cache_root=cache),
        host=HostCapabilities(sm="sm90"),
        **kw,  # type: ignore[arg-type]
    )


def _request(models: dict[str, Path], **kw: object) -> EngineCompileRequest:
    configs = {b.name: b.build_config for b in load_manifest(DEMO).backbones}
    return EngineCompileRequest(
        backbones=tuple(BackboneSpec(n, p, configs.get(n, BuildConfig()))
                        for n, p in models.items()),
        **kw,  # type: ignore[arg-type]
    )


def test_built_then_reused(cache_dir: Path, demo_models: dict[str, Path]) -> None:
    runtime = FakeRuntime()
    compiler = _compiler(cache_dir, runtime)
    first = compiler.compile_engines_for_corpus(_request(demo_models))
    assert (first.built, first.reused, first.fetched) == (3, 0, 0)
    assert first.cache_hit_ratio == 0.0
    second = compiler.compile_engines_for_corpus(_request(demo_models))
    assert (second.built, second.reused) == (0, 3)
    assert second.cache_hit_ratio == 1.0
    assert runtime.count("compile_engine") == 3
    for result in second.results:
        assert result.entry is not None and result.entry.engine_path.is_file()
        assert result.entry.sha256_path.is_file() and result.entry.metadata_path.is_file()


def test_empty_corpus_gives_zero_summary(cache_dir: Path) -> None:
    summary = _compiler(cache_dir, FakeRuntime()).compile_engines_for_corpus(
        EngineCompileRequest(backbones=())
    )
    assert summary.results == () and summary.built == summary.reused == summary.fetched == 0
    assert summary.cache_hit_ratio == 0.0


def test_tampered_engine_is_rebuilt_alone_with_a_warning(
    cache_dir: Path, demo_models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    runtime = FakeRuntime()
    compiler = _compiler(cache_dir, runtime)
    first = compiler.compile_engines_for_corpus(_request(demo_models))
    victim = next(r for r in first.results if r.name == "two_inputs").entry
    assert victim is not None
    data = bytearray(victim.engine_path.read_bytes())
    data[len(data) // 2] ^= 0x01
    victim.engine_path.write_bytes(bytes(data))
    with caplog.at_level(logging.WARNING, logger="trt_provision.compiler"):
        second = compiler.compile_engines_for_corpus(_request(demo_models))
    outcomes = {r.name: r.outcome for r in second.results}
    assert outcomes == {
        "demo_cnn": CompileOutcome.REUSED,
        "dynamic_mlp": CompileOutcome.REUSED,
        "two_inputs": CompileOutcome.BUILT,
    }
    warnings = [
        r
        for r in caplog.records
        if r.levelno == logging.WARNING and r.name == "trt_provision.compiler"
    ]
    assert len(warnings) == 1 and victim.engine_path.name in warnings[0].getMessage()


@pytest.mark.parametrize(
    "damage",
    [
        "delete_sha",
        "empty_sha",
        "malformed_sha",
        "other_file_sha",
        "delete_json",
        "bad_json",
        "json_other_engine",
    ],
)
def test_bad_sidecars_mean_rebuild_not_crash(
    cache_dir: Path, demo_models: dict[str, Path], damage: str
) -> None:
    models = {"demo_cnn": demo_models["demo_cnn"]}
    compiler = _compiler(cache_dir, FakeRuntime())
    entry = compiler.compile_engines_for_corpus(_request(models)).results[0].entry
    assert entry is not None
    sha, meta = entry.sha256_path, entry.metadata_path
    if damage == "delete_sha":
        sha.unlink()
    elif damage == "empty_sha":
        sha.write_text("")
    elif damage == "malformed_sha":
        sha.write_text("not a digest  " + entry.engine_path.name + "\n")
    elif damage == "other_file_sha":
        sha.write_text(sha.read_text().replace(entry.engine_path.name, "other.engine"))
    elif damage == "delete_json":
        meta.unlink()
    elif damage == "bad_json":
        meta.write_text("{ not json")
    elif damage == "json_other_engine":
        meta.write_text(meta.read_text().replace(f'"{entry.engine_path.name}"', '"x.engine"'))
    again = compiler.compile_engines_for_corpus(_request(models))
    assert again.results[0].outcome is CompileOutcome.BUILT
    third = compiler.compile_engines_for_corpus(_request(models))
    assert third.results[0].outcome is CompileOutcome.REUSED


def test_failed_build_leaves_existing_good_engine_untouched(
    cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    models = {"demo_cnn": demo_models["demo_cnn"]}
    good = FakeRuntime()
    entry = _compiler(cache_dir, good).compile_engines_for_corpus(_request(models)).results[0].entry
    assert entry is not None
    before = {p.name: p.read_bytes() for p in entry.engine_path.parent.iterdir()}
    failing = FakeRuntime(fail_compile_with=EngineBuildError("boom", model="demo_cnn"))
    with pytest.raises(EngineBuildError, match="boom"):
        _compiler(cache_dir, failing).compile_engines_for_corpus(
            _request(models, force_rebuild=True, fail_fast=True)
        )
    after = {p.name: p.read_bytes() for p in entry.engine_path.parent.iterdir()}
    assert after == before  # same files (no temp left behind), same bytes


def test_missing_model_is_a_typed_error(cache_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelError):
        _compiler(cache_dir, FakeRuntime()).compile_engines_for_corpus(
            _request({"ghost": tmp_path / "ghost.onnx"}, fail_fast=True)
        )


def test_dry_run_builds_nothing(cache_dir: Path, demo_models: dict[str, Path]) -> None:
    runtime = FakeRuntime()
    summary = _compiler(cache_dir, runtime).compile_engines_for_corpus(
        _request(demo_models, dry_run=True)
    )
    assert summary.planned == 3 and runtime.count("compile_engine") == 0
    assert not any(LocalEngineStore(cache_dir).iter_engines())


def test_remote_fetch_then_upload(
    cache_dir: Path, tmp_path: Path, demo_models: dict[str, Path]
) -> None:
    remote = FakeRemote()
    builder = _compiler(cache_dir, FakeRuntime(), remote=remote)
    assert builder.compile_engines_for_corpus(_request(demo_models)).built == 3
    assert remote.uploads == 3
    other_cache = tmp_path / "device2"
    runtime2 = FakeRuntime()
    summary = _compiler(other_cache, runtime2, remote=remote).compile_engines_for_corpus(
        _request(demo_models)
    )
    assert summary.fetched == 3 and runtime2.count("compile_engine") == 0
    assert summary.cache_hit_ratio == 1.0
    # A remote that is down means a local build, not a failure.
    remote.down = True
    third = _compiler(
        tmp_path / "device3", FakeRuntime(), remote=remote
    ).compile_engines_for_corpus(_request(demo_models))
    assert third.built == 3


def test_thermal_limit_refuses_to_start_a_build(
    cache_dir: Path, demo_models: dict[str, Path]
) -> None:
    hot = ThermalState(temperatures_c={"gpu": 91.0}, is_telemetry_available=True, source="fake")
    runtime = FakeRuntime(thermal=hot)
    compiler = _compiler(cache_dir, runtime, max_temperature_c=85.0)
    with pytest.raises(ThermalLimitError, match="too hot"):
        compiler.compile_engines_for_corpus(_request(demo_models, fail_fast=True))
    assert runtime.count("compile_engine") == 0
    runtime.thermal = ThermalState(temperatures_c={"gpu": 60.0}, is_telemetry_available=True)
    assert compiler.compile_engines_for_corpus(_request(demo_models)).built == 3


def test_fake_thermal_publisher_counts_reads() -> None:
    thermal = FakeThermal(ThermalState(temperatures_c={"a": 1.0}, is_telemetry_available=True))
    assert thermal.thermal_state().max_temperature_c == 1.0 and thermal.reads == 1


def test_injected_logger_receives_the_structured_events(
    cache_dir: Path, demo_models: dict[str, Path], caplog: pytest.LogCaptureFixture
) -> None:
    logger = logging.getLogger("provisioning.fleet-a")
    compiler = _compiler(cache_dir, FakeRuntime(), logger=logger)
    with caplog.at_level(logging.INFO, logger="provisioning.fleet-a"):
        compiler.compile_engines_for_corpus(_request(demo_models))
    events = [getattr(r, "event", None) for r in caplog.records if r.name == "provisioning.fleet-a"]
    assert events[0] == "provision.start" and events[-1] == "provision.finish"
    assert events.count("engine.build.finish") == 3


# ------------------------------------------------------------- the precision pipeline


class _RecordingPipeline:
    """A PrecisionPipeline that writes a stand-in graph, or fails on demand."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.fail = fail
        self.calls: list[tuple[str, str | None, Path]] = []

    def prepare(self, model_path: Path, build_config: BuildConfig, workdir: Path, *,
                consumer: str, model_hash: str | None = None) -> PreparedGraph:
        assert workdir.is_dir()
        self.calls.append((consumer, model_hash, workdir))
        if self.fail is not None:
            raise self.fail
        graph = workdir / "prepared.onnx"
        graph.write_bytes(Path(model_path).read_bytes() + b"prepared")
        return PreparedGraph(graph, {"precision": build_config.precision.value})


class _GraphRuntime(FakeRuntime):
    """A strategy that builds reduced precisions from the prepared graph of ``consumer``."""

    def __init__(self, consumer: str | None) -> None:
        super().__init__()
        self.consumer = consumer
        self.prepared: list[PreparedGraph | None] = []

    def graph_consumer(self, build_config: BuildConfig) -> str | None:
        return None if build_config.precision is PrecisionMode.FP32 else self.consumer

    def compile_engine(self, model_path: Path, build_config: BuildConfig, staged_path: Path,
                       prepared: PreparedGraph | None = None) -> BuildArtifact:
        self.prepared.append(prepared)
        if prepared is not None:
            assert prepared.model_path.is_file()  # alive for the whole build
        return super().compile_engine(model_path, build_config, staged_path)


def _fp16_request(demo_models: dict[str, Path], demo_configs: dict[str, BuildConfig]
                  ) -> EngineCompileRequest:
    name = "demo_cnn"
    config = dataclasses.replace(demo_configs[name], precision=PrecisionMode.FP16)
    return EngineCompileRequest((BackboneSpec(name, demo_models[name], config),))


def test_the_compiler_prepares_the_graph_and_the_strategy_builds_from_it(
    cache_dir: Path, demo_models: dict[str, Path], demo_configs: dict[str, BuildConfig]
) -> None:
    runtime = _GraphRuntime("tensorrt")
    pipeline = _RecordingPipeline()
    compiler = _compiler(cache_dir, runtime, precision=pipeline)
    (result,) = compiler.compile_engines_for_corpus(
        _fp16_request(demo_models, demo_configs)).results
    assert result.outcome is CompileOutcome.BUILT and result.identity is not None
    ((consumer, model_hash, workdir),) = pipeline.calls
    assert consumer == "tensorrt" and model_hash == result.identity.model_sha256
    (prepared,) = runtime.prepared
    assert prepared is not None and prepared.model_path.parent == workdir
    assert not workdir.exists()  # removed once the engine is published
    assert cache_dir in workdir.parents and workdir.name.startswith(".tmp-")


def test_a_strategy_that_builds_the_model_as_it_is_gets_no_graph(
    cache_dir: Path, demo_models: dict[str, Path], demo_configs: dict[str, BuildConfig]
) -> None:
    runtime = _GraphRuntime(None)
    pipeline = _RecordingPipeline()
    compiler = _compiler(cache_dir, runtime, precision=pipeline)
    summary = compiler.compile_engines_for_corpus(_fp16_request(demo_models, demo_configs))
    assert summary.built == 1 and not pipeline.calls and runtime.prepared == [None]


def test_a_refused_graph_is_never_built_and_leaves_no_work_dir(
    cache_dir: Path, demo_models: dict[str, Path], demo_configs: dict[str, BuildConfig]
) -> None:
    runtime = _GraphRuntime("onnxruntime-cpu")
    pipeline = _RecordingPipeline(fail=AccuracyGateError("fp16 graph refused", model="m"))
    compiler = _compiler(cache_dir, runtime, precision=pipeline)
    (result,) = compiler.compile_engines_for_corpus(
        _fp16_request(demo_models, demo_configs)).results
    assert result.outcome is CompileOutcome.REFUSED
    assert runtime.prepared == [] and not list(cache_dir.rglob(".tmp-*"))
    (_, _, workdir) = pipeline.calls[0]
    assert not workdir.exists()
