"""Entry point the ONNX Runtime strategy calls to apply a precision to a model."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_provision.errors import EngineBuildError
from trt_provision.types import BuildConfig, PrecisionMode

__all__ = ["PreparedModel", "prepare_model_for_precision"]


@dataclass(frozen=True)
class PreparedModel:
    model_path: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)


def prepare_model_for_precision(
    model_path: Path,
    config: BuildConfig,
    workdir: Path,
    *,
    calibration_cache_dir: Path | None,
) -> PreparedModel:
    if config.precision is PrecisionMode.FP32:
        return PreparedModel(model_path=model_path)
    raise EngineBuildError(
        f"precision {config.precision.value} is not supported by this strategy yet",
        model=str(model_path),
    )
