"""The manifest is read bounded and without blocking through the Python API too (the CLI
checks the path first): a FIFO named as the manifest used to block load_manifest forever;
a device is read bounded (/dev/null is an empty manifest, /dev/zero too large)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = pytest.mark.tier0

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.mark.parametrize(("kind", "message"), [
    ("fifo", "manifest is a FIFO, not a regular file"),
    ("device", "file is too large for a manifest (over 16 MiB); expected a TOML manifest"),
])
def test_a_manifest_that_is_no_regular_file_is_a_manifest_error(tmp_path: Path, kind: str,
                                                                  message: str) -> None:
    path = tmp_path / "m.toml"
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to("/dev/zero")
    code = textwrap.dedent(f"""
        from pathlib import Path
        from trt_provision.config import load_manifest
        from trt_provision.errors import ManifestError
        try:
            load_manifest(Path({str(path)!r}))
        except ManifestError as exc:
            print(exc.message)
    """)
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, env={**os.environ, "PYTHONPATH": str(SRC)})
    assert proc.stdout.strip() == message, proc.stdout + proc.stderr


def test_a_directory_is_still_named_as_one(tmp_path: Path) -> None:
    from trt_provision.config import load_manifest
    from trt_provision.errors import ManifestError

    with pytest.raises(ManifestError, match="manifest is a directory"):
        load_manifest(tmp_path)
