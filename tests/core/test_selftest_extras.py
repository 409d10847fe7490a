"""Extras per CUDA major: which one a host needs, and that pyproject declares each."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

import pytest

from trt_provision._lazy import (
    PER_CUDA_EXTRAS,
    cuda_major_of_host,
    extra_for,
    import_optional,
    install_advice,
)
from trt_provision.errors import MissingDependencyError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

pytestmark = pytest.mark.tier0

ROOT = Path(__file__).resolve().parents[2]
# /proc/driver/nvidia/version as read on an H200 GPU machine (open kernel module), and the
# proprietary module's wording of an older branch.
OPEN_580 = ("NVRM version: NVIDIA UNIX Open Kernel Module for x86_64  580.159.04  Release "
            "Build  (builder@)  \nGCC version:  gcc version 12.3.0\n")
PROPRIETARY_535 = ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  535.104.05  Sat Aug 19 "
                   "01:15:15 UTC 2023\n")


def _root(tmp_path: Path, *, driver: str | None = None, tegra: str | None = None) -> Path:
    if driver is not None:
        (tmp_path / "proc/driver/nvidia").mkdir(parents=True)
        (tmp_path / "proc/driver/nvidia/version").write_text(driver)
    if tegra is not None:
        (tmp_path / "etc").mkdir(parents=True)
        (tmp_path / "etc/nv_tegra_release").write_text(tegra)
    return tmp_path


@pytest.mark.parametrize(("driver", "tegra", "major"), [
    (OPEN_580, None, 13),
    (PROPRIETARY_535, None, 12),
    ("NVRM version: NVIDIA UNIX x86_64 Kernel Module  470.256.02\n", None, None),
    (None, "# R36 (release), REVISION: 4.3, GCID: 1, BOARD: generic\n", 12),
    (None, "# R38 (release), REVISION: 2.0, GCID: 1, BOARD: generic\n", 13),
    (None, "# R35 (release), REVISION: 5.0\n", None),
    (None, None, None),
    ("garbage" * 10_000, None, None),
])
def test_cuda_major_of_host(tmp_path: Path, driver: str | None, tegra: str | None,
                            major: int | None) -> None:
    assert cuda_major_of_host(_root(tmp_path, driver=driver, tegra=tegra)) == major


def test_extra_names() -> None:
    assert extra_for("tensorrt", 12) == "tensorrt-cu12"
    assert extra_for("cuda", 13) == "cuda-cu13"
    assert extra_for("cuda", 11) == "cuda-cu13"  # unsupported major: the newest
    assert extra_for("nvml", 12) == "nvml"
    assert extra_for("remote") == "remote"


def test_jetson_advice_points_at_jetpack_not_a_wheel(tmp_path: Path) -> None:
    root = _root(tmp_path, tegra="# R36 (release), REVISION: 4.3\n")
    advice = install_advice("tensorrt", "tensorrt-cu12", root=root)
    assert "python3-libnvinfer" in advice and "--system-site-packages" in advice
    assert "trt-provision[cuda-cu12]" in advice
    assert install_advice("tensorrt", "tensorrt-cu13", root=tmp_path / "none") == (
        "pip install 'trt-provision[tensorrt-cu13]'")


def test_missing_tensorrt_names_a_per_cuda_extra() -> None:
    code = ("import sys; sys.modules['tensorrt'] = None\n"
            "from trt_provision._lazy import import_optional\n"
            "try:\n    import_optional('tensorrt', 'tensorrt')\n"
            "except Exception as e:\n    print(e)\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          check=True)
    assert re.search(r"trt-provision\[tensorrt-cu1[23]\]", proc.stdout) or (
        "python3-libnvinfer" in proc.stdout), proc.stdout


def test_import_optional_error_carries_the_resolved_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "cuda.bindings.runtime", None)
    with pytest.raises(MissingDependencyError) as info:
        import_optional("cuda.bindings.runtime", "cuda")
    assert re.fullmatch(r"cuda-cu1[23]", info.value.extra)


def test_pyproject_declares_each_extra_with_bounded_pins() -> None:
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"][
        "optional-dependencies"]
    for family in PER_CUDA_EXTRAS:
        for major in (12, 13):
            name = f"{family}-cu{major}"
            assert name in extras, name
            cuda = [r for r in extras[name] if r.startswith("cuda-python")]
            assert cuda == [f"cuda-python>={major}{'.6' if major == 12 else ''},<{major + 1}"]
    for major in (12, 13):
        trt = [r for r in extras[f"tensorrt-cu{major}"] if r.startswith("tensorrt")]
        assert len(trt) == 1 and re.search(r"<\d+$", trt[0]), trt
    # The unbounded families are gone: nothing may point users at them.
    assert "tensorrt" not in extras and "cuda" not in extras
    readme = (ROOT / "README.md").read_text()
    assert "[tensorrt]" not in readme and "[cuda]" not in readme
    for name in ("tensorrt-cu12", "tensorrt-cu13", "cuda-cu12", "cuda-cu13"):
        assert re.search(rf"trt-provision\[([\w-]+,)*{name}[,\]]", readme), name


@pytest.mark.skipif(Path("/etc/nv_tegra_release").exists(), reason="Jetson: JetPack advice")
def test_install_line_follows_the_driver_cuda_version() -> None:
    from trt_provision._lazy import install_line

    assert install_line("tensorrt", "12.6") == "pip install 'trt-provision[tensorrt-cu12]'"
    assert install_line("tensorrt", "13.0") == "pip install 'trt-provision[tensorrt-cu13]'"
    assert install_line("cuda", "12.2") == "pip install 'trt-provision[cuda-cu12]'"
