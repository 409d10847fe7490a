"""trtexec's spellings on `compile`: parsed in one module, mapped onto the same options as
ours, so either spelling builds the same engine."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest

from trt_provision.cli.main import main
from trt_provision.cli.trtexec_flags import (
    parse_mem_pool_size,
    parse_shapes,
    profiles_from_shapes,
)
from trt_provision.errors import UsageError


@pytest.mark.tier0
def test_shapes_in_trtexec_syntax() -> None:
    assert parse_shapes("image:1x3x224x224,mask:1x16", "--minShapes") == {
        "image": (1, 3, 224, 224), "mask": (1, 16)}
    # trtexec quotes names holding ':' or ','
    assert parse_shapes("'input:0':4x3,'a,b':2", "--optShapes") == {"input:0": (4, 3),
                                                                    "a,b": (2,)}
    for bad in ("image", "image:", "image:1x", ":1x3", "image:1x-3", "'x:1", "a:1,a:2",
                "image:0x3"):
        with pytest.raises(UsageError, match=r"^--minShapes: "):
            parse_shapes(bad, "--minShapes")


@pytest.mark.tier0
def test_opt_alone_or_shapes_alone_is_a_static_profile() -> None:
    static = [{"input": "x", "min": [4, 3], "opt": [4, 3], "max": [4, 3]}]
    assert profiles_from_shapes(None, "x:4x3", None) == static
    assert profiles_from_shapes(None, None, None, "x:4x3") == static
    assert profiles_from_shapes(None, None, None) is None
    assert profiles_from_shapes("x:1x3", "x:4x3", "x:8x3") == [
        {"input": "x", "min": [1, 3], "opt": [4, 3], "max": [8, 3]}]


@pytest.mark.tier0
@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("x:1x3", None, "x:8x3"), "--opt-shapes (--optShapes): missing"),
        (("x:1x3", "x:4x3", None), "--max-shapes (--maxShapes): missing"),
        (("x:1x3", "x:4x3", "y:8x3"), "name different inputs"),
        ((None, "x:4x3", None, "x:4x3"), "--shapes sets a static profile"),
    ],
)
def test_incomplete_or_conflicting_shape_flags(
    args: tuple[str | None, ...], message: str
) -> None:
    with pytest.raises(UsageError, match=re.escape(message)):
        profiles_from_shapes(*args)


@pytest.mark.tier0
def test_mem_pool_size_units() -> None:
    assert parse_mem_pool_size("workspace:1024") == 1024  # no suffix: MiB
    assert parse_mem_pool_size("workspace:1024M") == 1024
    assert parse_mem_pool_size("workspace:2G") == 2048
    assert parse_mem_pool_size("workspace:1536K") == 2  # rounded up to whole MiB
    assert parse_mem_pool_size("workspace:0.5G") == 512
    assert parse_mem_pool_size("workspace:4096B") == 1
    for bad, message in (
        ("workspace", "bad pool size"), ("workspace:lots", "bad size"),
        ("workspace:0", "out of range"), ("dlaSRAM:1M", "not supported"),
        ("turbo:1M", "unknown pool"), ("workspace:1T", "bad size"),
    ):
        with pytest.raises(UsageError, match=message):
            parse_mem_pool_size(bad)


@pytest.mark.tier1
def test_both_spellings_build_the_same_engine(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    ours = ["compile", str(model), "--min-shapes", "image:1x3x32x32",
            "--opt-shapes", "image:4x3x32x32", "--max-shapes", "image:8x3x32x32",
            "--workspace", "256", "--builder-optimization-level", "2",
            "--timing-cache", str(tmp_path / "t.cache"), "--json", "--cache-dir", str(cache_dir)]
    assert main(ours) == 0, capsys.readouterr().err
    first = json.loads(capsys.readouterr().out)
    assert first["outcome"] == "built"
    saved = tmp_path / "saved" / "cnn.plan"
    saved.parent.mkdir()
    theirs = ["compile", f"--onnx={model}", "--minShapes=image:1x3x32x32",
              "--optShapes=image:4x3x32x32", "--maxShapes=image:8x3x32x32",
              "--memPoolSize=workspace:256M", "--builderOptimizationLevel=2",
              f"--timingCacheFile={tmp_path / 't.cache'}", f"--saveEngine={saved}",
              "--verbose", "--json", "--cache-dir", str(cache_dir)]
    assert main(theirs) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    second = json.loads(captured.out)
    assert second["outcome"] == "reused" and second["filename"] == first["filename"]
    assert "INFO" in captured.err  # --verbose
    assert saved.read_bytes() == Path(first["engine"]).read_bytes()
    assert sorted(p.name for p in saved.parent.iterdir()) == [
        "cnn.plan", "cnn.plan.json", "cnn.plan.sha256"]
    subprocess.run(["sha256sum", "-c", "--quiet", "cnn.plan.sha256"], cwd=saved.parent,
                   check=True)
    meta = json.loads(saved.with_name("cnn.plan.json").read_text())
    assert meta["build_config"]["workspace_mib"] == 256
    assert meta["build_config"]["builder_optimization_level"] == 2


@pytest.mark.tier1
def test_static_profile_from_opt_shapes_and_build_flags_reach_the_config(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path
) -> None:
    model = demo_dir / "models" / "dynamic_mlp.onnx"
    argv = ["compile", "--onnx", str(model), "--optShapes=features:4x64", "--stronglyTyped",
            "--noTF32", "--json", "--cache-dir", str(cache_dir)]
    assert main(argv) == 0, capsys.readouterr().err
    engine = Path(json.loads(capsys.readouterr().out)["engine"])
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert meta["build_config"]["profiles"] == [
        {"input": "features", "min": [4, 64], "opt": [4, 64], "max": [4, 64]}]
    assert meta["build_config"]["strongly_typed"] is True
    assert meta["build_config"]["tf32"] is False


@pytest.mark.tier1
@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--useDLACore=0"], "dla_core needs precision"),
        (["--fp16", "--allowGPUFallback"], "--allowGPUFallback applies only with --useDLACore"),
        (["--fp16", "--useDLACore=16"], "--useDLACore must be a DLA core number 0..15"),
        (["--builderOptimizationLevel=7"], "--builderOptimizationLevel must be 0..5"),
        (["--workspace=64", "--memPoolSize=workspace:64M"], "both set the workspace"),
        (["--saveEngine=/nonexistent-dir/x.plan"], "--saveEngine: directory"),
    ],
)
def test_bad_trtexec_flags_are_one_line_errors(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path,
    extra: list[str], message: str,
) -> None:
    argv = ["compile", str(demo_dir / "models" / "dynamic_mlp.onnx"),
            "--optShapes=features:4x64", *extra, "--cache-dir", str(cache_dir)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0], err
    assert not list(cache_dir.rglob("*.engine"))


@pytest.mark.tier1
def test_calib_cache_is_checked_and_refused_plainly(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    from trt_provision.calibration.ranges import TensorRanges, write_trt_calibration_cache

    cache = tmp_path / "calib.cache"
    cache.write_bytes(write_trt_calibration_cache(
        TensorRanges("minmax", {"image": (-1.0, 1.0)}, {}), "10.3.0"))
    argv = ["compile", str(demo_dir / "models" / "demo_cnn.onnx"), "--int8",
            "--optShapes=image:4x3x32x32", f"--calib={cache}", "--cache-dir", str(cache_dir)]
    assert main(argv) == 1
    assert "not supported yet" in capsys.readouterr().err
    cache.write_bytes(b"\x00\x01 not a cache")
    assert main(argv) == 1
    assert "is not a TensorRT calibration cache" in capsys.readouterr().err
