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
def test_fake_members_have_the_kind_and_setter_of_the_real_ones(version: str) -> None:
    """A fake method where the binding has a property (or a setter the binding lacks) would
    let code through that fails on TensorRT."""
    surface = load_surface(version)
    trt = make_fake_tensorrt(version)
    for name in surface.classes:
        cls = getattr(trt, name, None) if "." not in name else None
        if cls is None:
            continue
        for member, info in surface.classes[name]["members"].items():
            impl = inspect.getattr_static(cls, member, None)
            if impl is None or member.startswith("_") or info.get("kind") == "attribute":
                continue
            if info.get("kind") == "property":
                assert isinstance(impl, property), (name, member)
                if not info.get("settable"):
                    assert impl.fset is None, (name, member, "setter the binding lacks")
            elif info.get("kind") == "method":
                assert callable(impl) and not isinstance(impl, property), (name, member)


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


def _found(snippet: str) -> set[tuple[str, str]]:
    return {(v.use.expr, v.version) for v in check_uses(scan_source(textwrap.dedent(snippet)))}


ALL = set(SUPPORTED_VERSIONS)
TRT11 = {"11.4.0.106"}


def _versions(found: set[tuple[str, str]], expr: str) -> set[str]:
    return {v for e, v in found if e == expr}


def test_scanner_follows_calls_through_their_recorded_return_type() -> None:
    found = _found(
        """
        def f(trt, network, builder):
            network.get_layer(0).precison = trt.DataType.HALF   # typo behind a call
            network.get_layer(0).precision = trt.DataType.HALF  # ILayer.precision: not in 11
            dims = network.get_input(0).shap                    # typo on ITensor
            builder.create_builder_config().set_flg(trt.BuilderFlag.TF32)
            ok = network.get_input(0).shape, builder.create_builder_config().set_flag
        """
    )
    assert _versions(found, "network.get_layer(...).precison") == ALL
    assert _versions(found, "network.get_layer(...).precision") == TRT11
    assert _versions(found, "network.get_input(...).shap") == ALL
    assert _versions(found, "builder.create_builder_config(...).set_flg") == ALL
    assert len(found) == 3 * 3 + 1


def test_scanner_checks_getattr_and_setattr_with_a_constant_name() -> None:
    found = _found(
        """
        def f(trt, layer, config):
            getattr(trt.BuilderFlag, "FP16")                 # checked like trt.BuilderFlag.FP16
            setattr(layer, "precision", trt.DataType.HALF)   # checked like layer.precision
            getattr(config, "int8_calibrater")               # typo
            if hasattr(trt.BuilderFlag, "FP16"):             # feature detection: never flagged
                flag = getattr(trt.BuilderFlag, "FP8", None) # three-argument getattr: detection
            getattr(layer, name)                             # not a constant: not checked
        """
    )
    assert _versions(found, "getattr(trt.BuilderFlag, 'FP16')") == TRT11
    assert _versions(found, "setattr(layer, 'precision')") == TRT11
    assert _versions(found, "getattr(config, 'int8_calibrater')") == ALL
    assert len(found) == 1 + 1 + 3


def test_scanner_follows_aliases_and_other_module_roots() -> None:
    found = _found(
        """
        import tensorrt
        import tensorrt as t
        from tensorrt import BuilderFlag as BF

        def f(trt, network):
            flags = trt.BuilderFlag
            flags.FP16                       # alias of an enum
            t.BuilderFlag.INT8               # another name for the module
            tensorrt.Bulder                  # the module's own name
            BF.OBEY_PRECISION_CONSTRAINTS    # imported from the module
            first = network.get_layer(0)     # an alias through a call: an ILayer
            first.set_output_type(0, trt.DataType.HALF)
            other = trt.BuilderFlag
            other = None                     # assigned twice: not an alias
            other.FP16
        """
    )
    assert _versions(found, "flags.FP16") == TRT11
    assert _versions(found, "t.BuilderFlag.INT8") == TRT11
    assert _versions(found, "tensorrt.Bulder") == ALL
    assert _versions(found, "BF.OBEY_PRECISION_CONSTRAINTS") == TRT11
    assert _versions(found, "first.set_output_type") == TRT11
    assert not _versions(found, "other.FP16")


def test_scanner_checks_argument_counts_against_the_signatures() -> None:
    snippet = textwrap.dedent(
        """
        def f(trt, config, builder, logger, network):
            config.set_flag()                                           # needs the flag
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE)  # needs pool_size
            config.set_flag(flg=trt.BuilderFlag.TF32)                   # no such keyword
            trt.Builder()                                               # needs a logger
            trt.Dims2(1, 2, 3)                                          # no such overload
            network.get_layer(0).get_output()                           # through a call
            builder.create_network()                                    # flags has a default
            config.set_memory_pool_limit(pool=trt.MemoryPoolType.WORKSPACE, pool_size=1)
            trt.Builder(logger), trt.Dims2(1, 2), trt.Dims2([1, 2]), trt.Dims2()
            config.set_flag(*flags)                                     # not counted
        """
    )
    violations = check_uses(scan_source(snippet))
    bad = {v.use.expr for v in violations}
    assert bad == {"config.set_flag", "config.set_memory_pool_limit", "trt.Builder",
                   "trt.Dims2", "network.get_layer(...).get_output"}
    assert len(violations) == 6 * 3
    assert all("positional argument" in v.reason for v in violations)
    assert {v.use.line for v in violations} == set(range(3, 9))


def test_several_tags_are_checked_against_every_version_any_of_them_reaches() -> None:
    snippet = textwrap.dedent(
        """
        @trt_path("weak", "strong")
        def either(trt, config):
            config.set_flag(trt.BuilderFlag.FP16)   # runs on the strong path too: TRT 11

        @trt_path()
        def untagged(trt):
            return trt.DataType.HALF
        """
    )
    surfaces = [load_surface(v) for v in SUPPORTED_VERSIONS]
    assert versions_for(["weak", "strong"], surfaces) == list(SUPPORTED_VERSIONS)
    assert versions_for(["weak", "same_compute_capability"], surfaces) == list(
        SUPPORTED_VERSIONS)
    assert versions_for(["weak", "weak_int8"], surfaces) == ["10.3.0", "10.16.1.11"]
    violations = check_uses(scan_source(snippet))
    assert {(v.use.expr, v.version) for v in violations} == {
        ("trt.BuilderFlag.FP16", "11.4.0.106"), ("trt.DataType.HALF", "(unknown path tag ())")}


def test_scanner_checks_properties_against_methods_and_setters() -> None:
    """def_property / def_property_readonly in the bindings: a property is never called, a
    read-only one is never assigned, and a method is never assigned to."""
    found = {
        (v.use.expr, v.reason) for v in check_uses(scan_source(textwrap.dedent(
            """
            def f(trt, builder, config, engine, context):
                n = builder.num_DLA_cores()            # property called
                engine.num_io_tensors = 3              # read-only property assigned
                setattr(builder, "num_DLA_cores", 2)   # the same through setattr
                config.set_flag = None                 # a method assigned to
                config.DLA_core = 0                    # settable: fine
                k = builder.num_DLA_cores              # read: fine
                context.execute_async_v3(0)            # a method called: fine
            """)))
    }
    reasons = {expr: reason for expr, reason in found}
    assert reasons["builder.num_DLA_cores"] == "Builder.num_DLA_cores is a property, not a method"
    assert reasons["engine.num_io_tensors"] == "a read-only property is assigned"
    assert reasons["setattr(builder, 'num_DLA_cores')"] == "a read-only property is assigned"
    assert reasons["config.set_flag"] == "a method is assigned to"
    assert set(reasons) == {"builder.num_DLA_cores", "engine.num_io_tensors",
                            "setattr(builder, 'num_DLA_cores')", "config.set_flag"}
