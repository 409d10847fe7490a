"""The one lazy-import helper: heavy or optional modules are imported on first use."""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

from trt_provision.errors import MissingDependencyError

__all__ = ["import_optional", "is_available"]

# Which pip extra provides each optional top-level module.
_EXTRAS: dict[str, str] = {
    "tensorrt": "tensorrt",
    "cuda": "cuda",
    "pynvml": "nvml",
    "boto3": "remote",
    "botocore": "remote",
    "cryptography": "remote",
    "polygraphy": "tensorrt",
}


def is_available(module: str) -> bool:
    """Answer "is it installed?" without importing it."""
    try:
        return importlib.util.find_spec(module) is not None
    except (ImportError, ValueError):
        return False


def import_optional(module: str, extra: str | None = None) -> ModuleType:
    """Import ``module`` or raise :class:`MissingDependencyError` naming the pip extra."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        top = module.split(".", 1)[0]
        raise MissingDependencyError(module, extra or _EXTRAS.get(top, "dev")) from exc
