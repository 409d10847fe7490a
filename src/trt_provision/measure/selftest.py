"""``trt-provision selftest``: prove, on this host, that the TensorRT path works end to end.

On a host with TensorRT, cuda-python and a GPU it builds the bundled demo corpus at fp32,
fp16, int8 and mixed on each typed path (weakly and strongly typed) the installed TensorRT
offers, loads every engine through the engine gate and the memory budget, runs it, and
compares its outputs with ONNX Runtime FP32 on the same inputs (cosine, max abs/rel error).
It then checks plugin registration, the calibration-cache round trip and the timing cache,
and, where Polygraphy is installed, builds the same ONNX with Polygraphy's loaders as an
independent reference. The result is a report (JSON + markdown).

Everything goes through the composition root (:func:`trt_provision.compose.wire`) and the
``InferenceRuntime`` seam: this module never touches TensorRT itself. Which typed paths are
offered is learnt the same way a user would: a path the installed TensorRT lacks is refused
by the runtime before any build, and is reported as ``not-offered``.

On a host that cannot run TensorRT, :func:`check_requirements` says exactly what is missing
(the tensorrt module, cuda-python, a GPU and driver) and which extra to install.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import logging
import math
import re
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from importlib import metadata as _dist_metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision._fs import atomic_write_bytes
from trt_provision._lazy import cuda_major_of_host, extra_for, install_advice, is_available
from trt_provision.errors import (
    AccuracyGateError,
    EngineBuildError,
    ManifestError,
    MissingDependencyError,
    TrtProvisionError,
)
from trt_provision.types import (
    BackboneSpec,
    BuildConfig,
    CalibrationSpec,
    EngineCacheEntry,
    EngineCompileRequest,
    HostCapabilities,
    OptimizationProfile,
    PluginSpec,
    PrecisionMode,
)

if TYPE_CHECKING:
    import numpy.typing as npt

    from trt_provision.compose import Wired

    Batch = Mapping[str, npt.NDArray[Any]]

__all__ = [
    "MIN_COSINE",
    "OutputComparison",
    "Requirement",
    "SelftestReport",
    "check_requirements",
    "compare_outputs",
    "default_manifest",
    "run_selftest",
]

log = logging.getLogger(__name__)

PRECISIONS: tuple[PrecisionMode, ...] = (
    PrecisionMode.FP32, PrecisionMode.FP16, PrecisionMode.INT8, PrecisionMode.MIXED,
)
# Typed path → BuildConfig.strongly_typed.
TYPED_PATHS: tuple[tuple[str, bool], ...] = (("weak", False), ("strong", True))
# Smallest cosine against ONNX Runtime FP32 that counts as a pass. FP32 leaves room for TF32
# and kernel reordering; INT8 for the demo models' small calibration sets.
MIN_COSINE: dict[PrecisionMode, float] = {
    PrecisionMode.FP32: 0.9999,
    PrecisionMode.FP16: 0.999,
    PrecisionMode.INT8: 0.98,
    PrecisionMode.MIXED: 0.98,
}
POLYGRAPHY_MIN_COSINE = 0.9999
# Plugins libnvinfer_plugin registers, with the version each creator reports (NVIDIA/TensorRT
# plugin/: efficientNMSPlugin "1" in 10.3..11.1, batchedNMSPlugin "1" (gone in 11.x),
# roiAlignPlugin "2"); one found is enough to prove the registry was initialised before our
# build and load. The registry is keyed by (name, version, namespace).
PROBE_PLUGINS: tuple[tuple[str, str], ...] = (
    ("EfficientNMS_TRT", "1"), ("BatchedNMS_TRT", "1"), ("ROIAlign_TRT", "2"))
# The refusal the runtime raises, before any build, for a path this TensorRT lacks.
_NOT_OFFERED = re.compile(r"(weakly|strongly) typed build requested but this TensorRT has no")
# The precision pipeline's refusal of an int8/mixed label on a model with no quantizable
# node: a fact about the model, not a failure of this host's TensorRT.
_NOT_APPLICABLE = re.compile(r"nothing to quantize")
# Batch extent of dynamic dimensions the manifest gives no profile for.
_DEFAULT_DYNAMIC = (1, 4, 8)
_SEED = 20240601
_DETAIL_CHARS = 400


# --------------------------------------------------------------------------- requirements


@dataclass(frozen=True)
class Requirement:
    """One thing the TensorRT path needs on this host."""

    name: str  # "tensorrt" | "cuda-python" | "gpu"
    ok: bool
    found: str | None = None
    problem: str = ""
    fix: str = ""

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def _dist_version(*names: str) -> str | None:
    for name in names:
        try:
            return _dist_metadata.version(name)
        except _dist_metadata.PackageNotFoundError:
            continue
    return None


def _major(version: str | None) -> int | None:
    match = re.match(r"(\d+)", version or "")
    return int(match.group(1)) if match else None


def check_requirements(
    host: HostCapabilities, *, root: Path = Path("/")
) -> tuple[Requirement, ...]:
    """What the TensorRT path needs, each found or not, with the fix for what is missing.

    Answered without importing TensorRT or CUDA (package metadata and ``find_spec``); the GPU
    is taken from the host probe. :func:`run_selftest` confirms a GPU through the runtime
    where the probe could not see one (no NVML). ``root``: where ``/etc`` and ``/proc`` are
    read (Jetson release, driver version) when NVML gave no CUDA version."""
    cuda_major = _major(host.cuda_driver_version) or cuda_major_of_host(root)
    reqs: list[Requirement] = []

    trt_extra = extra_for("tensorrt", cuda_major)
    if is_available("tensorrt"):
        reqs.append(Requirement("tensorrt", True, found=host.trt_version or "installed"))
    else:
        reqs.append(Requirement(
            "tensorrt", False, problem="the tensorrt Python module is not installed",
            fix=install_advice("tensorrt", trt_extra, root=root)))

    cuda_version = _dist_version("cuda-bindings", "cuda-python")
    cuda_extra = extra_for("cuda", cuda_major)
    if not (is_available("cuda.bindings") or is_available("cuda.cudart")):
        reqs.append(Requirement(
            "cuda-python", False, problem="cuda-python (cuda.bindings) is not installed",
            fix=f"pip install 'trt-provision[{cuda_extra}]'"))
    elif cuda_major is not None and (_major(cuda_version) or 0) > cuda_major:
        reqs.append(Requirement(
            "cuda-python", False, found=cuda_version,
            problem=f"cuda-python {cuda_version} needs a CUDA {_major(cuda_version)} driver, "
                    f"this host runs CUDA {host.cuda_driver_version or cuda_major}",
            fix=f"pip install 'trt-provision[{cuda_extra}]'"))
    else:
        reqs.append(Requirement("cuda-python", True, found=cuda_version or "installed"))

    if host.sm is not None:
        found = " ".join(x for x in (host.gpu_name, host.sm) if x)
        reqs.append(Requirement("gpu", True, found=found))
    else:
        reqs.append(Requirement(
            "gpu", False, problem="no NVIDIA GPU visible (no driver, or NVML cannot see one)",
            fix="install the NVIDIA driver (on Jetson: JetPack); on a discrete GPU also "
                "pip install 'trt-provision[nvml]'"))
    return tuple(reqs)


# --------------------------------------------------------------------------- comparisons


@dataclass(frozen=True)
class OutputComparison:
    """One output of a candidate against its reference, over every element."""

    name: str
    cosine: float
    max_abs_error: float
    max_rel_error: float
    elements: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "cosine": _finite(self.cosine),
            "max_abs_error": _finite(self.max_abs_error),
            "max_rel_error": _finite(self.max_rel_error),
            "elements": self.elements,
        }


def _finite(value: float) -> float | str:
    return round(value, 8) if math.isfinite(value) else str(value)


def compare_outputs(
    reference: Mapping[str, Any], candidate: Mapping[str, Any]
) -> tuple[OutputComparison, ...]:
    """Cosine, max abs error and max rel error (max abs over the reference's max |x|) per
    output. A missing output, a shape mismatch or a non-finite value gives cosine -1 and
    infinite errors, so it can never pass."""
    import numpy as np

    out: list[OutputComparison] = []
    for name in sorted(reference):
        ref = np.asarray(reference[name], dtype=np.float64)
        if name not in candidate or np.shape(candidate[name]) != ref.shape:
            out.append(OutputComparison(name, -1.0, math.inf, math.inf, int(ref.size)))
            continue
        cand = np.asarray(candidate[name], dtype=np.float64)
        if not (np.isfinite(ref).all() and np.isfinite(cand).all()):
            out.append(OutputComparison(name, -1.0, math.inf, math.inf, int(ref.size)))
            continue
        r, c = ref.reshape(-1), cand.reshape(-1)
        max_abs = float(np.max(np.abs(c - r))) if r.size else 0.0
        ref_max = float(np.max(np.abs(r))) if r.size else 0.0
        rel = max_abs / ref_max if ref_max > 0 else (0.0 if max_abs == 0 else math.inf)
        norms = float(np.linalg.norm(r)) * float(np.linalg.norm(c))
        if norms == 0.0:
            cosine = 1.0 if max_abs == 0.0 else 0.0
        else:
            cosine = max(-1.0, min(1.0, float(np.dot(r, c)) / norms))
        out.append(OutputComparison(name, cosine, max_abs, rel, int(r.size)))
    return tuple(out)


# --------------------------------------------------------------------------- report


@dataclass
class CaseResult:
    """One model at one precision on one typed path."""

    model: str
    precision: str
    typed_path: str
    status: str = "error"  # pass | fail | not-offered | not-applicable | error
    detail: str = ""
    taken_path: str | None = None
    engine: str | None = None
    build_seconds: float | None = None
    min_cosine: float | None = None
    outputs: tuple[OutputComparison, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["outputs"] = [o.to_dict() for o in self.outputs]
        return data


@dataclass
class CheckResult:
    name: str
    status: str  # pass | fail | skipped | error
    detail: str = ""
    facts: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class SelftestReport:
    requirements: tuple[Requirement, ...]
    host: dict[str, Any]
    manifest: str | None = None
    cases: list[CaseResult] = field(default_factory=list)
    checks: list[CheckResult] = field(default_factory=list)
    started_at: str = ""
    seconds: float = 0.0
    files: dict[str, str] = field(default_factory=dict)

    @property
    def missing(self) -> tuple[Requirement, ...]:
        return tuple(r for r in self.requirements if not r.ok)

    @property
    def failures(self) -> list[str]:
        bad = [f"{c.model}/{c.precision}/{c.typed_path}: {c.status}"
               for c in self.cases if c.status in ("fail", "error")]
        bad += [f"check {c.name}: {c.status}" for c in self.checks
                if c.status in ("fail", "error")]
        for precision in sorted({c.precision for c in self.cases}):
            # A model the precision does not apply to neither passes nor fails it.
            judged = [c for c in self.cases
                      if c.precision == precision and c.status != "not-applicable"]
            if judged and not any(c.status == "pass" for c in judged):
                bad.append(f"{precision}: no typed path passed")
        return bad

    @property
    def ok(self) -> bool:
        return not self.missing and bool(self.cases) and not self.failures

    def summary_line(self) -> str:
        """The one line the CLI prints on stderr when the self-test did not pass."""
        if self.missing:
            parts = [f"{r.name}: {r.problem} ({r.fix})" for r in self.missing]
            return "TensorRT self-test cannot run on this host: " + "; ".join(parts)
        failures = self.failures
        where = f" (report: {self.files['markdown']})" if "markdown" in self.files else ""
        head = "; ".join(failures[:3]) + (f"; and {len(failures) - 3} more"
                                           if len(failures) > 3 else "")
        return f"TensorRT self-test failed: {head}{where}"

    def to_dict(self) -> dict[str, Any]:
        counts: dict[str, int] = {}
        for case in self.cases:
            counts[case.status] = counts.get(case.status, 0) + 1
        return {
            "ok": self.ok,
            "started_at": self.started_at,
            "seconds": round(self.seconds, 3),
            "manifest": self.manifest,
            "requirements": [r.to_dict() for r in self.requirements],
            "missing": [r.name for r in self.missing],
            "host": self.host,
            "case_counts": counts,
            "cases": [c.to_dict() for c in self.cases],
            "checks": [c.to_dict() for c in self.checks],
            "failures": self.failures,
            "files": self.files,
        }

    def to_markdown(self) -> str:
        host = self.host
        lines = [
            "# trt-provision selftest",
            "",
            f"- result: **{'PASS' if self.ok else 'FAIL'}**",
            f"- started: {self.started_at}, {self.seconds:.1f} s",
            f"- GPU: {host.get('gpu_name')} ({host.get('sm')}), driver "
            f"{host.get('nvidia_driver_version')}, CUDA {host.get('cuda_driver_version')}",
            f"- TensorRT: {host.get('trt_version')}, JetPack: {host.get('jetpack')}",
            f"- manifest: {self.manifest}",
            "",
            "## Requirements",
            "",
            "| requirement | ok | found | problem | fix |",
            "|---|---|---|---|---|",
        ]
        for r in self.requirements:
            lines.append(f"| {r.name} | {'yes' if r.ok else 'NO'} | {r.found or ''} | "
                         f"{r.problem} | {r.fix} |")
        if self.cases:
            lines += [
                "", "## Builds against ONNX Runtime FP32", "",
                "| model | precision | path | status | taken | min cosine | worst cosine "
                "| max abs | max rel | build s | detail |",
                "|---|---|---|---|---|---|---|---|---|---|---|",
            ]
            for c in self.cases:
                worst = min(c.outputs, key=lambda o: o.cosine) if c.outputs else None
                abs_err = max((o.max_abs_error for o in c.outputs), default=None)
                rel_err = max((o.max_rel_error for o in c.outputs), default=None)
                lines.append(
                    f"| {c.model} | {c.precision} | {c.typed_path} | {c.status} | "
                    f"{c.taken_path or ''} | {c.min_cosine if c.min_cosine is not None else ''} "
                    f"| {_fmt(worst.cosine if worst else None)} | {_fmt(abs_err)} | "
                    f"{_fmt(rel_err)} | {_fmt(c.build_seconds)} | {_md(c.detail)} |")
        if self.checks:
            lines += ["", "## Checks", "", "| check | status | detail |", "|---|---|---|"]
            for check in self.checks:
                lines.append(f"| {check.name} | {check.status} | {_md(check.detail)} |")
        if self.failures:
            lines += ["", "## Failures", ""] + [f"- {f}" for f in self.failures]
        return "\n".join(lines) + "\n"

    def write(self, report_dir: Path) -> None:
        """Write ``selftest.json`` and ``selftest.md`` (each atomically)."""
        report_dir.mkdir(parents=True, exist_ok=True)
        json_path, md_path = report_dir / "selftest.json", report_dir / "selftest.md"
        self.files = {"json": str(json_path), "markdown": str(md_path)}
        atomic_write_bytes(md_path, self.to_markdown().encode())
        atomic_write_bytes(
            json_path, (json.dumps(self.to_dict(), indent=2, sort_keys=True) + "\n").encode())


def _fmt(value: float | None) -> str:
    if value is None:
        return ""
    if not math.isfinite(value):
        return str(value)
    return f"{value:.6g}"


def _md(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _short(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"[:_DETAIL_CHARS]


# --------------------------------------------------------------------------- corpus


def default_manifest() -> Path | None:
    """The bundled demo manifest (``examples/demo.toml`` of a source checkout)."""
    candidate = Path(__file__).resolve().parents[3] / "examples" / "demo.toml"
    return candidate if candidate.is_file() else None


def _with_profiles(backbone: BackboneSpec) -> BackboneSpec:
    """Give every dynamic input without a profile one (batch 1/4/8): TensorRT needs it."""
    from trt_provision.calibration.data import model_input_specs

    config = backbone.build_config
    added: list[OptimizationProfile] = []
    for spec in model_input_specs(backbone.model_path):
        if config.profile_for(spec.name) is not None or all(d is not None for d in spec.shape):
            continue
        shapes = [tuple(d if d is not None else n for d in spec.shape) for n in _DEFAULT_DYNAMIC]
        added.append(OptimizationProfile(spec.name, shapes[0], shapes[1], shapes[2]))
    if not added:
        return backbone
    return dataclasses.replace(
        backbone, build_config=dataclasses.replace(config, profiles=config.profiles + tuple(added)))


def _calibration_for(backbone: BackboneSpec, manifest_dir: Path) -> CalibrationSpec | None:
    if backbone.build_config.calibration is not None:
        return backbone.build_config.calibration
    bundled = manifest_dir / "calibration" / f"{backbone.name}.npz"
    return CalibrationSpec(source=str(bundled)) if bundled.is_file() else None


def _inputs_for(backbone: BackboneSpec, calibration: CalibrationSpec | None) -> dict[str, Any]:
    """Deterministic inputs at the profile's ``opt`` shape: the first samples of the
    calibration data where it has them (in-distribution for INT8), else seeded noise."""
    import numpy as np

    from trt_provision.calibration.data import model_input_specs

    stored: dict[str, Any] = {}
    if calibration is not None and calibration.source and calibration.source.endswith(".npz"):
        try:
            with np.load(calibration.source, allow_pickle=False) as npz:
                stored = {k: np.asarray(npz[k]) for k in npz.files}
        except (OSError, ValueError):
            stored = {}
    rng = np.random.default_rng(_SEED)
    inputs: dict[str, Any] = {}
    for spec in model_input_specs(backbone.model_path):
        profile = backbone.build_config.profile_for(spec.name)
        shape = profile.opt_shape if profile else tuple(d or 1 for d in spec.shape)
        dtype = np.dtype(spec.dtype)
        data = stored.get(spec.name)
        if (data is not None and data.ndim == len(shape) and data.shape[1:] == shape[1:]
                and data.shape[0] >= shape[0]):
            inputs[spec.name] = np.ascontiguousarray(data[: shape[0]]).astype(dtype)
        elif dtype.kind == "f":
            inputs[spec.name] = rng.standard_normal(shape).astype(dtype)
        elif dtype.kind == "b":
            inputs[spec.name] = rng.random(shape) < 0.5
        else:
            inputs[spec.name] = rng.integers(0, 8, size=shape).astype(dtype)
    return inputs


def _variant(backbone: BackboneSpec, precision: PrecisionMode, strongly_typed: bool | None,
             calibration: CalibrationSpec | None, **changes: Any) -> BackboneSpec:
    config = dataclasses.replace(
        backbone.build_config, precision=precision, strongly_typed=strongly_typed,
        calibration=calibration if precision.needs_calibration else None, **changes)
    return dataclasses.replace(backbone, build_config=config)


# --------------------------------------------------------------------------- running


@contextmanager
def _loaded(wired: Wired, entry: EngineCacheEntry) -> Iterator[Any]:
    """Deserialize through the runtime (engine gate, then memory budget); always release."""
    handle = wired.runtime.deserialize_engine(entry)
    try:
        yield handle
    finally:
        wired.runtime.release_engine(handle)


def _compile(wired: Wired, backbone: BackboneSpec, *, force: bool = False) -> tuple[
        EngineCacheEntry, float]:
    summary = wired.compiler.compile_engines_for_corpus(
        EngineCompileRequest((backbone,), force_rebuild=force, use_remote=False,
                             fail_fast=True))
    result = summary.results[0]
    if result.entry is None:  # only a dry run, or a failure without fail_fast, has none
        raise EngineBuildError("the compiler returned no engine", model=backbone.name)
    return result.entry, result.compile_seconds


def _run(wired: Wired, entry: EngineCacheEntry, inputs: Mapping[str, Any]) -> dict[str, Any]:
    import numpy as np

    with _loaded(wired, entry) as handle:
        outputs = wired.runtime.infer(handle, inputs)
        return {name: np.array(value, copy=True) for name, value in outputs.items()}


def _metadata(entry: EngineCacheEntry) -> dict[str, Any]:
    from trt_provision.integrity import read_metadata

    try:
        return read_metadata(entry.engine_path)
    except TrtProvisionError:
        return {}


def _case(
    trt: Wired, backbone: BackboneSpec, precision: PrecisionMode, typed: tuple[str, bool],
    calibration: CalibrationSpec | None, inputs: Mapping[str, Any],
    reference: Mapping[str, Any], engines: dict[tuple[str, str, str], EngineCacheEntry],
) -> CaseResult:
    label, strongly_typed = typed
    case = CaseResult(backbone.name, precision.value, label, min_cosine=MIN_COSINE[precision])
    if precision.needs_calibration and calibration is None:
        case.detail = "no calibration data for this model"
        return case
    variant = _variant(backbone, precision, strongly_typed, calibration)
    try:
        entry, seconds = _compile(trt, variant)
    except MissingDependencyError:
        raise  # a tensorrt that is installed but does not import: a requirement, not a case
    except AccuracyGateError as exc:  # the build's own check of the engine refused it
        case.status, case.detail = "fail", "build: " + _short(exc)
        return case
    except EngineBuildError as exc:
        if _NOT_OFFERED.search(str(exc)):
            case.status, case.detail = "not-offered", str(exc)[:_DETAIL_CHARS]
        elif precision.needs_calibration and _NOT_APPLICABLE.search(str(exc)):
            case.status, case.detail = "not-applicable", str(exc)[:_DETAIL_CHARS]
        else:
            case.detail = "build: " + _short(exc)
        return case
    except Exception as exc:  # a selftest reports every failure instead of stopping at it
        case.detail = "build: " + _short(exc)
        return case
    case.engine, case.build_seconds = entry.engine_path.name, round(seconds, 4)
    case.taken_path = _metadata(entry).get("trt_path")
    try:
        outputs = _run(trt, entry, inputs)
    except Exception as exc:
        case.detail = "load/infer: " + _short(exc)
        return case
    engines[(backbone.name, precision.value, label)] = entry
    case.outputs = compare_outputs(reference, outputs)
    worst = min((o.cosine for o in case.outputs), default=-1.0)
    case.status = "pass" if worst >= MIN_COSINE[precision] else "fail"
    if case.status == "fail":
        case.detail = f"worst cosine {worst:.6g} < {MIN_COSINE[precision]}"
    return case


def _plugin_check(trt: Wired, backbone: BackboneSpec, inputs: Mapping[str, Any]) -> CheckResult:
    """Build and load with plugin lookups: proves the plugin registry is initialised and
    searched before build and load (creators libnvinfer_plugin registers)."""
    # TensorRT's own creators register under the configured namespace (init_libnvinfer_plugins).
    namespace = getattr(trt.settings, "plugin_namespace", "") or ""
    plugins = tuple(PluginSpec(name=name, version=version, namespace=namespace, required=False)
                    for name, version in PROBE_PLUGINS)
    # A check of build and load mechanics: the engine's accuracy is the cases' concern, so
    # the build's own check records it here instead of refusing (NaN / Inf still refuse).
    variant = _variant(backbone, PrecisionMode.FP32, None, None, plugins=plugins,
                       allow_inaccurate=True)
    try:
        entry, _ = _compile(trt, variant)
        _run(trt, entry, inputs)
    except Exception as exc:
        return CheckResult("plugins", "error", _short(exc))
    listed = _metadata(entry).get("plugins") or []
    found = sorted(p["name"] for p in listed if isinstance(p, dict) and p.get("found"))
    facts = {"looked_up": [f"{n} v{v}" for n, v in PROBE_PLUGINS], "found": found}
    if not found:
        return CheckResult("plugins", "fail",
                           "no libnvinfer_plugin creator registered at build time", facts)
    return CheckResult("plugins", "pass", f"registered: {', '.join(found)}; engine loaded", facts)


def _cache_files(directory: Path) -> list[Path]:
    """Regular files below ``directory``, without lock files and temp files."""
    if not directory.is_dir():
        return []
    return [p for p in sorted(directory.rglob("*"))
            if p.is_file() and not p.name.endswith(".lock") and not p.name.startswith(".tmp-")]


def _snapshot(directory: Path) -> dict[str, str]:
    """relative path → sha256 of every cache file below ``directory``."""
    return {str(p.relative_to(directory)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in _cache_files(directory)}


def _sizes(directory: Path) -> dict[str, int]:
    return {str(p.relative_to(directory)): p.stat().st_size for p in _cache_files(directory)}


def _cache_checks(
    trt: Wired, backbone: BackboneSpec, key: tuple[str, str, str],
    calibration: CalibrationSpec | None, inputs: Mapping[str, Any],
    engines: Mapping[tuple[str, str, str], EngineCacheEntry],
) -> list[CheckResult]:
    """Rebuild one engine from scratch (``key``: model, precision, typed path): the timing
    cache must survive and be reused; for an INT8 engine, the calibration cache must also be
    read back (no new calibration, files unchanged)."""
    cache_root = Path(trt.settings.cache_dir)
    calib_dir, timing_dir = cache_root / ".calibration", cache_root / ".timing"
    first = engines[key]
    int8 = key[1] == PrecisionMode.INT8.value
    calib_before, timing_before = _snapshot(calib_dir), _sizes(timing_dir)
    first_meta = _metadata(first)  # read now: the rebuild replaces this very engine
    variant = _variant(backbone, PrecisionMode(key[1]), key[2] == "strong", calibration)
    names = ["calibration-cache", "timing-cache"] if int8 else ["timing-cache"]
    try:
        before = _run(trt, first, inputs)
        entry, seconds = _compile(trt, variant, force=True)
        again = _run(trt, entry, inputs)
    except Exception as exc:
        return [CheckResult(name, "error", _short(exc)) for name in names]
    meta = _metadata(entry)
    calib_after, timing_after = _snapshot(calib_dir), _sizes(timing_dir)
    agreement = compare_outputs(before, again)
    worst = min((o.cosine for o in agreement), default=-1.0)
    facts: dict[str, Any] = {
        "model": backbone.name, "path": meta.get("trt_path"),
        "files": sorted(calib_before), "rebuild_calibration": meta.get("calibration"),
        "cosine_first_vs_rebuilt": _finite(worst),
    }
    recalibrated = _recalibrated(meta.get("calibration"))
    if not calib_before:
        calib = CheckResult("calibration-cache", "fail", "no calibration cache was written",
                            facts)
    elif calib_after != calib_before:
        calib = CheckResult("calibration-cache", "fail",
                            "the rebuild changed or added calibration cache files", facts)
    elif recalibrated:
        calib = CheckResult("calibration-cache", "fail",
                            "the rebuild calibrated again instead of reading the cache", facts)
    elif worst < MIN_COSINE[PrecisionMode.FP16]:
        calib = CheckResult("calibration-cache", "fail",
                            f"rebuilt engine disagrees with the first (cosine {worst:.6g})", facts)
    else:
        calib = CheckResult("calibration-cache", "pass",
                            f"{len(calib_before)} file(s) read back unchanged; rebuilt engine "
                            f"agrees (cosine {worst:.6g})", facts)
    timing_facts = {"files": timing_after, "first_build_seconds": first_meta.get(
        "timings", {}).get("build_seconds"), "rebuild_seconds": round(seconds, 4),
        "recorded": meta.get("timing_cache")}
    if not timing_before or not all(v > 0 for v in timing_before.values()):
        timing = CheckResult("timing-cache", "fail", "no non-empty timing cache was written",
                             timing_facts)
    elif set(timing_after) != set(timing_before) or any(
            timing_after[k] < timing_before[k] for k in timing_before):
        timing = CheckResult("timing-cache", "fail",
                             "the rebuild lost or shrank the timing cache", timing_facts)
    elif not meta.get("timing_cache"):
        timing = CheckResult("timing-cache", "fail", "the rebuild did not use the timing cache",
                             timing_facts)
    else:
        timing = CheckResult("timing-cache", "pass",
                             f"{len(timing_after)} file(s), reused by the rebuild", timing_facts)
    timing.facts["rebuilt"] = "/".join(key)
    return [calib, timing] if int8 else [timing]


def _rebuild_checks(
    trt: Wired, backbones: Sequence[BackboneSpec], manifest_dir: Path,
    inputs: Mapping[str, Mapping[str, Any]],
    engines: Mapping[tuple[str, str, str], EngineCacheEntry],
) -> list[CheckResult]:
    """Calibration and timing cache through one rebuild: of an INT8 engine where one was
    built, else (timing cache only) of the first engine built."""
    by_name = {b.name: b for b in backbones}
    int8 = [k for k in engines if k[1] == PrecisionMode.INT8.value]
    key = int8[0] if int8 else next(iter(engines), None)
    if key is None:
        return [CheckResult("calibration-cache", "skipped", "no engine was built"),
                CheckResult("timing-cache", "skipped", "no engine was built")]
    backbone = by_name[key[0]]
    checks = _cache_checks(trt, backbone, key, _calibration_for(backbone, manifest_dir),
                           inputs[key[0]], engines)
    if not int8:
        checks.insert(0, CheckResult("calibration-cache", "skipped",
                                     "no INT8 engine was built"))
    return checks


def _recalibrated(calibration: Any) -> bool:
    """Whether a build's calibration facts say it computed ranges instead of reading them:
    the governed (Q/DQ) path records ``cache_reused``; the calibrator path how many batches
    TensorRT pulled (none when the calibration cache was read back)."""
    if not isinstance(calibration, dict):
        return True
    if "cache_reused" in calibration:
        return calibration["cache_reused"] is not True
    if "from_cache" in calibration:
        return calibration["from_cache"] is not True
    return bool(calibration.get("batches"))


def _polygraphy_check(
    backbones: Sequence[BackboneSpec], inputs: Mapping[str, Mapping[str, Any]],
    ours: Mapping[str, Mapping[str, Any]],
) -> CheckResult:
    """Build each model at FP32 with Polygraphy's own loaders and compare with our engine."""
    if not is_available("polygraphy"):
        return CheckResult("polygraphy", "skipped",
                           "polygraphy is not installed: pip install 'trt-provision[polygraphy]'")
    try:
        from polygraphy.backend.trt import (
            CreateConfig,
            EngineFromNetwork,
            NetworkFromOnnxPath,
            Profile,
            TrtRunner,
        )
    except Exception as exc:
        return CheckResult("polygraphy", "error", "polygraphy does not import: " + _short(exc))
    import numpy as np

    facts: dict[str, Any] = {}
    failed: list[str] = []
    for backbone in backbones:
        if backbone.name not in ours:
            facts[backbone.name] = "no FP32 engine of ours to compare with"
            failed.append(backbone.name)
            continue
        try:
            profile = Profile()
            for p in backbone.build_config.profiles:
                profile.add(p.input_name, min=p.min_shape, opt=p.opt_shape, max=p.max_shape)
            config = CreateConfig(profiles=[profile] if backbone.build_config.profiles else None)
            loader = EngineFromNetwork(NetworkFromOnnxPath(str(backbone.model_path)),
                                       config=config)
            with TrtRunner(loader) as runner:
                theirs = {k: np.array(v, copy=True)
                          for k, v in runner.infer(feed_dict=dict(inputs[backbone.name])).items()}
        except Exception as exc:
            facts[backbone.name] = _short(exc)
            failed.append(backbone.name)
            continue
        comparison = compare_outputs(theirs, ours[backbone.name])
        worst = min((o.cosine for o in comparison), default=-1.0)
        facts[backbone.name] = [o.to_dict() for o in comparison]
        if worst < POLYGRAPHY_MIN_COSINE:
            failed.append(backbone.name)
    if failed:
        return CheckResult("polygraphy", "fail",
                           f"differs from Polygraphy's build: {', '.join(failed)}", facts)
    return CheckResult("polygraphy", "pass",
                       f"{len(backbones)} model(s) match Polygraphy's FP32 build", facts)


def run_selftest(
    *,
    manifest: Path | None = None,
    report_dir: Path | None = None,
    host: HostCapabilities | None = None,
    work_dir: Path | None = None,
    precisions: Sequence[PrecisionMode] = PRECISIONS,
) -> SelftestReport:
    """Run the self-test; never raises for what the host lacks (see ``report.missing``).

    ``work_dir``: where engines and caches go (a temporary directory, removed afterwards,
    when None). ``report_dir``: where ``selftest.json`` / ``selftest.md`` are written."""
    from trt_provision.compose import wire
    from trt_provision.config import Settings, load_manifest
    from trt_provision.host import probe_host

    started = time.monotonic()
    host = host or probe_host()
    report = SelftestReport(
        requirements=check_requirements(host), host=host.to_dict(),
        started_at=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"))
    missing_software = [r for r in report.requirements if not r.ok and r.name != "gpu"]
    if missing_software:
        return _finish(report, report_dir, started)
    manifest = manifest or default_manifest()
    if manifest is None:
        raise ManifestError("no demo manifest found next to this installation; pass --manifest")
    loaded = load_manifest(manifest)
    report.manifest = str(manifest)

    with _work_dir(work_dir) as work:
        cache = work / "cache"
        trt = wire(Settings(cache_dir=cache, runtime="tensorrt"), host=host, use_remote=False)
        # The probe sees GPUs through NVML; without it, ask the runtime (CUDA) directly.
        try:
            target = trt.runtime.runtime_target(BuildConfig())
        except Exception as exc:
            report.requirements = tuple(
                dataclasses.replace(r, ok=False, problem=f"{r.problem or 'no usable GPU'}: "
                                    f"{_short(exc)}"[:_DETAIL_CHARS]) if r.name == "gpu" else r
                for r in report.requirements)
            return _finish(report, report_dir, started)
        report.requirements = tuple(
            Requirement("gpu", True, found=target.target, problem="", fix="")
            if r.name == "gpu" and not r.ok else r for r in report.requirements)
        report.host["runtime_target"] = dataclasses.asdict(target)
        ort = wire(Settings(cache_dir=cache, runtime="onnxruntime"), host=host, use_remote=False)
        try:
            _run_cases(report, trt, ort, loaded.backbones, manifest.parent, precisions)
        except MissingDependencyError as exc:
            report.cases.clear()
            report.checks.clear()
            report.requirements = tuple(
                dataclasses.replace(r, ok=False, problem=f"installed but does not import: {exc}"
                                    [:_DETAIL_CHARS], fix=install_advice(exc.module, exc.extra))
                if r.name == ("cuda-python" if exc.module.startswith("cuda") else "tensorrt")
                else r for r in report.requirements)
    return _finish(report, report_dir, started)


class _BuildPhases(logging.Handler):
    """Collects the TensorRT build-phase events (IProgressMonitor) of the selftest's builds:
    whether a real TensorRT reports phases to our monitor is only known on a real run."""

    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.events: list[tuple[str, str]] = []

    def emit(self, record: logging.LogRecord) -> None:
        event = str(getattr(record, "event", ""))
        if event in ("trt.build.phase.start", "trt.build.phase.finish"):
            self.events.append((event, str(getattr(record, "phase", ""))))

    def check(self, built: bool) -> CheckResult:
        starts = [p for e, p in self.events if e == "trt.build.phase.start"]
        finishes = [p for e, p in self.events if e == "trt.build.phase.finish"]
        facts = {"phases": sorted(set(starts))[:20], "starts": len(starts),
                 "finishes": len(finishes)}
        if not built:
            return CheckResult("build-phases", "skipped", "no engine was built", facts)
        if not starts or len(starts) != len(finishes):
            return CheckResult("build-phases", "fail", "TensorRT reported no (or unfinished) "
                               "build phases to the progress monitor", facts)
        return CheckResult("build-phases", "pass", f"{len(starts)} phase(s) reported", facts)


def _run_cases(
    report: SelftestReport, trt: Wired, ort: Wired, backbones: Sequence[BackboneSpec],
    manifest_dir: Path, precisions: Sequence[PrecisionMode],
) -> None:
    phases = _BuildPhases()
    progress_log = logging.getLogger("trt_provision.runtimes.tensorrt.progress")
    level = progress_log.level
    progress_log.setLevel(logging.INFO)
    progress_log.addHandler(phases)
    try:
        _run_all_cases(report, trt, ort, backbones, manifest_dir, precisions)
    finally:
        progress_log.removeHandler(phases)
        progress_log.setLevel(level)
    report.checks.append(phases.check(any(c.status in ("pass", "fail") for c in report.cases)))


def _run_all_cases(
    report: SelftestReport, trt: Wired, ort: Wired, backbones: Sequence[BackboneSpec],
    manifest_dir: Path, precisions: Sequence[PrecisionMode],
) -> None:
    engines: dict[tuple[str, str, str], EngineCacheEntry] = {}
    all_inputs: dict[str, dict[str, Any]] = {}
    ours_fp32: dict[str, dict[str, Any]] = {}
    prepared = [_with_profiles(b) for b in backbones]
    for backbone in prepared:
        calibration = _calibration_for(backbone, manifest_dir)
        inputs = _inputs_for(backbone, calibration)
        all_inputs[backbone.name] = inputs
        log.info("selftest: %s", backbone.name, extra={"event": "selftest.model.start",
                                                       "model": backbone.name})
        try:
            ref_entry, _ = _compile(ort, _variant(backbone, PrecisionMode.FP32, None, None))
            reference = _run(ort, ref_entry, inputs)
        except Exception as exc:
            report.checks.append(CheckResult(f"reference:{backbone.name}", "error",
                                             "ONNX Runtime FP32 reference: " + _short(exc)))
            continue
        for precision in precisions:
            for typed in TYPED_PATHS:
                case = _case(trt, backbone, precision, typed, calibration, inputs, reference,
                             engines)
                report.cases.append(case)
                key = (backbone.name, PrecisionMode.FP32.value, typed[0])
                if key in engines and backbone.name not in ours_fp32:
                    ours_fp32[backbone.name] = _run(trt, engines[key], inputs)
                log.info("selftest case %s/%s/%s: %s", case.model, case.precision,
                         case.typed_path, case.status, extra={"event": "selftest.case"})
    if not prepared:
        return
    smallest = min(prepared, key=lambda b: b.model_path.stat().st_size)
    report.checks.append(_plugin_check(trt, smallest, all_inputs[smallest.name]))
    report.checks.extend(_rebuild_checks(trt, prepared, manifest_dir, all_inputs, engines))
    report.checks.append(_polygraphy_check(prepared, all_inputs, ours_fp32))


@contextmanager
def _work_dir(work_dir: Path | None) -> Iterator[Path]:
    if work_dir is not None:
        work_dir.mkdir(parents=True, exist_ok=True)
        yield work_dir
        return
    with tempfile.TemporaryDirectory(prefix="trt-provision-selftest-") as tmp:
        yield Path(tmp)


def _finish(report: SelftestReport, report_dir: Path | None, started: float) -> SelftestReport:
    report.seconds = time.monotonic() - started
    if report_dir is not None:
        report.write(report_dir)
    log.info("selftest finished: %s", "pass" if report.ok else "fail",
             extra={"event": "selftest.finish", "seconds": report.seconds})
    return report
