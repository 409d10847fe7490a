"""Probe what this host can run: GPU (NVML), Jetson/JetPack, TensorRT, ONNX Runtime, CPU ISA.

Nothing here builds or loads an engine; every probe tolerates absent hardware and libraries
(a laptop with no GPU gets ``sm=None``). ``root`` lets tests point the file-based probes at a
fake filesystem tree.
"""

from __future__ import annotations

import importlib.metadata
import logging
import platform
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from trt_provision._lazy import is_available
from trt_provision._nvml import NvmlClient, NvmlLoader, NvmlUnavailable, default_nvml_loader
from trt_provision.types import HostCapabilities

__all__ = [
    "JetsonRelease",
    "cpu_isa_flags",
    "cpu_isa_level",
    "jetpack_for_l4t",
    "parse_nv_tegra_release",
    "probe_host",
    "tensorrt_version",
]

log = logging.getLogger(__name__)

# L4T (R<major>.<minor>.<patch>) → JetPack release, from NVIDIA's public release notes.
_L4T_TO_JETPACK: tuple[tuple[str, str], ...] = (
    ("38.2", "7.0"),
    ("38", "7.0"),
    ("36.4.4", "6.2.1"),
    ("36.4.3", "6.2"),
    ("36.4", "6.1"),
    ("36.3", "6.0"),
    ("36.2", "6.0DP"),
    ("35.6", "5.1.4"),
    ("35.5", "5.1.3"),
    ("35.4", "5.1.2"),
    ("35.3", "5.1.1"),
    ("35.2", "5.1"),
    ("35.1", "5.0.2"),
)

# Jetson SoC → compute capability (NVML is not available on older Jetson images).
_TEGRA_SM: tuple[tuple[str, str], ...] = (
    ("thor", "sm110"),
    ("orin", "sm87"),
    ("xavier", "sm72"),
    ("tx2", "sm62"),
    ("nano", "sm53"),
)


@dataclass(frozen=True)
class JetsonRelease:
    l4t: str
    jetpack: str | None


def parse_nv_tegra_release(text: str) -> JetsonRelease | None:
    """Parse ``/etc/nv_tegra_release`` (``# R36 (release), REVISION: 4.3, ...``)."""
    match = re.search(r"#\s*R(\d+)\s*\(release\),\s*REVISION:\s*([0-9.]+)", text)
    if match is None:
        return None
    l4t = f"{match.group(1)}.{match.group(2).strip('.')}"
    return JetsonRelease(l4t=l4t, jetpack=jetpack_for_l4t(l4t))


def jetpack_for_l4t(l4t: str) -> str | None:
    for prefix, jetpack in _L4T_TO_JETPACK:
        if l4t == prefix or l4t.startswith(prefix + "."):
            return jetpack
    return None


def cpu_isa_flags(root: Path = Path("/")) -> tuple[str, ...]:
    try:
        text = (root / "proc/cpuinfo").read_text(errors="replace")
    except OSError:
        return ()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            return tuple(sorted(set(value.split())))
    return ()


def cpu_isa_level(flags: tuple[str, ...], machine: str) -> str:
    """The coarse ISA level that decides which kernels an optimized CPU graph may use."""
    have = set(flags)
    if machine in ("x86_64", "AMD64", "i686"):
        if {"avx512f", "avx512bw", "avx512vl"} <= have:
            return "avx512"
        if {"avx2", "fma"} <= have:
            return "avx2"
        if "avx" in have:
            return "avx"
        return "sse"
    if machine in ("aarch64", "arm64"):
        if "sve" in have:
            return "sve"
        return "neon"
    return re.sub(r"[^a-z0-9]", "", machine.lower()) or "generic"


_TRT_DEBIAN_PACKAGES = frozenset(
    {"tensorrt", "libnvinfer10", "libnvinfer11", "libnvinfer8", "python3-libnvinfer"}
)


def tensorrt_version(root: Path = Path("/")) -> str | None:
    """TensorRT version without loading it: Python package metadata, then the dpkg database
    (JetPack installs TensorRT as Debian packages), then, last, importing the module."""
    for dist in (
        "tensorrt",
        "tensorrt-cu13",
        "tensorrt-cu12",
        "tensorrt-libs",
        "tensorrt-cu13-libs",
        "tensorrt-cu12-libs",
    ):
        try:
            return importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            continue
    if not is_available("tensorrt"):
        return None
    debian = _dpkg_versions(root, _TRT_DEBIAN_PACKAGES)
    for package in sorted(debian):
        # "10.3.0.30-1+cuda12.5" → "10.3.0.30"
        version = debian[package].split(":")[-1].split("-", 1)[0]
        if re.fullmatch(r"[0-9]+(\.[0-9]+)*", version):
            return version
    from trt_provision.runtimes.tensorrt._probe import imported_tensorrt_version

    return imported_tensorrt_version()


def _ort_facts() -> tuple[str | None, tuple[str, ...]]:
    try:
        import onnxruntime
    except ImportError:
        return None, ()
    return str(onnxruntime.__version__), tuple(onnxruntime.get_available_providers())


def _jetson_sm(root: Path) -> str | None:
    for rel in ("proc/device-tree/model", "sys/firmware/devicetree/base/model"):
        try:
            model = (root / rel).read_text(errors="replace").lower()
        except OSError:
            continue
        for key, sm in _TEGRA_SM:
            if key in model:
                return sm
    return None


def _jetson_model(root: Path) -> str | None:
    try:
        return (root / "proc/device-tree/model").read_text(errors="replace").strip("\x00 \n")
    except OSError:
        return None


@dataclass(frozen=True)
class _GpuFacts:
    sm: str
    name: str
    memory_bytes: int | None
    driver: str | None
    cuda_driver: str | None


def _nvml_gpu(nvml_loader: NvmlLoader) -> _GpuFacts | None:
    client = NvmlClient(nvml_loader)
    try:
        if client.device_count() < 1:
            return None
        major, minor = client.compute_capability(0)
        name = client.name(0)
    except NvmlUnavailable as exc:  # no pynvml, no driver or no GPU: not an error here
        log.debug("NVML unavailable: %s", exc, extra={"event": "host.nvml.unavailable"})
        client.close()
        return None
    try:
        # Jetson's NVML does not report memory; the caller falls back to MemTotal.
        memory: int | None = client.memory_info(0)[1]
    except NvmlUnavailable:
        memory = None
    try:
        driver: str | None = client.driver_version()
        cuda: str | None = client.cuda_driver_version()
    except NvmlUnavailable as exc:
        log.warning("NVML query failed: %s", exc, extra={"event": "host.nvml.failed"})
        driver = cuda = None
    client.close()
    return _GpuFacts(
        sm=f"sm{major}{minor}", name=name, memory_bytes=memory, driver=driver, cuda_driver=cuda
    )


_default_nvml = default_nvml_loader  # kept: older callers pass it explicitly


def _dpkg_versions(root: Path, packages: frozenset[str]) -> dict[str, str]:
    """Versions of the named installed Debian packages (JetPack images record theirs)."""
    try:
        text = (root / "var/lib/dpkg/status").read_text(errors="replace")
    except OSError:
        return {}
    found: dict[str, str] = {}
    for stanza in text.split("\n\n"):
        fields: dict[str, str] = {}
        for line in stanza.splitlines():
            key, sep, value = line.partition(":")
            if sep and not line.startswith((" ", "\t")):
                fields[key.strip()] = value.strip()
        name = fields.get("Package")
        if name in packages and "Version" in fields:
            found[name] = fields["Version"]
    return found


def _jetson_release(root: Path) -> JetsonRelease | None:
    """L4T and JetPack from ``/etc/nv_tegra_release``, refined by the dpkg database.

    The release file exists on JetPack 5, 6 and 7 images; containers built from
    ``l4t-base`` sometimes lack it but keep ``nvidia-l4t-core`` in the dpkg database.
    The ``nvidia-jetpack`` meta-package, when installed, names the JetPack release exactly.
    """
    release: JetsonRelease | None = None
    try:
        release = parse_nv_tegra_release(
            (root / "etc/nv_tegra_release").read_text(errors="replace")
        )
    except OSError:
        release = None
    versions = _dpkg_versions(root, frozenset({"nvidia-jetpack", "nvidia-l4t-core"}))
    if release is None and "nvidia-l4t-core" in versions:
        match = re.match(r"(\d+(?:\.\d+)*)", versions["nvidia-l4t-core"])
        if match:
            release = JetsonRelease(l4t=match.group(1), jetpack=jetpack_for_l4t(match.group(1)))
    if release is not None and "nvidia-jetpack" in versions:
        match = re.match(r"(\d+(?:\.\d+)*)", versions["nvidia-jetpack"])
        if match:
            release = JetsonRelease(l4t=release.l4t, jetpack=match.group(1))
    return release


def _mem_total_bytes(root: Path) -> int | None:
    try:
        text = (root / "proc/meminfo").read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^MemTotal:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def probe_host(
    *,
    root: Path = Path("/"),
    nvml_loader: NvmlLoader = default_nvml_loader,
    trt_version_probe: Callable[[], str | None] = tensorrt_version,
) -> HostCapabilities:
    """Collect HostCapabilities; never raises for missing hardware or libraries."""
    machine = platform.machine()
    flags = cpu_isa_flags(root)
    notes: list[str] = []
    jetson = _jetson_release(root)
    gpu = _nvml_gpu(nvml_loader)
    sm = gpu.sm if gpu else None
    name = gpu.name if gpu else None
    memory = gpu.memory_bytes if gpu else None
    integrated = False
    if jetson is not None:
        integrated = True
        sm = sm or _jetson_sm(root)
        name = name or _jetson_model(root)
        # The integrated GPU shares system RAM; NVML on Jetson does not report it.
        memory = memory or _mem_total_bytes(root)
        if jetson.jetpack is None:
            notes.append(f"unknown JetPack for L4T {jetson.l4t}")
    if sm is None:
        notes.append("no GPU visible")
    ort_version, providers = _ort_facts()
    return HostCapabilities(
        sm=sm,
        gpu_name=name,
        gpu_memory_bytes=memory if sm is not None else None,
        gpu_integrated=integrated,
        jetpack=jetson.jetpack if jetson else None,
        l4t=jetson.l4t if jetson else None,
        trt_version=trt_version_probe(),
        cuda_driver_version=gpu.cuda_driver if gpu else None,
        nvidia_driver_version=gpu.driver if gpu else None,
        ort_version=ort_version,
        ort_providers=providers,
        cpu_arch=machine,
        cpu_isa=flags,
        notes=tuple(notes),
    )
