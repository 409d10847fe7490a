from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper, numpy_helper

from trt_provision.errors import InvalidNameError, ModelError
from trt_provision.identity import (
    ParsedEngineName,
    build_option_digest,
    compute_identity,
    model_sha256,
    parse_engine_filename,
    validate_model_name,
)
from trt_provision.types import (
    BuildConfig,
    CalibrationSpec,
    EngineIdentity,
    HardwareCompatibility,
    OptimizationProfile,
    PluginSpec,
    PrecisionMode,
    RuntimeTarget,
)

pytestmark = pytest.mark.tier0

names = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_-]{0,63}", fullmatch=True)
hexes = st.text("0123456789abcdef", min_size=64, max_size=64)
versions = st.one_of(
    st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,3}", fullmatch=True),
    st.from_regex(r"[0-9]{1,3}(\.[0-9]{1,3}){0,2}(rc[0-9])?\+[a-z0-9]{1,6}(\.[a-z0-9]{1,4})?",
                  fullmatch=True),
)
targets = st.one_of(
    st.from_regex(r"sm[0-9]{2,3}(\+|cc)?", fullmatch=True),
    st.from_regex(r"cpu-[a-z0-9]{1,10}", fullmatch=True),
)
platforms = st.one_of(
    st.just("dgpu"), st.just("host"), st.from_regex(r"jp[0-9](\.[0-9]){0,2}", fullmatch=True)
)


@settings(max_examples=300, deadline=None)
@given(
    name=names,
    model_hash=hexes,
    precision=st.sampled_from(list(PrecisionMode)),
    runtime=st.from_regex(r"[a-z][a-z0-9]{0,8}", fullmatch=True),
    version=versions,
    target=targets,
    platform=platforms,
    digest=st.text("0123456789abcdef", min_size=12, max_size=12),
)
def test_filename_round_trips(
    name: str,
    model_hash: str,
    precision: PrecisionMode,
    runtime: str,
    version: str,
    target: str,
    platform: str,
    digest: str,
) -> None:
    identity = EngineIdentity(
        name, model_hash, precision, runtime, version, target, platform, digest
    )
    filename = identity.filename
    assert parse_engine_filename(filename) == ParsedEngineName.of(identity)
    assert "/" not in filename and "\x00" not in filename
    assert set(filename) <= set(
        "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_-.+"
    )


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=120))
def test_parse_never_crashes_on_garbage(text: str) -> None:
    try:
        parsed = parse_engine_filename(text)
    except InvalidNameError:
        return
    assert ".." not in parsed.model_name and "/" not in parsed.model_name


@pytest.mark.parametrize(
    "bad", ["", "..", "a/b", "../etc", "a\\b", "a\x00b", "x" * 65, ".hidden", "a b", "é", "a..b"]
)
def test_unsafe_model_names_are_refused(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        validate_model_name(bad)


def test_identity_example_is_self_describing() -> None:
    identity = EngineIdentity(
        "resnet_router",
        "3f9a1c2b4d5e6f70" * 4,
        PrecisionMode.INT8,
        "trt",
        "10.3.0",
        "sm87",
        "jp6.2",
        "a1b2c3d4e5f6",
    )
    assert identity.filename == (
        "resnet_router.3f9a1c2b4d5e6f70.int8.sm87.jp6_2.trt-10_3_0.a1b2c3d4e5f6.engine"
    )
    parsed = parse_engine_filename(identity.filename)
    assert parsed.jetpack == "6.2" and parsed.runtime_version == "10.3.0"
    assert identity.hardware_compatibility is HardwareCompatibility.NONE
    amp = dataclasses.replace(identity, target="sm80+")
    assert amp.hardware_compatibility is HardwareCompatibility.AMPERE_PLUS
    assert ".sm80+." in amp.filename


BASE = BuildConfig(
    precision=PrecisionMode.INT8, profiles=(OptimizationProfile("x", (1, 3), (4, 3), (8, 3)),)
)
VARIANTS = {
    "precision": dataclasses.replace(BASE, precision=PrecisionMode.MIXED),
    "workspace": dataclasses.replace(BASE, workspace_mib=2048),
    "profile": dataclasses.replace(
        BASE, profiles=(OptimizationProfile("x", (1, 3), (4, 3), (16, 3)),)
    ),
    "hwcompat": dataclasses.replace(BASE, hardware_compatibility=HardwareCompatibility.AMPERE_PLUS),
    "opt_level": dataclasses.replace(BASE, builder_optimization_level=5),
    "plugins": dataclasses.replace(BASE, plugins=(PluginSpec("TilePack", "1", "tile"),)),
    "plugin_version": dataclasses.replace(BASE, plugins=(PluginSpec("TilePack", "2", "tile"),)),
    "pinned": dataclasses.replace(BASE, fp16_pinned_keywords=("router",)),
    "strict": dataclasses.replace(BASE, strict_precision_constraints=False),
    "strong": dataclasses.replace(BASE, strongly_typed=True),
    "excluded": dataclasses.replace(BASE, excluded_op_types=("Softmax",)),
    # An engine is only valid under the accuracy gate it passed.
    "min_cosine": dataclasses.replace(BASE, min_cosine=0.9),
    "min_cosine_tighter": dataclasses.replace(BASE, min_cosine=0.99),
    "max_rel_error": dataclasses.replace(BASE, max_rel_error=0.05),
}


def test_every_build_relevant_option_changes_the_digest() -> None:
    digests = {"base": build_option_digest(BASE)}
    for label, config in VARIANTS.items():
        digests[label] = build_option_digest(config)
    digests["calibration_key"] = build_option_digest(BASE, calibration_key="k1")
    assert len(set(digests.values())) == len(digests), digests


def test_digest_is_deterministic_and_ignores_non_build_settings(tmp_path: Path) -> None:
    again = BuildConfig(
        precision=PrecisionMode.INT8, profiles=(OptimizationProfile("x", (1, 3), (4, 3), (8, 3)),)
    )
    assert build_option_digest(BASE) == build_option_digest(again)
    # The timing cache location does not change the engine bytes.
    moved = dataclasses.replace(BASE, timing_cache_path=tmp_path / "t.cache")
    assert build_option_digest(moved) == build_option_digest(BASE)
    reordered = dataclasses.replace(BASE, fp16_pinned_keywords=("kan", "router"))
    assert build_option_digest(reordered) == build_option_digest(BASE)


def test_compute_identity_binds_runtime_target() -> None:
    cfg = BuildConfig()
    a = compute_identity(
        model_name="m",
        model_hash="ab" * 32,
        config=cfg,
        target=RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2"),
    )
    b = compute_identity(
        model_name="m",
        model_hash="ab" * 32,
        config=cfg,
        target=RuntimeTarget("trt", "10.16.1", "sm87", "jp6.2"),
    )
    c = compute_identity(
        model_name="m",
        model_hash="ab" * 32,
        config=cfg,
        target=RuntimeTarget("trt", "10.3.0", "sm90", "dgpu"),
    )
    assert len({a.filename, b.filename, c.filename}) == 3
    assert a == compute_identity(
        model_name="m",
        model_hash="ab" * 32,
        config=BuildConfig(),
        target=RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2"),
    )


def _external_model(directory: Path, weight: np.ndarray) -> Path:
    node = helper.make_node("Add", ["x", "w"], ["y"])
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [256])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [256])],
        [numpy_helper.from_array(weight, "w")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = directory / "ext.onnx"
    onnx.save(
        model,
        str(path),
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="ext.bin",
        size_threshold=0,
    )
    return path


def test_model_hash_covers_external_data(tmp_path: Path) -> None:
    path = _external_model(tmp_path, np.ones(256, np.float32))
    first = model_sha256(path)
    assert first == model_sha256(path)
    data = bytearray((tmp_path / "ext.bin").read_bytes())
    data[10] ^= 0xFF
    (tmp_path / "ext.bin").write_bytes(bytes(data))
    assert model_sha256(path) != first
    (tmp_path / "ext.bin").unlink()
    with pytest.raises(ModelError, match="external data file is missing"):
        model_sha256(path)


def test_model_hash_refuses_external_data_outside_model_dir(tmp_path: Path) -> None:
    path = _external_model(tmp_path, np.ones(256, np.float32))
    model = onnx.load(str(path), load_external_data=False)
    for kv in model.graph.initializer[0].external_data:
        if kv.key == "location":
            kv.value = "../escape.bin"
    onnx.save(model, str(path))
    with pytest.raises(ModelError, match="escapes"):
        model_sha256(path)


def test_missing_and_malformed_models(tmp_path: Path) -> None:
    with pytest.raises(ModelError, match="not found"):
        model_sha256(tmp_path / "nope.onnx")
    bad = tmp_path / "bad.onnx"
    bad.write_bytes(b"\xff\x00 definitely not protobuf \x12\x34" * 10)
    with pytest.raises(ModelError, match="cannot parse"):
        model_sha256(bad)


def test_calibration_spec_validation() -> None:
    with pytest.raises(ValueError, match="algorithm"):
        CalibrationSpec(algorithm="magic")
    with pytest.raises(ValueError, match="percentile"):
        CalibrationSpec(percentile=10)


def test_tightening_the_accuracy_gate_changes_the_digest() -> None:
    loose = dataclasses.replace(BASE, min_cosine=0.9, max_rel_error=0.1)
    tight = dataclasses.replace(BASE, min_cosine=0.999, max_rel_error=0.1)
    assert build_option_digest(loose) != build_option_digest(tight)
    assert build_option_digest(BASE) != build_option_digest(loose)


@pytest.mark.parametrize(
    ("installed", "canonical", "in_filename"),
    [
        ("1.19.0+cpu", "1.19.0+cpu", "ortcpu-1_19_0+cpu."),
        ("1.19.0+CU121", "1.19.0+cu121", "ortcpu-1_19_0+cu121."),
        ("1.20.0rc1+cpu-avx_2", "1.20.0rc1+cpu.avx.2", "ortcpu-1_20_0rc1+cpu_avx_2."),
        (" 10.3.0 ", "10.3.0", "ortcpu-10_3_0."),
    ],
)
def test_local_version_segments_round_trip(
    installed: str, canonical: str, in_filename: str
) -> None:
    target = RuntimeTarget("ortcpu", installed, "cpu-avx2", "host")
    assert target.runtime_version == canonical
    identity = compute_identity(
        model_name="m", model_hash="ab" * 32, config=BuildConfig(), target=target
    )
    assert in_filename in identity.filename
    assert parse_engine_filename(identity.filename) == ParsedEngineName.of(identity)


@pytest.mark.parametrize("bad", ["", "+cpu", "1.0+", "1..0", "1.0+a+b", "v1.0", "1.0/x", "1" * 80])
def test_unusable_runtime_versions_raise_a_typed_error(bad: str) -> None:
    with pytest.raises(InvalidNameError):
        RuntimeTarget("ortcpu", bad, "cpu-avx2", "host")


@pytest.mark.parametrize(
    "field", ["runtime", "runtime_version", "target", "platform", "options_digest"]
)
def test_malformed_identity_fields_raise_a_typed_error(field: str) -> None:
    values = {
        "model_name": "m",
        "model_sha256": "ab" * 32,
        "precision": PrecisionMode.FP32,
        "runtime": "ortcpu",
        "runtime_version": "1.19.0",
        "target": "cpu-avx2",
        "platform": "host",
        "options_digest": "0" * 12,
    }
    values[field] = "BAD/../x"
    with pytest.raises(InvalidNameError, match=field):
        EngineIdentity(**values)  # type: ignore[arg-type]
