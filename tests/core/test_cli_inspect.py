"""``trt-provision inspect MODEL.onnx`` and ``inspect ENGINE`` through the real CLI."""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1


def _cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    capsys.readouterr()
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_inspect_model_json(capsys: pytest.CaptureFixture[str],
                            demo_models: dict[str, Path]) -> None:
    rc, out, err = _cli(capsys, "inspect", str(demo_models["two_inputs"]), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["opsets"] == {"": 17} and doc["node_count"] == 9
    assert doc["inputs"] == [
        {"name": "token_ids", "dtype": "int64", "shape": ["batch", 16], "dynamic_dims": [0]},
        {"name": "mask", "dtype": "bool", "shape": ["batch", 16], "dynamic_dims": [0]},
    ]
    assert doc["outputs"][0]["name"] == "pooled" and doc["outputs"][0]["dtype"] == "float32"
    assert doc["profile_required"] == ["token_ids", "mask"]
    assert doc["shared_dynamic_dims"] == {"batch": ["token_ids", "mask"]}
    assert doc["external_data"] == []


def test_inspect_model_human(capsys: pytest.CaptureFixture[str],
                             demo_models: dict[str, Path]) -> None:
    rc, out, err = _cli(capsys, "inspect", str(demo_models["demo_cnn"]))
    assert rc == 0, err
    assert "opset ai.onnx 17" in out and "9 nodes" in out
    assert "[batch, 3, 32, 32]" in out and "logits" in out and "routing" in out
    assert "a profile must give min/opt/max for: image [batch, 3, 32, 32]" in out
    assert "external data: none" in out


def _static_model_with_external_data(directory: Path) -> Path:
    weight = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 4])],
        [weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = directory / "static.onnx"
    onnx.save(model, str(path), save_as_external_data=True, location="static.weights",
              size_threshold=0)
    return path


def test_inspect_model_with_external_data_and_static_inputs(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    model = _static_model_with_external_data(tmp_path)
    rc, out, err = _cli(capsys, "inspect", str(model), "--json")
    assert rc == 0, err
    doc = json.loads(out)
    assert doc["external_data"] == [
        {"location": "static.weights", "present": True, "size_bytes": 64}
    ]
    assert doc["profile_required"] == []
    rc, out, _err = _cli(capsys, "inspect", str(model))
    assert "profile: not needed" in out and "static.weights (64 bytes)" in out
    (tmp_path / "static.weights").unlink()
    rc, out, _err = _cli(capsys, "inspect", str(model))
    assert rc == 0 and "static.weights (MISSING)" in out


@pytest.mark.parametrize("content", [b"", b"hello = 1\n", b"\x08\x07", b"\xff" * 64])
def test_a_file_that_is_not_onnx_is_one_line_exit_1(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: bytes
) -> None:
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(content)
    rc, out, err = _cli(capsys, "inspect", str(bad))
    assert rc == 1 and out == ""
    assert err.count("\n") == 1 and "not an ONNX model" in err and "bad.onnx" in err


def test_other_files_are_refused_as_models(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, demo_dir: Path
) -> None:
    archive = tmp_path / "inputs.npz"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("x.npy", b"\x93NUMPY")
    for path in (demo_dir / "demo.toml", archive, tmp_path / "missing.onnx"):
        rc, _out, err = _cli(capsys, "inspect", str(path))
        assert rc == 1 and err.count("\n") == 1 and path.name in err


def test_inspect_engine_shows_io_without_json(
    capsys: pytest.CaptureFixture[str], cache_dir: Path, demo_dir: Path
) -> None:
    rc, out, err = _cli(capsys, "provision", str(demo_dir / "demo.toml"), "--cache-dir",
                        str(cache_dir), "--json")
    assert rc == 0, err
    engines = {r["name"]: r["engine"] for r in json.loads(out)["results"]}
    rc, out, err = _cli(capsys, "inspect", engines["two_inputs"])
    assert rc == 0, err
    assert "token_ids" in out and "tensor(int64)" in out and "[batch, 16]" in out
    assert "pooled" in out and "measurements: none" in out
    rc, out, err = _cli(capsys, "inspect", engines["demo_cnn"])
    assert "profile image: min [1, 3, 32, 32] opt [4, 3, 32, 32] max [8, 3, 32, 32]" in out
