"""Process-wide TensorRT state: one logger, plugins registered once, one version, warnings.

* **One logger.** TensorRT keeps the first logger a builder, runtime or refitter is created
  with for the whole process and warns when a later one differs (NvInferRuntime.h,
  ``createInferRuntime``/``createInferBuilder``: "the logger ... is shared"); Polygraphy
  likewise holds a single process-wide logger (NVIDIA/TensorRT
  tools/Polygraphy/polygraphy/backend/trt/util.py, ``get_trt_logger``).
* **Plugins before any deserialize.** An engine that contains plugin layers deserializes
  only when their creators are registered; Polygraphy's ``EngineFromBytes`` and NVIDIA's
  samples call ``init_libnvinfer_plugins`` before every ``deserialize_cuda_engine``
  (tools/Polygraphy/polygraphy/backend/trt/loader.py). We do it once per process and
  namespace, together with loading the configured plugin libraries
  (``IPluginRegistry.load_library``).
* **Deprecated bindings warn.** ``utils::deprecateMember`` in the bindings raises a Python
  ``DeprecationWarning`` (python/src/utils.h, ``PyErr_WarnEx``); our own test config turns
  warnings into errors, so every TensorRT call of a build runs under
  :func:`captured_warnings`, which moves them into the build log.
"""

from __future__ import annotations

import collections
import contextlib
import logging
import re
import threading
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from trt_provision.errors import EngineBuildError

__all__ = [
    "captured_warnings",
    "ensure_plugins",
    "parse_trt_version",
    "recent_messages",
    "shared_logger",
    "version_at_least",
]

log = logging.getLogger(__name__)

_LOCK = threading.Lock()
# Keyed by the module object's id; the module is kept alive with its entry so the id stays
# unique (tests create one fake module per TensorRT version).
_LOGGERS: dict[int, tuple[Any, Any]] = {}
_PLUGINS: dict[int, tuple[Any, set[tuple[str, tuple[str, ...]]]]] = {}


def shared_logger(trt: Any) -> Any:
    """The one TensorRT logger of this process for this tensorrt module.

    An ``ILogger`` subclass, as Polygraphy's ``get_trt_logger`` (tools/Polygraphy/polygraphy/
    backend/trt/util.py): warnings and errors go to this package's logging (event
    ``trt.log``), INFO and VERBOSE are dropped, and the latest warnings and errors are kept
    (:func:`recent_messages`) so a failed build can say what TensorRT said.
    """
    with _LOCK:
        held = _LOGGERS.get(id(trt))
        if held is None:
            held = (trt, _recording_logger(trt))
            _LOGGERS[id(trt)] = held
        return held[1]


def recent_messages(logger: Any) -> list[str]:
    """The warnings and errors TensorRT logged lately through ``logger``, oldest first (empty
    for a plain ``trt.Logger``); ``len`` of it before a build marks where the build's begin."""
    return list(getattr(logger, "recent_messages", ()))


def _recording_logger(trt: Any) -> Any:
    if not hasattr(trt, "ILogger"):
        return trt.Logger(trt.Logger.WARNING)
    warning = int(trt.ILogger.WARNING)
    error = int(trt.ILogger.ERROR)
    trt_log = logging.getLogger("trt_provision.runtimes.tensorrt.trt")

    class RecordingLogger(trt.ILogger):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.ILogger.__init__(self)  # pybind11 needs the base initialised
            self.recent_messages: collections.deque[str] = collections.deque(maxlen=200)

        def log(self, severity: Any, msg: str) -> None:
            # noexcept in C++: nothing may escape (Polygraphy's CustomTrtLogger likewise).
            with contextlib.suppress(Exception):
                level = int(severity)
                if level > warning:
                    return
                self.recent_messages.append(str(msg))
                trt_log.log(logging.ERROR if level <= error else logging.WARNING,
                            "TensorRT: %s", msg, extra={"event": "trt.log"})

    return RecordingLogger()


def ensure_plugins(
    trt: Any, namespace: str = "", libraries: Sequence[Path] = ()
) -> None:
    """Register TensorRT's own plugins under ``namespace`` and load ``libraries``, once.

    A library that does not load is an :class:`EngineBuildError` naming it (an engine that
    needs it could not deserialize anyway).
    """
    key = (namespace, tuple(str(p) for p in libraries))
    with _LOCK:
        held = _PLUGINS.setdefault(id(trt), (trt, set()))
        if key in held[1]:
            return
        logger = _LOGGERS.get(id(trt))
    plugin_logger = logger[1] if logger is not None else shared_logger(trt)
    if not trt.init_libnvinfer_plugins(plugin_logger, namespace):
        raise EngineBuildError("TensorRT could not register its plugins",
                               namespace=namespace)
    registry = trt.get_plugin_registry()
    for library in libraries:
        handle = registry.load_library(str(library))
        if handle is None:
            raise EngineBuildError("TensorRT could not load a plugin library",
                                   library=str(library))
    with _LOCK:
        held[1].add(key)
    log.info("TensorRT plugins registered", extra={"event": "trt.plugins.registered",
                                                   "namespace": namespace,
                                                   "libraries": [str(p) for p in libraries]})


_VERSION_RE = re.compile(r"(\d+)\.(\d+)(?:\.(\d+))?")


def parse_trt_version(version: str) -> tuple[int, int, int]:
    """``"10.16.1.11"`` -> ``(10, 16, 1)``; an unreadable version is (0, 0, 0)."""
    match = _VERSION_RE.match(str(version).strip())
    if match is None:
        return (0, 0, 0)
    return (int(match.group(1)), int(match.group(2)), int(match.group(3) or 0))


def version_at_least(version: str, minimum: tuple[int, int]) -> bool:
    return parse_trt_version(version)[:2] >= minimum


@contextlib.contextmanager
def captured_warnings(sink: list[str]) -> Iterator[None]:
    """Collect the warnings raised inside (DeprecationWarning included) into ``sink``.

    They are logged once at WARNING and never raised, whatever the warnings filters say.
    """
    caught: list[warnings.WarningMessage] = []
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield
    finally:  # a failed build keeps what TensorRT warned about on the way
        seen: set[str] = set()
        for item in caught:
            text = f"{item.category.__name__}: {item.message}"
            if text in seen:
                continue
            seen.add(text)
            sink.append(text)
            log.warning("TensorRT: %s", text, extra={"event": "trt.warning", "warning": text})
