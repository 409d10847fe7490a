from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trt_provision.compose import choose_runtime_label, trust_policies, wire
from trt_provision.config import Settings, load_manifest
from trt_provision.errors import EngineGateError
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import BuildConfig, EngineCompileRequest, HostCapabilities

pytestmark = pytest.mark.tier1


def test_trust_policies(tmp_path: Path) -> None:
    base = Settings(cache_dir=tmp_path)
    assert trust_policies(base) == ("off", "off")
    keyed = dataclasses.replace(base, public_key=tmp_path / "k.pub")
    assert trust_policies(keyed) == ("verify-if-signed", "require")
    explicit = dataclasses.replace(keyed, trust="require")
    assert trust_policies(explicit) == ("require", "require")
    assert trust_policies(dataclasses.replace(keyed, trust="off")) == ("off", "off")


def test_runtime_choice_needs_trt_and_a_gpu(tmp_path: Path) -> None:
    settings = Settings(cache_dir=tmp_path)
    assert choose_runtime_label(settings, HostCapabilities()) == "onnxruntime"
    assert choose_runtime_label(settings, HostCapabilities(trt_version="10.3.0")) == "onnxruntime"
    forced = dataclasses.replace(settings, runtime="onnxruntime")
    assert choose_runtime_label(forced, HostCapabilities(sm="sm90", trt_version="10.3")) == "onnxruntime"


def test_signed_local_builds_pass_a_require_gate(tmp_path: Path, demo_dir: Path) -> None:
    pytest.importorskip("cryptography")
    from trt_provision.trust import generate_keypair, signature_path

    keys = tmp_path / "keys"
    keys.mkdir()
    public, _key = generate_keypair(keys / "fleet")
    private = keys / "fleet"
    assert (private.stat().st_mode & 0o777) == 0o600
    manifest = load_manifest(demo_dir / "demo.toml")
    settings = Settings(cache_dir=tmp_path / "cache", trust="require", public_key=Path(public),
                        signing_key=Path(private))
    wired = wire(settings, use_remote=False)
    request = EngineCompileRequest(manifest.backbones)
    first = wired.compiler.compile_engines_for_corpus(request)
    assert first.built == 3
    for result in first.results:
        assert result.entry is not None and signature_path(result.entry.engine_path).is_file()
    assert wired.compiler.compile_engines_for_corpus(request).reused == 3
    # Without a signature the same engine is refused by a require gate and rebuilt.
    victim = first.results[0].entry
    assert victim is not None
    signature_path(victim.engine_path).unlink()
    with pytest.raises(EngineGateError):
        wired.gate.validate(victim.engine_path, wired.runtime.runtime_target(manifest.backbones[0].build_config))
    again = wired.compiler.compile_engines_for_corpus(request)
    assert again.built == 1 and again.reused == 2


def test_dead_work_dirs_are_cleaned_live_ones_kept(tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    store = LocalEngineStore(tmp_path)
    (tmp_path / "m").mkdir()
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True).stdout.strip()
    dead_dir = tmp_path / "m" / f".tmp-{dead}-ort-abc"
    dead_dir.mkdir()
    (dead_dir / "model.onnx").write_bytes(b"x")
    live_dir = tmp_path / "m" / f".tmp-{os.getpid()}-ort-def"
    live_dir.mkdir()
    assert store.clean_temp_files() == [dead_dir]
    assert live_dir.is_dir() and not dead_dir.exists()


def test_tensorrt_adapters_feed_both_precision_paths(tmp_path: Path, demo_dir: Path) -> None:
    import onnx

    from trt_provision.calibration.precision import GovernedPrecisionPipeline
    from trt_provision.compose import _tensorrt_calibration
    from trt_provision.types import BuildConfig, CalibrationSpec, OptimizationProfile, PrecisionMode

    model = demo_dir / "models" / "demo_cnn.onnx"
    int8 = BuildConfig(
        precision=PrecisionMode.INT8,
        profiles=(OptimizationProfile("image", (1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)),),
        calibration=CalibrationSpec(source=str(demo_dir / "calibration" / "demo_cnn.npz"),
                                    algorithm="minmax"),
    )
    cache = tmp_path / "calib"
    assert _tensorrt_calibration(cache)(model, BuildConfig(), "10.3.0") is None
    weak = _tensorrt_calibration(cache)(model, int8, "10.3.0")
    first = next(iter(weak.batches))
    assert set(first) == {"image"} and first["image"].dtype.name == "float32"
    workdir = tmp_path / "work"
    workdir.mkdir()
    prepared = GovernedPrecisionPipeline(cache).prepare(model, int8, workdir, consumer="tensorrt")
    ops = {node.op_type for node in onnx.load(str(prepared.model_path)).graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops
    assert prepared.metadata["calibration_key"] and prepared.metadata["quantization"]


def test_tensorrt_runtime_is_wired_without_importing_tensorrt(tmp_path: Path) -> None:
    import sys

    settings = Settings(cache_dir=tmp_path, runtime="tensorrt")
    wired = wire(settings, host=HostCapabilities(sm="sm87", jetpack="6.2", trt_version="10.3.0"),
                 use_remote=False)
    assert wired.runtime.current_runtime_label() == "tensorrt"
    target = wired.runtime.runtime_target(BuildConfig())
    assert (target.runtime, target.runtime_version, target.target, target.platform) == (
        "trt", "10.3.0", "sm87", "jp6.2")
    assert "tensorrt" not in sys.modules


def test_jetson_build_workspace_sees_the_budgets_free_memory(tmp_path: Path) -> None:
    """The TensorRT strategy sizes a Jetson workspace from the same probe as the memory
    budget, so the OS reserve is kept out of it (a reserve beyond all RAM leaves nothing)."""
    settings = Settings(cache_dir=tmp_path, runtime="tensorrt", os_memory_reserve_bytes=1 << 60)
    host = HostCapabilities(sm="sm87", jetpack="6.2", trt_version="10.3.0", gpu_integrated=True)
    wired = wire(settings, host=host, use_remote=False)
    probe = wired.runtime._options.free_memory_bytes  # type: ignore[attr-defined]
    assert probe is not None and probe() == 0


def test_republishing_drops_the_old_signature(tmp_path: Path, demo_dir: Path) -> None:
    """A rebuilt engine must not keep a signature of its predecessor: with a public key
    configured that stale signature would make every later run refuse and rebuild it."""
    pytest.importorskip("cryptography")
    from trt_provision.trust import generate_keypair, signature_path

    public, _key = generate_keypair(tmp_path / "fleet")
    manifest = load_manifest(demo_dir / "demo.toml")
    request = EngineCompileRequest(manifest.backbones[:1])
    signer = Settings(cache_dir=tmp_path / "cache", public_key=Path(public),
                      signing_key=tmp_path / "fleet")
    first = wire(signer, use_remote=False).compiler.compile_engines_for_corpus(request)
    entry = first.results[0].entry
    assert entry is not None and signature_path(entry.engine_path).is_file()
    verifier = dataclasses.replace(signer, signing_key=None)
    forced = EngineCompileRequest(manifest.backbones[:1], force_rebuild=True)
    wire(verifier, use_remote=False).compiler.compile_engines_for_corpus(forced)
    assert not signature_path(entry.engine_path).exists()
    again = wire(verifier, use_remote=False).compiler.compile_engines_for_corpus(request)
    assert again.reused == 1
