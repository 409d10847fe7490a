"""Planted files the CLI must refuse without an internal error, a hang or an unbounded read:
an engine that is a symlink loop, and FIFOs or device links as the files ``keys verify`` and
``keys sign`` read.

The CLI runs in a subprocess whose address space is capped, so an unbounded read of
``/dev/zero`` ends in MemoryError (an internal error) instead of eating the machine; the
subprocess timeout is only a hang guard.
"""

from __future__ import annotations

import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest

from reliability._support import DEMO_MANIFEST, ROOT, engine_of

pytestmark = pytest.mark.tier1

HANG_GUARD_S = 120  # only a hang (the bug) gets near it
ADDRESS_SPACE = 4 << 30  # plenty for the CLI; an unbounded read of /dev/zero hits it


def _cap_memory() -> None:
    resource.setrlimit(resource.RLIMIT_AS, (ADDRESS_SPACE, ADDRESS_SPACE))


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "trt_provision", *args],
        capture_output=True, text=True, timeout=HANG_GUARD_S, cwd=ROOT,
        preexec_fn=_cap_memory,
    )


def _plant(path: Path, kind: str) -> None:
    """Replace ``path`` by a FIFO or a symlink to a device."""
    if os.path.lexists(path):
        path.unlink()
    if kind == "fifo":
        os.mkfifo(path)
    else:
        path.symlink_to(kind)


def test_engine_that_is_a_symlink_loop_is_refused_not_an_internal_error(
    cache_copy: Path,
) -> None:
    """Path.resolve raised RuntimeError on the loop: exit 3 from verify and provision."""
    engine = engine_of(cache_copy, "demo_cnn")
    engine.unlink()
    engine.symlink_to(engine.name)  # points at itself

    proc = _cli("verify", "--cache-dir", str(cache_copy))
    assert proc.returncode == 1, proc.stderr
    assert "engine symlink loops" in proc.stdout
    assert "internal error" not in proc.stderr and "Traceback" not in proc.stderr

    proc = _cli("provision", str(DEMO_MANIFEST), "--cache-dir", str(cache_copy),
                "--runtime", "onnxruntime", "--no-remote", "-q")
    assert proc.returncode == 0, proc.stderr
    assert engine.is_file() and not engine.is_symlink()  # rebuilt in its place
