"""Files a user names on the command line or in a manifest, through the real CLI: a device,
FIFO or dangling link is never replaced, waited on or read whole, and every mistake is
exit 1 with one line naming the file or the field (never exit 3, never a hang)."""

from __future__ import annotations

import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from trt_provision.cli.main import main

pytestmark = pytest.mark.tier1

SRC = Path(__file__).resolve().parents[2] / "src"
_STATIC = "--shapes=image:1x3x32x32"


def _one_line_user_error(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ") and "internal error" not in err, err
    return lines[0]


def _cli(*args: str, limit_memory: bool = True) -> subprocess.CompletedProcess[str]:
    """The real command in a child with a hang guard and (by default) a 2 GiB address-space
    limit: a regression that blocks on a FIFO or reads /dev/zero fails, it does not hang
    or take the machine's memory."""
    prefix = (
        "import resource, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))\n" if limit_memory
        else "import sys\n"
    )
    code = prefix + "from trt_provision.cli.main import main\nsys.exit(main(sys.argv[1:]))\n"
    return subprocess.run(
        [sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300,
        stdin=subprocess.DEVNULL, env=dict(os.environ, PYTHONPATH=str(SRC)),
    )


def _one_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode == 1 and len(lines) == 1, (proc.returncode, proc.stderr)
    assert lines[0].startswith("error: ") and "internal error" not in lines[0], proc.stderr
    return lines[0]


# ---------------------------------------------------------------- compile --saveEngine


@pytest.mark.parametrize("kind", ["fifo", "symlink to a fifo", "fifo as FILE.sha256"])
def test_save_engine_never_replaces_a_fifo_or_device(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
    kind: str,
) -> None:
    """``--saveEngine=/dev/null`` as root replaced the host's /dev/null with a file; a FIFO
    stands in for the device here (never touch the real /dev in a test)."""
    fifo = tmp_path / "node"
    os.mkfifo(fifo)
    plan = tmp_path / "m.plan"
    if kind == "fifo":
        plan = fifo
    elif kind == "symlink to a fifo":
        plan.symlink_to(fifo)
    else:
        fifo.rename(tmp_path / "m.plan.sha256")
        fifo = tmp_path / "m.plan.sha256"
    model = demo_dir / "models" / "demo_cnn.onnx"
    line = _one_line_user_error(capsys, ["compile", str(model), _STATIC, f"--saveEngine={plan}",
                                         "--cache-dir", str(cache_dir)])
    assert "--saveEngine" in line and "not a regular file" in line
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)  # still the node it was
    assert not list(cache_dir.rglob("*.engine"))  # refused before anything was built


def test_save_engine_and_out_dir_copies_are_0644_under_umask_0(
    demo_dir: Path, cache_dir: Path, tmp_path: Path
) -> None:
    model = demo_dir / "models" / "demo_cnn.onnx"
    plan, out = tmp_path / "m.plan", tmp_path / "out"
    old = os.umask(0)
    try:
        assert main(["compile", str(model), _STATIC, f"--saveEngine={plan}", str(out),
                     "--cache-dir", str(cache_dir)]) == 0
    finally:
        os.umask(old)
    copies = [plan, plan.with_name("m.plan.json"), plan.with_name("m.plan.sha256"),
              *out.iterdir()]
    assert len(copies) == 6
    modes = {p.name: stat.S_IMODE(os.stat(p).st_mode) for p in copies}
    assert set(modes.values()) == {0o644}, modes


def test_copy_refuses_a_target_that_became_a_fifo_after_the_flag_check(tmp_path: Path) -> None:
    """The copy itself checks again (the target may appear between check and write)."""
    from trt_provision._fs import copy_file_atomic
    from trt_provision.errors import StoreError

    src = tmp_path / "src"
    src.write_bytes(b"engine")
    fifo = tmp_path / "dst"
    os.mkfifo(fifo)
    with pytest.raises(StoreError, match="not a regular file"):
        copy_file_atomic(src, fifo)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["dst", "src"]  # no temp left


# ---------------------------------------------------------------- files named by the user


def _manifest(tmp_path: Path, demo_dir: Path, settings: str = "", version: str = '"1"') -> Path:
    manifest = tmp_path / "m.toml"
    manifest.write_text(
        f"[settings]\n{settings}\n[[models]]\nname = \"demo_cnn\"\n"
        f"path = \"{demo_dir / 'models' / 'demo_cnn.onnx'}\"\nversion = {version}\n"
        "[[models.profiles]]\ninput = \"image\"\nmin = [1, 3, 32, 32]\nopt = [1, 3, 32, 32]\n"
        "max = [1, 3, 32, 32]\n"
    )
    return manifest


def test_run_of_a_file_whose_json_nests_deeply_is_one_line(tmp_path: Path) -> None:
    plan = tmp_path / "m.plan"
    plan.write_bytes(b"engine")
    plan.with_name("m.plan.json").write_bytes(b"[" * 100_000 + b"]" * 100_000)
    line = _one_line(_cli("run", str(plan), "--cache-dir", str(tmp_path / "c")))
    assert str(plan) in line


def test_a_5000_digit_integer_in_a_manifest_is_one_line(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    manifest = _manifest(tmp_path, demo_dir, version="1" * 5000)
    line = _one_line(_cli("provision", str(manifest), "--dry-run", "--cache-dir",
                          str(cache_dir)))
    assert "number too long" in line and str(manifest.name) in line


@pytest.mark.parametrize("content", ["digits", "/dev/zero"])
def test_compile_config_with_a_huge_number_or_dev_zero_is_one_line(
    tmp_path: Path, demo_dir: Path, cache_dir: Path, content: str
) -> None:
    config = Path("/dev/zero")
    if content == "digits":
        config = tmp_path / "build.json"
        config.write_text('{"workspace_mib": ' + "1" * 5000 + "}")
    line = _one_line(_cli("compile", str(demo_dir / "models" / "demo_cnn.onnx"), _STATIC,
                          "--config", str(config), "--cache-dir", str(cache_dir)))
    assert str(config) in line


@pytest.mark.parametrize("node", ["fifo", "/dev/zero"])
def test_a_fifo_or_dev_zero_as_the_manifests_public_key_is_one_line(
    tmp_path: Path, demo_dir: Path, cache_dir: Path, node: str
) -> None:
    key = Path("/dev/zero")
    if node == "fifo":
        key = tmp_path / "key.pub"
        os.mkfifo(key)
    manifest = _manifest(tmp_path, demo_dir, settings=f'public_key = "{key}"')
    line = _one_line(_cli("provision", str(manifest), "--dry-run", "--cache-dir",
                          str(cache_dir)))
    assert "public key is not a regular file" in line and str(key) in line


def test_a_fifo_as_the_manifests_signing_key_fails_the_model_not_hangs(
    tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    key = tmp_path / "signing.pem"
    os.mkfifo(key)
    manifest = _manifest(tmp_path, demo_dir, settings=f'signing_key = "{key}"')
    proc = _cli("provision", str(manifest), "--cache-dir", str(cache_dir))
    assert proc.returncode == 1, proc.stderr
    assert "private key is not a regular file" in proc.stderr and str(key) in proc.stderr
    assert "internal error" not in proc.stderr


@pytest.mark.parametrize("flag", ["sign", "verify"])
def test_dev_zero_as_a_cli_key_file_is_one_line(tmp_path: Path, flag: str) -> None:
    engine = tmp_path / "x.engine"
    engine.write_bytes(b"engine")
    engine.with_name("x.engine.json").write_text("{}")
    args = (["keys", "sign", "--key", "/dev/zero", str(engine)] if flag == "sign"
            else ["keys", "verify", "--public-key", "/dev/zero", str(engine)])
    line = _one_line(_cli(*args))
    assert "/dev/zero" in line and "not a regular file" in line


def test_keys_sign_with_an_empty_engine_path_is_one_line(tmp_path: Path) -> None:
    key = tmp_path / "k"
    assert _cli("keys", "generate", str(key)).returncode == 0
    line = _one_line(_cli("keys", "sign", "--key", str(key), ""))
    assert "ENGINE" in line


def test_selftest_report_dir_through_a_dangling_symlink_is_one_line(tmp_path: Path) -> None:
    link = tmp_path / "report"
    link.symlink_to(tmp_path / "nowhere")
    line = _one_line(_cli("selftest", "--report-dir", str(link), limit_memory=False))
    assert "--report-dir" in line and "dangling" in line
    assert not (tmp_path / "nowhere").exists()
