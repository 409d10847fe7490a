"""The one lazy-import helper: heavy or optional modules are imported on first use.

It also names the pip extra that provides a missing module. TensorRT and cuda-python come
in one extra per CUDA major (``tensorrt-cu12``, ``tensorrt-cu13``, ``cuda-cu12``,
``cuda-cu13``), because cuda-python 13 needs a CUDA 13 driver while JetPack 6 ships CUDA 12:
:func:`extra_for` picks the one that fits the driver of this host. On Jetson, TensorRT comes
from JetPack's apt packages, never from a PyPI wheel, and the advice says so.
"""

from __future__ import annotations

import importlib
import importlib.util
import re
from pathlib import Path
from types import ModuleType

from trt_provision.errors import MissingDependencyError

__all__ = [
    "DEFAULT_CUDA_MAJOR",
    "PER_CUDA_EXTRAS",
    "cuda_major_of_host",
    "extra_for",
    "import_optional",
    "install_advice",
    "install_line",
    "is_available",
]

# Which pip extra provides each optional top-level module ("tensorrt" and "cuda" are
# families: the CUDA major is appended, see extra_for).
_EXTRAS: dict[str, str] = {
    "tensorrt": "tensorrt",
    "cuda": "cuda",
    "pynvml": "nvml",
    "boto3": "remote",
    "botocore": "remote",
    "cryptography": "remote",
    "polygraphy": "polygraphy",
}

# Extra families that exist once per CUDA major (pyproject.toml declares each).
PER_CUDA_EXTRAS: tuple[str, ...] = ("tensorrt", "cuda")
_CUDA_MAJORS: tuple[int, ...] = (12, 13)
# The newest CUDA major, for hosts whose driver cannot be read (no driver, a container).
DEFAULT_CUDA_MAJOR = 13
# NVIDIA driver branch → the newest CUDA major it runs (CUDA toolkit release notes, table 3:
# CUDA 13.0 needs >= 580, CUDA 12.x needs >= 525).
_DRIVER_CUDA: tuple[tuple[int, int], ...] = ((580, 13), (525, 12))
# L4T major → CUDA major of that JetPack (R36: JetPack 6, CUDA 12.x; R38: JetPack 7, CUDA 13).
_L4T_CUDA: tuple[tuple[int, int], ...] = ((38, 13), (36, 12))
_MAX_READ = 4096  # both files are one line; never read more from /proc or /etc


def is_available(module: str) -> bool:
    """Answer "is it installed?" without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def _read_head(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            return fh.read(_MAX_READ).decode("utf-8", "replace")
    except OSError:
        return ""


def jetson_l4t_major(root: Path = Path("/")) -> int | None:
    """L4T major of a Jetson (``/etc/nv_tegra_release``), None elsewhere."""
    match = re.search(r"#\s*R(\d+)\s*\(release\)", _read_head(root / "etc/nv_tegra_release"))
    return int(match.group(1)) if match else None


def cuda_major_of_host(root: Path = Path("/")) -> int | None:
    """The CUDA major this host's driver runs, read without loading any CUDA library:
    the L4T release on Jetson, else the kernel module version; None when neither is there."""
    l4t = jetson_l4t_major(root)
    if l4t is not None:
        for at_least, cuda in _L4T_CUDA:
            if l4t >= at_least:
                return cuda
        return None  # JetPack 5 and older: CUDA 11, not supported
    text = _read_head(root / "proc/driver/nvidia/version")
    match = re.search(r"Kernel Module\s+(?:for \S+\s+)?(\d+)\.\d+", text)
    if match is None:
        return None
    branch = int(match.group(1))
    for at_least, cuda in _DRIVER_CUDA:
        if branch >= at_least:
            return cuda
    return None


def extra_for(family: str, cuda_major: int | None = None) -> str:
    """The pip extra of ``family`` for a CUDA major: ``tensorrt`` → ``tensorrt-cu13``.

    Families that do not depend on CUDA are returned unchanged. ``cuda_major`` None: read
    the host's driver; a host without one gets :data:`DEFAULT_CUDA_MAJOR`."""
    if family not in PER_CUDA_EXTRAS:
        return family
    major = cuda_major if cuda_major is not None else cuda_major_of_host()
    if major not in _CUDA_MAJORS:
        major = DEFAULT_CUDA_MAJOR
    return f"{family}-cu{major}"


def install_advice(module: str, extra: str, *, root: Path = Path("/")) -> str:
    """How to install ``module`` on this host: the pip line, or JetPack's way on Jetson."""
    top = module.split(".", 1)[0]
    if top == "tensorrt" and jetson_l4t_major(root) is not None:
        cuda = extra_for("cuda", cuda_major_of_host(root))
        return (
            "on Jetson TensorRT comes with JetPack: sudo apt install python3-libnvinfer, use a "
            f"venv made with --system-site-packages, then pip install 'trt-provision[{cuda}]'"
        )
    return f"pip install 'trt-provision[{extra}]'"


def install_line(family: str, cuda_version: str | None = None) -> str:
    """How to install an extra family on this host: ``install_line("tensorrt", "13.0")`` →
    ``pip install 'trt-provision[tensorrt-cu13]'`` (JetPack's way on Jetson).
    ``cuda_version``: the driver's CUDA version where known (NVML), else read from the host."""
    match = re.match(r"(\d+)", cuda_version or "")
    return install_advice(family, extra_for(family, int(match.group(1)) if match else None))


def import_optional(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".", 1)[0]
        name = extra_for(extra or _EXTRAS.get(top, "dev"))
        raise MissingDependencyError(
            module, name, advice=install_advice(module, name)
        ) from exc
