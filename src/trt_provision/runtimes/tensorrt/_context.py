"""What the builders, the loader and the runner share: modules, version, device, options."""

from __future__ import annotations

from typing import Any

from trt_provision._lazy import import_optional
from trt_provision.errors import EngineBuildError, MissingDependencyError
from trt_provision.runtimes.tensorrt._paths import path_available
from trt_provision.runtimes.tensorrt._process import (
    ensure_plugins,
    shared_logger,
    version_at_least,
)
from trt_provision.runtimes.tensorrt.cuda_buffers import device_compute_capability, load_cudart
from trt_provision.runtimes.tensorrt.options import TensorrtOptions
from trt_provision.runtimes.tensorrt.progress import meminfo_available_bytes
from trt_provision.types import BuildConfig, HostCapabilities

__all__ = ["TrtContext", "check_dla_int8", "has_calibrator"]

# The Python bindings deprecate the calibrator API from this version on (python/src/infer/
# pyCore.cpp of NVIDIA/TensorRT v10.3.0: int8_calibrator, set_calibration_profile).
CALIBRATOR_DEPRECATED_SINCE = (10, 1)


class TrtContext:
    """Lazily loaded tensorrt / cudart and the facts every part of the strategy agrees on."""

    def __init__(
        self,
        options: TensorrtOptions,
        host: HostCapabilities | None,
        trt_module: Any | None,
        cuda_module: Any | None,
    ) -> None:
        self.options = options
        self.host = host
        self._trt_module = trt_module
        self._cuda_module = cuda_module
        self._sm: str | None = host.sm.rstrip("+") if host and host.sm else None
        self._version: str | None = None

    def trt(self) -> Any:
        if self._trt_module is None:
            self._trt_module = import_optional("tensorrt", "tensorrt")
        return self._trt_module

    def optional_trt(self) -> Any | None:
        try:
            return self.trt()
        except MissingDependencyError:
            return None

    def cuda(self) -> Any:
        if self._cuda_module is None:
            self._cuda_module = load_cudart()
        return self._cuda_module

    def version(self) -> str:
        """The one TensorRT version of this run: the importable module's, else the host's.

        Fixed at the first answer, so the identity, the timing cache and the trtexec check
        all see the same value.
        """
        if self._version is None:
            trt = self.optional_trt()
            if trt is not None:
                self._version = str(trt.__version__)
            elif self.host is not None and self.host.trt_version:
                self._version = self.host.trt_version
            else:
                self.trt()  # raises the MissingDependencyError naming the extra
                raise AssertionError("unreachable")
        return self._version

    def device_sm(self) -> str:
        if self._sm is None:
            major, minor = device_compute_capability(self.cuda())
            self._sm = f"sm{major}{minor}"
        return self._sm

    def device_name(self) -> str | None:
        """The GPU's model name from the host probe (NVML), when known."""
        return self.host.gpu_name if self.host and self.host.gpu_name else None

    def sm_number(self) -> int:
        return int(self.device_sm()[2:].rstrip("+").removesuffix("cc"))

    def free_memory(self) -> int | None:
        """Bytes an integrated GPU can still allocate: the configured probe, else the host's
        ``MemAvailable``."""
        probe = self.options.free_memory_bytes
        return probe() if probe is not None else meminfo_available_bytes()

    @property
    def integrated(self) -> bool:
        """A Jetson-style GPU sharing RAM with the host (pinned host memory counts too)."""
        return bool(self.host and (self.host.gpu_integrated or self.host.jetpack))

    def logger(self, trt: Any) -> Any:
        return shared_logger(trt)

    def register_plugins(self, trt: Any) -> None:
        ensure_plugins(trt, self.options.plugin_namespace, self.options.plugin_libraries)

    def prefer_strong(self, build_config: BuildConfig, onnx: bool = True) -> bool:
        """Whether an unset ``strongly_typed`` builds the converter's graph strongly typed:
        an ONNX build with a precision converter, reduced precision, not for a DLA (whether
        a strongly typed network builds for the DLA is open until a real run; NVIDIA's DLA
        route is weakly typed)."""
        return (onnx and self.options.precision_converter is not None
                and build_config.strongly_typed is None and build_config.dla_core is None
                and build_config.precision.value != "fp32")

    def implicit_int8(self, trt: Any | None, build_config: BuildConfig) -> bool:
        """Whether weakly typed INT8 calibrates through a calibrator (implicit quantization).

        Explicit quantization (a Q/DQ graph) is taken wherever the calibrator API is
        deprecated or gone; the calibrator only below 10.1 or when asked for. DLA INT8 is
        the exception: NVIDIA's route for it is implicit calibration of the graph with its
        Q/DQ nodes stripped (NVIDIA/Deep-Learning-Accelerator-SW tools/qdq-translator/
        README.md: stripped ONNX + ``--calib`` + ``--useDLACore``; NVIDIA/TensorRT#2222), so
        wherever a calibrator exists a DLA INT8 build takes it (:func:`check_dla_int8`
        refuses what contradicts that).
        """
        if (build_config.dla_core is not None and build_config.precision.needs_calibration
                and has_calibrator(trt)):
            return True
        choice = self.options.int8_quantization
        if choice != "auto":
            return choice == "implicit"
        if trt is None or not path_available(trt, "int8_calibrator"):
            return False
        return not version_at_least(self.version(), CALIBRATOR_DEPRECATED_SINCE)


def has_calibrator(trt: Any | None) -> bool:
    """Whether this TensorRT calibrates on the weak path (10.x: yes, 11.x: removed)."""
    return trt is not None and path_available(trt, "weak_int8") and path_available(
        trt, "int8_calibrator")


def check_dla_int8(options: TensorrtOptions, trt: Any | None, build_config: BuildConfig) -> None:
    """Refuse a DLA INT8 build that would go through the Q/DQ graph where TensorRT still
    calibrates: the DLA takes INT8 scales from calibration (dynamic ranges), with Q/DQ
    stripped (NVIDIA/Deep-Learning-Accelerator-SW tools/qdq-translator; NVIDIA/TensorRT
    #2222). On TensorRT 11 (no calibrator) the strongly typed graph is the only route."""
    if build_config.dla_core is None or not build_config.precision.needs_calibration:
        return
    if not has_calibrator(trt):
        return
    if options.int8_quantization == "explicit":
        raise EngineBuildError(
            "DLA INT8 takes its scales from calibration, not from a Q/DQ graph (NVIDIA's DLA "
            "route strips Q/DQ and calibrates); use int8_quantization auto or implicit",
            dla_core=build_config.dla_core)
    if build_config.strongly_typed is True:
        raise EngineBuildError(
            "DLA INT8 on this TensorRT is built weakly typed from calibration (Q/DQ stripped); "
            "a strongly typed Q/DQ graph is not NVIDIA's DLA route: leave strongly_typed unset",
            dla_core=build_config.dla_core)
