"""Bad user input through the CLI: exit 1, one line naming the typed error and the key.

Exit code 3 is kept for bugs in trt-provision; none of these inputs may reach it.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trt_provision.cli.main import main
from trt_provision.runtimes.onnxruntime import _describe_io
from trt_provision.types import MAX_SHAPE_DIM, BuildConfig, OptimizationProfile

pytestmark = pytest.mark.tier1


def _user_error(
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    error: str | None,
    *names: str,
    logged: bool = False,
) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 1, err
    lines = err.strip().splitlines()
    if logged:  # a failed build is also logged (an ERROR record) before the error line
        assert all(line.startswith("ERROR ") for line in lines[:-1]), err
        lines = lines[-1:]
    assert len(lines) == 1, err
    if error is None:  # a command-line flag: named as typed, no internal type name
        assert lines[0].startswith("error: --") and "Error" not in lines[0], err
    else:
        assert lines[0].startswith(f"error: {error}: "), err
    assert "Traceback" not in err and "internal error" not in err
    for name in names:
        assert name in lines[0], (name, err)
    return lines[0]


def _manifest(
    tmp_path: Path,
    demo_dir: Path,
    *,
    model: str = "",
    settings: str = "",
    remote: str = "",
) -> Path:
    onnx = demo_dir / "models" / "demo_cnn.onnx"
    text = f"[settings]\n{settings}\n"
    if remote:
        text += f"[remote]\n{remote}\n"
    text += f"[[models]]\nname = 'demo_cnn'\npath = '{onnx.as_posix()}'\n{model}\n"
    path = tmp_path / "bad.toml"
    path.write_text(text)
    return path


# ------------------------------------------------------------------ manifest build options


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("fp16_pinned_keywords = [1]", "fp16_pinned_keywords"),
        ("fp16_pinned_keywords = 'router'", "fp16_pinned_keywords"),
        ("excluded_op_types = 'Softmax'", "excluded_op_types"),
        ("excluded_op_types = [3]", "excluded_op_types"),
        ("workspace_mib = 1.5", "workspace_mib"),
        ("workspace_mib = true", "workspace_mib"),
        ("builder_optimization_level = 2.5", "builder_optimization_level"),
        ("strict_precision_constraints = 'no'", "strict_precision_constraints"),
        ("strongly_typed = 'yes'", "strongly_typed"),
        ("min_cosine = 'x'", "min_cosine"),
        ("min_cosine = nan", "min_cosine"),
        ("max_rel_error = inf", "max_rel_error"),
        ("precision = 16", "precision"),
        ("plugins = [{ name = 'P', version = 2 }]", "plugins[0].version"),
        ("plugins = [{ name = 'P', required = 'yes' }]", "plugins[0].required"),
        ("plugins = [{ name = 7 }]", "plugins[0].name"),
        ("calibration = { algorithm = 'minmax', num_bins = 2.5 }", "calibration.num_bins"),
        ("[[models.profiles]]\ninput = 5\nmin = [1]\nopt = [1]\nmax = [1]", "profiles[0].input"),
        (
            "[[models.profiles]]\ninput = 'image'\nmin = [1]\nopt = [1]\nmax = [4294967296]",
            "profiles[0].max",
        ),
        (
            "[[models.profiles]]\ninput = 'image'\nmin = [1]\nopt = [1]\nmax = [true]",
            "profiles[0].max",
        ),
        ("[[models.profiles]]\ninput = 'image'\nmin = [1]\nopt = [1]", "profiles[0].max"),
    ],
)
def test_bad_build_options_are_user_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    demo_dir: Path,
    cache_dir: Path,
    line: str,
    key: str,
) -> None:
    manifest = _manifest(tmp_path, demo_dir, model=line)
    argv = ["provision", str(manifest), "--no-remote", "--cache-dir", str(cache_dir)]
    _user_error(capsys, argv, "ManifestError", key)
    assert not any(cache_dir.iterdir())  # the cache is left as it was


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("memory_budget_mib = inf", "settings.memory_budget_mib"),
        ("memory_budget_mib = 1e300", "settings.memory_budget_mib"),
        ("max_engine_mib = inf", "settings.max_engine_mib"),
        ("os_memory_reserve_mib = nan", "settings.os_memory_reserve_mib"),
        ("max_temperature_c = nan", "settings.max_temperature_c"),
        ("max_temperature_c = inf", "settings.max_temperature_c"),
    ],
)
def test_non_finite_settings_are_user_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    demo_dir: Path,
    cache_dir: Path,
    line: str,
    key: str,
) -> None:
    manifest = _manifest(tmp_path, demo_dir, settings=line)
    argv = ["provision", str(manifest), "--no-remote", "--cache-dir", str(cache_dir)]
    _user_error(capsys, argv, "ManifestError", key)


@pytest.mark.parametrize(
    ("line", "key"),
    [
        ("max_engine_mib = inf", "remote.max_engine_mib"),
        ("max_engine_mib = 1e300", "remote.max_engine_mib"),
        ("max_attempts = nan", "remote.max_attempts"),
        ("max_attempts = 2.5", "remote.max_attempts"),
        ("connect_timeout_s = nan", "remote.connect_timeout_s"),
        ("read_timeout_s = -inf", "remote.read_timeout_s"),
    ],
)
def test_bad_remote_numbers_are_user_errors(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    demo_dir: Path,
    cache_dir: Path,
    monkeypatch: pytest.MonkeyPatch,
    line: str,
    key: str,
) -> None:
    for var in ("ARTIFACTS_BUCKET", "ARTIFACTS_ENDPOINT", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(var, raising=False)
    remote = f"bucket = 'b'\nendpoint = 'http://127.0.0.1:9'\n{line}"
    manifest = _manifest(tmp_path, demo_dir, remote=remote)
    _user_error(
        capsys, ["provision", str(manifest), "--cache-dir", str(cache_dir)], "ManifestError", key
    )


@pytest.mark.parametrize("value", ["nan", "inf", "-inf"])
def test_non_finite_max_temp_is_refused(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path, value: str
) -> None:
    argv = [
        "provision", str(demo_dir / "demo.toml"), "--no-remote", "--cache-dir", str(cache_dir),
        f"--max-temp={value}",
    ]
    _user_error(capsys, argv, None, "--max-temp")
    assert not any(cache_dir.iterdir())


# ------------------------------------------------------------------ compile


def test_compile_config_that_is_not_utf8(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, demo_dir: Path, cache_dir: Path
) -> None:
    config = tmp_path / "build.json"
    config.write_bytes(b'{"precision": "fp32", "x": "\xff\xfe"}')
    argv = [
        "compile", str(demo_dir / "models" / "demo_cnn.onnx"), "--config", str(config),
        "--cache-dir", str(cache_dir),
    ]
    _user_error(capsys, argv, "ManifestError", str(config), "UTF-8")


@pytest.mark.parametrize(
    ("data", "key"),
    [
        ({"profiles": [{"input": 5, "min": [1], "opt": [1], "max": [1]}]}, "profiles[0].input"),
        ({"profiles": [{"input": "a", "min": [1], "opt": [1], "max": [1]},
                       {"input": 5, "min": [1], "opt": [1], "max": [1]}]}, "profiles[1].input"),
        ({"fp16_pinned_keywords": "router"}, "fp16_pinned_keywords"),
        ({"workspace_mib": 1.5}, "workspace_mib"),
        ({"profiles": "image"}, "profiles"),
    ],
)
def test_compile_bad_json_config(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    demo_dir: Path,
    cache_dir: Path,
    data: dict[str, Any],
    key: str,
) -> None:
    config = tmp_path / "build.json"
    config.write_text(json.dumps(data))
    argv = [
        "compile", str(demo_dir / "models" / "demo_cnn.onnx"), "--config", str(config),
        "--cache-dir", str(cache_dir),
    ]
    _user_error(capsys, argv, "ManifestError", key)


@pytest.mark.parametrize(
    "max_shape",
    [
        "image:99999999999999999999x3x32x32",
        f"image:{2**31}x3x32x32",
        "image:" + "9" * 5000 + "x3x32x32",
        "image:0x3x32x32",
    ],
)
def test_compile_shape_dims_are_bounded(
    capsys: pytest.CaptureFixture[str],
    demo_dir: Path,
    cache_dir: Path,
    max_shape: str,
) -> None:
    argv = [
        "compile", str(demo_dir / "models" / "demo_cnn.onnx"), "--cache-dir", str(cache_dir),
        "--min-shapes", "image:1x3x32x32", "--opt-shapes", "image:1x3x32x32",
        "--max-shapes", max_shape,
    ]
    _user_error(capsys, argv, None, "--max-shapes")


def test_compile_profile_for_an_unknown_input_fails_the_build(
    capsys: pytest.CaptureFixture[str], demo_dir: Path, cache_dir: Path
) -> None:
    argv = [
        "compile", str(demo_dir / "models" / "demo_cnn.onnx"), "--cache-dir", str(cache_dir),
        "--runtime", "onnxruntime",
        "--min-shapes", "imagee:1x3x32x32", "--opt-shapes", "imagee:1x3x32x32",
        "--max-shapes", "imagee:2x3x32x32",
    ]
    _user_error(capsys, argv, "EngineBuildError", "imagee", "inputs: image", logged=True)
    assert not list(cache_dir.rglob("*.engine"))


def test_compile_copy_to_a_failing_out_dir_is_a_store_error(
    capsys: pytest.CaptureFixture[str],
    demo_dir: Path,
    cache_dir: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    out = tmp_path / "out"
    real_write = os.write

    def full_disk(fd: int, data: Any) -> int:
        # The copy's temp file in OUT_DIR takes some bytes, then the disk is full.
        if Path(os.readlink(f"/proc/self/fd/{fd}")).parent == out:
            real_write(fd, bytes(data[:7]))
            raise OSError(28, "No space left on device")
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", full_disk)
    argv = [
        "compile", str(demo_dir / "models" / "demo_cnn.onnx"), str(out),
        "--cache-dir", str(cache_dir), "--runtime", "onnxruntime",
        "--opt-shapes", "image:1x3x32x32",
    ]
    _user_error(capsys, argv, "StoreError", "no space left on device", str(out))
    assert list(out.iterdir()) == []  # no temp file left behind


# ------------------------------------------------------------------ IO size arithmetic


class _Tensor:
    def __init__(self, name: str, shape: list[Any]) -> None:
        self.name, self.type, self.shape = name, "tensor(float)", shape


class _Session:
    def get_inputs(self) -> list[_Tensor]:
        return [_Tensor("x", ["batch", "height", "width"])]

    def get_outputs(self) -> list[_Tensor]:
        return [_Tensor("y", ["batch", -1])]


def test_io_bytes_do_not_wrap_around() -> None:
    big = (MAX_SHAPE_DIM,) * 3
    config = BuildConfig(profiles=(OptimizationProfile("x", (1, 1, 1), big, big),))
    io = _describe_io(_Session(), config)
    expected = MAX_SHAPE_DIM**3 * np.dtype(np.float32).itemsize + 1 * 4  # output: [batch, -1]
    assert expected > 2**63  # an int64 product would wrap around here
    assert io["io_bytes_at_max_shapes"] == expected
