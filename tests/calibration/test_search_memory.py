"""The sensitivity search's result is kept in the governed calibration cache under its
inputs' key: a rebuild with the same inputs builds only the chosen graph, never searches
again; other inputs (another gate) search afresh; a damaged entry is searched again."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from trt_provision.calibration.precision import prepare_model_for_precision
from trt_provision.calibration.stages import search
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

from .models import make_mlp_classifier, outlier_batches

pytestmark = pytest.mark.tier1


def _prepare(model: Path, tmp: Path, **kwargs: Any) -> Any:
    data = tmp / "d.npy"
    if not data.exists():
        np.save(data, np.stack(outlier_batches(10, rows=40)))
    config = BuildConfig(precision=PrecisionMode.INT8,
                         calibration=CalibrationSpec(source=str(data), algorithm="minmax"),
                         **kwargs)
    return prepare_model_for_precision(model, config, tmp / "w", calibration_cache_dir=tmp / "c")


@pytest.fixture
def searches(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    calls: list[int] = []
    real = search.sensitivity_search

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(search, "sensitivity_search", counting)
    return calls


def test_a_rebuild_takes_the_search_result_from_the_cache(
    tmp_path: Path, searches: list[int]
) -> None:
    mlp = make_mlp_classifier(tmp_path / "mlp.onnx")
    first = _prepare(mlp, tmp_path).metadata
    assert searches == [1] and first["quantization"]["sensitivity"]["kept"] == ["fc1"]
    again = _prepare(mlp, tmp_path).metadata
    assert searches == [1]  # not searched again
    sens = again["quantization"]["sensitivity"]
    assert sens["cached"] is True and sens["kept"] == ["fc1"] and sens["passes_gate"]
    assert again["quantization"]["kept_float_for_accuracy"] == ["fc1"]
    assert again["accuracy"]["verdict"] == "passed"
    # Another gate judges validation differently: searched afresh.
    _prepare(mlp, tmp_path, min_cosine=0.98)
    assert searches == [1, 1]


def test_a_damaged_search_cache_is_searched_again(tmp_path: Path, searches: list[int]) -> None:
    mlp = make_mlp_classifier(tmp_path / "mlp.onnx")
    _prepare(mlp, tmp_path)
    (blob,) = (tmp_path / "c").glob("*sensitivity.calib")
    blob.write_bytes(blob.read_bytes() + b"tampered")
    again = _prepare(mlp, tmp_path).metadata
    assert searches == [1, 1]
    assert again["quantization"]["sensitivity"]["kept"] == ["fc1"]
