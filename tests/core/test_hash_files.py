"""Hashing a file (a model, an engine in the cache or named on the command line) opens it
without blocking and only when it is a regular file: a FIFO used to block the hash forever,
a device to be read without end."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.tier0

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize("kind", ["fifo", "device"])
def test_hashing_what_is_not_a_regular_file_is_an_oserror(tmp_path: Path, kind: str) -> None:
    path = tmp_path / "m.engine"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    code = textwrap.dedent(f"""
        from pathlib import Path
        from trt_provision.integrity import sha256_file
        try:
            sha256_file(Path({str(path)!r}))
        except OSError as exc:
            print("refused:", exc.strerror)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.stdout.strip() == "refused: not a regular file", proc.stdout + proc.stderr


def test_a_regular_file_hashes_as_before(tmp_path: Path) -> None:
    import hashlib

    from trt_provision.integrity import sha256_file

    path = tmp_path / "m.engine"
    path.write_bytes(b"engine" * 1000)
    assert sha256_file(path, block_size=7) == (
        hashlib.sha256(b"engine" * 1000).hexdigest(), 6000)
