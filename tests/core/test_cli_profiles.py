"""Optimization profiles are held to TensorRT's rules for every strategy (so a manifest
that builds on a CPU laptop builds on the device), and ONNX Runtime inference refuses a
shape outside the engine's profile as TensorRT does."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from trt_provision.cli.main import main
from trt_provision.errors import InferenceError
from trt_provision.types import OptimizationProfile, profile_problems, shape_outside_profile

pytestmark = pytest.mark.tier1

IMAGE = {"image": (None, 3, 32, 32)}


def _p(lo: tuple[int, ...], mid: tuple[int, ...], hi: tuple[int, ...],
       name: str = "image") -> OptimizationProfile:
    return OptimizationProfile(name, lo, mid, hi)


@pytest.mark.tier0
@pytest.mark.parametrize(
    ("profiles", "inputs", "needle"),
    [
        ((_p((1, 3, 32), (4, 3, 32), (8, 3, 32)),), IMAGE, "rank 3, the input has rank 4"),
        ((_p((1, 3, 32, 32), (4, 3, 32, 32), (8, 4, 32, 32)),), IMAGE,
         "max dim 1 is 4, but that dimension is static (3)"),
        ((_p((1, 1, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)),), IMAGE,
         "min dim 1 is 1, but that dimension is static (3)"),
        ((), IMAGE, "input 'image' [?, 3, 32, 32] has dynamic dimensions and needs"),
        ((_p((1, 3), (1, 3), (1, 3), "other"),), {"image": (1, 3)},
         "profile names input 'other', which the model does not have (inputs: image)"),
        ((_p((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)),
          _p((1, 16), (1, 16), (1, 16), "mask")),
         {**IMAGE, "mask": (None, 16), "ids": (None, 16)}, "input 'ids' [?, 16]"),
    ],
)
def test_profile_problems_follow_tensorrt(
    profiles: tuple[OptimizationProfile, ...],
    inputs: dict[str, tuple[int | None, ...]],
    needle: str,
) -> None:
    problems = profile_problems(profiles, inputs)
    assert any(needle in p for p in problems), problems


@pytest.mark.tier0
def test_valid_profiles_and_static_models_pass() -> None:
    ok = (_p((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32)),)
    assert profile_problems(ok, IMAGE) == []
    assert profile_problems((), {"x": (1, 3)}) == []  # static input: no profile needed
    static = (_p((1, 3), (1, 3), (1, 3), "x"),)
    assert profile_problems(static, {"x": (1, 3)}) == []


@pytest.mark.tier0
def test_shape_outside_profile() -> None:
    p = _p((1, 3, 32, 32), (4, 3, 32, 32), (8, 3, 32, 32))
    assert shape_outside_profile(p, (8, 3, 32, 32)) is None
    assert shape_outside_profile(p, (9, 3, 32, 32)) == "dim 0 is 9, the profile allows 1..8"
    assert shape_outside_profile(p, (1, 3, 32)) == "rank 3, the profile's is 4"


@pytest.mark.parametrize(
    ("profile", "needle"),
    [
        ("min = [1, 3, 32]\nopt = [4, 3, 32]\nmax = [8, 3, 32]", "rank 3"),
        ("min = [1, 3, 32, 32]\nopt = [4, 3, 32, 32]\nmax = [8, 4, 32, 32]",
         "dimension is static"),
        ("min = [1, 3, 16, 16]\nopt = [4, 3, 32, 32]\nmax = [8, 3, 64, 64]",
         "dimension is static"),
    ],
)
def test_provision_refuses_what_tensorrt_would_refuse(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, demo_dir: Path, cache_dir: Path,
    profile: str, needle: str,
) -> None:
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f'[[models]]\nname = "demo_cnn"\npath = "{demo_dir / "models" / "demo_cnn.onnx"}"\n'
        f'[[models.profiles]]\ninput = "image"\n{profile}\n'
    )
    argv = ["provision", str(manifest), "--json", "--runtime", "onnxruntime",
            "--cache-dir", str(cache_dir)]
    assert main(argv) == 1
    (row,) = json.loads(capsys.readouterr().out)["results"]
    assert row["outcome"] == "failed" and row["error_type"] == "EngineBuildError"
    assert needle in row["error"]
    assert not list(cache_dir.rglob("*.engine"))
    # A dry run says the same before anything is built.
    assert main([*argv, "--dry-run"]) == 1
    assert needle in json.loads(capsys.readouterr().out)["results"][0]["error"]


def test_onnxruntime_inference_outside_the_profile_is_refused(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path
) -> None:
    from trt_provision.compose import wire
    from trt_provision.config import Settings

    assert main(["provision", str(demo_dir / "demo.toml"), "--json", "--runtime", "onnxruntime",
                 "--cache-dir", str(cache_dir)]) == 0
    results = {r["name"]: r for r in json.loads(capsys.readouterr().out)["results"]}
    wired = wire(Settings(cache_dir=cache_dir, runtime="onnxruntime"), use_remote=False)
    entry = wired.gate.validate(Path(results["demo_cnn"]["engine"]),
                                wired.runtime.runtime_target(_config()))
    handle = wired.runtime.deserialize_engine(entry)
    try:
        ok = wired.runtime.infer(handle, {"image": np.zeros((8, 3, 32, 32), np.float32)})
        assert next(iter(ok.values())).shape[0] == 8  # max batch: fine
        with pytest.raises(InferenceError, match="outside the engine's optimization profile") as info:
            wired.runtime.infer(handle, {"image": np.zeros((9, 3, 32, 32), np.float32)})
        assert info.value.context["max"] == [8, 3, 32, 32]
    finally:
        wired.runtime.release_engine(handle)


def _config() -> object:
    from trt_provision.types import BuildConfig

    return BuildConfig()
