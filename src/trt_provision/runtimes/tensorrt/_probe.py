"""Ask an installed TensorRT its version by importing it (last resort of the host probe)."""

from __future__ import annotations

import logging

from trt_provision._lazy import import_optional, is_available
from trt_provision.errors import MissingDependencyError

__all__ = ["imported_tensorrt_version"]

log = logging.getLogger(__name__)


def imported_tensorrt_version() -> str | None:
    if not is_available("tensorrt"):
        return None
    try:
        trt = import_optional("tensorrt", "tensorrt")
        return str(trt.__version__)
    except (MissingDependencyError, OSError, AttributeError) as exc:
        # A broken install (missing libnvinfer) must not break probing.
        log.warning(
            "tensorrt is present but does not import: %s", exc, extra={"event": "host.trt.broken"}
        )
        return None
