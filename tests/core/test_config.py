from __future__ import annotations

from pathlib import Path

import pytest

from trt_provision.config import Settings, default_cache_dir, load_manifest, resolve_cache_dir
from trt_provision.errors import ManifestError
from trt_provision.types import PrecisionMode

pytestmark = pytest.mark.tier0


def _write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "m.toml"
    path.write_text(text)
    return path


def test_demo_manifest_loads(demo_dir: Path) -> None:
    manifest = load_manifest(demo_dir / "demo.toml")
    names = [b.name for b in manifest.backbones]
    assert names == ["demo_cnn", "two_inputs", "dynamic_mlp"]
    cnn = manifest.backbones[0]
    assert cnn.model_path.is_file()
    assert cnn.build_config.profiles[0].max_shape == (8, 3, 32, 32)


def test_defaults_merge_and_calibration_paths_resolve(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[defaults]
precision = "fp16"
workspace_mib = 256
[[models]]
name = "a"
path = "a.onnx"
[[models]]
name = "b"
path = "sub/b.onnx"
precision = "int8"
[models.calibration]
data = "calib/b.npz"
dataset_version = "v3"
[[models]]
name = "c"
path = "c.onnx"
precision = "int8"
calibration = { data = "loaders/load.py:batches" }
""",
    )
    a, b, c = load_manifest(path).backbones
    assert a.build_config.precision is PrecisionMode.FP16 and a.build_config.workspace_mib == 256
    assert b.build_config.precision is PrecisionMode.INT8
    assert b.model_path == (tmp_path / "sub" / "b.onnx").resolve()
    assert b.build_config.calibration is not None
    assert b.build_config.calibration.source == str((tmp_path / "calib" / "b.npz").resolve())
    assert b.build_config.calibration.dataset_version == "v3"
    assert c.build_config.calibration is not None
    assert (
        c.build_config.calibration.source
        == str((tmp_path / "loaders" / "load.py").resolve()) + ":batches"
    )


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("[[models]]\nname='a'\npath='a.onnx'\nbogus=1\n", "models[0].bogus"),
        ("[surprise]\n", "surprise"),
        ("[[models]]\nname='a'\npath=3\n", "models[0].path"),
        ("[[models]]\nname=7\npath='a.onnx'\n", "models[0].name"),
        (
            "[[models]]\nname='a'\npath='a.onnx'\n[[models]]\nname='a'\npath='b.onnx'\n",
            "models[1].name",
        ),
        ("[[models]]\nname='../etc'\npath='a.onnx'\n", "models[0].name"),
        ("[[models]]\nname='a/b'\npath='a.onnx'\n", "models[0].name"),
        ("[settings]\nruntime='cuda-magic'\n", "settings.runtime"),
        ("[settings]\nmemory_budget_mib=0\n", "settings.memory_budget_mib"),
        ("[settings]\nmemory_budget_mib=-5\n", "settings.memory_budget_mib"),
        ("[defaults]\nprecision='int4'\n[[models]]\nname='a'\npath='a.onnx'\n", "models[0]"),
        ("[defaults]\nworkspace_mib='big'\n[[models]]\nname='a'\npath='a.onnx'\n", "models[0]"),
        ("models = 3\n", "models"),
    ],
)
def test_bad_manifests_name_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(ManifestError) as info:
        load_manifest(path)
    assert info.value.context["file"] == str(path)
    assert info.value.context["key"] == key


def test_profile_min_greater_than_max_is_refused(tmp_path: Path) -> None:
    path = _write(
        tmp_path,
        """
[[models]]
name = "a"
path = "a.onnx"
[[models.profiles]]
input = "x"
min = [8, 3]
opt = [4, 3]
max = [2, 3]
""",
    )
    with pytest.raises(ManifestError, match="min <= opt <= max"):
        load_manifest(path)


def test_invalid_toml_and_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ManifestError, match="not found"):
        load_manifest(tmp_path / "none.toml")
    with pytest.raises(ManifestError, match="not valid TOML"):
        load_manifest(_write(tmp_path, "[[models]\nname="))


def test_cache_dir_precedence(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert default_cache_dir() == tmp_path / "xdg-cache" / "trt-provision" / "engines"
    assert resolve_cache_dir(tmp_path / "configured") == tmp_path / "configured"
    monkeypatch.setenv("TENSORRT_CACHE_DIR", str(tmp_path / "alias"))
    assert resolve_cache_dir(tmp_path / "configured") == tmp_path / "alias"
    monkeypatch.setenv("TRT_PROVISION_CACHE_DIR", str(tmp_path / "primary"))
    assert resolve_cache_dir(tmp_path / "configured") == tmp_path / "primary"
    manifest = load_manifest(_write(tmp_path, "[settings]\ncache_dir='x'\n[[models]]\nname='m'\npath='m.onnx'\n"))
    assert manifest.settings.cache_dir == tmp_path / "primary"


def test_build_config_json_round_trip(demo_dir: Path) -> None:
    from trt_provision.config_json import build_config_from_json, build_config_to_json

    for manifest in ("demo.toml", "precision.toml"):
        for backbone in load_manifest(demo_dir / manifest).backbones:
            config = backbone.build_config
            assert build_config_from_json(build_config_to_json(config)) == config


def test_build_config_json_refuses_unknown_keys() -> None:
    from trt_provision.config_json import build_config_from_json

    with pytest.raises(ManifestError, match="unknown build config keys"):
        build_config_from_json({"precision": "fp16", "turbo": True}, source="build.json")
    with pytest.raises(ManifestError):
        build_config_from_json({"precision": "fp8"}, source="build.json")


def test_settings_repr_hides_the_remote_table() -> None:
    settings = Settings(remote={"bucket": "b", "secret_key": "S3CR3T"})
    assert "S3CR3T" not in repr(settings) and "S3CR3T" not in str(settings)
