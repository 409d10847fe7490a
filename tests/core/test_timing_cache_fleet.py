"""Timing caches travel with the fleet: the builder of record pushes its TensorRT timing cache,
a device of the same type without one fetches it before building, and the (fake) TensorRT
build loads it. Devices of another TensorRT version or device name never ask for it."""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from fakes.fake_cuda import FakeCudaRuntime
from fakes.fake_remote import FakeRemote
from fakes.fake_runtime import FakeRuntime
from fakes.fake_tensorrt import FakeTrtState, fake_state, make_fake_tensorrt
from trt_provision.compiler import EngineCompiler
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.runtimes.tensorrt import TensorrtOptions, TensorrtRuntime
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import (
    BackboneSpec,
    BuildConfig,
    CompileOutcome,
    EngineCompileRequest,
    EngineCompileResult,
    HostCapabilities,
)

pytestmark = pytest.mark.tier1

A30 = "NVIDIA A30"
FLEET_NAME = "trt-10.16.1.11.sm80.NVIDIA_A30.timing-cache"


def write_onnx(path: Path, width: int) -> Path:
    """A model of ``width`` features and ``width // 2`` layers (the fake TensorRT's timing
    cache entries are per network size)."""
    import onnx
    from onnx import TensorProto, helper

    names = ["input", *(f"t{i}" for i in range(width // 2 - 1)), "output"]
    graph = helper.make_graph(
        [helper.make_node("Relu", [a], [b], name=f"relu{i}")
         for i, (a, b) in enumerate(itertools.pairwise(names))], f"g{width}",
        [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, width])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, width])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


@dataclass
class Device:
    compiler: EngineCompiler
    trt: FakeTrtState
    cache: Path

    @property
    def timing_dir(self) -> Path:
        return self.cache / ".timing"

    def provision(self, model: Path, name: str, build: str = "fallback",
                  force_rebuild: bool = False) -> EngineCompileResult:
        request = EngineCompileRequest((BackboneSpec(name, model, BuildConfig()),), build=build,
                                       force_rebuild=force_rebuild)
        [result] = self.compiler.compile_engines_for_corpus(request).results
        assert result.outcome is CompileOutcome.BUILT, result.error
        return result


def tensorrt_device(cache: Path, remote: Any, *, version: str = "10.16.1.11",
                    gpu: str | None = A30) -> Device:
    """A TensorRT device (fake TensorRT and CUDA) keeping its timing cache as compose wires
    it: ``<cache>/.timing``."""
    cuda = FakeCudaRuntime()
    trt = make_fake_tensorrt(version, cuda=cuda, recorder=cuda.recorder)
    host = HostCapabilities(sm="sm80", trt_version=version, gpu_name=gpu)
    gate = DefaultEngineGate(cache_root=cache)
    runtime = TensorrtRuntime(
        gate=gate, host=host, trt_module=trt, cuda_module=cuda,
        options=TensorrtOptions(optional_plugins=(), timing_cache_dir=cache / ".timing"),
    )
    compiler = EngineCompiler(runtime=runtime, store=LocalEngineStore(cache), gate=gate,
                              host=host, remote=remote)
    return Device(compiler, fake_state(trt), cache)


def entries(data: bytes) -> set[str]:
    return {line for line in data.decode().split("\n") if line}


@pytest.fixture
def models(tmp_path: Path) -> tuple[Path, Path]:
    return write_onnx(tmp_path / "a.onnx", 4), write_onnx(tmp_path / "b.onnx", 8)


def test_builder_pushes_and_a_device_of_its_type_builds_with_it(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    remote = FakeRemote()
    builder = tensorrt_device(tmp_path / "builder", remote)
    builder.provision(models[0], "a", build="always")
    local = builder.timing_dir / FLEET_NAME
    assert remote.timing_uploads == [FLEET_NAME]
    assert remote.timing[FLEET_NAME][0] == local.read_bytes()
    pushed = entries(local.read_bytes())
    assert pushed  # the build measured something
    assert remote.timing_fetches == [FLEET_NAME]  # it had none either: asked, found none
    remote.timing_fetches.clear()

    device = tensorrt_device(tmp_path / "device", remote)
    result = device.provision(models[1], "b")  # not on the remote: built here
    assert remote.timing_fetches == [FLEET_NAME]
    # The fake TensorRT build found the builder's timings in the cache it was given...
    assert device.trt.timing_cache_at_build == [frozenset(pushed)]
    assert "built with the fleet's timing cache" in result.notes
    # ...and merged its own into the device's file.
    assert entries((device.timing_dir / FLEET_NAME).read_bytes()) > pushed
    # Only the builder of record pushes: the fleet's cache is still the builder's.
    assert remote.timing_uploads == [FLEET_NAME]
    assert remote.timing[FLEET_NAME][0] == local.read_bytes()


def test_builder_pushes_again_only_when_its_cache_grew(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    remote = FakeRemote()
    builder = tensorrt_device(tmp_path / "builder", remote)
    builder.provision(models[0], "a", build="always")
    builder.provision(models[0], "a", build="always", force_rebuild=True)  # no new timings
    assert remote.timing_uploads == [FLEET_NAME]
    builder.provision(models[1], "b", build="always")
    assert remote.timing_uploads == [FLEET_NAME, FLEET_NAME]
    assert remote.timing[FLEET_NAME][0] == (builder.timing_dir / FLEET_NAME).read_bytes()


@pytest.mark.parametrize(
    ("version", "gpu", "asked"),
    [
        ("10.3.0", A30, "trt-10.3.0.sm80.NVIDIA_A30.timing-cache"),
        ("10.16.1.11", "NVIDIA A100-SXM4-80GB",
         "trt-10.16.1.11.sm80.NVIDIA_A100-SXM4-80GB.timing-cache"),
    ],
)
def test_another_version_or_device_never_gets_it(
    tmp_path: Path, models: tuple[Path, Path], version: str, gpu: str, asked: str
) -> None:
    remote = FakeRemote()
    tensorrt_device(tmp_path / "builder", remote).provision(models[0], "a", build="always")
    remote.timing_fetches.clear()
    other = tensorrt_device(tmp_path / "other", remote, version=version, gpu=gpu)
    result = other.provision(models[1], "b")
    assert remote.timing_fetches == [asked]  # its own kind's, which nobody pushed
    assert other.trt.timing_cache_at_build == [frozenset()]  # started empty
    assert [p.name for p in other.timing_dir.glob("*.timing-cache")] == [asked]
    assert "built with the fleet's timing cache" not in result.notes


def test_a_device_without_a_name_shares_nothing(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    """sm80 alone does not say A30 or A100: without the device's name nothing is shared."""
    remote = FakeRemote()
    tensorrt_device(tmp_path / "builder", remote).provision(models[0], "a", build="always")
    remote.timing_fetches.clear()
    nameless = tensorrt_device(tmp_path / "nameless", remote, gpu=None)
    nameless.provision(models[1], "b", build="always")
    assert remote.timing_fetches == []
    assert remote.timing_uploads == [FLEET_NAME]
    assert nameless.trt.timing_cache_at_build == [frozenset()]


def test_a_local_cache_is_never_replaced_by_the_fleets(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    remote = FakeRemote()
    tensorrt_device(tmp_path / "builder", remote).provision(models[0], "a", build="always")
    remote.timing_fetches.clear()
    device = tensorrt_device(tmp_path / "device", remote)
    own = device.timing_dir / FLEET_NAME
    device.timing_dir.mkdir(parents=True)
    own.write_bytes(b"own:1")
    device.provision(models[1], "b")
    assert remote.timing_fetches == []  # not even asked
    assert device.trt.timing_cache_at_build == [frozenset({"own:1"})]


def test_a_refused_fleet_cache_leaves_the_build_to_go_on_without_it(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    remote = FakeRemote()
    tensorrt_device(tmp_path / "builder", remote).provision(models[0], "a", build="always")
    remote.timing_fetches.clear()
    data, digest = remote.timing[FLEET_NAME]
    remote.timing[FLEET_NAME] = (data + b"\nforged:9", digest)  # tampered in the bucket
    device = tensorrt_device(tmp_path / "device", remote)
    result = device.provision(models[1], "b")
    assert remote.timing_fetches == [FLEET_NAME]
    assert device.trt.timing_cache_at_build == [frozenset()]
    assert "forged:9" not in (device.timing_dir / FLEET_NAME).read_text()
    assert "built with the fleet's timing cache" not in result.notes


def test_a_down_remote_costs_the_build_nothing(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    remote = FakeRemote(down=True)
    device = tensorrt_device(tmp_path / "device", remote)
    device.provision(models[1], "b", build="always")
    assert remote.timing_uploads == [] and remote.timing == {}


def test_onnx_runtime_keeps_no_timing_cache_and_shares_none(
    tmp_path: Path, models: tuple[Path, Path]
) -> None:
    remote = FakeRemote()
    runtime = FakeRuntime()
    compiler = EngineCompiler(runtime=runtime, store=LocalEngineStore(tmp_path / "ort"),
                              gate=DefaultEngineGate(cache_root=tmp_path / "ort"),
                              host=HostCapabilities(sm="sm80", gpu_name=A30), remote=remote)
    request = EngineCompileRequest((BackboneSpec("a", models[0], BuildConfig()),),
                                   build="always")
    [result] = compiler.compile_engines_for_corpus(request).results
    assert result.outcome is CompileOutcome.BUILT, result.error
    assert remote.timing_fetches == [] and remote.timing_uploads == []


def test_compose_signs_pushed_timing_caches_with_the_engines_key(tmp_path: Path) -> None:
    """The builder of record's signing key signs its timing cache's ``.sha256`` line, and the
    fleet's public key verifies it (the same trust code as engines)."""
    from trt_provision.compose import wire
    from trt_provision.config import Settings
    from trt_provision.errors import EngineGateError
    from trt_provision.trust import SignatureTrust, TrustPolicy, generate_keypair

    public_path, public = generate_keypair(tmp_path / "fleet.key")
    settings = Settings(cache_dir=tmp_path / "cache", signing_key=tmp_path / "fleet.key",
                        public_key=public_path,
                        remote={"bucket": "fleet", "endpoint": "http://127.0.0.1:9"})
    remote = wire(settings, host=HostCapabilities()).remote
    assert remote is not None
    line = b"ab" * 32 + f"  {FLEET_NAME}\n".encode()
    signature = remote._sign_timing(line)  # type: ignore[attr-defined]
    trust = SignatureTrust(TrustPolicy.REQUIRE, [public])
    trust.check_bytes(line, signature, "timing cache")
    with pytest.raises(EngineGateError):
        trust.check_bytes(line.replace(b"ab", b"cd", 1), signature, "timing cache")
    unsigned = wire(Settings(cache_dir=tmp_path / "c2", remote=settings.remote),
                    host=HostCapabilities()).remote
    assert unsigned is not None and unsigned._sign_timing is None  # type: ignore[attr-defined]
