"""The governed calibration cache: every branch of the lookup, and the key."""

from __future__ import annotations

import contextlib
import hashlib
import logging
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from trt_provision.calibration.cache import (
    CacheHeader,
    GovernedCalibrationCache,
    cache_path_for,
    calibration_key,
    decode_blob,
    encode_blob,
)
from trt_provision.errors import CalibrationCacheError

pytestmark = pytest.mark.tier0

KEY_A = "a" * 64
KEY_B = "b" * 64
DATASET = "sha256:" + "c" * 64


def _header(key: str = KEY_A, dataset: str = DATASET) -> CacheHeader:
    return CacheHeader(key=key, algorithm="entropy", dataset_version=dataset,
                       payload_kind="ranges-json")


def _stored(tmp_path: Path, governed: bool = True) -> GovernedCalibrationCache:
    cache = GovernedCalibrationCache(tmp_path / "m.int8.calib", governed=governed)
    cache.store(_header(), b'{"payload": 1}')
    return cache


def _snapshot(cache: GovernedCalibrationCache) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in (cache.path, cache.sha256_path, cache.dataset_path)
            if p.exists()}


def test_store_writes_blob_and_both_sidecars(tmp_path: Path) -> None:
    cache = _stored(tmp_path)
    blob = cache.path.read_bytes()
    assert cache.sha256_path.read_text() == f"{hashlib.sha256(blob).hexdigest()}  m.int8.calib\n"
    assert cache.dataset_path.read_text() == DATASET + "\n"
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_match_is_reused(tmp_path: Path) -> None:
    lookup = _stored(tmp_path).load(KEY_A, DATASET)
    assert lookup.status == "hit" and lookup.usable
    assert lookup.payload == b'{"payload": 1}'


def test_missing_is_a_miss(tmp_path: Path) -> None:
    lookup = GovernedCalibrationCache(tmp_path / "none.calib").load(KEY_A, DATASET)
    assert lookup.status == "miss" and not lookup.usable


def test_different_key_is_stale_logged_and_replaced(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    cache = _stored(tmp_path)
    with caplog.at_level(logging.INFO, logger="trt_provision.calibration.cache"):
        lookup = cache.load(KEY_B, DATASET)
    assert lookup.status == "stale" and not lookup.usable
    assert any(getattr(r, "event", None) == "calibration.cache.stale" for r in caplog.records)
    cache.store(_header(KEY_B, "v2"), b"new")
    assert cache.load(KEY_B, "v2").payload == b"new"
    assert cache.dataset_path.read_text() == "v2\n"


@pytest.mark.parametrize("sidecar", ["sha256", "dataset"])
@pytest.mark.parametrize("content", [b"not a digest\n", b"", b"\x00\xff\n", b"a b c d\n"])
def test_malformed_sidecar_is_an_error_and_nothing_is_overwritten(
    tmp_path: Path, sidecar: str, content: bytes
) -> None:
    cache = _stored(tmp_path)
    path = cache.sha256_path if sidecar == "sha256" else cache.dataset_path
    path.write_bytes(content)
    before = _snapshot(cache)
    for key in (KEY_A, KEY_B):  # reported even when the cache would be stale
        with pytest.raises(CalibrationCacheError, match="malformed"):
            cache.load(key, DATASET)
    assert _snapshot(cache) == before


def test_blob_not_matching_its_sidecar_is_an_error(tmp_path: Path) -> None:
    cache = _stored(tmp_path)
    cache.path.write_bytes(cache.path.read_bytes() + b"tampered")
    before = _snapshot(cache)
    with pytest.raises(CalibrationCacheError, match=r"does not match its \.sha256"):
        cache.load(KEY_A, DATASET)
    assert _snapshot(cache) == before


def test_dataset_sidecar_disagreeing_with_header_is_an_error(tmp_path: Path) -> None:
    cache = _stored(tmp_path)
    cache.dataset_path.write_text("sha256:" + "d" * 64 + "\n")
    with pytest.raises(CalibrationCacheError, match="disagrees"):
        cache.load(KEY_A, DATASET)


@pytest.mark.parametrize("which", ["sha256", "dataset"])
def test_missing_sidecar_reads_as_incomplete(tmp_path: Path, which: str) -> None:
    cache = _stored(tmp_path)
    (cache.sha256_path if which == "sha256" else cache.dataset_path).unlink()
    assert cache.load(KEY_A, DATASET).status == "incomplete"


def test_legacy_raw_trt_cache_accepted_only_without_governance(tmp_path: Path) -> None:
    raw = b"TRT-100300-EntropyCalibration2\ninput: 3c010204\n"
    path = tmp_path / "legacy.calib"
    path.write_bytes(raw)
    lookup = GovernedCalibrationCache(path, governed=False).load(KEY_A, DATASET)
    assert lookup.status == "legacy" and lookup.payload == raw
    # Governed, the same file has no sidecar: not trusted, recalibrated.
    assert GovernedCalibrationCache(path).load(KEY_A, DATASET).status == "incomplete"


def test_ungoverned_still_detects_a_stale_governed_blob(tmp_path: Path) -> None:
    cache = _stored(tmp_path, governed=False)
    assert cache.load(KEY_A, DATASET).status == "hit"
    assert cache.load(KEY_B, DATASET).status == "stale"


@pytest.mark.parametrize(
    "blob",
    [b"", b"TRTPCAL\n", b"TRTPCAL\n{not json}\npayload", b"TRTPCAL\n[]\n",
     b'TRTPCAL\n{"key": "x"}\n', b"raw bytes"],
)
def test_malformed_blob_is_refused(blob: bytes) -> None:
    with pytest.raises(CalibrationCacheError):
        decode_blob(blob)


@settings(max_examples=60, deadline=None)
@given(
    key=st.text("0123456789abcdef", min_size=64, max_size=64),
    dataset=st.text(st.characters(min_codepoint=0x21, max_codepoint=0x7E), min_size=1,
                    max_size=80),
    algorithm=st.sampled_from(["entropy", "minmax", "percentile"]),
    payload=st.binary(max_size=512),
)
def test_blob_round_trip_property(key: str, dataset: str, algorithm: str, payload: bytes) -> None:
    header = CacheHeader(key=key, algorithm=algorithm, dataset_version=dataset,
                         payload_kind="ranges-json")
    assert decode_blob(encode_blob(header, payload)) == (header, payload)


@settings(max_examples=60, deadline=None)
@given(st.binary(max_size=256))
def test_blob_parser_never_fails_with_anything_but_a_cache_error(data: bytes) -> None:
    with contextlib.suppress(CalibrationCacheError):
        decode_blob(data)


def test_calibration_key_covers_every_input() -> None:
    base = dict(model_hash="m" * 64, precision="int8", dataset_version="v1",
                algorithm="entropy", algorithm_params={"num_bins": 2048},
                plugins=[("p", "1", "")], pinned_keywords=["router"], excluded_op_types=[],
                tool_version="0.1.0")
    key = calibration_key(**base)  # type: ignore[arg-type]
    assert len(key) == 64
    changes = dict(model_hash="n" * 64, precision="mixed", dataset_version="v2",
                   algorithm="minmax", algorithm_params={"num_bins": 1024},
                   plugins=[("p", "2", "")], pinned_keywords=["router", "kan"],
                   excluded_op_types=["Softmax"], tool_version="0.2.0")
    for field, value in changes.items():
        assert calibration_key(**{**base, field: value}) != key, field  # type: ignore[arg-type]
    # order of set-like inputs does not matter
    assert calibration_key(**{**base, "pinned_keywords": ["kan", "router"]}) == calibration_key(
        **{**base, "pinned_keywords": ["router", "kan"]})  # type: ignore[arg-type]


def test_cache_path_is_key_independent_and_safe(tmp_path: Path) -> None:
    assert cache_path_for(tmp_path, "resnet 50/../x", "int8").parent == tmp_path
    assert cache_path_for(tmp_path, "m", "int8").name == "m.int8.calib"


def test_cache_path_names_the_model_hash_so_equal_stems_do_not_collide(
    tmp_path: Path,
) -> None:
    a = cache_path_for(tmp_path, "model", "int8", model_hash="1" * 64)
    b = cache_path_for(tmp_path, "model", "int8", model_hash="sha256:" + "2" * 64)
    assert a != b
    assert a.name == f"model.{'1' * 16}.int8.calib"
    trt = cache_path_for(tmp_path, "model", "int8", model_hash="1" * 64, kind="trt")
    assert trt.name == f"model.{'1' * 16}.int8.trt.calib"
    with pytest.raises(ValueError, match="model hash"):
        cache_path_for(tmp_path, "model", "int8", model_hash="../../etc")
