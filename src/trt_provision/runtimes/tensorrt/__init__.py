"""The TensorRT strategy: the only package that imports ``tensorrt`` or cuda-python.

Importing this package imports neither; they load on first use.
"""

from __future__ import annotations

from trt_provision.runtimes.tensorrt.network import LayerEvidence, NetworkSource
from trt_provision.runtimes.tensorrt.options import TensorrtOptions
from trt_provision.runtimes.tensorrt.runner import TensorrtEngineHandle
from trt_provision.runtimes.tensorrt.runtime import TensorrtRuntime
from trt_provision.types import CalibrationInput

__all__ = [
    "CalibrationInput",
    "LayerEvidence",
    "NetworkSource",
    "TensorrtEngineHandle",
    "TensorrtOptions",
    "TensorrtRuntime",
]
