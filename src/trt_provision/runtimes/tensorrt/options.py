"""Runtime-level settings of the TensorRT strategy (build-relevant ones live in BuildConfig)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.runtimes.tensorrt.subprocess_build import DEFAULT_TIMEOUT_S
from trt_provision.types import BuildConfig, CalibrationInput

__all__ = ["INT8_QUANTIZATION", "PrecisionConverter", "TensorrtOptions"]

_BUILDERS = ("python", "trtexec", "auto")
# "auto": explicit quantization (the Q/DQ graph of the governed calibration) wherever the
# calibrator API is deprecated (TensorRT >= 10.1) or gone (11); the implicit calibrator only
# below 10.1. "explicit" / "implicit" force one of them.
INT8_QUANTIZATION = ("auto", "explicit", "implicit")

PrecisionConverter = Callable[[Path, BuildConfig, Path], tuple[Path, Mapping[str, Any]]]


@dataclass(frozen=True)
class TensorrtOptions:
    """Runtime-level settings (build-relevant ones live in BuildConfig)."""

    timing_cache_dir: Path | None = None
    allow_engine_host_code: bool = False  # only when the trust policy allows it
    # Plugin creators looked up and reported but not required. None by default: TensorRT's
    # plugin library has no "DecodeNMS" (its NMS creators are EfficientNMS_TRT,
    # EfficientNMS_ONNX_TRT, BatchedNMS_TRT...: plugin/ of NVIDIA/TensorRT v10.16).
    optional_plugins: tuple[str, ...] = ()
    strict_plugins: bool = True
    plugin_namespace: str = ""
    # Shared libraries with plugin creators, loaded into TensorRT's registry once per process
    # before any build or deserialize.
    plugin_libraries: tuple[Path, ...] = ()
    calibration: Callable[[Path, BuildConfig, str], CalibrationInput | None] | None = None
    # "python": the TensorRT Python builder; "trtexec": delegate ONNX builds to a trtexec
    # binary (configured, else on PATH, else JetPack's /usr/src/tensorrt/bin); "auto":
    # trtexec when one is found and the build can be expressed on its command line, else
    # Python. Network callbacks always use Python.
    builder: str = "python"
    trtexec_path: Path | None = None
    trtexec_timeout_s: float = DEFAULT_TIMEOUT_S
    # Turns an FP32 ONNX into the precision-carrying one (FP16 graph or Q/DQ INT8) before
    # parsing: always on the strongly typed path, and for INT8/mixed on the weakly typed path
    # under explicit quantization. Returns the new model path and metadata for the sidecar.
    precision_converter: PrecisionConverter | None = None
    int8_quantization: str = "auto"
    # Free memory of an integrated GPU (Jetson) before a build: the workspace is capped to a
    # share of it. None: the host's MemAvailable.
    free_memory_bytes: Callable[[], int | None] | None = None

    def __post_init__(self) -> None:
        if self.builder not in _BUILDERS:
            raise ValueError(f"builder must be one of {_BUILDERS}, got {self.builder!r}")
        if self.trtexec_timeout_s <= 0:
            raise ValueError(f"trtexec_timeout_s must be > 0, got {self.trtexec_timeout_s}")
        if self.int8_quantization not in INT8_QUANTIZATION:
            raise ValueError(f"int8_quantization must be one of {INT8_QUANTIZATION}, "
                             f"got {self.int8_quantization!r}")
