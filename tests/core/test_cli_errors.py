"""User mistakes through the real command line: exit 1 with one line naming what was wrong,
never an internal error (exit 3) and never a silent success."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1


def _one_line_user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "internal error" not in err, err
    return lines[0]


# ------------------------------------------------------------------ item: not a manifest


@pytest.mark.parametrize(
    ("command", "kind"),
    [
        (["provision"], "ONNX model"),
        (["push"], "ONNX model"),
        (["pull"], "ONNX model"),
        (["cache", "gc"], "ONNX model"),
    ],
)
def test_a_model_where_a_manifest_is_expected_is_one_line(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path,
    command: list[str], kind: str,
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    line = _one_line_user_error(capsys, [*command, str(model), "--cache-dir", str(cache_dir)])
    assert f"file is an {kind}, not a TOML manifest" in line and str(model) in line


@pytest.mark.parametrize("command", [["provision"], ["push"], ["cache", "gc"]])
def test_an_npz_where_a_manifest_is_expected_is_one_line(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, command: list[str],
) -> None:
    npz = demo_dir / "calibration" / "demo_cnn.npz"
    line = _one_line_user_error(capsys, [*command, str(npz), "--cache-dir", str(cache_dir)])
    assert "zip archive (e.g. a NumPy .npz), not a TOML manifest" in line


def test_a_binary_manifest_through_the_module_entry(demo_dir: Path, cache_dir: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", "provision",
         str(demo_dir / "models" / "demo_cnn.onnx")],
        capture_output=True, text=True, timeout=300,
        env={**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache_dir)},
    )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.count("\n") == 1 and "UnicodeDecodeError" not in proc.stderr


def test_a_huge_or_directory_manifest_is_refused(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cache_dir: Path
) -> None:
    big = tmp_path / "big.toml"
    with open(big, "wb") as fh:
        fh.truncate((16 << 20) + 1)
    assert "too large for a manifest" in _one_line_user_error(
        capsys, ["provision", str(big), "--cache-dir", str(cache_dir)])
    assert "is a directory" in _one_line_user_error(
        capsys, ["provision", str(tmp_path), "--cache-dir", str(cache_dir)])


# ------------------------------------------------------------------ empty manifest, verify


def test_an_empty_manifest_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, cache_dir: Path
) -> None:
    empty = tmp_path / "empty.toml"
    empty.write_text("[settings]\nruntime = 'onnxruntime'\n")
    line = _one_line_user_error(capsys, ["provision", str(empty), "--cache-dir", str(cache_dir)])
    assert "manifest lists no models" in line
    dev_null = _one_line_user_error(capsys, ["provision", "/dev/null", "--cache-dir",
                                             str(cache_dir)])
    assert "no models" in dev_null


def test_verify_a_missing_cache_dir_or_a_file_is_an_error(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    line = _one_line_user_error(capsys, ["verify", "--cache-dir", str(tmp_path / "typo")])
    assert line == f"error: --cache-dir: directory not found: {tmp_path / 'typo'}"
    a_file = tmp_path / "file"
    a_file.write_text("x")
    line = _one_line_user_error(capsys, ["verify", "--json", "--cache-dir", str(a_file)])
    assert "not a directory" in line
    assert capsys.readouterr().out == ""


def test_verify_an_empty_existing_cache_is_fine(
    capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    assert main(["verify", "--cache-dir", str(cache_dir)]) == 0
    assert "0 engine(s) checked, 0 bad" in capsys.readouterr().out


# ------------------------------------------------------------------ abbreviations, paths


@pytest.mark.parametrize(
    "argv",
    [
        ["provision", "{demo}", "--force"],  # was --force-rebuild
        ["provision", "{demo}", "--dry"],  # was --dry-run
        ["compile", "{model}", "--calibration", "x.npz"],  # was --calibration-data
        ["compile", "{model}", "--opt", "image:1x3x32x32"],
        ["verify", "--js"],
        ["--verb", "probe"],
    ],
)
def test_no_flag_is_abbreviated(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, argv: list[str]
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    args = [a.format(demo=demo_dir / "demo.toml", model=model) for a in argv]
    assert main([*args, "--cache-dir", str(cache_dir)]) == 2
    assert "unrecognized arguments" in capsys.readouterr().err
    assert not list(cache_dir.rglob("*.engine"))


def test_calib_is_never_the_calibration_data_flag(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    """The reported case: --calib=x used to become --calibration-data and the missing file
    was never read (an fp32 engine, exit 0)."""
    model = demo_dir / "models" / "demo_cnn.onnx"
    argv = ["compile", str(model), "--int8", "--opt-shapes", "image:1x3x32x32",
            f"--calib={tmp_path / 'x.cache'}", "--cache-dir", str(cache_dir)]
    assert _one_line_user_error(capsys, argv) == f"error: --calib: not found: {tmp_path / 'x.cache'}"
    assert not list(cache_dir.rglob("*.engine"))


@pytest.mark.parametrize(
    ("flag", "label"),
    [("--calibration-data", "--calibration-data"), ("--config", "--config"),
     ("--onnx", "--onnx")],
)
def test_a_named_input_path_must_exist(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
    flag: str, label: str,
) -> None:
    missing = tmp_path / "missing.npz"
    model = [] if flag == "--onnx" else [str(demo_dir / "models" / "demo_cnn.onnx")]
    argv = ["compile", *model, "--int8", "--opt-shapes", "image:1x3x32x32", f"{flag}={missing}",
            "--cache-dir", str(cache_dir)]
    assert _one_line_user_error(capsys, argv) == f"error: {label}: not found: {missing}"
    assert not list(cache_dir.rglob("*.engine"))


def test_a_missing_model_is_named(capsys: pytest.CaptureFixture[str], cache_dir: Path,
                                  tmp_path: Path) -> None:
    line = _one_line_user_error(capsys, ["compile", str(tmp_path / "m.onnx"), "--cache-dir",
                                         str(cache_dir)])
    assert line == f"error: MODEL: not found: {tmp_path / 'm.onnx'}"


# ------------------------------------------------------------------ argument order, -v/-q


def test_out_dir_anywhere_among_the_options(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    model = demo_dir / "models" / "dynamic_mlp.onnx"
    out = tmp_path / "out"
    argv = ["compile", str(model), "--opt-shapes", "features:4x64", "--json", str(out),
            "--cache-dir", str(cache_dir)]
    assert main(argv) == 0, capsys.readouterr().err
    result = json.loads(capsys.readouterr().out)
    assert len(result["copied_to"]) == 3 and all(Path(p).parent == out
                                                  for p in result["copied_to"])
    out2 = tmp_path / "out2"
    assert main(["compile", "--fp32", str(model), "--opt-shapes", "features:4x64",
                 "--cache-dir", str(cache_dir), str(out2)]) == 0
    assert len(list(out2.iterdir())) == 3


def test_verbosity_before_or_after_the_subcommand(demo_dir: Path, cache_dir: Path) -> None:
    env = {**os.environ, "TRT_PROVISION_CACHE_DIR": str(cache_dir)}
    demo = str(demo_dir / "demo.toml")
    runs = {}
    for label, argv in {
        "after": ["provision", demo, "--json", "-v"],
        "before": ["-v", "provision", demo, "--json"],
        "quiet": ["provision", demo, "--json", "-q"],
        "debug": ["provision", demo, "--json", "-vv"],
    }.items():
        proc = subprocess.run([sys.executable, "-m", "trt_provision", *argv], env=env,
                              capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, (label, proc.stderr)
        runs[label] = proc.stderr
    assert "INFO" in runs["after"] and "INFO" in runs["before"]
    assert "DEBUG" in runs["debug"]
    assert runs["quiet"] == ""


def test_keys_generate_twice_names_the_flag_not_the_keyword(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    pytest.importorskip("cryptography")
    key = tmp_path / "k.pem"
    assert main(["keys", "generate", str(key)]) == 0
    capsys.readouterr()
    line = _one_line_user_error(capsys, ["keys", "generate", str(key)])
    assert "--force" in line and "overwrite" not in line and "Error" not in line
    assert main(["keys", "generate", str(key), "--force"]) == 0


def test_flag_errors_never_name_internal_types(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path
) -> None:
    model = str(demo_dir / "models" / "demo_cnn.onnx")
    for argv in (
        ["provision", str(demo_dir / "demo.toml"), "--max-temp", "nan"],
        ["compile", model, "--min-shapes", "image:1x3", "--max-shapes", "image:1x3"],
        ["compile", model, "--memPoolSize", "workspace:lots"],
        ["compile", model, "--workspace", "0"],
    ):
        line = _one_line_user_error(capsys, [*argv, "--cache-dir", str(cache_dir)])
        assert "ManifestError" not in line and "overwrite" not in line, line
        assert line.startswith("error: --"), line


# ------------------------------------------------------------------ runtime tensorrt


def test_runtime_tensorrt_without_tensorrt_names_what_is_missing(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path
) -> None:
    from trt_provision._lazy import is_available

    if is_available("tensorrt") and is_available("cuda"):
        pytest.skip("TensorRT and cuda-python are installed here")
    line = _one_line_user_error(
        capsys, ["provision", str(demo_dir / "demo.toml"), "--runtime", "tensorrt",
                 "--cache-dir", str(cache_dir)])
    # The extra of this host's CUDA major (pyproject has one per major, no bare "tensorrt").
    assert re.search(r"pip install 'trt-provision\[tensorrt-cu1[23]\]'", line), line
    assert "[cuda" not in line
    if not is_available("tensorrt"):
        assert "no module 'tensorrt'" in line
    if not is_available("cuda"):
        assert "cuda-python is not installed" in line
    assert not list(cache_dir.rglob("*.engine"))


def test_probe_diagnoses_an_unloadable_runtime(
    capsys: pytest.CaptureFixture[str], cache_dir: Path
) -> None:
    from trt_provision._lazy import is_available

    if is_available("tensorrt") and is_available("cuda"):
        pytest.skip("TensorRT and cuda-python are installed here")
    assert main(["probe", "--runtime", "tensorrt", "--json", "--cache-dir", str(cache_dir)]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["runtime"] == "tensorrt" and data["runtime_usable"] is False
    assert data["runtime_problems"]
    assert re.fullmatch(r"pip install 'trt-provision\[tensorrt-cu1[23]\]'", data["fix"])
    assert main(["probe", "--runtime", "tensorrt", "--cache-dir", str(cache_dir)]) == 0
    assert re.search(r"trt-provision\[tensorrt-cu1[23]\]", capsys.readouterr().out)


# ------------------------------------------------------------------ keys verify


def test_keys_verify_checks_the_engine_bytes_too(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    pytest.importorskip("cryptography")
    key = tmp_path / "k.pem"
    assert main(["keys", "generate", str(key)]) == 0
    capsys.readouterr()
    assert main(["provision", str(demo_dir / "demo.toml"), "--json", "--cache-dir",
                 str(cache_dir)]) == 0
    engine = Path(json.loads(capsys.readouterr().out)["results"][0]["engine"])
    assert main(["keys", "sign", str(engine), "--key", str(key)]) == 0
    verify = ["keys", "verify", str(engine), "--public-key", f"{key}.pub", "--json"]
    capsys.readouterr()
    assert main(verify) == 0
    assert json.loads(capsys.readouterr().out)["results"][0]["ok"] is True
    data = bytearray(engine.read_bytes())
    data[len(data) // 2] ^= 0x01
    engine.write_bytes(bytes(data))
    assert main(verify) == 1
    row = json.loads(capsys.readouterr().out)["results"][0]
    assert row["ok"] is False and "engine bytes do not match" in row["reason"]
    shutil.copyfile(engine, tmp_path / "x")  # a sidecar-less copy is not signed
    assert main(["keys", "verify", str(tmp_path / "x"), "--public-key", f"{key}.pub"]) == 1


def test_push_sign_key_must_exist(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    line = _one_line_user_error(capsys, ["push", str(demo_dir / "demo.toml"), "--sign-key",
                                         str(tmp_path / "k.pem"), "--cache-dir", str(cache_dir)])
    assert line == f"error: --sign-key: not found: {tmp_path / 'k.pem'}"
