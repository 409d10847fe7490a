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


def _write_cache(model: Path, path: Path, base: float) -> dict[str, float]:
    """A TensorRT calibration cache naming every tensor of ``model``, distinct scales."""
    import onnx

    from trt_provision.calibration.ranges import TensorRanges, write_trt_calibration_cache

    graph = onnx.load(model).graph
    names = [i.name for i in graph.input] + [o for n in graph.node for o in n.output]
    scales = {n: base * (k + 1) for k, n in enumerate(names)}
    path.write_bytes(write_trt_calibration_cache(
        TensorRanges("minmax", {n: (-s * 127, s * 127) for n, s in scales.items()}, {}),
        "10.3.0"))
    return scales


def _activation_quantizers(engine: Path) -> dict[str, tuple[float, int]]:
    """(scale, zero point) of each QuantizeLinear of the ONNX Runtime engine, by input."""
    import onnx
    from onnx import numpy_helper

    model = onnx.load(engine)
    init = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
    out = {}
    for node in model.graph.node:
        if node.op_type == "QuantizeLinear" and len(node.input) == 3:
            assert init[node.input[2]].dtype.name == "uint8"
            out[node.input[0]] = (float(init[node.input[1]]), int(init[node.input[2]]))
    return out


@pytest.mark.tier1
def test_calib_cache_gives_the_int8_ranges_unjudged(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    scales = _write_cache(model, tmp_path / "a.cache", 0.01)
    argv = ["compile", str(model), "--optShapes=image:4x3x32x32", "--json",
            "--cache-dir", str(cache_dir)]
    assert main([*argv, f"--calib={tmp_path / 'a.cache'}"]) == 0, capsys.readouterr().err
    captured = capsys.readouterr()
    first = json.loads(captured.out)
    assert first["outcome"] == "built"
    assert "ranges from a user calibration cache; not judged" in captured.err
    engine = Path(first["engine"])
    meta = json.loads(engine.with_name(engine.name + ".json").read_text())
    assert meta["precision"] == "int8"
    assert meta["accuracy"]["verdict"] == "not judged"
    assert meta["calibration"]["note"] == "ranges from a user calibration cache; not judged"
    assert meta["quantization"]["quantized_nodes"] > 0
    found = _activation_quantizers(engine)
    assert found and set(found) <= set(scales)
    for name, (scale, zero) in found.items():
        # The cache's symmetric range +-scale*127 on ONNX Runtime's uint8 activation grid:
        # 255 steps over the whole range, zero in the middle.
        assert scale == pytest.approx(2 * scales[name] * 127 / 255, rel=1e-6), name
        assert zero == 128, name
    # the same cache reuses; another cache file is another engine
    assert main([*argv, f"--calib={tmp_path / 'a.cache'}"]) == 0
    assert json.loads(capsys.readouterr().out)["outcome"] == "reused"
    _write_cache(model, tmp_path / "b.cache", 0.02)
    assert main([*argv, f"--calib={tmp_path / 'b.cache'}"]) == 0, capsys.readouterr().err
    other = json.loads(capsys.readouterr().out)
    assert other["outcome"] == "built" and other["filename"] != first["filename"]
    assert Path(first["engine"]).read_bytes() != Path(other["engine"]).read_bytes()


@pytest.mark.tier1
@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"TRT-100300-EntropyCalibration2\nimage: 3c23d70a\nc1 3c23d70a\n", "at line 3"),
        (b"TRT-100300-EntropyCalibration2\nimage: 7fc00000\n", "at line 2"),
        (b"\xff\xfe not a cache", "not ASCII"),
        (b"hello\nimage: 3c23d70a\n", "TRT-<version>-<algorithm>"),
        (b"TRT-100300-EntropyCalibration2\n", "names no tensor"),
    ],
)
def test_garbage_calib_cache_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
    content: bytes, message: str,
) -> None:
    cache = tmp_path / "calib.cache"
    cache.write_bytes(content)
    argv = ["compile", str(demo_dir / "models" / "demo_cnn.onnx"),
            "--optShapes=image:4x3x32x32", f"--calib={cache}", "--cache-dir", str(cache_dir)]
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].count("--calib") == 1 and message in err[0], err
    assert not list(cache_dir.rglob("*.engine"))


@pytest.mark.tier1
def test_oversized_calib_cache_and_wrong_precision_are_refused(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    from trt_provision.calibration.user_cache import MAX_USER_CACHE_BYTES

    model = demo_dir / "models" / "demo_cnn.onnx"
    big = tmp_path / "big.cache"
    big.write_bytes(b"TRT-100300-EntropyCalibration2\n" + b"x" * MAX_USER_CACHE_BYTES)
    base = ["compile", str(model), "--optShapes=image:4x3x32x32", "--cache-dir", str(cache_dir)]
    assert main([*base, f"--calib={big}"]) == 1
    assert "larger than" in capsys.readouterr().err
    _write_cache(model, tmp_path / "a.cache", 0.01)
    assert main([*base, "--fp16", f"--calib={tmp_path / 'a.cache'}"]) == 1
    assert "--calib needs --int8 or --mixed" in capsys.readouterr().err


@pytest.mark.tier1
def test_calib_cache_with_calibration_data_is_judged_by_the_gate(
    capsys: pytest.CaptureFixture[str], cache_dir: Path, tmp_path: Path
) -> None:
    import numpy as np

    from calibration.models import make_mlp_classifier

    model = make_mlp_classifier(tmp_path / "mlp.onnx")
    np.save(tmp_path / "d.npy",
            np.random.default_rng(0).standard_normal((50, 8, 16)).astype(np.float32))
    # Scales a thousand times too small: every activation saturates, the gate must refuse.
    _write_cache(model, tmp_path / "tiny.cache", 1e-6)
    argv = ["compile", str(model), "--optShapes=x:8x16", f"--calib={tmp_path / 'tiny.cache'}",
            f"--calibration-data={tmp_path / 'd.npy'}", "--cache-dir", str(cache_dir)]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "refused by the accuracy gate" in err and "not judged" not in err
    assert not list(cache_dir.rglob("*.engine"))
