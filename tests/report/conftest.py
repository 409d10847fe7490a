"""A provisioned cache for the report tests: demo_cnn as ``precision = "auto"`` (an auto
table with an int8 candidate judged on data), the two other demo models fp32, each non-auto
engine measured by ``run``. Built once per module and copied for each test."""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import pytest

from trt_provision import auto_precision
from trt_provision.calibration.precision import PREVIEW_NOTE
from trt_provision.cli.main import main
from trt_provision.integrity import sha256_sidecar_bytes

ROOT = Path(__file__).resolve().parents[2]
MODELS = ROOT / "examples" / "models"
CALIBRATION = ROOT / "examples" / "calibration"


def manifest_text(models: dict[str, str] | None = None, settings: str = "",
                  auto: bool = True) -> str:
    """The report corpus's manifest; ``models`` maps a model name to another .onnx path."""
    paths = {"demo_cnn": str(MODELS / "demo_cnn.onnx"),
             "two_inputs": str(MODELS / "two_inputs.onnx"),
             "dynamic_mlp": str(MODELS / "dynamic_mlp.onnx"), **(models or {})}
    cnn = (f'precision = "auto"\ncalibration = {{ data = "{CALIBRATION / "demo_cnn.npz"}" }}'
           if auto else 'precision = "fp32"')
    text = f"[settings]\n{settings}\n\n[defaults]\nprecision = \"fp32\"\n"
    text += f"""
[[models]]
name = "demo_cnn"
path = "{paths['demo_cnn']}"
{cnn}
profiles = [{{ input = "image", min = [1, 3, 32, 32], opt = [4, 3, 32, 32], max = [8, 3, 32, 32] }}]

[[models]]
name = "two_inputs"
path = "{paths['two_inputs']}"
profiles = [{{ input = "token_ids", min = [1, 16], opt = [8, 16], max = [32, 16] }},
            {{ input = "mask", min = [1, 16], opt = [8, 16], max = [32, 16] }}]

[[models]]
name = "dynamic_mlp"
path = "{paths['dynamic_mlp']}"
profiles = [{{ input = "features", min = [1, 64], opt = [16, 64], max = [64, 64] }}]
"""
    for name, path in (models or {}).items():
        if name not in ("demo_cnn", "two_inputs", "dynamic_mlp"):
            text += f'\n[[models]]\nname = "{name}"\npath = "{path}"\n'
    return text


def _int8_fastest(runtime: object, entries: Sequence[Any], feed: object) -> list[float | None]:
    ms = {"fp32": 2.0, "fp16": 1.8, "int8": 1.0, "mixed": 1.9}
    return [ms[e.identity.precision.value] * 1e-3 for e in entries]


@pytest.fixture(scope="module")
def _built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    base = tmp_path_factory.mktemp("report-corpus")
    manifest = base / "corpus.toml"
    manifest.write_text(manifest_text())
    cache = base / "cache"
    with pytest.MonkeyPatch.context() as mp:  # int8 the fastest: auto judges it
        mp.setattr(auto_precision, "time_candidates", _int8_fastest)
        assert main(["provision", str(manifest), "--cache-dir", str(cache), "-q"]) == 0
    for engine in sorted(cache.glob("*/*.engine")):
        if ".auto." not in engine.name:
            assert main(["run", str(engine), "--cache-dir", str(cache), "--iterations", "5",
                         "--warmup", "1", "-q"]) == 0
    return manifest, cache


@pytest.fixture
def corpus(_built: tuple[Path, Path], tmp_path: Path) -> tuple[Path, Path]:
    """(manifest, a private copy of the provisioned cache)."""
    manifest, cache = _built
    copy = tmp_path / "cache"
    shutil.copytree(cache, copy, symlinks=True)
    return manifest, copy


@pytest.fixture
def report_json(capsys: pytest.CaptureFixture[str]) -> Callable[..., dict[str, object]]:
    def run(manifest: Path, cache: Path, *extra: str) -> dict[str, object]:
        capsys.readouterr()
        assert main(["report", str(manifest), "--cache-dir", str(cache), "--json",
                     *extra]) == 0
        doc: dict[str, object] = json.loads(capsys.readouterr().out)
        return doc

    return run


def engine_of(cache: Path, model: str, precision: str) -> Path:
    """The model's engine of that precision (not an auto trial engine, timed unjudged)."""
    found = sorted(p for p in cache.glob(f"{model}/{model}.*.{precision}.*.engine")
                   if PREVIEW_NOTE not in p.with_name(p.name + ".json").read_text())
    assert len(found) == 1, found
    return found[0]


def rewrite_metadata(engine: Path, change: Callable[[dict[str, object]], None]) -> None:
    """Edit an engine's metadata sidecar in place (the engine and its .sha256 stay valid)."""
    meta_path = engine.with_name(engine.name + ".json")
    meta = json.loads(meta_path.read_text())
    change(meta)
    meta_path.write_text(json.dumps(meta, indent=2))


def clone_for_target(engine: Path, *, target: str, platform: str, runtime: str,
                     version: str, extra_meta: dict[str, object] | None = None) -> Path:
    """The same bytes filed as an engine of another target, with consistent sidecars: what a
    cache shared with (or pulled from) other devices holds."""
    parts = engine.name.split(".")
    model, digest, precision = parts[0], parts[1], parts[2]
    name = ".".join([model, digest, precision, target, platform.replace(".", "_"),
                     f"{runtime}-{version.replace('.', '_')}", parts[-2], "engine"])
    clone = engine.with_name(name)
    shutil.copyfile(engine, clone)
    sha_line = engine.with_name(engine.name + ".sha256").read_text().split()[0]
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    meta["engine"] = name
    meta["identity"].update(target=target, platform=platform, runtime=runtime,
                            runtime_version=version)
    meta.update(extra_meta or {})
    meta_bytes = json.dumps(meta, indent=2).encode()
    clone.with_name(name + ".json").write_bytes(meta_bytes)
    clone.with_name(name + ".sha256").write_bytes(sha256_sidecar_bytes(sha_line, name, meta_bytes))
    return clone
