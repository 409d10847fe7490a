"""User mistakes through the real command line: exit 1 with one line naming what was wrong,
never an internal error (exit 3) and never a silent success."""

from __future__ import annotations

import os
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
