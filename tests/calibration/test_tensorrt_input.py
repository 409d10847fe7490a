"""Calibration input of the weakly typed TensorRT path (no TensorRT needed)."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

from trt_provision.calibration.cache import GovernedCalibrationCache, decode_blob
from trt_provision.calibration.ranges import parse_trt_calibration_cache
from trt_provision.calibration.tensorrt import PAYLOAD_TRT_CACHE, tensorrt_calibration_input
from trt_provision.types import BuildConfig, CalibrationSpec, PrecisionMode

from .models import cnn_batches, make_cnn

pytestmark = pytest.mark.tier1

TRT_BLOB = b"TRT-100300-EntropyCalibration2\nx: 3c23d70a\nr1: 3c23d70a\n"


def _config(source: Path, precision: str = "int8") -> BuildConfig:
    spec = CalibrationSpec(source=str(source), num_bins=256)
    return BuildConfig(precision=PrecisionMode(precision), calibration=spec)


@pytest.fixture
def cnn(tmp_path: Path) -> tuple[Path, Path]:
    model = make_cnn(tmp_path / "cnn.onnx")
    data = tmp_path / "calib.npy"
    np.save(data, np.stack(cnn_batches(4, seed=3)))
    return model, data


def test_no_calibration_input_for_precisions_without_calibration(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    for precision in ("fp32", "fp16"):
        assert tensorrt_calibration_input(cnn[0], _config(cnn[1], precision), tmp_path) is None


def test_importing_it_imports_no_tensorrt() -> None:
    assert "tensorrt" not in sys.modules


def test_batches_honour_the_data(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    calib = tensorrt_calibration_input(model, _config(data), tmp_path / "c")
    assert calib is not None
    expected = cnn_batches(4, seed=3)
    for _ in range(2):  # re-iterable: TensorRT may be asked to calibrate twice
        got = list(calib.batches)
        assert len(got) == len(expected)
        for batch, want in zip(got, expected, strict=True):
            assert set(batch) == {"x"}
            np.testing.assert_array_equal(batch["x"], want)


def test_governed_write_then_read_round_trip(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    cache_dir = tmp_path / "c"
    calib = tensorrt_calibration_input(model, _config(data), cache_dir, precompute=False)
    assert calib is not None
    assert calib.read_cache() is None  # nothing yet, and nothing computed on the CPU
    calib.write_cache(TRT_BLOB)
    (blob,) = cache_dir.glob("*.trt.calib")
    cache = GovernedCalibrationCache(blob)
    assert cache.sha256_path.exists() and cache.dataset_path.exists()
    header, payload = decode_blob(blob.read_bytes())
    assert header.payload_kind == PAYLOAD_TRT_CACHE and payload == TRT_BLOB
    again = tensorrt_calibration_input(model, _config(data), cache_dir, precompute=False)
    assert again is not None and again.read_cache() == TRT_BLOB


def test_a_stale_key_reads_as_no_cache(cnn: tuple[Path, Path], tmp_path: Path) -> None:
    model, data = cnn
    cache_dir = tmp_path / "c"
    calib = tensorrt_calibration_input(model, _config(data), cache_dir, precompute=False)
    assert calib is not None
    calib.write_cache(TRT_BLOB)
    other = tmp_path / "other.npy"
    np.save(other, np.stack(cnn_batches(4, seed=9)))  # a changed dataset: a new key
    stale = tensorrt_calibration_input(model, _config(other), cache_dir, precompute=False)
    assert stale is not None and stale.read_cache() is None


def test_cache_precomputed_on_the_cpu_is_offered_and_stored_governed(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    cache_dir = tmp_path / "c"
    calib = tensorrt_calibration_input(model, _config(data), cache_dir, trt_version="10.3.0")
    assert calib is not None
    text = calib.read_cache()
    assert text is not None and text.startswith(b"TRT-100300-EntropyCalibration2\n")
    ranges = parse_trt_calibration_cache(text)
    assert "x" in ranges.ranges and ranges.amax("x") > 0
    (blob,) = cache_dir.glob("*.trt.calib")
    header, payload = decode_blob(blob.read_bytes())
    assert header.payload_kind == PAYLOAD_TRT_CACHE and payload == text
    # the next build on the same TensorRT reads it back without recomputing
    again = tensorrt_calibration_input(model, _config(data), cache_dir, precompute=False,
                                       trt_version="10.3.0")
    assert again is not None and again.read_cache() == text


def test_another_tensorrt_version_never_reads_the_cache_as_a_hit(
    cnn: tuple[Path, Path], tmp_path: Path
) -> None:
    model, data = cnn
    cache_dir = tmp_path / "c"
    old = tensorrt_calibration_input(model, _config(data), cache_dir, precompute=False,
                                     trt_version="10.3.0")
    assert old is not None
    old.write_cache(TRT_BLOB)
    same = tensorrt_calibration_input(model, _config(data), cache_dir, precompute=False,
                                      trt_version="10.3.0")
    assert same is not None and same.read_cache() == TRT_BLOB
    upgraded = tensorrt_calibration_input(model, _config(data), cache_dir, precompute=False,
                                          trt_version="10.16.1.11")
    assert upgraded is not None and upgraded.read_cache() is None
