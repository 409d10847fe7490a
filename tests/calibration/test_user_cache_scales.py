"""``compile --int8 --calib=FILE`` (trtexec's calibration cache): unusable scales are refused
naming the tensor, and a cache of names the model lacks fails fast, through the real CLI."""

from __future__ import annotations

import struct
from pathlib import Path

import onnx
import pytest

from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1

HEADER = "TRT-100300-EntropyCalibration2\n"


def _hex(value: float) -> str:
    return struct.pack(">f", value).hex()


def _names(model: Path) -> list[str]:
    graph = onnx.load(model).graph
    return [i.name for i in graph.input] + [o for n in graph.node for o in n.output]


def _compile(capsys: pytest.CaptureFixture[str], model: Path, cache: Path,
             cache_dir: Path) -> tuple[int, list[str]]:
    capsys.readouterr()
    rc = main(["compile", str(model), "--int8", "--optShapes=image:4x3x32x32",
               f"--calib={cache}", "--cache-dir", str(cache_dir)])
    return rc, capsys.readouterr().err.strip().splitlines()


@pytest.mark.parametrize(
    ("scale_hex", "what"),
    [("00000000", "zero"), ("00000001", "denormal"), ("007fffff", "largest denormal"),
     ("7f7fffff", "FLT_MAX"), ("5f000000", "absurdly large")],
)
def test_unusable_scales_are_refused_naming_the_tensor(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
    scale_hex: str, what: str,
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    names = _names(model)
    victim = names[1]
    lines = [f"{n}: {scale_hex if n == victim else _hex(0.02)}" for n in names]
    cache = tmp_path / "calib.cache"
    cache.write_text(HEADER + "\n".join(lines) + "\n")
    rc, err = _compile(capsys, model, cache, cache_dir)
    assert rc == 1 and len(err) == 1, err
    assert "--calib" in err[0] and "unusable scale" in err[0] and repr(victim) in err[0], err
    assert not list(cache_dir.rglob("*.engine"))  # nothing built, nothing published


@pytest.mark.parametrize("scale_hex", ["bf800000", "7fc00000", "7f800000"])  # -1, NaN, inf
def test_negative_and_non_finite_scales_are_refused_naming_the_tensor(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
    scale_hex: str,
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    names = _names(model)
    victim = names[2]
    lines = [f"{n}: {scale_hex if n == victim else _hex(0.02)}" for n in names]
    cache = tmp_path / "calib.cache"
    cache.write_text(HEADER + "\n\n".join(lines) + "\n")  # blank lines do not shift it
    rc, err = _compile(capsys, model, cache, cache_dir)
    assert rc == 1 and len(err) == 1, err
    assert "invalid scale" in err[0] and f"tensor {victim!r}" in err[0], err


def test_ordinary_scales_still_build(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """Control: the same file with usable scales (and one tensor TensorRT names itself)."""
    model = demo_dir / "models" / "demo_cnn.onnx"
    lines = [f"{n}: {_hex(0.02)}" for n in _names(model)]
    lines.append(f"(Unnamed Layer* 3) [Constant]_output: {_hex(0.5)}")
    cache = tmp_path / "calib.cache"
    cache.write_text(HEADER + "\n".join(lines) + "\n")
    rc, err = _compile(capsys, model, cache, cache_dir)
    assert rc == 0, err
    assert list(cache_dir.rglob("*.engine"))


def test_a_cache_of_names_the_model_lacks_fails_fast(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """A large table of unknown names cost minutes and gigabytes in quantization; it is
    refused right after the model is loaded, naming one of them."""
    model = demo_dir / "models" / "demo_cnn.onnx"
    lines = [f"unknown_tensor_{i:07d}: {_hex(0.02)}" for i in range(100_000)]
    cache = tmp_path / "calib.cache"
    cache.write_text(HEADER + "\n".join(lines) + "\n")
    rc, err = _compile(capsys, model, cache, cache_dir)
    assert rc == 1, err
    assert any("names no tensor of this model" in line and "unknown_tensor_" in line
               for line in err), err
    assert not list(cache_dir.rglob("*.engine"))


def test_a_calibration_cache_larger_than_4_mib_is_refused_unread(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    cache = tmp_path / "calib.cache"
    with open(cache, "wb") as fh:
        fh.write(HEADER.encode())
        fh.truncate((4 << 20) + 1)  # sparse
    rc, err = _compile(capsys, model, cache, cache_dir)
    assert rc == 1 and len(err) == 1 and "larger than 4 MiB" in err[0], err
