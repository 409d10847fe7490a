"""The error tree of trt-provision.

Every error the tool raises on purpose derives from :class:`TrtProvisionError`. Each
carries a one-line message, a ``context`` mapping of typed facts (paths, expected and found
values) and, when it wraps a third-party failure, the original exception as ``__cause__``
(raised with ``raise ... from exc``) so nothing is lost.

    TrtProvisionError                 user-facing; the CLI maps it to exit code 1
    ├── ManifestError                 bad manifest / config value (file, key, expected)
    │   └── InvalidNameError          a model name that is unsafe as a file name
    ├── ModelError                    ONNX model missing, unreadable or malformed
    ├── EngineBuildError              a runtime failed to build an engine
    ├── CalibrationCacheError         bad calibration data or calibration cache
    ├── AccuracyGateError             a converted graph failed the accuracy gate
    ├── EngineGateError               an engine refused before deserialization
    ├── OutOfMemoryError              the memory budget refused a load
    ├── InferenceError                inference failed or got bad inputs
    ├── StoreError                    local or remote engine store failure
    ├── ThermalLimitError             the device is too hot to start a build
    ├── MissingDependencyError        an optional dependency is not installed
    └── UsageError                    a command-line argument is wrong (names the flag)

    InternalError                     a bug in trt-provision itself (exit code 3)
"""

from __future__ import annotations

# Not `from typing import ...`: typing alone costs a few ms of every start-up, `--help` too.
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any

__all__ = [
    "AccuracyGateError",
    "CalibrationCacheError",
    "EngineBuildError",
    "EngineGateError",
    "InferenceError",
    "InternalError",
    "InvalidNameError",
    "ManifestError",
    "MissingDependencyError",
    "ModelError",
    "OutOfMemoryError",
    "StoreError",
    "ThermalLimitError",
    "TrtProvisionError",
    "UsageError",
]


class TrtProvisionError(Exception):
    """Base of every deliberate, user-facing error."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context: Mapping[str, Any] = dict(context)

    def __str__(self) -> str:
        if not self.context:
            return self.message
        details = ", ".join(f"{k}={v}" for k, v in self.context.items())
        return f"{self.message} ({details})"


class ManifestError(TrtProvisionError):
    """A manifest or config value is wrong: names the file, the key and what was expected."""


class InvalidNameError(ManifestError):
    """A model name that could escape the cache directory or break the filename schema."""


class ModelError(TrtProvisionError):
    """An ONNX model is missing, unreadable or malformed."""


class EngineBuildError(TrtProvisionError):
    """A runtime strategy failed to build an engine."""


class CalibrationCacheError(TrtProvisionError):
    """Calibration data or a calibration cache is invalid."""


class AccuracyGateError(TrtProvisionError):
    """A converted (fp16/int8) graph failed the configured accuracy gate."""


class EngineGateError(TrtProvisionError):
    """An engine was refused before deserialization (integrity, host or trust mismatch)."""


class OutOfMemoryError(TrtProvisionError):
    """The memory budget refused to admit an engine."""


class InferenceError(TrtProvisionError):
    """Inference failed or was given inputs that do not match the engine."""


class StoreError(TrtProvisionError):
    """A local or remote engine store operation failed."""


class ThermalLimitError(TrtProvisionError):
    """The device is above the configured temperature limit."""


class MissingDependencyError(TrtProvisionError):
    """An optional dependency is missing; the message names the pip extra that provides it."""

    def __init__(self, module: str, extra: str, *, advice: str | None = None) -> None:
        # advice: how to install it where a pip extra is not the way (TensorRT on Jetson).
        how = advice or f"pip install 'trt-provision[{extra}]'"
        super().__init__(
            f"optional dependency '{module}' is not installed; install it with: {how}",
            module=module,
            extra=extra,
        )
        self.module = module
        self.extra = extra


class UsageError(TrtProvisionError):
    """A command-line argument is wrong: the message names the flag as the user typed it
    (the CLI prints it without a type name: a flag is not a manifest key)."""


class InternalError(Exception):
    """A bug in trt-provision itself, never caused by user input."""
