"""Calibration sources, per-batch validation and the dataset digest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from trt_provision.calibration.data import (
    CalibrationDataset,
    InputSpec,
    dataset_digest,
    model_input_specs,
    validate_batch,
)
from trt_provision.errors import CalibrationCacheError
from trt_provision.types import BuildConfig, OptimizationProfile

from .models import make_cnn, make_multi_dtype

pytestmark = pytest.mark.tier0

MULTI = (
    InputSpec("f32", "float32", (None, 4)),
    InputSpec("i32", "int32", (None, 4)),
    InputSpec("i64", "int64", (None, 4)),
    InputSpec("flag", "bool", (None, 4)),
    InputSpec("f16", "float16", (None, 4)),
)


def _batch(**overrides: np.ndarray) -> dict[str, np.ndarray]:
    base = {
        "f32": np.zeros((2, 4), np.float32),
        "i32": np.zeros((2, 4), np.int32),
        "i64": np.zeros((2, 4), np.int64),
        "flag": np.zeros((2, 4), np.bool_),
        "f16": np.zeros((2, 4), np.float16),
    }
    base.update(overrides)
    return base


def test_model_input_specs_reads_names_dtypes_and_dims(tmp_path: Path) -> None:
    specs = model_input_specs(make_multi_dtype(tmp_path / "m.onnx"))
    assert [(s.name, s.dtype, s.shape) for s in specs] == [
        (s.name, s.dtype, s.shape) for s in MULTI
    ]


@pytest.mark.parametrize(
    ("name", "value", "expected_dtype"),
    [
        ("i32", np.arange(8, dtype=np.int64).reshape(2, 4), np.int32),  # int64 fits int32
        ("i64", np.arange(8, dtype=np.int32).reshape(2, 4), np.int64),  # widening
        ("i64", np.array([[1.0, 2.0, 3.0, 4.0]] * 2, np.float32), np.int64),  # integral floats
        ("flag", np.array([[0, 1, 1, 0]] * 2, np.int64), np.bool_),  # 0/1 ints
        ("f16", np.full((2, 4), 0.5, np.float32), np.float16),  # exactly representable
        ("f32", np.ones((2, 4), np.float16), np.float32),  # widening
        ("f32", np.ones((2, 4), np.int32), np.float32),  # small ints are exact
        ("i32", np.ones((2, 4), np.bool_), np.int32),
    ],
)
def test_lossless_conversion_to_declared_dtype(
    name: str, value: np.ndarray, expected_dtype: type
) -> None:
    out = validate_batch(_batch(**{name: value}), MULTI, 0)
    assert out[name].dtype == np.dtype(expected_dtype)
    np.testing.assert_array_equal(out[name].astype(np.float64), value.astype(np.float64))


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("i32", np.full((2, 4), 2**40, np.int64)),  # overflows int32
        ("i64", np.full((2, 4), 1.5, np.float32)),  # not integral
        ("flag", np.full((2, 4), 2, np.int64)),  # not 0/1
        ("f16", np.full((2, 4), 1e6, np.float32)),  # beyond fp16 range
        ("f16", np.full((2, 4), 0.1, np.float32)),  # not exactly representable
        ("f32", np.full((2, 4), 2**40 + 1, np.int64)),  # loses integer precision
    ],
)
def test_lossy_conversion_is_refused_naming_input_and_batch(name: str, value: np.ndarray) -> None:
    with pytest.raises(CalibrationCacheError) as info:
        validate_batch(_batch(**{name: value}), MULTI, 7)
    assert info.value.context["input"] == name
    assert info.value.context["batch"] == 7
    assert "expected" in info.value.context


def test_lossy_conversion_allowed_explicitly() -> None:
    out = validate_batch(_batch(f16=np.full((2, 4), 0.1, np.float32)), MULTI, 0,
                         allow_lossy_cast=True)
    assert out["f16"].dtype == np.float16


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nan_and_inf_are_refused(bad: float) -> None:
    value = np.zeros((2, 4), np.float32)
    value[1, 2] = bad
    with pytest.raises(CalibrationCacheError, match="NaN or Inf") as info:
        validate_batch(_batch(f32=value), MULTI, 3)
    assert info.value.context["input"] == "f32"
    assert info.value.context["batch"] == 3


def test_unknown_missing_rank_and_static_dim_refusals() -> None:
    with pytest.raises(CalibrationCacheError, match="does not declare") as info:
        validate_batch({**_batch(), "extra": np.zeros(1)}, MULTI, 0)
    assert info.value.context["input"] == "extra"
    batch = _batch()
    del batch["i64"]
    with pytest.raises(CalibrationCacheError, match="missing") as info:
        validate_batch(batch, MULTI, 1)
    assert info.value.context["input"] == "i64"
    with pytest.raises(CalibrationCacheError, match="rank") as info:
        validate_batch(_batch(f32=np.zeros((2, 4, 1), np.float32)), MULTI, 2)
    assert info.value.context["expected"] == [None, 4]
    with pytest.raises(CalibrationCacheError, match="dim 1") as info:
        validate_batch(_batch(f32=np.zeros((2, 5), np.float32)), MULTI, 2)
    assert info.value.context["batch"] == 2


def test_shape_outside_the_optimization_profile_is_refused() -> None:
    config = BuildConfig(profiles=(OptimizationProfile("f32", (1, 4), (2, 4), (3, 4)),))
    validate_batch(_batch(), MULTI, 0, config)
    big = {k: np.concatenate([v, v]) for k, v in _batch().items()}
    with pytest.raises(CalibrationCacheError, match="outside the optimization profile") as info:
        validate_batch(big, MULTI, 4, config)
    assert info.value.context["input"] == "f32"
    assert info.value.context["expected"]["max"] == [3, 4]


def test_sources_ndarray_stack_dict_list_iterator(tmp_path: Path) -> None:
    specs = model_input_specs(make_cnn(tmp_path / "m.onnx"))
    one = np.zeros((2, 3, 8, 8), np.float32)
    assert len(CalibrationDataset(one, specs)) == 1
    assert len(CalibrationDataset(np.stack([one, one, one]), specs)) == 3
    assert len(CalibrationDataset({"x": one}, specs)) == 1
    assert len(CalibrationDataset([one, {"x": one}], specs)) == 2
    dataset = CalibrationDataset(iter([one, one]), specs)
    assert len(list(dataset)) == 2 and len(list(dataset)) == 2  # replayable


def test_samples_beyond_profile_max_are_cut_into_opt_batches(tmp_path: Path) -> None:
    specs = model_input_specs(make_cnn(tmp_path / "m.onnx"))
    config = BuildConfig(profiles=(OptimizationProfile("x", (1, 3, 8, 8), (4, 3, 8, 8),
                                                       (8, 3, 8, 8)),))
    batches = list(CalibrationDataset(np.zeros((10, 3, 8, 8), np.float32), specs, config))
    assert [b["x"].shape[0] for b in batches] == [4, 4, 2]


def test_file_sources_npz_npy_dir_and_loader(tmp_path: Path) -> None:
    specs = model_input_specs(make_cnn(tmp_path / "m.onnx"))
    data = np.random.default_rng(0).standard_normal((3, 2, 3, 8, 8)).astype(np.float32)
    np.savez(tmp_path / "a.npz", x=data[0])
    np.save(tmp_path / "stack.npy", data)
    folder = tmp_path / "dir"
    folder.mkdir()
    np.save(folder / "0.npy", data[0])
    np.savez(folder / "1.npz", x=data[1])
    script = tmp_path / "loader.py"
    script.write_text(
        "import numpy as np\n"
        "def batches():\n"
        "    rng = np.random.default_rng(0)\n"
        "    for _ in range(2):\n"
        "        yield {'x': rng.standard_normal((2, 3, 8, 8)).astype(np.float32)}\n"
    )
    assert len(CalibrationDataset(str(tmp_path / "a.npz"), specs)) == 1
    assert len(CalibrationDataset(tmp_path / "stack.npy", specs)) == 3
    assert len(CalibrationDataset(str(folder), specs)) == 2
    assert len(CalibrationDataset(f"{script}:batches", specs)) == 2
    # relative paths resolve against base_dir (the manifest's folder)
    assert len(CalibrationDataset("loader.py:batches", specs, base_dir=tmp_path)) == 2
    with pytest.raises(CalibrationCacheError, match="no function"):
        list(CalibrationDataset(f"{script}:nope", specs))
    with pytest.raises(CalibrationCacheError, match="not found"):
        list(CalibrationDataset(str(tmp_path / "missing.npz"), specs))


def test_empty_dataset_is_an_error(tmp_path: Path) -> None:
    specs = model_input_specs(make_cnn(tmp_path / "m.onnx"))
    with pytest.raises(CalibrationCacheError, match="empty"):
        list(CalibrationDataset([], specs))
    (tmp_path / "empty").mkdir()
    with pytest.raises(CalibrationCacheError, match=r"no \.npy or \.npz"):
        list(CalibrationDataset(str(tmp_path / "empty"), specs))


def test_digest_is_stable_and_order_sensitive() -> None:
    a = {"x": np.arange(12, dtype=np.float32).reshape(3, 4)}
    b = {"x": np.ones((3, 4), np.float32)}
    assert dataset_digest([a, b]) == dataset_digest([dict(a), dict(b)])
    assert dataset_digest([a, b]) != dataset_digest([b, a])
    assert dataset_digest([a]) != dataset_digest([a, a])
    # dtype and shape are part of the digest, not only the bytes
    assert dataset_digest([a]) != dataset_digest([{"x": a["x"].view(np.int32)}])
    assert dataset_digest([a]) != dataset_digest([{"x": a["x"].reshape(4, 3)}])


def test_digest_ignores_name_order_and_memory_layout() -> None:
    x = np.arange(24, dtype=np.float32).reshape(4, 6)
    y = np.arange(4, dtype=np.int64)
    strided = np.asfortranarray(x)
    assert dataset_digest([{"x": x, "y": y}]) == dataset_digest([{"y": y, "x": strided}])
    assert dataset_digest([{"x": x}]) == dataset_digest([{"x": x.astype(">f4")}])


@settings(max_examples=40, deadline=None)
@given(
    arrays=st.lists(
        hnp.arrays(dtype=st.sampled_from([np.float32, np.int64, np.uint8]),
                   shape=hnp.array_shapes(min_dims=1, max_dims=3, max_side=5)),
        min_size=1, max_size=4,
    ),
    data=st.data(),
)
def test_digest_property_equal_content_equal_digest_and_one_byte_changes_it(
    arrays: list[np.ndarray], data: st.DataObject
) -> None:
    batches = [{"t": a} for a in arrays]
    copies = [{"t": a.copy()} for a in arrays]
    assert dataset_digest(batches) == dataset_digest(copies)
    index = data.draw(st.integers(0, len(arrays) - 1))
    target = copies[index]["t"]
    if target.size:
        raw = target.reshape(-1).view(np.uint8)
        raw[data.draw(st.integers(0, raw.size - 1))] ^= 0x01
        assert dataset_digest(batches) != dataset_digest(copies)
