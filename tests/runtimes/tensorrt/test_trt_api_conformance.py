"""The recording fake and the TensorRT runtime code against the real API surfaces."""

from __future__ import annotations

import inspect
import textwrap
from pathlib import Path

import pytest
from trt_api_scan import check_uses, scan_package, scan_source, versions_for

from fakes.fake_tensorrt import SUPPORTED_VERSIONS, load_surface, make_fake_tensorrt
from trt_provision.runtimes.tensorrt._paths import PATH_FEATURES, path_available

pytestmark = pytest.mark.tier1

PACKAGE = Path(__file__).resolve().parents[3] / "src" / "trt_provision" / "runtimes" / "tensorrt"


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_surface_files_are_for_their_version(version: str) -> None:
    surface = load_surface(version)
    assert surface.version == version
    assert len(surface.classes) > 100 and len(surface.enums) > 50
    assert surface.has("Builder", "build_serialized_network")


def test_surfaces_show_what_trt11_removed() -> None:
    old, new = load_surface("10.16.1.11"), load_surface("11.4.0.106")
    removed = [
        ("BuilderFlag", "FP16"), ("BuilderFlag", "INT8"), ("BuilderFlag", "BF16"),
        ("BuilderFlag", "OBEY_PRECISION_CONSTRAINTS"), ("IInt8EntropyCalibrator2",),
        ("IInt8Calibrator",), ("ILayer", "precision"), ("ILayer", "set_output_type"),
        ("Builder", "platform_has_fast_int8"), ("IBuilderConfig", "int8_calibrator"),
    ]
    for path in removed:
        assert old.has(*path), path
        assert not new.has(*path), path
    assert new.has("NetworkDefinitionCreationFlag", "STRONGLY_TYPED")
    assert new.has("HardwareCompatibilityLevel", "SAME_COMPUTE_CAPABILITY")
    assert not load_surface("10.3.0").has("HardwareCompatibilityLevel", "SAME_COMPUTE_CAPABILITY")


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_fake_exposes_nothing_the_real_surface_lacks(version: str) -> None:
    surface = load_surface(version)
    trt = make_fake_tensorrt(version)
    public = {n for n in vars(trt) if not n.startswith("_")}
    assert public <= surface.top_level, sorted(public - surface.top_level)
    for name in public:
        obj = getattr(trt, name)
        if not inspect.isclass(obj):
            continue
        members = {m for m in dir(obj) if not m.startswith("_")}
        if name in surface.enums:
            assert members <= set(surface.enums[name]), (name, members - set(surface.enums[name]))
        else:
            allowed = surface.class_members(name)
            assert members <= allowed, (name, sorted(members - allowed))


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_fake_carries_every_class_and_enum_of_its_surface(version: str) -> None:
    surface = load_surface(version)
    trt = make_fake_tensorrt(version)
    for name in surface.top_level - set(surface.functions) - set(surface.constants):
        assert hasattr(trt, name), name
    for enum, members in surface.enums.items():
        if "." not in enum:
            assert set(members) == {m for m in dir(getattr(trt, enum)) if not m.startswith("_")}


@pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
def test_feature_detection_agrees_with_the_scanner(version: str) -> None:
    trt = make_fake_tensorrt(version)
    surface = load_surface(version)
    for tag in PATH_FEATURES:
        assert path_available(trt, tag) == (version in versions_for([tag], [surface])), tag
    expected_weak = not version.startswith("11.")
    assert path_available(trt, "weak") is expected_weak
    assert path_available(trt, "int8_calibrator") is expected_weak
    assert path_available(trt, "strong")
    assert path_available(trt, "same_compute_capability") is (version != "10.3.0")


def test_runtime_package_uses_only_what_each_path_version_has() -> None:
    uses = scan_package(PACKAGE)
    assert len(uses) > 50, "the scanner found too little: is it still looking?"
    tags = {t for u in uses for t in u.tags}
    assert {"common", "weak", "strong", "int8_calibrator"} <= tags
    violations = check_uses(uses)
    assert not violations, "\n".join(map(str, violations))


BAD_SNIPPET = textwrap.dedent(
    """
    def build(trt, config, network, layer):
        config.set_flag(trt.BuilderFlag.FP16)          # TRT 11 removed FP16: common path
        layer.precision = trt.DataType.HALF            # ILayer.precision: gone in TRT 11
        builder = trt.Bulder(None)                     # typo
        config.set_memory_pool_limt(0, 1)              # typo on a conventional variable
    """
)


def test_scanner_catches_typos_and_trt11_removals() -> None:
    violations = check_uses(scan_source(BAD_SNIPPET))
    found = {(v.use.expr, v.version) for v in violations}
    assert ("trt.BuilderFlag.FP16", "11.4.0.106") in found
    assert ("layer.precision", "11.4.0.106") in found
    assert ("trt.Bulder", "10.3.0") in found
    assert ("config.set_memory_pool_limt", "10.16.1.11") in found
    # FP16 exists on TRT 10: the removal is reported for 11 only.
    assert ("trt.BuilderFlag.FP16", "10.3.0") not in found


def test_scanner_accepts_version_specific_code_under_its_tag() -> None:
    snippet = textwrap.dedent(
        """
        TRT_PATH = "common"

        @trt_path("weak")
        def pin(trt, config, layer):
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            layer.precision = trt.DataType.HALF

        @trt_path("same_compute_capability")
        def scc(trt, config):
            config.hardware_compatibility_level = (
                trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY
            )
        """
    )
    uses = scan_source(snippet)
    assert len(uses) == 6
    assert check_uses(uses) == []


def test_module_tag_applies_to_the_whole_module() -> None:
    snippet = 'TRT_PATH = "int8_calibrator"\nclass C(trt.IInt8EntropyCalibrator2):\n    pass\n'
    assert check_uses(scan_source(snippet)) == []
    untagged = "class C(trt.IInt8EntropyCalibrator2):\n    pass\n"
    assert [v.version for v in check_uses(scan_source(untagged))] == ["11.4.0.106"]


def test_unknown_tag_is_a_violation() -> None:
    snippet = '@trt_path("wek")\ndef f(trt):\n    return trt.BuilderFlag.FP16\n'
    assert check_uses(scan_source(snippet))
