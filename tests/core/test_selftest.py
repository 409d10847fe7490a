"""``trt-provision selftest``: the no-TensorRT path through the real CLI, and the TensorRT
path against the recording fake tensorrt and fake CUDA runtime (found through
``sys.modules``, the way the real modules are), so requirements, builds per precision and
typed path, gate and budget, comparisons and the cache checks are all exercised."""

from __future__ import annotations

import importlib.machinery
import json
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from fakes.fake_cuda import FakeCudaRuntime, cudaError_t
from fakes.fake_tensorrt import (
    FakeLayerSpec,
    FakeModelSpec,
    FakeTensorSpec,
    fake_state,
    make_fake_tensorrt,
)
from trt_provision import _lazy
from trt_provision.cli.main import main
from trt_provision.measure.selftest import (
    MIN_COSINE,
    PRECISIONS,
    Requirement,
    check_requirements,
    compare_outputs,
    run_selftest,
)
from trt_provision.types import HostCapabilities, PrecisionMode

pytestmark = pytest.mark.tier1

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "examples" / "demo.toml"
_ONNX_TO_FAKE = {"float32": "FLOAT", "float16": "HALF", "int64": "INT64", "int32": "INT32",
                 "bool": "BOOL", "int8": "INT8", "uint8": "UINT8"}


def _spec_of(value: Any) -> FakeTensorSpec:
    ttype = value.type.tensor_type
    dtype = helper.tensor_dtype_to_np_dtype(ttype.elem_type).name
    dims = tuple(d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else -1
                 for d in ttype.shape.dim)
    return FakeTensorSpec(value.name, dims, _ONNX_TO_FAKE[dtype])


def _model_spec(path: str) -> FakeModelSpec:
    """What TensorRT's parser would report for this ONNX file's I/O (names, dims, dtypes).
    One plain layer: which layers the model has is not what this test is about."""
    graph = onnx.load(path, load_external_data=False).graph
    inits = {i.name for i in graph.initializer}
    return FakeModelSpec(
        inputs=tuple(_spec_of(v) for v in graph.input if v.name not in inits),
        outputs=tuple(_spec_of(v) for v in graph.output),
        layers=(FakeLayerSpec("node_0"),),
    )


Installer = Callable[..., Any]


@pytest.fixture
def fake_trt(monkeypatch: pytest.MonkeyPatch) -> Installer:
    """Put a fake tensorrt and a fake cuda.bindings.runtime where imports find them."""

    def install(version: str, *, plugins: bool = True) -> Any:
        cuda = FakeCudaRuntime(compute_capability=(9, 0))
        trt = make_fake_tensorrt(version, cuda=cuda, recorder=cuda.recorder)
        state = fake_state(trt)
        if plugins:
            # The versions the creators report (plugin/ of NVIDIA/TensorRT v10.3..v11.1).
            state.plugins = [("EfficientNMS_TRT", "1", ""), ("ROIAlign_TRT", "2", "")]
        trt.__spec__ = importlib.machinery.ModuleSpec("tensorrt", None)
        modules = {"tensorrt": trt, "cuda.bindings.runtime": cuda}
        for name in ("cuda", "cuda.bindings"):
            package = type(sys)(name)
            package.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            package.__path__ = []  # type: ignore[attr-defined]
            modules[name] = package
        for name, module in modules.items():
            monkeypatch.setitem(sys.modules, name, module)
        return trt

    return install


def _host(version: str, **changes: Any) -> HostCapabilities:
    values: dict[str, Any] = {
        "sm": "sm90", "gpu_name": "Fake GPU", "gpu_memory_bytes": 80 << 30,
        "trt_version": version, "cuda_driver_version": "13.0",
        "nvidia_driver_version": "580.1",
    }
    values.update(changes)
    return HostCapabilities(**values)


def _matmul_identity_model(tmp_path: Path) -> Path:
    """y = x @ I: an engine that copies its input computes exactly what ONNX Runtime does
    (the fake engine copies an input whose shape and dtype match the output)."""
    weight = helper.make_tensor("w", TensorProto.FLOAT, (8, 8), np.eye(8, dtype=np.float32).ravel())
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="mm")], "ident",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    (tmp_path / "models").mkdir()
    (tmp_path / "calibration").mkdir()
    onnx.save(model, str(tmp_path / "models" / "ident.onnx"))
    rng = np.random.default_rng(3)
    np.savez(tmp_path / "calibration" / "ident.npz",
             x=rng.standard_normal((2000, 8)).astype(np.float32))  # 400 test samples
    manifest = tmp_path / "ident.toml"
    manifest.write_text(
        '[[models]]\nname = "ident"\npath = "models/ident.onnx"\n'
        '[[models.profiles]]\ninput = "x"\nmin = [1, 8]\nopt = [4, 8]\nmax = [8, 8]\n'
    )
    return manifest


# --------------------------------------------------------------------------- comparisons


def test_compare_outputs_metrics() -> None:
    ref = {"a": np.array([[3.0, 4.0]], np.float32), "b": np.ones((2, 2), np.float32)}
    cand = {"a": np.array([[3.0, 4.5]], np.float32), "b": np.ones((2, 2), np.float32)}
    a, b = compare_outputs(ref, cand)
    assert a.name == "a" and a.max_abs_error == pytest.approx(0.5)
    assert a.max_rel_error == pytest.approx(0.5 / 4.0)
    assert a.cosine == pytest.approx((9 + 18) / (5 * np.hypot(3, 4.5)))
    assert (b.cosine, b.max_abs_error, b.max_rel_error, b.elements) == (1.0, 0.0, 0.0, 4)


@pytest.mark.parametrize("candidate", [
    {}, {"a": np.ones((1, 3))}, {"a": np.array([[np.nan, 1.0]])},
])
def test_compare_outputs_never_passes_missing_misshapen_or_nonfinite(candidate: Any) -> None:
    (result,) = compare_outputs({"a": np.ones((1, 2))}, candidate)
    assert result.cosine == -1.0 and result.max_abs_error == float("inf")


# --------------------------------------------------------------------------- requirements


def test_requirements_name_what_is_missing_and_the_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_lazy, "is_available", lambda name: name.startswith("cuda"))
    monkeypatch.setattr("trt_provision.measure.selftest.is_available",
                        lambda name: name.startswith("cuda"))
    reqs = {r.name: r for r in check_requirements(_host("", trt_version=None,
                                                        cuda_driver_version="12.6"))}
    assert not reqs["tensorrt"].ok
    assert reqs["tensorrt"].fix == "pip install 'trt-provision[tensorrt-cu12]'"
    assert reqs["gpu"].ok and reqs["gpu"].found == "Fake GPU sm90"


def test_cuda_python_newer_than_the_driver_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trt_provision.measure.selftest.is_available", lambda name: True)
    monkeypatch.setattr("trt_provision.measure.selftest._dist_version", lambda *names: "13.0.1")
    reqs = {r.name: r for r in check_requirements(_host("10.3.0", cuda_driver_version="12.6"))}
    assert not reqs["cuda-python"].ok
    assert "needs a CUDA 13 driver" in reqs["cuda-python"].problem
    assert reqs["cuda-python"].fix == "pip install 'trt-provision[cuda-cu12]'"


def test_no_gpu_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("trt_provision.measure.selftest.is_available", lambda name: True)
    reqs = {r.name: r for r in check_requirements(HostCapabilities(trt_version="10.3.0"))}
    assert not reqs["gpu"].ok and "NVIDIA driver" in reqs["gpu"].fix


@pytest.mark.skipif(_lazy.is_available("tensorrt"), reason="this host has TensorRT")
def test_cli_without_tensorrt_exits_1_naming_the_extra(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "trt_provision", "selftest", "--json",
         "--report-dir", str(tmp_path / "r")],
        capture_output=True, text=True, timeout=600, cwd=tmp_path,
    )
    assert proc.returncode == 1, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "tensorrt: the tensorrt Python module is not installed" in lines[0]
    assert "pip install 'trt-provision[tensorrt-cu1" in lines[0]
    report = json.loads(proc.stdout)
    assert report["ok"] is False and "tensorrt" in report["missing"]
    assert report["cases"] == []
    written = json.loads((tmp_path / "r" / "selftest.json").read_text())
    assert written["missing"] == report["missing"]
    assert "| tensorrt | NO |" in (tmp_path / "r" / "selftest.md").read_text()
    assert not (tmp_path / "trt-provision-selftest").exists()


# --------------------------------------------------------------------------- TensorRT path


def test_demo_corpus_on_fake_trt10_reports_every_case_and_compares(
    fake_trt: Installer, tmp_path: Path
) -> None:

    trt = fake_trt("10.16.1.11")
    report = run_selftest(manifest=DEMO, report_dir=tmp_path / "report",
                          host=_host("10.16.1.11"), work_dir=tmp_path / "work")
    assert not report.missing
    keys = {(c.model, c.precision, c.typed_path) for c in report.cases}
    assert keys == {(m, p.value, t) for m in ("demo_cnn", "two_inputs", "dynamic_mlp")
                    for p in PRECISIONS for t in ("weak", "strong")}
    assert len(report.cases) == 3 * 4 * 2
    assert {c.status for c in report.cases} <= {"pass", "fail", "error", "not-offered",
                                                "not-applicable"}
    assert all(c.detail for c in report.cases if c.status != "pass")
    # two_inputs has no node the Q/DQ quantizer takes: int8/mixed do not apply to it, on
    # either path, and the case says why instead of failing.
    for precision in ("int8", "mixed"):
        for path in ("weak", "strong"):
            na = next(c for c in report.cases
                      if (c.model, c.precision, c.typed_path) == ("two_inputs", precision, path))
            assert na.status == "not-applicable", na
            assert "nothing to quantize" in na.detail and na.engine is None
    assert not [f for f in report.failures
                if f.startswith(("two_inputs/int8", "two_inputs/mixed"))]
    # TensorRT 10.16 offers both paths: nothing is "not offered", and a model the fake can
    # take is built on the path asked for, then loaded through gate and budget and run by
    # the build's own check of the engine.
    assert not [c for c in report.cases if c.status == "not-offered"]
    built = [c for c in report.cases if c.engine]
    assert fake_state(trt).recorder.names.count("Runtime.deserialize_cuda_engine") >= len(built)
    # The fake engine does not compute the model: the build's check refuses it, naming the
    # output, and the self-test reports the case failed (nothing of it published).
    mlp = {(c.precision, c.typed_path): c for c in report.cases if c.model == "dynamic_mlp"}
    for precision in ("fp32", "fp16"):
        for path in ("weak", "strong"):
            case = mlp[(precision, path)]
            assert case.status == "fail" and case.engine is None, case
            assert "engine refused on trt" in case.detail and "'scores'" in case.detail, case
    assert "cosine" in mlp[("fp32", "weak")].detail
    assert mlp[("fp16", "weak")].min_cosine == MIN_COSINE[PrecisionMode.FP16]
    assert not report.ok

    checks = {c.name: c for c in report.checks}
    assert checks["plugins"].status == "pass"
    assert checks["plugins"].facts["found"] == ["EfficientNMS_TRT", "ROIAlign_TRT"]
    assert checks["polygraphy"].status == "skipped"  # not installed here
    # The builds reported their phases to the progress monitor (the fake builder drives it).
    assert checks["build-phases"].status == "pass", checks["build-phases"]
    # The timing cache is checked through a rebuild of an engine built; the fake computes
    # none of these models, so none was (the check on a model it computes exactly:
    # test_cli_passes_on_a_model_the_fake_computes_exactly).
    if built:
        assert checks["timing-cache"].status == "pass", checks["timing-cache"]
    else:
        assert checks["timing-cache"].status == "skipped", checks["timing-cache"]
    if not any(c.engine for c in report.cases if c.precision == "int8"):
        assert checks["calibration-cache"].status == "skipped"

    data = json.loads((tmp_path / "report" / "selftest.json").read_text())
    assert data["ok"] is False and len(data["cases"]) == 24
    assert data["case_counts"]["fail"] == sum(c.status == "fail" for c in report.cases)
    md = (tmp_path / "report" / "selftest.md").read_text()
    assert "| dynamic_mlp | fp16 | weak | fail |" in md
    assert "| two_inputs | int8 | strong | not-applicable |" in md
    assert data["case_counts"]["not-applicable"] == 4


def test_a_precision_that_applies_to_no_model_is_not_a_failure() -> None:
    from trt_provision.measure.selftest import CaseResult, SelftestReport

    na = "nothing to quantize: no node of the model was quantized for int8"
    report = SelftestReport(requirements=(), host={}, cases=[
        CaseResult("m", "fp32", "strong", "pass"),
        CaseResult("m", "int8", "weak", "not-applicable", na),
        CaseResult("m", "int8", "strong", "not-applicable", na),
    ])
    assert report.failures == [] and report.ok
    # Where it applies to another model, that model must still pass it on some path.
    report.cases.append(CaseResult("n", "int8", "strong", "fail", "worst cosine 0.5"))
    assert report.failures == ["n/int8/strong: fail", "int8: no typed path passed"]
    report.cases[-1].status = "pass"
    assert report.ok


def test_cli_passes_on_a_model_the_fake_computes_exactly(
    fake_trt: Installer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_trt("11.4.0.106")
    manifest = _matmul_identity_model(tmp_path)
    monkeypatch.setattr("trt_provision.host.probe_host", lambda: _host("11.4.0.106"))
    monkeypatch.chdir(tmp_path)
    code = main(["selftest", "--json", "--manifest", str(manifest)])
    out, err = capsys.readouterr()
    report = json.loads(out)
    assert code == 0, json.dumps([err, report["failures"], report["cases"], report["checks"]], indent=1)
    assert report["ok"] is True
    # Asking for a path TensorRT 11 lacks is expected: no error line for it on stderr.
    assert "ERROR" not in err and "error:" not in err
    by_path = {(c["precision"], c["typed_path"]): c for c in report["cases"]}
    # TensorRT 11 has no weakly typed path: refused before any build, reported as such.
    assert {c["status"] for (_, t), c in by_path.items() if t == "weak"} == {"not-offered"}
    for precision in ("fp32", "fp16", "int8", "mixed"):
        strong = by_path[(precision, "strong")]
        assert strong["status"] == "pass" and strong["taken_path"] == "strong"
        assert strong["outputs"][0]["cosine"] == 1.0
        assert strong["outputs"][0]["max_abs_error"] == 0.0
    checks = {c["name"]: c for c in report["checks"]}
    assert checks["calibration-cache"]["status"] == "pass", checks["calibration-cache"]
    assert checks["timing-cache"]["status"] == "pass", checks["timing-cache"]
    assert checks["plugins"]["status"] == "pass"
    assert (tmp_path / "trt-provision-selftest" / "selftest.md").is_file()


def test_missing_plugins_and_a_failed_build_are_reported_not_raised(
    fake_trt: Installer, tmp_path: Path
) -> None:
    trt = fake_trt("10.3.0", plugins=False)
    manifest = _matmul_identity_model(tmp_path)
    fake_state(trt).recorder.fail("Builder.build_serialized_network", RuntimeError("boom"))
    report = run_selftest(manifest=manifest, host=_host("10.3.0"), work_dir=tmp_path / "w",
                          precisions=(PrecisionMode.FP32,))
    assert {c.status for c in report.cases} == {"error"}
    assert all("boom" in c.detail for c in report.cases)
    assert {c.name: c.status for c in report.checks}["plugins"] == "error"
    assert not report.ok and "fp32/weak: error" in report.summary_line()


def test_no_gpu_found_by_the_runtime_is_a_missing_requirement(
    fake_trt: Installer, tmp_path: Path
) -> None:
    trt = fake_trt("10.16.1.11")
    cuda = fake_state(trt).cuda
    cuda.fail("cudaDeviceGetAttribute", cudaError_t.cudaErrorNoDevice)
    report = run_selftest(manifest=DEMO, host=_host("10.16.1.11", sm=None, gpu_name=None),
                          work_dir=tmp_path / "w")
    assert [r.name for r in report.missing] == ["gpu"]
    assert report.cases == [] and "gpu:" in report.summary_line()


def test_requirement_dict_round_trip() -> None:
    req = Requirement("tensorrt", False, problem="p", fix="f")
    assert req.to_dict() == {"name": "tensorrt", "ok": False, "found": None, "problem": "p",
                             "fix": "f"}


def test_a_tensorrt_that_does_not_import_is_a_missing_requirement(
    fake_trt: Installer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import importlib

    fake_trt("10.16.1.11")
    real_import = importlib.import_module

    def import_module(name: str, package: str | None = None) -> Any:
        # What a wheel without its libnvinfer looks like to the lazy-import helper.
        if name == "tensorrt":
            raise ImportError("libnvinfer.so.10: cannot open shared object file")
        return real_import(name, package)

    monkeypatch.setattr(importlib, "import_module", import_module)
    report = run_selftest(manifest=_matmul_identity_model(tmp_path), host=_host("10.16.1.11"),
                          work_dir=tmp_path / "w")
    assert [r.name for r in report.missing] == ["tensorrt"]
    assert "does not import" in report.missing[0].problem
    assert report.cases == [] and not report.ok


class _FakePolygraphy:
    """``polygraphy.backend.trt`` cut to what the self-test calls, with the signatures of
    NVIDIA/TensorRT tools/Polygraphy (polygraphy 0.49.26): ``Profile.add(name, min, opt,
    max)`` (backend/trt/profile.py), ``CreateConfig(profiles=None, ...)``
    (backend/trt/config.py), ``NetworkFromOnnxPath(path)`` and ``EngineFromNetwork(network,
    config=None)`` (backend/trt/loader.py), ``TrtRunner(engine)`` as a context manager whose
    ``infer(feed_dict)`` returns an OrderedDict of numpy arrays (backend/base/runner.py).
    The "engine" is the ONNX model run by ONNX Runtime, optionally scaled to disagree."""

    def __init__(self, scale: float = 1.0) -> None:
        self.scale = scale
        self.profiles: list[Any] = []
        fake = self

        class Profile(dict):  # type: ignore[type-arg]
            def add(self, name: str, min: Any, opt: Any, max: Any) -> Any:
                self[name] = (tuple(min), tuple(opt), tuple(max))
                return self

        class CreateConfig:
            def __init__(self, profiles: Any = None, **kwargs: Any) -> None:
                fake.profiles.append(profiles)

        class NetworkFromOnnxPath:
            def __init__(self, path: str) -> None:
                self.path = path

        class EngineFromNetwork:
            def __init__(self, network: Any, config: Any = None) -> None:
                self.network = network

        class TrtRunner:
            def __init__(self, engine: Any) -> None:
                self.engine = engine

            def __enter__(self) -> Any:
                import onnxruntime as ort

                self.session = ort.InferenceSession(self.engine.network.path,
                                                    providers=["CPUExecutionProvider"])
                return self

            def __exit__(self, *exc: Any) -> None:
                del self.session

            def infer(self, feed_dict: Any) -> Any:
                from collections import OrderedDict

                names = [o.name for o in self.session.get_outputs()]
                values = self.session.run(names, dict(feed_dict))
                return OrderedDict((n, v * fake.scale) for n, v in zip(names, values, strict=True))

        self.classes = {"Profile": Profile, "CreateConfig": CreateConfig,
                        "NetworkFromOnnxPath": NetworkFromOnnxPath,
                        "EngineFromNetwork": EngineFromNetwork, "TrtRunner": TrtRunner}

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name in ("polygraphy", "polygraphy.backend", "polygraphy.backend.trt"):
            module = type(sys)(name)
            module.__spec__ = importlib.machinery.ModuleSpec(name, None, is_package=True)
            module.__path__ = []  # type: ignore[attr-defined]
            monkeypatch.setitem(sys.modules, name, module)
        for key, cls in self.classes.items():
            setattr(sys.modules["polygraphy.backend.trt"], key, cls)


@pytest.mark.parametrize(("scale", "status"), [(1.0, "pass"), (-1.0, "fail")])
def test_polygraphy_reference_is_built_and_compared(
    fake_trt: Installer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, scale: float,
    status: str,
) -> None:
    fake_trt("10.16.1.11")
    polygraphy = _FakePolygraphy(scale)
    polygraphy.install(monkeypatch)
    report = run_selftest(manifest=_matmul_identity_model(tmp_path), host=_host("10.16.1.11"),
                          work_dir=tmp_path / "w", precisions=(PrecisionMode.FP32,))
    check = {c.name: c for c in report.checks}["polygraphy"]
    assert check.status == status, check
    assert [dict(p) for p in polygraphy.profiles[0]] == [{"x": ((1, 8), (4, 8), (8, 8))}]
    (output,) = check.facts["ident"]
    assert output["cosine"] == pytest.approx(scale)
    assert report.ok is (status == "pass")


def test_jetson_without_tensorrt_points_at_jetpack(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/nv_tegra_release").write_text("# R36 (release), REVISION: 4.3\n")
    monkeypatch.setattr("trt_provision.measure.selftest.is_available", lambda name: name == "cuda.bindings")
    monkeypatch.setattr("trt_provision.measure.selftest._dist_version", lambda *names: "13.0.0")
    jetson = HostCapabilities(sm="sm87", gpu_name="Orin", jetpack="6.2", l4t="36.4.3",
                              gpu_integrated=True)
    reqs = {r.name: r for r in check_requirements(jetson, root=tmp_path)}
    assert "sudo apt install python3-libnvinfer" in reqs["tensorrt"].fix
    assert "trt-provision[cuda-cu12]" in reqs["tensorrt"].fix
    # cuda-python 13 on JetPack 6 (CUDA 12.6) cannot work: named, with the right extra.
    assert not reqs["cuda-python"].ok and "CUDA 13 driver" in reqs["cuda-python"].problem
    assert reqs["cuda-python"].fix == "pip install 'trt-provision[cuda-cu12]'"
    assert reqs["gpu"].ok


def test_a_bad_manifest_is_a_one_line_user_error(
    fake_trt: Installer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    fake_trt("10.16.1.11")
    monkeypatch.setattr("trt_provision.host.probe_host", lambda: _host("10.16.1.11"))
    code = main(["selftest", "--manifest", str(tmp_path / "missing.toml")])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1 and len(err) == 1 and "manifest not found" in err[0]
