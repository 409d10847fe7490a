"""Host probe on fake NVML and fake filesystem trees (discrete GPU, Jetson JetPack 5/6/7)."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.fake_nvml import FakeGpu, FakeNvml
from trt_provision.host import jetpack_for_l4t, parse_nv_tegra_release, probe_host
from trt_provision.types import HostCapabilities

pytestmark = pytest.mark.tier1

GiB = 1 << 30

# Release files as JetPack images ship them (one line, trailing newline).
NV_TEGRA_RELEASE = {
    "jp5": "# R35 (release), REVISION: 4.1, GCID: 33958178, BOARD: t186ref, EABI: aarch64, "
    "DATE: Tue Aug  1 19:57:35 UTC 2023\n",
    "jp6": "# R36 (release), REVISION: 4.3, GCID: 38968081, BOARD: generic, EABI: aarch64, "
    "DATE: Wed Jan  8 01:49:37 UTC 2025\n",
    "jp7": "# R38 (release), REVISION: 2.0, GCID: 41844464, BOARD: generic, EABI: aarch64, "
    "DATE: Fri Aug 22 00:00:00 UTC 2025\n",
}
MODELS = {
    "jp5": "NVIDIA Jetson AGX Orin Developer Kit\x00",
    "jp6": "NVIDIA Jetson Orin Nano Engineering Reference Developer Kit Super\x00",
    "jp7": "NVIDIA Jetson AGX Thor Developer Kit\x00",
}


def no_trt() -> str | None:
    return None


def jetson_tree(
    root: Path,
    release: str | None,
    model: str,
    *,
    dpkg: dict[str, str] | None = None,
    mem_total_kib: int = 64 * 1024 * 1024,
) -> Path:
    (root / "etc").mkdir(parents=True, exist_ok=True)
    (root / "proc/device-tree").mkdir(parents=True, exist_ok=True)
    if release is not None:
        (root / "etc/nv_tegra_release").write_text(release)
    (root / "proc/device-tree/model").write_text(model)
    (root / "proc/meminfo").write_text(
        f"MemTotal:       {mem_total_kib} kB\nMemAvailable:   {mem_total_kib // 2} kB\n"
    )
    (root / "proc/cpuinfo").write_text("processor\t: 0\nFeatures\t: fp asimd sve\n")
    if dpkg:
        (root / "var/lib/dpkg").mkdir(parents=True)
        stanzas = [
            f"Package: {name}\nStatus: install ok installed\nArchitecture: arm64\n"
            f"Version: {version}\nDescription: x\n multi-line description\n"
            for name, version in dpkg.items()
        ]
        (root / "var/lib/dpkg/status").write_text("\n".join(stanzas))
    return root


def probe(root: Path, nvml: FakeNvml | None = None) -> HostCapabilities:
    loader = nvml.loader() if nvml is not None else (lambda: None)
    return probe_host(root=root, nvml_loader=loader, trt_version_probe=no_trt)


# ------------------------------------------------------------------ discrete GPU


def test_discrete_gpu_from_nvml(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(name="NVIDIA H100 80GB HBM3", sm=(9, 0), total_bytes=80 * GiB)])
    host = probe(tmp_path, nvml)
    assert host.sm == "sm90"
    assert host.sm_number == 90
    assert host.gpu_name == "NVIDIA H100 80GB HBM3"
    assert host.gpu_memory_bytes == 80 * GiB
    assert host.nvidia_driver_version == "580.95.05"
    assert host.cuda_driver_version == "13.0"
    assert host.jetpack is None and host.l4t is None
    assert not host.gpu_integrated
    assert not nvml.initialized  # the probe closes its NVML session


def test_bytes_names_from_old_bindings(tmp_path: Path) -> None:
    nvml = FakeNvml([FakeGpu(name=b"NVIDIA H200", sm=(9, 0))])  # type: ignore[arg-type]
    nvml.state.driver = b"570.1"  # type: ignore[assignment]
    host = probe(tmp_path, nvml)
    assert (host.gpu_name, host.nvidia_driver_version) == ("NVIDIA H200", "570.1")


def test_no_nvml_means_no_gpu(tmp_path: Path) -> None:
    host = probe(tmp_path, None)
    assert host.sm is None
    assert not host.has_gpu
    assert host.gpu_memory_bytes is None
    assert "no GPU visible" in host.notes


def test_nvml_init_failure_means_no_gpu(tmp_path: Path) -> None:
    nvml = FakeNvml()
    nvml.fail_on("nvmlInit")
    assert probe(tmp_path, nvml).sm is None


def test_nvml_without_devices(tmp_path: Path) -> None:
    assert probe(tmp_path, FakeNvml([])).sm is None


def test_nvml_driver_query_failing_keeps_the_gpu(tmp_path: Path) -> None:
    nvml = FakeNvml()
    nvml.fail_on("nvmlSystemGetDriverVersion")
    host = probe(tmp_path, nvml)
    assert host.sm == "sm90"
    assert host.nvidia_driver_version is None


# ------------------------------------------------------------------ Jetson


@pytest.mark.parametrize(
    ("variant", "l4t", "jetpack", "sm"),
    [
        ("jp5", "35.4.1", "5.1.2", "sm87"),
        ("jp6", "36.4.3", "6.2", "sm87"),
        ("jp7", "38.2.0", "7.0", "sm110"),
    ],
)
def test_jetson_release_variants(
    tmp_path: Path, variant: str, l4t: str, jetpack: str, sm: str
) -> None:
    root = jetson_tree(tmp_path, NV_TEGRA_RELEASE[variant], MODELS[variant])
    host = probe(root)
    assert (host.l4t, host.jetpack, host.sm) == (l4t, jetpack, sm)
    assert host.gpu_integrated
    assert host.gpu_name == MODELS[variant].rstrip("\x00")
    assert host.gpu_memory_bytes == 64 * GiB  # shared RAM: MemTotal
    assert host.notes == ()


def test_jetson_with_nvml_that_cannot_report_memory(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path, NV_TEGRA_RELEASE["jp6"], MODELS["jp6"],
                       mem_total_kib=8 * 1024 * 1024)
    nvml = FakeNvml([FakeGpu(name="Orin (nvgpu)", sm=(8, 7), memory_supported=False)])
    host = probe(root, nvml)
    assert (host.sm, host.gpu_name, host.jetpack) == ("sm87", "Orin (nvgpu)", "6.2")
    assert host.gpu_memory_bytes == 8 * GiB


def test_jetpack_meta_package_refines_the_release(tmp_path: Path) -> None:
    root = jetson_tree(
        tmp_path, NV_TEGRA_RELEASE["jp6"], MODELS["jp6"],
        dpkg={"nvidia-l4t-core": "36.4.3-20250107174145", "nvidia-jetpack": "6.2.1+b38"},
    )
    assert probe(root).jetpack == "6.2.1"


def test_container_without_release_file_uses_dpkg(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path, None, MODELS["jp6"],
                       dpkg={"nvidia-l4t-core": "36.4.4-20250616085344"})
    host = probe(root)
    assert (host.l4t, host.jetpack, host.gpu_integrated) == ("36.4.4", "6.2.1", True)


def test_unknown_l4t_is_noted(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path, "# R99 (release), REVISION: 1.0, GCID: 1\n", MODELS["jp7"])
    host = probe(root)
    assert host.l4t == "99.1.0"
    assert host.jetpack is None
    assert "unknown JetPack for L4T 99.1.0" in host.notes


def test_unreadable_release_file_is_tolerated(tmp_path: Path) -> None:
    root = jetson_tree(tmp_path, None, MODELS["jp6"])
    (root / "etc/nv_tegra_release").mkdir()  # reading a directory raises OSError
    host = probe(root)
    assert host.jetpack is None
    assert not host.gpu_integrated


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (NV_TEGRA_RELEASE["jp5"], ("35.4.1", "5.1.2")),
        (NV_TEGRA_RELEASE["jp6"], ("36.4.3", "6.2")),
        (NV_TEGRA_RELEASE["jp7"], ("38.2.0", "7.0")),
        ("# R36 (release), REVISION: 4.4, GCID: 41062509\r\n", ("36.4.4", "6.2.1")),
        ("#R35 (release), REVISION: 6.0\n", ("35.6.0", "5.1.4")),
        ("garbage", None),
        ("", None),
    ],
)
def test_parse_nv_tegra_release(text: str, expected: tuple[str, str] | None) -> None:
    parsed = parse_nv_tegra_release(text)
    if expected is None:
        assert parsed is None
    else:
        assert parsed is not None
        assert (parsed.l4t, parsed.jetpack) == expected


def test_jetpack_table_prefixes() -> None:
    assert jetpack_for_l4t("36.4.0") == "6.1"
    assert jetpack_for_l4t("36.3.0") == "6.0"
    assert jetpack_for_l4t("34.1.1") is None
