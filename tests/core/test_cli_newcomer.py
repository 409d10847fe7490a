"""Mistakes a newcomer who knows trtexec makes, through the real command line: each is
exit 1 with one line naming what was wrong (argparse usage errors exit 2), never exit 3."""

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


@pytest.fixture
def fifo(tmp_path: Path) -> Path:
    path = tmp_path / "pipe.toml"
    os.mkfifo(path)
    return path


@pytest.mark.parametrize(
    ("argv", "flag"),
    [
        (["provision", "{fifo}"], "MANIFEST"),
        (["push", "{fifo}"], "MANIFEST"),
        (["compile", "{fifo}"], "MODEL"),
        (["compile", "{model}", "--config", "{fifo}"], "--config"),
        (["prepare", "{fifo}", "--precision", "fp16", "-o", "{out}"], "model is not a regular"),
    ],
)
def test_a_fifo_named_as_an_input_is_refused_not_read_for_ever(
    demo_dir: Path, cache_dir: Path, fifo: Path, tmp_path: Path, argv: list[str], flag: str,
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    args = [a.format(fifo=fifo, model=model, out=tmp_path / "o.onnx") for a in argv]
    if argv[0] != "prepare":
        args += ["--cache-dir", str(cache_dir)]
    # A real process with a generous hang guard: the old code blocked opening the FIFO.
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", *args],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert lines[0].startswith("error: ") and flag in lines[0] and str(fifo) in lines[0]
