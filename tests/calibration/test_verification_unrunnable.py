"""An fp32 engine of a model that cannot run the synthetic smoke inputs (an int input that is
really a shape, a sample rate, an id) is published and says it was not verified, with a
WARN naming why; it is not failed for a guess of ours."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import onnx
import pytest
from onnx import TensorProto, helper

pytestmark = pytest.mark.tier1


def _reshape_model(path: Path) -> Path:
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 4])
    shape = helper.make_tensor_value_info("shape", TensorProto.INT64, [2])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    graph = helper.make_graph([helper.make_node("Reshape", ["x", "shape"], ["y"])],
                              "reshape", [x, shape], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, path)
    return path


def test_fp32_of_a_model_synthetic_inputs_cannot_run_is_published_not_verified(
    tmp_path: Path,
) -> None:
    model = _reshape_model(tmp_path / "reshape.onnx")
    manifest = tmp_path / "m.toml"
    manifest.write_text('[settings]\nruntime = "onnxruntime"\n\n[[models]]\nname = "reshape"\n'
                        'path = "reshape.onnx"\nprecision = "fp32"\n')
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(tmp_path / "cache")}
    proc = subprocess.run([sys.executable, "-m", "trt_provision", "provision", str(manifest),
                           "--json", "--no-remote"], capture_output=True, text=True, env=env,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)["results"][0]
    assert result["outcome"] == "built" and result["verdict"]["verdict"] == "not verified"
    assert "does not run on synthetic inputs" in proc.stderr
    assert model.is_file()
