"""The metadata sidecar is covered by the ``.sha256`` sidecar, through the real CLI.

The ``.json`` decides what a load admits (device memory for the budget, profiles and I/O
shapes for ``run``), so editing only it must not pass ``verify``, be reused or reach
``run``. A ``.sha256`` of the older one-line form is not trusted: the engine is rebuilt.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1

SRC = Path(__file__).resolve().parents[2] / "src"


def _provision(
    capsys: pytest.CaptureFixture[str], manifest: Path, cache: Path
) -> tuple[dict[str, Any], str]:
    capsys.readouterr()
    rc = main(["provision", str(manifest), "--cache-dir", str(cache), "--json"])
    out, err = capsys.readouterr()
    assert rc == 0, err
    return {r["name"]: r for r in json.loads(out)["results"]}, err


@pytest.fixture
def engine(capsys: pytest.CaptureFixture[str], cache_dir: Path, demo_dir: Path) -> Path:
    results, _ = _provision(capsys, demo_dir / "demo.toml", cache_dir)
    return Path(results["demo_cnn"]["engine"])


def _json(engine: Path) -> Path:
    return engine.with_name(engine.name + ".json")


def _sha(engine: Path) -> Path:
    return engine.with_name(engine.name + ".sha256")


def _huge_profile(engine: Path) -> dict[str, Any]:
    """The metadata with a profile whose opt shape takes about 12 GB as float32."""
    data: dict[str, Any] = json.loads(_json(engine).read_bytes())
    (profile,) = data["build_config"]["profiles"]
    profile["opt"] = profile["max"] = [1_000_000, 3, 32, 32]
    return data


def _edit_metadata(engine: Path, **changes: object) -> None:
    data = json.loads(_json(engine).read_bytes())
    data.update(changes)
    _json(engine).write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")


def _verify(capsys: pytest.CaptureFixture[str], cache: Path) -> tuple[int, str]:
    capsys.readouterr()
    rc = main(["verify", "--cache-dir", str(cache)])
    return rc, capsys.readouterr().out


@pytest.mark.skipif(shutil.which("sha256sum") is None, reason="needs coreutils sha256sum")
def test_sidecar_checks_engine_and_metadata_with_the_real_sha256sum(engine: Path) -> None:
    lines = _sha(engine).read_text().splitlines()
    assert [line.split("  ")[1] for line in lines] == [engine.name, engine.name + ".json"]
    ok = subprocess.run(["sha256sum", "-c", _sha(engine).name], cwd=engine.parent,
                        capture_output=True, text=True)
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert ok.stdout.count(": OK") == 2
    _edit_metadata(engine, device_memory_bytes=1)
    bad = subprocess.run(["sha256sum", "-c", _sha(engine).name], cwd=engine.parent,
                         capture_output=True, text=True)
    assert bad.returncode == 1 and f"{engine.name}.json: FAILED" in bad.stdout


def test_editing_only_the_metadata_fails_verify(
    capsys: pytest.CaptureFixture[str], engine: Path, cache_dir: Path
) -> None:
    rc, out = _verify(capsys, cache_dir)
    assert rc == 0, out
    _edit_metadata(engine, device_memory_bytes=8_700_000_000)
    rc, out = _verify(capsys, cache_dir)
    assert rc == 1
    assert "BAD" in out and "metadata sidecar does not match its sha256" in out


@pytest.mark.parametrize("what", ["device memory", "profiles and shapes", "old one-line sidecar"])
def test_an_unverified_metadata_sidecar_is_never_reused_and_is_rebuilt(
    capsys: pytest.CaptureFixture[str], engine: Path, cache_dir: Path, demo_dir: Path,
    what: str,
) -> None:
    if what == "device memory":
        _edit_metadata(engine, device_memory_bytes=8_700_000_000)
    elif what == "profiles and shapes":
        _json(engine).write_text(json.dumps(_huge_profile(engine)))
    else:
        digest = _sha(engine).read_text().split()[0]
        _sha(engine).write_text(f"{digest}  {engine.name}\n")  # the older, one-line form
    results, err = _provision(capsys, demo_dir / "demo.toml", cache_dir)
    assert results["demo_cnn"]["outcome"] == "built"
    assert "not reusable and will be rebuilt" in err and "demo_cnn" in err
    rc, out = _verify(capsys, cache_dir)
    assert rc == 0, out  # the rebuilt entry is whole again, both lines of its .sha256


def test_run_refuses_an_edited_metadata_sidecar_before_allocating(
    engine: Path,
) -> None:
    """The edit the issue reported: shapes in the metadata that make ``run`` allocate
    gigabytes (MemoryError, exit 3). A child with a 2 GiB limit: a regression fails."""
    _json(engine).write_text(json.dumps(_huge_profile(engine)))
    proc = _run_child("run", str(engine), "--iterations", "1", "--warmup", "0",
                      "--cache-dir", str(engine.parent.parent))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "metadata sidecar does not match its sha256" in lines[0]


def test_synthetic_inputs_are_bounded_even_for_consistent_metadata(engine: Path) -> None:
    """Sidecars rewritten consistently (as their owner could): ``run`` still refuses to
    allocate synthetic inputs beyond its cap, one line, exit 1, never MemoryError."""
    from trt_provision.integrity import sha256_sidecar_bytes

    meta = (json.dumps(_huge_profile(engine)) + "\n").encode()
    _json(engine).write_bytes(meta)
    digest = _sha(engine).read_text().split()[0]
    _sha(engine).write_bytes(sha256_sidecar_bytes(digest, engine.name, meta))
    proc = _run_child("run", str(engine), "--iterations", "1", "--warmup", "0",
                      "--cache-dir", str(engine.parent.parent))
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, proc.stderr
    assert "synthetic inputs" in lines[0] and "--inputs" in lines[0]


def test_memory_error_is_exit_1_with_one_line(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    import trt_provision.cli.verify as verify_cli

    def exhausted(args: object) -> int:
        raise MemoryError

    monkeypatch.setattr(verify_cli, "run", exhausted)
    capsys.readouterr()
    rc = main(["verify", "--cache-dir", str(tmp_path)])
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "out of memory" in lines[0] and "internal error" not in err


def _run_child(*args: str) -> subprocess.CompletedProcess[str]:
    code = ("import resource, sys\n"
            "resource.setrlimit(resource.RLIMIT_AS, (4 << 30, 4 << 30))\n"
            "from trt_provision.cli.main import main\nsys.exit(main(sys.argv[1:]))\n")
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=300, env=dict(os.environ, PYTHONPATH=str(SRC)))
