"""The compile subprocess parent side and the BuildConfig JSON pair."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path

import pytest

from trt_provision.config_json import build_config_from_json, build_config_to_json
from trt_provision.errors import EngineBuildError, ManifestError
from trt_provision.runtimes.tensorrt.subprocess_build import (
    compile_command,
    run_compile_subprocess,
)
from trt_provision.types import (
    BuildConfig,
    CalibrationSpec,
    HardwareCompatibility,
    OptimizationProfile,
    PluginSpec,
    PrecisionMode,
)

pytestmark = pytest.mark.tier1


def test_build_config_json_round_trip() -> None:
    config = BuildConfig(
        precision=PrecisionMode.MIXED, workspace_mib=512,
        profiles=(OptimizationProfile("x", (1, 3), (2, 3), (4, 3)),),
        calibration=CalibrationSpec(source="data.npz", algorithm="percentile", max_batches=4),
        timing_cache_path=Path("tc"), hardware_compatibility=HardwareCompatibility.AMPERE_PLUS,
        builder_optimization_level=4, plugins=(PluginSpec("TilePack", "2", "ns", False),),
        fp16_pinned_keywords=("router",), strict_precision_constraints=False,
        strongly_typed=True, excluded_op_types=("Resize",), min_cosine=0.99, max_rel_error=0.1,
    )
    data = json.loads(json.dumps(build_config_to_json(config)))
    assert build_config_from_json(data) == config
    assert build_config_from_json({}) == BuildConfig()


@pytest.mark.parametrize(
    "data",
    [{"precison": "fp16"}, {"precision": "fp8"}, {"profiles": [{"input": "x", "min": [1]}]},
     {"calibration": {"algo": "x"}}, {"workspace_mib": 0}, {"profiles": [
         {"input": "x", "min": ["a"], "opt": [1], "max": [1]}]}],
)
def test_bad_build_config_json_is_a_manifest_error(data: dict[str, object]) -> None:
    with pytest.raises(ManifestError):
        build_config_from_json(data)


def test_default_command_runs_the_compile_entry(tmp_path: Path) -> None:
    cmd = compile_command(tmp_path / "m.onnx", tmp_path / "o", tmp_path / "b.json")
    assert cmd[:4] == [sys.executable, "-m", "trt_provision", "compile"]
    assert cmd[4:] == ["--config", str(tmp_path / "b.json"), str(tmp_path / "m.onnx"),
                       str(tmp_path / "o"), "--json"]


def _child(code: str) -> list[str]:
    return [sys.executable, "-c", code]


def test_success_returns_the_json_result(tmp_path: Path) -> None:
    result = run_compile_subprocess(
        tmp_path / "m", tmp_path / "o", tmp_path / "c",
        command=_child("import json; print('log line'); print(json.dumps({'ok': True}))"),
    )
    assert result == {"ok": True}


def test_failure_exit_code_and_message(tmp_path: Path) -> None:
    code = "import json,sys; print(json.dumps({'error': 'parser failed'})); sys.exit(4)"
    with pytest.raises(EngineBuildError, match="parser failed") as info:
        run_compile_subprocess(tmp_path / "m", tmp_path / "o", tmp_path / "c",
                               command=_child(code))
    assert info.value.context["exit_code"] == 4


def test_timeout_kills_the_whole_process_group(tmp_path: Path) -> None:
    pid_file = tmp_path / "grandchild.pid"
    code = (
        "import subprocess, sys, time\n"
        "p = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
        f"open({str(pid_file)!r}, 'w').write(str(p.pid))\n"
        "time.sleep(60)\n"
    )
    with pytest.raises(EngineBuildError, match="timed out") as info:
        run_compile_subprocess(tmp_path / "m", tmp_path / "o", tmp_path / "c", timeout=1.5,
                               command=_child(code))
    assert info.value.context["timeout_s"] == 1.5
    child_pid = info.value.context["pid"]
    grandchild = int(pid_file.read_text())
    for pid in (child_pid, grandchild):
        assert not _alive(pid), pid


def _alive(pid: int) -> bool:
    # A hang guard only: a dead process returns at once, a live one is reported after 60 s.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        # A killed grandchild is reparented and may linger as a zombie until reaped.
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().split(") ", 1)[1].startswith("Z"):
                    return False
        except (FileNotFoundError, IndexError):
            return False
        time.sleep(0.05)
    return True

@pytest.mark.tier1
def test_real_compile_entry_round_trip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Parent and child agree: the real CLI entry (ONNX Runtime here) prints the JSON result
    the parent parses, and a failure's reason travels back in EngineBuildError."""
    root = Path(__file__).resolve().parents[3]
    config = tmp_path / "build.json"
    config.write_text(json.dumps({"precision": "fp32", "profiles": [
        {"input": "features", "min": [1, 64], "opt": [8, 64], "max": [32, 64]}]}))
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(tmp_path / "cache")}
    model = root / "examples" / "models" / "dynamic_mlp.onnx"
    result = run_compile_subprocess(model, tmp_path / "out", config, timeout=120, env=env)
    assert result["outcome"] == "built" and Path(result["engine"]).is_file()
    assert len(result["copied_to"]) == 3
    with pytest.raises(EngineBuildError, match=r"not found"):
        run_compile_subprocess(tmp_path / "missing.onnx", tmp_path / "out", config, timeout=120,
                               env=env)
