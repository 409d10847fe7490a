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


_STATIC = "--shapes=image:1x3x32x32"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        (["{out}/m.plan"], "OUT_DIR: not a directory"),
        (["--saveEngine={out}"], "--saveEngine: is a directory"),
        (["--timingCacheFile={out}/missing/tc.cache"], "--timingCacheFile: directory"),
        (["--timingCacheFile={out}"], "--timingCacheFile: is a directory"),
    ],
)
def test_output_paths_are_checked_before_any_build(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
    extra: list[str], expected: str,
) -> None:
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.plan").write_bytes(b"an earlier engine")
    model = demo_dir / "models" / "demo_cnn.onnx"
    args = [a.format(out=out) for a in extra]
    line = _one_line_user_error(
        capsys, ["compile", str(model), _STATIC, *args, "--cache-dir", str(cache_dir)]
    )
    assert expected in line and "ManifestError" not in line and "StoreError" not in line
    assert list(cache_dir.rglob("*.engine")) == []  # refused before building
    assert (out / "m.plan").read_bytes() == b"an earlier engine"


@pytest.mark.parametrize(
    ("argv", "flag"),
    [(["compile", "--onnx="], "--onnx: is a directory"),
     (["compile", "{models}"], "MODEL: is a directory")],
)
def test_a_directory_or_empty_path_as_the_model(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path,
    argv: list[str], flag: str,
) -> None:
    args = [a.format(models=demo_dir / "models") for a in argv]
    line = _one_line_user_error(capsys, [*args, _STATIC, "--cache-dir", str(cache_dir)])
    assert flag in line


@pytest.mark.parametrize("command", [["ls"], ["gc"], ["clear", "--yes"]])
@pytest.mark.parametrize("kind", ["missing", "file"])
def test_cache_commands_refuse_a_mistyped_cache_dir(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, command: list[str], kind: str,
) -> None:
    target = tmp_path / "cache"
    if kind == "file":
        target.write_bytes(b"not a cache")
    line = _one_line_user_error(capsys, ["cache", *command, "--cache-dir", str(target)])
    assert "--cache-dir" in line and str(target) in line
    assert not target.exists() or target.read_bytes() == b"not a cache"


def test_cache_clear_without_yes_names_the_flag_not_a_type(
    capsys: pytest.CaptureFixture[str], cache_dir: Path,
) -> None:
    line = _one_line_user_error(capsys, ["cache", "clear", "--cache-dir", str(cache_dir)])
    assert "--yes" in line and "TrtProvisionError" not in line


@pytest.mark.parametrize("flag", ["--report-dir", "--work-dir"])
def test_selftest_dirs_that_are_files_are_named(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str,
) -> None:
    target = tmp_path / "report"
    target.write_bytes(b"mine")
    line = _one_line_user_error(capsys, ["selftest", flag, str(target)])
    assert f"{flag}: not a directory" in line and target.read_bytes() == b"mine"


def test_key_files_swapped_or_a_directory_name_the_flag(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
) -> None:
    pytest.importorskip("cryptography")
    key = tmp_path / "fleet.key"
    assert main(["keys", "generate", str(key)]) == 0
    assert main(["compile", str(demo_dir / "models" / "demo_cnn.onnx"), _STATIC,
                 "--cache-dir", str(cache_dir)]) == 0
    capsys.readouterr()
    (engine,) = cache_dir.rglob("*.engine")
    line = _one_line_user_error(capsys, ["keys", "sign", "--key", f"{key}.pub", str(engine)])
    assert line == f"error: --key: not an unencrypted PEM private key: {key}.pub"
    line = _one_line_user_error(capsys, ["keys", "verify", "--public-key", str(key), str(engine)])
    assert line == f"error: --public-key: not a PEM public key: {key}"
    keep = tmp_path / "keys"
    (keep / "sub").mkdir(parents=True)
    line = _one_line_user_error(capsys, ["keys", "generate", str(keep), "--force"])
    assert "is a directory" in line and (keep / "sub").is_dir()


@pytest.mark.parametrize(
    ("argv", "usage", "hint"),
    [
        (["provision", "{manifest}", "--jsn"], "usage: trt-provision provision", "--json"),
        (["cache", "ls", "--wid"], "usage: trt-provision cache ls", "--wide"),
        (["compile", "{model}", "--saveengine=x.plan"], "usage: trt-provision compile",
         "--saveEngine"),
        (["compile", "{model}", "--min-shape", "image:1x3x32x32"],
         "usage: trt-provision compile", "--min-shapes"),
    ],
)
def test_a_flag_typo_shows_the_subcommands_usage_and_the_nearest_flag(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, argv: list[str], usage: str, hint: str,
) -> None:
    args = [a.format(manifest=demo_dir / "demo.toml", model=demo_dir / "models" / "demo_cnn.onnx")
            for a in argv]
    assert main(args) == 2
    err = capsys.readouterr().err
    assert err.startswith(usage) and f"(did you mean {hint}?)" in err


@pytest.mark.parametrize("value", ["-500", "0", "1e9"])
def test_max_temp_must_be_a_plausible_temperature(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, value: str,
) -> None:
    line = _one_line_user_error(capsys, ["provision", str(demo_dir / "demo.toml"), "--max-temp",
                                         value, "--cache-dir", str(cache_dir)])
    assert "--max-temp" in line and list(cache_dir.iterdir()) == []


def test_prepare_never_writes_over_its_source_model(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, tmp_path: Path,
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes((demo_dir / "models" / "demo_cnn.onnx").read_bytes())
    before = model.read_bytes()
    for out in (model, tmp_path / "." / "m.onnx"):
        line = _one_line_user_error(
            capsys, ["prepare", str(model), "--precision", "fp16", "-o", str(out)])
        assert "overwrite the source model" in line
    assert model.read_bytes() == before
    (tmp_path / "d.onnx").mkdir()
    line = _one_line_user_error(
        capsys, ["prepare", str(model), "--precision", "fp16", "-o", str(tmp_path / "d.onnx")])
    assert "is a directory" in line


def test_save_engine_never_overwrites_the_model_or_a_cached_engine(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
) -> None:
    model = tmp_path / "m.onnx"
    model.write_bytes((demo_dir / "models" / "demo_cnn.onnx").read_bytes())
    before = model.read_bytes()
    line = _one_line_user_error(capsys, ["compile", f"--onnx={model}", _STATIC,
                                         f"--saveEngine={model}", "--cache-dir", str(cache_dir)])
    assert "would overwrite the source model" in line and model.read_bytes() == before
    # A good engine in the cache, then a copy of another build aimed at it.
    assert main(["compile", str(model), "--shapes=image:2x3x32x32",
                 "--cache-dir", str(cache_dir)]) == 0
    capsys.readouterr()
    (cached,) = cache_dir.rglob("*.engine")
    for extra in ([f"--saveEngine={cached}"], [str(cache_dir / "out")]):
        line = _one_line_user_error(capsys, ["compile", str(model), _STATIC, *extra,
                                             "--cache-dir", str(cache_dir)])
        assert "inside the engine cache" in line
    assert main(["verify", "--cache-dir", str(cache_dir)]) == 0


def test_run_on_nan_inputs_is_never_a_perfect_match(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, tmp_path: Path,
) -> None:
    import numpy as np

    assert main(["compile", str(demo_dir / "models" / "demo_cnn.onnx"), _STATIC,
                 "--cache-dir", str(cache_dir)]) == 0
    (engine,) = cache_dir.rglob("*.engine")
    inputs = tmp_path / "nan.npz"
    np.savez(inputs, image=np.full((1, 3, 32, 32), np.nan, np.float32))
    capsys.readouterr()
    rc = main(["run", str(engine), "--inputs", str(inputs), "--iterations", "1", "--warmup", "0",
               "--cache-dir", str(cache_dir)])
    captured = capsys.readouterr()
    assert rc == 1 and "no finite elements to compare" in captured.err
    assert "cosine 1," not in captured.out
