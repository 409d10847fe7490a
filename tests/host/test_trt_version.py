from __future__ import annotations

from pathlib import Path

import pytest

from trt_provision import host

pytestmark = pytest.mark.tier1

STATUS = """Package: libnvinfer10
Status: install ok installed
Version: 10.3.0.30-1+cuda12.5

Package: nvidia-l4t-core
Version: 36.4.3-20250107174145
"""


def test_no_tensorrt_means_none(tmp_path: Path) -> None:
    assert host.tensorrt_version(tmp_path) is None


def test_jetpack_debian_packages_give_the_version_without_import(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (tmp_path / "var/lib/dpkg").mkdir(parents=True)
    (tmp_path / "var/lib/dpkg/status").write_text(STATUS)
    monkeypatch.setattr(host, "is_available", lambda name: name == "tensorrt")

    def must_not_import() -> str:
        raise AssertionError("the version must come from dpkg, not from importing tensorrt")

    import trt_provision.runtimes.tensorrt._probe as probe

    monkeypatch.setattr(probe, "imported_tensorrt_version", must_not_import)
    assert host.tensorrt_version(tmp_path) == "10.3.0.30"


def test_broken_tensorrt_install_is_reported_not_raised(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import trt_provision.runtimes.tensorrt._probe as probe

    monkeypatch.setattr(host, "is_available", lambda name: name == "tensorrt")
    monkeypatch.setattr(probe, "is_available", lambda name: True)
    assert host.tensorrt_version(tmp_path) is None  # import fails here: no TensorRT
