from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest

from trt_provision.compose import choose_runtime_label, trust_policies, wire
from trt_provision.config import Settings, load_manifest
from trt_provision.errors import EngineGateError
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import EngineCompileRequest, HostCapabilities

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
