"""The test rig around TensorrtRuntime: fake TensorRT + fake CUDA, gate, budget, model file."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from fakes.fake_cuda import FakeCudaRuntime
from fakes.fake_tensorrt import (
    FakeLayerSpec,
    FakeModelSpec,
    fake_state,
    make_fake_tensorrt,
    write_model,
)
from fakes.fake_trtexec import install_fake_trtexec
from trt_provision.errors import EngineGateError, OutOfMemoryError
from trt_provision.identity import compute_identity
from trt_provision.runtimes.tensorrt import NetworkSource, TensorrtOptions, TensorrtRuntime
from trt_provision.types import (
    BuildConfig,
    EngineCacheEntry,
    HostCapabilities,
    OptimizationProfile,
    RuntimeTarget,
)

TRT10 = ("10.3.0", "10.16.1.11")
PROFILE = OptimizationProfile("input", (1, 3, 8, 8), (2, 3, 8, 8), (4, 3, 8, 8))
# DLA builds need min == opt == max (NvInferRuntime.h, IOptimizationProfile::setDimensions).
STATIC_PROFILE = OptimizationProfile("input", (2, 3, 8, 8), (2, 3, 8, 8), (2, 3, 8, 8))
HALF_SPEC = FakeModelSpec(
    layers=(
        FakeLayerSpec("conv1"),
        FakeLayerSpec("router_gate", "MATRIX_MULTIPLY", ("HALF",)),
        FakeLayerSpec("router_shape", "SHAPE", ("INT64",)),
    )
)

# A Q/DQ graph as the calibration pipeline prepares it: INT8 weights dequantized into the
# convolution; the pinned layers stay FP16 and unquantized.
QDQ_SPEC = FakeModelSpec(
    layers=(
        FakeLayerSpec("conv1_weight_dq", "DEQUANTIZE", op_type="DequantizeLinear"),
        FakeLayerSpec("conv1"),
        FakeLayerSpec("router_gate", "MATRIX_MULTIPLY", ("HALF",)),
        FakeLayerSpec("router_shape", "SHAPE", ("INT64",)),
    )
)


def _qdq_converter(calls: list[str] | None = None) -> Callable[..., tuple[Path, dict[str, Any]]]:
    def convert(model: Path, cfg: BuildConfig, workdir: Path) -> tuple[Path, dict[str, Any]]:
        if calls is not None:
            calls.append(cfg.precision.value)
        spec = QDQ_SPEC if cfg.precision.needs_calibration else HALF_SPEC
        return write_model(spec, workdir / "prepared.onnx"), {"prepared": True}
    return convert


@dataclass
class RecordingGate:
    refuse: bool = False
    calls: list[tuple[Path, RuntimeTarget]] = field(default_factory=list)

    def validate(self, engine_path: Path, expected: RuntimeTarget) -> EngineCacheEntry:
        self.calls.append((engine_path, expected))
        if self.refuse:
            raise EngineGateError("refused by test gate", path=str(engine_path))
        return _entry(engine_path, expected)


@dataclass
class CountingBudget:
    capacity: int = 1 << 30
    predicted: int = 1 << 20
    reserved: dict[int, int] = field(default_factory=dict)
    next_id: int = 1

    def predicted_bytes(self, entry: EngineCacheEntry) -> int:
        return self.predicted

    def reserve(self, entry: EngineCacheEntry) -> int:
        if sum(self.reserved.values()) + self.predicted > self.capacity:
            raise OutOfMemoryError("budget exhausted", needed=self.predicted)
        rid, self.next_id = self.next_id, self.next_id + 1
        self.reserved[rid] = self.predicted
        return rid

    def release(self, reservation: int) -> None:
        del self.reserved[reservation]


def _entry(path: Path, target: RuntimeTarget, config: BuildConfig | None = None) -> EngineCacheEntry:
    ident = compute_identity(
        model_name="demo", model_hash="ab" * 32, config=config or BuildConfig(), target=target
    )
    return EngineCacheEntry(engine_path=path, sha256="cd" * 32, identity=ident)


@dataclass
class Rig:
    trt: Any
    cuda: FakeCudaRuntime
    runtime: TensorrtRuntime
    gate: RecordingGate
    budget: CountingBudget
    tmp: Path

    @property
    def state(self) -> Any:
        return fake_state(self.trt)

    @property
    def calls(self) -> list[str]:
        return self.cuda.recorder.names

    @property
    def model(self) -> Path:
        """The ONNX file the fake parser reads: the graph of the current model spec."""
        return write_model(self.state.model, self.tmp / "m.onnx")

    def build(self, config: BuildConfig | None = None, name: str = "e.engine") -> Any:
        cfg = config or BuildConfig(profiles=(PROFILE,))
        return self.runtime.compile_engine(self.model, cfg, self.tmp / name)

    def load(self, config: BuildConfig | None = None) -> Any:
        cfg = config or BuildConfig(profiles=(PROFILE,))
        self.build(cfg)
        self.cuda.recorder.clear()
        return self.runtime.deserialize_engine(
            _entry(self.tmp / "e.engine", self.runtime.runtime_target(cfg), cfg)
        )


def rig_factory(tmp_path: Path) -> Callable[..., Rig]:
    def make(version: str = "10.16.1.11", *, host: HostCapabilities | None = None,
             options: TensorrtOptions | None = None, thermal: Any = None) -> Rig:
        cuda = FakeCudaRuntime()
        trt = make_fake_tensorrt(version, cuda=cuda, recorder=cuda.recorder)
        if version.startswith("11."):
            fake_state(trt).model = HALF_SPEC
        gate, budget = RecordingGate(), CountingBudget()
        runtime = TensorrtRuntime(
            gate=gate, budget=budget, thermal=thermal,
            host=host or HostCapabilities(sm="sm87"),
            options=options or TensorrtOptions(optional_plugins=()),
            trt_module=trt, cuda_module=cuda,
        )
        return Rig(trt, cuda, runtime, gate, budget, tmp_path)

    return make




# --------------------------------------------------------------------------- fake trtexec


@dataclass
class FakeTrtexec:
    binary: Path
    argv_file: Path

    @property
    def argv(self) -> list[str]:
        return self.argv_file.read_text().splitlines()


def setup_fake_trtexec(tmp_path: Path, monkeypatch: Any) -> FakeTrtexec:
    """``trtexec`` on PATH is ``fakes/fake_trtexec.py`` (TensorRT 10.16.1 until a rig says)."""
    bindir = tmp_path / "bin"
    binary = install_fake_trtexec(bindir)
    argv_file = tmp_path / "trtexec.argv"
    monkeypatch.setenv("PATH", f"{bindir}{os.pathsep}{os.environ.get('PATH', '')}")
    monkeypatch.setenv("FAKE_TRTEXEC_ARGV", str(argv_file))
    monkeypatch.setenv("FAKE_TRTEXEC_MODE", "ok")
    monkeypatch.setenv("FAKE_TRTEXEC_TRT", "101601")
    return FakeTrtexec(binary, argv_file)


def banner_number(version: str) -> str:
    major, minor, patch = (int(p) for p in version.split(".")[:3])
    return str(major * 10000 + minor * 100 + patch)


def identity_net(weights: str = "w1") -> NetworkSource:
    def build(network: Any, trt: Any) -> None:
        x = network.add_input("x", trt.float32, (1, 4))
        layer = network.add_identity(x)
        network.mark_output(layer.get_output(0))

    return NetworkSource(name="ident", build=build, weights_sha256=weights)


def trtexec_rig(make_rig: Callable[..., Rig], monkeypatch: Any,
                version: str = "10.16.1.11", *,
                plugin_libraries_on_disk: dict[str, list[tuple[str, str, str]]] | None = None,
                **options: Any) -> Rig:
    """A rig whose fake trtexec copies an engine the fake TensorRT can deserialize."""
    rig = make_rig(version, options=TensorrtOptions(optional_plugins=(), **options))
    rig.state.plugin_libraries.update(plugin_libraries_on_disk or {})
    monkeypatch.setenv("FAKE_TRTEXEC_TRT", banner_number(version))
    reference = rig.runtime.compile_network(identity_net(), BuildConfig(),
                                            rig.tmp / "reference.engine")
    monkeypatch.setenv("FAKE_TRTEXEC_ENGINE", str(reference.staged_path))
    rig.cuda.recorder.clear()
    return rig
