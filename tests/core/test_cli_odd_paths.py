"""Odd cache paths a user can name: each is a one-line user error (exit 1), never exit 3."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1


def _run(capsys: pytest.CaptureFixture[str], argv: list[str]) -> tuple[int, str]:
    rc = main(argv)
    return rc, capsys.readouterr().err


def test_cache_dir_that_is_a_symlink_loop_is_a_user_error(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, tmp_path: Path
) -> None:
    loop = tmp_path / "loop"
    loop.symlink_to(loop)
    rc, err = _run(capsys, ["provision", str(demo_dir / "demo.toml"), "--cache-dir", str(loop)])
    assert rc == 1, err
    assert "internal error" not in err and len(err.strip().splitlines()) == 1, err


def test_cache_dir_whose_name_is_not_utf8_is_a_user_error(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, tmp_path: Path
) -> None:
    name = os.fsdecode(b"cache-\xff")
    try:
        (tmp_path / name).mkdir()
    except (OSError, UnicodeError):
        pytest.skip("this file system refuses names that are not valid UTF-8")
    rc, err = _run(
        capsys,
        ["provision", str(demo_dir / "demo.toml"), "--cache-dir", str(tmp_path / name)],
    )
    assert rc == 1, err
    assert "internal error" not in err and "UTF-8" in err, err
