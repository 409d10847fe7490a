"""Helpers shared by the reliability tests (fixtures live in conftest.py)."""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

from trt_provision.compose import Wired, wire
from trt_provision.config import Settings, load_manifest
from trt_provision.types import EngineCompileRequest, HostCapabilities

ROOT = Path(__file__).resolve().parents[2]
DEMO_MANIFEST = ROOT / "examples" / "demo.toml"
DEMO_MODELS = ("demo_cnn", "two_inputs", "dynamic_mlp")


def wire_ort(cache: Path, host: HostCapabilities) -> Wired:
    return wire(Settings(cache_dir=cache, runtime="onnxruntime"), host=host, use_remote=False)


def demo_request(**kw: bool) -> EngineCompileRequest:
    return EngineCompileRequest(load_manifest(DEMO_MANIFEST).backbones, **kw)


def engine_of(cache: Path, model: str) -> Path:
    (path,) = (cache / model).glob("*.engine")
    return path


def sidecars(engine: Path) -> tuple[Path, Path]:
    return engine.with_name(engine.name + ".sha256"), engine.with_name(engine.name + ".json")


def sha256_hex(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def snapshot(directory: Path) -> dict[str, bytes]:
    """Every regular file under ``directory`` (relative name → bytes)."""
    return {
        str(p.relative_to(directory)): p.read_bytes()
        for p in sorted(directory.rglob("*"))
        if p.is_file() and not p.is_symlink()
    }


def load_script(name: str) -> Any:
    """Import ``scripts/<name>.py`` (the rerunnable drivers) as a module."""
    import importlib.util
    import sys

    scripts = str(ROOT / "scripts")
    if scripts not in sys.path:
        sys.path.insert(0, scripts)
    spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up here
    spec.loader.exec_module(module)
    return module
