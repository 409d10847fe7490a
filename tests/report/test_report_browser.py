"""The HTML report as a person sees it: rendered by headless Chromium at a phone's width,
with no console error (a script, a refused resource or a CSP violation would log one), a
DOM that names every model, and a screenshot that is a real page, not a blank one."""

from __future__ import annotations

import shutil
import struct
import subprocess
import zlib
from pathlib import Path

import pytest

from report.conftest import clone_for_target, engine_of
from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1

BROWSER = next((b for b in ("chromium", "chromium-browser", "google-chrome")
                if shutil.which(b)), None)
MODELS = ("demo_cnn", "two_inputs", "dynamic_mlp")


def _chromium(page: Path, profile: Path, *extra: str) -> subprocess.CompletedProcess[str]:
    assert BROWSER is not None
    return subprocess.run(
        [BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         "--no-first-run", f"--user-data-dir={profile}", "--enable-logging=stderr", "--v=0",
         *extra, page.as_uri()],
        capture_output=True, text=True, timeout=120,
    )


def _png_pixels(path: Path) -> tuple[int, int, int, bytes]:
    """Width, height, bytes per pixel and the decompressed scanlines of an 8-bit RGB(A)
    PNG (stdlib only)."""
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, width, height, channels = 8, b"", 0, 0, 0
    while pos < len(data):
        length, kind = struct.unpack(">I4s", data[pos:pos + 8])
        body = data[pos + 8:pos + 8 + length]
        if kind == b"IHDR":
            width, height, depth, colour = struct.unpack(">IIBB", body[:10])
            assert depth == 8 and colour in (2, 6), (depth, colour)
            channels = 3 if colour == 2 else 4
        elif kind == b"IDAT":
            idat += body
        pos += 12 + length
    return width, height, channels, zlib.decompress(idat)


def _console_errors(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if "CONSOLE" in line]


@pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed "
                    "(Debian: apt-get install chromium)")
def test_the_report_renders_on_a_phone_without_console_errors(
    corpus: tuple[Path, Path], tmp_path: Path
) -> None:
    manifest, cache = corpus
    clone_for_target(engine_of(cache, "two_inputs", "fp32"), target="sm87", platform="jp6.2",
                     runtime="trt", version="10.3.0")
    page = tmp_path / "report.html"
    assert main(["report", str(manifest), "--cache-dir", str(cache), "-o", str(page), "-q"]) == 0
    dom = _chromium(page, tmp_path / "profile-dom", "--dump-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    assert _console_errors(dom.stderr) == []
    for model in MODELS:
        assert model in dom.stdout
    assert "<svg" in dom.stdout and "Coverage" in dom.stdout
    shot = tmp_path / "shot.png"
    run = _chromium(page, tmp_path / "profile-shot", f"--screenshot={shot}",
                    "--window-size=400,900", "--hide-scrollbars")
    assert run.returncode == 0, run.stderr[-2000:]
    assert _console_errors(run.stderr) == []
    width, height, channels, pixels = _png_pixels(shot)
    assert (width, height) == (400, 900)
    assert shot.stat().st_size > 20_000
    # A blank or single-colour page compresses to a few distinct bytes per row.
    stride = 1 + width * channels
    rows = {pixels[i:i + stride] for i in range(0, len(pixels), stride)}
    assert len(rows) > 100 and len(set(pixels)) > 50


@pytest.mark.skipif(BROWSER is None, reason="headless Chromium is not installed "
                    "(Debian: apt-get install chromium)")
def test_the_console_check_catches_a_broken_page(tmp_path: Path) -> None:
    page = tmp_path / "broken.html"
    page.write_text("<!DOCTYPE html><p>x</p><script>missingFunction()</script>")
    run = _chromium(page, tmp_path / "profile", "--dump-dom")
    assert any("missingFunction" in line for line in _console_errors(run.stderr))
