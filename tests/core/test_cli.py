from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from trt_provision.cli.main import build_parser, main

pytestmark = pytest.mark.tier1


def _cli(*args: str, cache: Path, check_rc: int | None = 0) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache)}
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", *args],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    if check_rc is not None:
        assert proc.returncode == check_rc, proc.stderr
    return proc


def test_provision_twice_then_tamper(cache_dir: Path, demo_dir: Path) -> None:
    first = json.loads(
        _cli("provision", str(demo_dir / "demo.toml"), "--json", cache=cache_dir).stdout
    )
    assert first["built"] == 3 and first["reused"] == 0
    second = json.loads(
        _cli("provision", str(demo_dir / "demo.toml"), "--json", cache=cache_dir).stdout
    )
    assert second["reused"] == 3 and second["cache_hit_ratio"] == 1.0
    engine = Path(second["results"][0]["engine"])
    data = bytearray(engine.read_bytes())
    data[-1] ^= 0xFF
    engine.write_bytes(bytes(data))
    verify = _cli("verify", "--json", cache=cache_dir, check_rc=1)
    assert [Path(b["engine"]) for b in json.loads(verify.stdout)["bad"]] == [engine]
    third = _cli("provision", str(demo_dir / "demo.toml"), "--json", cache=cache_dir)
    outcomes = {r["name"]: r["outcome"] for r in json.loads(third.stdout)["results"]}
    assert outcomes == {"demo_cnn": "built", "two_inputs": "reused", "dynamic_mlp": "reused"}
    assert "WARNING" in third.stderr and engine.name in third.stderr
    _cli("verify", cache=cache_dir)
    inspect = json.loads(_cli("inspect", str(engine), "--json", cache=cache_dir).stdout)
    assert inspect["identity"]["model_name"] == "demo_cnn" and inspect["sha256"]["ok"] is True


def test_two_processes_provision_the_same_corpus(cache_dir: Path, demo_dir: Path) -> None:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache_dir)}
    cmd = [
        sys.executable,
        "-m",
        "trt_provision",
        "provision",
        str(demo_dir / "demo.toml"),
        "--json",
    ]
    procs = [
        subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=300) for p in procs]
    assert all(p.returncode == 0 for p in procs), [o[1] for o in outs]
    built = sum(json.loads(o[0])["built"] for o in outs)
    assert built == 3  # each engine built exactly once across both processes
    _cli("verify", cache=cache_dir)


def test_dry_run_and_compile_with_output_dir(
    cache_dir: Path, demo_dir: Path, tmp_path: Path
) -> None:
    dry = json.loads(
        _cli(
            "provision", str(demo_dir / "demo.toml"), "--dry-run", "--json", cache=cache_dir
        ).stdout
    )
    assert dry["planned"] == 3 and not any(cache_dir.rglob("*.engine"))
    out = tmp_path / "out"
    result = json.loads(
        _cli(
            "compile",
            str(demo_dir / "models" / "dynamic_mlp.onnx"),
            str(out),
            "--json",
            "--min-shapes",
            "features:1x64",
            "--opt-shapes",
            "features:8x64",
            "--max-shapes",
            "features:32x64",
            cache=cache_dir,
        ).stdout
    )
    assert result["outcome"] == "built"
    copied = sorted(Path(p).name for p in result["copied_to"])
    assert copied[0].startswith("dynamic_mlp.") and len(copied) == 3
    sidecar = next(name for name in copied if name.endswith(".sha256"))
    subprocess.run(["sha256sum", "-c", "--quiet", sidecar], cwd=out, check=True)


def test_user_errors_are_one_line_exit_1(cache_dir: Path, tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[[models]]\nname='../x'\npath='a.onnx'\n")
    proc = _cli("provision", str(bad), cache=cache_dir, check_rc=1)
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr
    assert "ManifestError" in proc.stderr and "models[0].name" in proc.stderr
    missing = tmp_path / "missing.toml"
    missing.write_text("[[models]]\nname='a'\npath='nope.onnx'\n")
    proc = _cli("provision", str(missing), cache=cache_dir, check_rc=1)
    assert "ModelError" in proc.stderr and "Traceback" not in proc.stderr
    proc = _cli(
        "compile",
        str(Path(__file__).resolve().parents[2] / "examples" / "models" / "demo_cnn.onnx"),
        "--min-shapes",
        "bad",
        "--opt-shapes",
        "x:1",
        "--max-shapes",
        "x:1",
        cache=cache_dir,
        check_rc=1,
    )
    assert "bad shape" in proc.stderr


def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["provision"]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["compile", "m.onnx", "--fp16", "--int8"]) == 2


def test_every_help_works(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["--help"]) == 0
    commands = _command_names()
    assert {"provision", "compile", "verify", "inspect", "probe"} <= commands
    for name in commands:
        assert main([name, "--help"]) == 0, name
    out = capsys.readouterr().out
    assert "provision" in out and "compile" in out


def test_probe_json(cache_dir: Path) -> None:
    data = json.loads(_cli("probe", "--json", cache=cache_dir).stdout)
    assert data["runtime"] in ("onnxruntime", "tensorrt")
    assert data["host"]["ort_version"]
    assert "thermal" in data


def _command_names() -> set[str]:
    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return set(sub.choices)


def _host_has_thermal_telemetry() -> bool:
    from trt_provision.host import probe_host
    from trt_provision.thermal import choose_thermal_publisher

    return choose_thermal_publisher(probe_host()).thermal_state().is_telemetry_available


# On a GPU host (NVML) or a Jetson the limit of 1 °C is exceeded and the build refused.
@pytest.mark.skipif(_host_has_thermal_telemetry(), reason="this host has thermal telemetry")
def test_max_temp_without_telemetry_warns_and_builds(cache_dir: Path, demo_dir: Path) -> None:
    proc = _cli("provision", str(demo_dir / "demo.toml"), "--json", "--max-temp", "1",
                cache=cache_dir)
    assert json.loads(proc.stdout)["built"] == 3
    assert "no thermal telemetry" in proc.stderr


def test_probe_shows_memory_budget(cache_dir: Path) -> None:
    data = json.loads(_cli("probe", "--json", cache=cache_dir).stdout)
    assert data["memory_budget"]["budget_bytes"] == 4 << 30


def test_inspect_exits_1_for_an_engine_that_does_not_verify(cache_dir: Path, demo_dir: Path) -> None:
    result = json.loads(_cli("provision", str(demo_dir / "demo.toml"), "--json",
                             cache=cache_dir).stdout)["results"][0]
    engine = Path(result["engine"])
    assert json.loads(_cli("inspect", str(engine), "--json", cache=cache_dir).stdout)["sha256"]["ok"]
    engine.write_bytes(engine.read_bytes() + b"x")
    proc = _cli("inspect", str(engine), "--json", cache=cache_dir, check_rc=1)
    assert json.loads(proc.stdout)["sha256"]["ok"] is False
