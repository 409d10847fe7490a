"""``trt-provision export triton``: each config.pbtxt parsed by Triton's own
``model_config.proto`` (tritonclient, dev extra), engines copied verified, one plan per
compute capability and never a fallback plan."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from trt_provision.cli.main import main
from trt_provision.integrity import sha256_sidecar_bytes

pytestmark = pytest.mark.tier1

model_config_pb2 = pytest.importorskip(
    "tritonclient.grpc.model_config_pb2",
    reason="tritonclient is not installed (pip install -e '.[dev]')")
text_format = pytest.importorskip("google.protobuf.text_format")

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.toml"


def _parse(path: Path) -> Any:
    config = model_config_pb2.ModelConfig()
    text_format.Parse(path.read_text(), config)
    return config


def _dtype(name: str) -> int:
    return int(model_config_pb2.DataType.Value(name))


@pytest.fixture(scope="module")
def _cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("export") / "cache"
    assert main(["provision", str(DEMO), "--cache-dir", str(cache), "-q"]) == 0
    return cache


@pytest.fixture
def cache(_cache: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "cache"
    shutil.copytree(_cache, copy)
    return copy


def _engine(cache: Path, model: str) -> Path:
    (found,) = sorted(cache.glob(f"{model}/{model}.*.engine"))
    return found


def _as_target(engine: Path, target: str, version: str = "10.3.0",
               platform: str = "jp6.2") -> Path:
    """The engine's bytes filed, with consistent sidecars, as a TensorRT engine of
    ``target`` (what a pull from a fleet's builders leaves in a cache)."""
    parts = engine.name.split(".")
    name = ".".join([*parts[:3], target, platform.replace(".", "_"),
                     f"trt-{version.replace('.', '_')}", parts[-2], "engine"])
    clone = engine.with_name(name)
    shutil.copyfile(engine, clone)
    digest = hashlib.sha256(clone.read_bytes()).hexdigest()
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    meta["engine"] = name
    meta.pop("io", None)  # TensorRT engines' metadata does not carry the ONNX I/O
    meta["identity"].update(target=target, platform=platform, runtime="trt",
                            runtime_version=version)
    meta_bytes = json.dumps(meta).encode()
    clone.with_name(name + ".json").write_bytes(meta_bytes)
    clone.with_name(name + ".sha256").write_bytes(sha256_sidecar_bytes(digest, name, meta_bytes))
    return clone


def _export(out: Path, cache: Path, *extra: str, manifest: Path = DEMO) -> int:
    return main(["export", "triton", str(out), str(manifest), "--cache-dir", str(cache), "-q",
                 *extra])


def test_onnxruntime_engines_export_as_a_valid_repository(cache: Path, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    assert _export(repo, cache) == 0
    assert sorted(p.name for p in repo.iterdir()) == ["demo_cnn", "dynamic_mlp", "two_inputs"]
    cnn = _parse(repo / "demo_cnn" / "config.pbtxt")
    assert (cnn.name, cnn.platform, cnn.max_batch_size) == ("demo_cnn", "onnxruntime_onnx", 8)
    assert [(t.name, t.data_type, list(t.dims)) for t in cnn.input] == [
        ("image", _dtype("TYPE_FP32"), [3, 32, 32])]
    assert [(t.name, list(t.dims)) for t in cnn.output] == [("logits", [10]), ("routing", [4])]
    two = _parse(repo / "two_inputs" / "config.pbtxt")
    assert [t.data_type for t in two.input] == [_dtype("TYPE_INT64"), _dtype("TYPE_BOOL")]
    assert two.max_batch_size == 32
    for model in ("demo_cnn", "two_inputs", "dynamic_mlp"):
        assert (repo / model / "1" / "model.onnx").read_bytes() == \
            _engine(cache, model).read_bytes()
    assert not [p for p in repo.rglob(".tmp-*")]


def test_tensorrt_plans_are_mapped_per_compute_capability(cache: Path, tmp_path: Path) -> None:
    engine = _engine(cache, "demo_cnn")
    _as_target(engine, "sm87")
    _as_target(engine, "sm90", platform="dgpu")
    _as_target(engine, "sm80+", platform="dgpu")
    _as_target(engine, "sm87-dla0")
    repo = tmp_path / "repo"
    assert _export(repo, cache, "--json") == 0
    config = _parse(repo / "demo_cnn" / "config.pbtxt")
    assert config.platform == "tensorrt_plan" and config.max_batch_size == 8
    mapping = dict(config.cc_model_filenames)
    assert mapping["8.7"] == "model.sm87.plan" and mapping["9.0"] == "model.sm90.plan"
    assert mapping["8.0"] == mapping["8.6"] == mapping["12.0"] == "model.sm80.plan"
    assert "7.5" not in mapping and "7.2" not in mapping  # older GPUs have no plan here
    version = repo / "demo_cnn" / "1"
    assert sorted(p.name for p in version.iterdir()) == [
        "model.sm80.plan", "model.sm87.plan", "model.sm90.plan"]
    assert config.default_model_filename == ""  # so the default model.plan, never written
    # I/O comes from the ONNX model when the engine's metadata has none.
    assert [t.name for t in config.input] == ["image"] and list(config.input[0].dims) == [
        3, 32, 32]


def test_several_tensorrt_versions_need_a_choice(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = _engine(cache, "demo_cnn")
    _as_target(engine, "sm87")
    _as_target(engine, "sm87", version="10.16.0")
    capsys.readouterr()
    assert _export(tmp_path / "repo", cache) == 1
    err = capsys.readouterr().err
    assert "more than one TensorRT version" in err and "--runtime-version" in err
    assert not (tmp_path / "repo" / "demo_cnn").exists()
    assert _export(tmp_path / "repo", cache, "--runtime-version", "10.16.0") == 0
    assert dict(_parse(tmp_path / "repo" / "demo_cnn" / "config.pbtxt").cc_model_filenames) \
        == {"8.7": "model.sm87.plan"}


def test_a_damaged_engine_is_not_exported(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    engine = _engine(cache, "two_inputs")
    data = bytearray(engine.read_bytes())
    data[10] ^= 0xFF
    engine.write_bytes(bytes(data))
    repo = tmp_path / "repo"
    capsys.readouterr()
    assert _export(repo, cache) == 1
    assert "not exported" in capsys.readouterr().err
    assert not (repo / "two_inputs").exists()
    assert not [p for p in repo.rglob(".tmp-*")]


def test_an_existing_model_directory_needs_force(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    repo = tmp_path / "repo"
    assert _export(repo, cache) == 0
    (repo / "demo_cnn" / "1" / "stale.txt").write_text("old")
    capsys.readouterr()
    assert _export(repo, cache) == 1
    assert "--force" in capsys.readouterr().err
    assert _export(repo, cache, "--force") == 0
    assert not (repo / "demo_cnn" / "1" / "stale.txt").exists()


def test_odd_tensor_names_round_trip_through_the_parser(cache: Path, tmp_path: Path) -> None:
    engine = _engine(cache, "dynamic_mlp")
    meta_path = engine.with_name(engine.name + ".json")
    meta = json.loads(meta_path.read_text())
    odd = 'in"put\\ \'x\' :0\n\u00e9\u4e2d } ]'
    meta["io"]["inputs"][0]["name"] = odd
    meta_bytes = json.dumps(meta).encode()
    meta_path.write_bytes(meta_bytes)  # and a .sha256 that covers it, as a build writes
    engine.with_name(engine.name + ".sha256").write_bytes(
        sha256_sidecar_bytes(hashlib.sha256(engine.read_bytes()).hexdigest(), engine.name,
                             meta_bytes))
    manifest = tmp_path / "m.toml"
    manifest.write_text(DEMO.read_text().replace('path = "models/',
                                                 f'path = "{DEMO.parent}/models/'))
    repo = tmp_path / "repo"
    assert _export(repo, cache, manifest=manifest) == 0
    config = _parse(repo / "dynamic_mlp" / "config.pbtxt")
    assert config.input[0].name == odd


def test_without_a_batch_profile_from_one_the_full_shape_is_given(
    cache: Path, tmp_path: Path
) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        DEMO.read_text().replace('path = "models/', f'path = "{DEMO.parent}/models/')
        .replace("min = [1, 64]", "min = [2, 64]"))
    assert main(["provision", str(manifest), "--cache-dir", str(cache), "-q"]) == 0
    repo = tmp_path / "repo"
    assert _export(repo, cache, manifest=manifest) == 0
    config = _parse(repo / "dynamic_mlp" / "config.pbtxt")
    assert config.max_batch_size == 0
    assert list(config.input[0].dims) == [-1, 64] and list(config.output[0].dims) == [-1, 10]


def test_of_two_plans_for_one_gpu_the_newest_is_exported(
    cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import os

    engine = _engine(cache, "demo_cnn")
    older = _as_target(engine, "sm87")
    # The same target built with other options: another digest, a later build.
    digest = older.name.split(".")[-2]
    newer = older.with_name(older.name.replace(digest, "0" * 12))
    shutil.copyfile(older, newer)
    meta = json.loads(older.with_name(older.name + ".json").read_text())
    meta["engine"] = newer.name
    meta["identity"]["options_digest"] = "0" * 12
    meta_bytes = json.dumps(meta).encode()
    newer.with_name(newer.name + ".json").write_bytes(meta_bytes)
    engine_digest = hashlib.sha256(newer.read_bytes()).hexdigest()
    newer.with_name(newer.name + ".sha256").write_bytes(
        sha256_sidecar_bytes(engine_digest, newer.name, meta_bytes))
    os.utime(older, (1, 1))
    capsys.readouterr()
    assert _export(tmp_path / "repo", cache, "--json") == 0
    (model,) = [m for m in json.loads(capsys.readouterr().out)["models"]
                if m["name"] == "demo_cnn"]
    assert model["files"] == ["model.sm87.plan"]
    assert any(older.name in why for why in model["skipped"])
