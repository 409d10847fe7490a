"""Run a provisioned engine: inputs, timed iterations, and accuracy against ONNX Runtime FP32.

``EngineCacheEntry`` → the runtime's ``deserialize_engine`` (engine gate, then memory budget)
→ inputs (synthetic within the engine's profile, or an ``.npz``) → warm-up and timed runs →
``release_engine`` (always) → the source ONNX model on ONNX Runtime FP32 (CPU) on the same
inputs → per-output comparison. The measurements are recorded beside the engine in
``<engine>.perf.json``; the signed metadata sidecar is never rewritten.

Comparison, per output (reference = ONNX Runtime FP32, candidate = the engine):

* an element passes when ``|candidate - reference| <= atol + rtol * |reference|`` (numpy's
  ``isclose``); the output passes when every element does and at least one pair is finite;
* ``max_abs_error`` = max ``|candidate - reference|``;
* ``max_rel_error`` = max ``|candidate - reference| / |reference|`` over elements whose
  reference is not zero;
* ``cosine`` of the flattened outputs (1.0 when both are all zeros).

The figures are over the element pairs where both are finite; where none is (NaN inputs, a
missing or misshapen output) they are not computed (NaN here, null in JSON, "n/a" in the
table) and the note says why. An element finite on one side only fails the check and is
counted in the note, never folded into a made-up figure.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import json
import logging
import math
import os
import stat
import sys
import time
import zipfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trt_provision._fs import atomic_write_bytes
from trt_provision.errors import (
    EngineGateError,
    InferenceError,
    ManifestError,
    ModelError,
    StoreError,
)
from trt_provision.gates.engine_gate import identity_from_metadata
from trt_provision.integrity import PERF_SUFFIX, loads_bounded, read_cache_file, read_metadata
from trt_provision.model_info import ModelInfo, describe_model
from trt_provision.seams import InferenceRuntime, MemoryBudget
from trt_provision.types import (
    EngineCacheEntry,
    EngineIdentity,
    OptimizationProfile,
    PrecisionMode,
)

__all__ = [
    "DEFAULT_TOLERANCES",
    "PERF_FORMAT",
    "Comparison",
    "EngineInput",
    "OutputComparison",
    "RunOptions",
    "RunReport",
    "compare_outputs",
    "engine_inputs",
    "entry_for_engine_file",
    "latency_summary",
    "load_inputs_npz",
    "perf_sidecar_path",
    "read_perf_sidecar",
    "record_perf",
    "run_engine",
    "synthetic_inputs",
]

log = logging.getLogger(__name__)

PERF_FORMAT = 1
MAX_PERF_BYTES = 64 << 10  # read back bounded: a planted huge file is refused, not parsed
MAX_PERF_RUNS = 8  # the most recent measurements kept per engine
MAX_NPZ_MEMBERS = 1024
# Synthetic inputs are made from the shapes the metadata records: bounded, so a profile of
# absurd shapes is one clear error instead of MemoryError (--inputs feeds real data).
MAX_SYNTHETIC_INPUT_BYTES = 2 << 30
_NPY_HEADER_SLACK = 1 << 16

# (atol, rtol) when the user gives none: FP32 engines may use TF32 on TensorRT; FP16 and
# INT8 engines are compared with the looser bounds their formats can hold.
DEFAULT_TOLERANCES: dict[PrecisionMode, tuple[float, float]] = {
    PrecisionMode.FP32: (1e-3, 1e-3),
    PrecisionMode.FP16: (1e-2, 1e-2),
    PrecisionMode.INT8: (1e-1, 1e-1),
    PrecisionMode.MIXED: (1e-1, 1e-1),
}

_ONNX_TYPE_NAMES = {
    "float": "float32",
    "float16": "float16",
    "double": "float64",
    "int8": "int8",
    "uint8": "uint8",
    "int16": "int16",
    "uint16": "uint16",
    "int32": "int32",
    "uint32": "uint32",
    "int64": "int64",
    "uint64": "uint64",
    "bool": "bool",
}
_SUPPORTED_KINDS = "fiub"  # float, signed, unsigned, bool


# ---------------------------------------------------------------- engine and its inputs


def entry_for_engine_file(engine_path: Path) -> EngineCacheEntry:
    """An entry naming ``engine_path`` with the identity its metadata claims.

    Nothing is trusted here: ``deserialize_engine`` runs the full gate on this entry (name,
    sidecars, sha256, host, size, trust) before anything is loaded."""
    metadata = read_metadata(engine_path)
    identity = identity_from_metadata(metadata, str(engine_path))
    return EngineCacheEntry(
        engine_path=engine_path, sha256=str(metadata["sha256"]), identity=identity
    )


@dataclass(frozen=True)
class EngineInput:
    """One input the engine takes: dtype, declared dims (None = dynamic) and its profile."""

    name: str
    dtype: np.dtype[Any]
    dims: tuple[int | None, ...]
    profile: OptimizationProfile | None = None
    # False for a profile we defaulted on a runtime that serves any size (ONNX Runtime):
    # its opt shape is the synthetic default, its range no limit.
    bounded: bool = True

    def default_shape(self) -> tuple[int, ...]:
        """The profile's opt shape (what the engine was tuned for), else 1 per dynamic dim."""
        if self.profile is not None and len(self.profile.opt_shape) == len(self.dims):
            return tuple(self.profile.opt_shape)
        return tuple(1 if d is None else d for d in self.dims)

    def shape_problem(self, shape: Sequence[int]) -> str | None:
        """Why ``shape`` cannot be fed to this input, or None."""
        shape = tuple(int(d) for d in shape)
        if len(shape) != len(self.dims):
            return f"rank {len(shape)}, the engine expects rank {len(self.dims)}"
        for i, (got, want) in enumerate(zip(shape, self.dims, strict=True)):
            if want is not None and got != want:
                return f"dim {i} is {got}, the engine expects {want}"
        if (self.profile is not None and self.bounded
                and len(self.profile.min_shape) == len(shape)):
            lo, hi = self.profile.min_shape, self.profile.max_shape
            if any(not a <= s <= b for a, s, b in zip(lo, shape, hi, strict=True)):
                return f"shape {list(shape)} is outside the profile {list(lo)}..{list(hi)}"
        return None

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype.name,
            "dims": list(self.dims),
            "profile": None if self.profile is None else self.profile.to_dict(),
        }


def _profiles(metadata: Mapping[str, Any], where: str) -> dict[str, OptimizationProfile]:
    from trt_provision.config_json import build_config_from_json

    build = metadata.get("build_config")
    raw = build.get("profiles") if isinstance(build, Mapping) else None
    if raw is None:
        return {}
    try:
        config = build_config_from_json({"profiles": raw}, source=f"{where} build_config")
    except (ManifestError, ValueError) as exc:
        raise EngineGateError(
            f"engine metadata has malformed profiles: {exc}", path=where
        ) from exc
    return {p.input_name: p for p in config.profiles}


def _io_from_metadata(metadata: Mapping[str, Any]) -> list[tuple[str, str, list[Any]]] | None:
    """(name, numpy dtype, dims) of each input the runtime recorded at build, if it did."""
    io = metadata.get("io")
    items = io.get("inputs") if isinstance(io, Mapping) else None
    if not isinstance(items, list) or not items:
        return None
    found: list[tuple[str, str, list[Any]]] = []
    for item in items:
        if not isinstance(item, Mapping):
            return None
        name, kind, shape = item.get("name"), item.get("type"), item.get("shape")
        if not (isinstance(name, str) and isinstance(kind, str) and isinstance(shape, list)):
            return None
        inner = kind[len("tensor(") : -1] if kind.startswith("tensor(") else kind
        dtype = _ONNX_TYPE_NAMES.get(inner)
        if dtype is None:
            return None
        found.append((name, dtype, shape))
    return found


def engine_inputs(
    metadata: Mapping[str, Any], model: ModelInfo | None, *, where: str = "engine"
) -> tuple[EngineInput, ...]:
    """The engine's inputs: names and dtypes from its metadata (as the runtime recorded them)
    or else from the source model; shapes bounded by the profiles it was built with."""
    profiles = _profiles(metadata, where)
    described: list[tuple[str, str, list[Any]]] | None = _io_from_metadata(metadata)
    if described is None and model is not None:
        described = [(t.name, t.dtype, list(t.shape or ())) for t in model.inputs]
        if any(t.shape is None for t in model.inputs):
            raise ModelError("a model input declares no shape; pass --inputs", path=where)
    if described is None:
        raise InferenceError(
            "cannot tell the engine's inputs: its metadata lists none and the source model "
            "is not available (pass --model)",
            path=where,
        )
    identity = metadata.get("identity")
    runtime = identity.get("runtime") if isinstance(identity, Mapping) else None
    any_size = isinstance(runtime, str) and runtime.startswith("ort")
    inputs: list[EngineInput] = []
    for name, dtype_name, shape in described:
        dtype = np.dtype(dtype_name)
        if dtype.kind not in _SUPPORTED_KINDS:
            raise InferenceError("unsupported input dtype", input=name, dtype=dtype_name)
        dims = tuple(d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else None
                     for d in shape)
        profile = profiles.get(name)
        bounded = not (any_size and profile is not None and profile.defaulted)
        inputs.append(EngineInput(name, dtype, dims, profile, bounded))
    return tuple(inputs)


def synthetic_inputs(
    inputs: Sequence[EngineInput], *, seed: int = 0
) -> dict[str, np.ndarray[Any, Any]]:
    """Seeded data at each input's opt shape: floats in [-1, 1), integers in [0, 4) (small
    enough to be a valid index or class id), booleans either way."""
    shapes = {spec.name: spec.default_shape() for spec in inputs}
    total = sum(math.prod(shapes[s.name]) * max(s.dtype.itemsize, 8) for s in inputs)
    if total > MAX_SYNTHETIC_INPUT_BYTES:  # itemsize 8: the generator's float64 / int64
        raise InferenceError(
            f"synthetic inputs at the recorded shapes would take {total} bytes, more than "
            f"{MAX_SYNTHETIC_INPUT_BYTES >> 30} GiB; pass --inputs FILE.npz",
            shapes={name: list(shape) for name, shape in shapes.items()},
        )
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for spec in inputs:
        shape = spec.default_shape()
        if spec.dtype.kind == "f":
            arrays[spec.name] = rng.uniform(-1.0, 1.0, size=shape).astype(spec.dtype)
        elif spec.dtype.kind == "b":
            arrays[spec.name] = rng.integers(0, 2, size=shape).astype(np.bool_)
        else:
            arrays[spec.name] = rng.integers(0, 4, size=shape).astype(spec.dtype)
    return arrays


def _npz_fail(path: Path, message: str, **context: Any) -> InferenceError:
    return InferenceError(f"inputs file {path.name}: {message}", **context)


def load_inputs_npz(
    path: Path, inputs: Sequence[EngineInput]
) -> dict[str, np.ndarray[Any, Any]]:
    """Read an ``.npz`` of named inputs, checking names, dtypes and shapes from each array's
    header before any data is read (no pickles; sizes bounded by the engine's profile)."""
    path = Path(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        raise _npz_fail(path, f"cannot read it: {exc.strerror}") from exc
    if not stat.S_ISREG(st.st_mode):
        raise _npz_fail(path, "not a regular file")
    specs = {spec.name: spec for spec in inputs}
    try:
        archive = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as exc:
        raise _npz_fail(path, "not an .npz archive (numpy.savez)") from exc
    with archive:
        members = archive.infolist()
        if len(members) > MAX_NPZ_MEMBERS:
            raise _npz_fail(path, "too many arrays", found=len(members))
        by_name: dict[str, zipfile.ZipInfo] = {}
        for info in members:
            if not info.filename.endswith(".npy"):
                raise _npz_fail(path, "holds a member that is not an array", member=info.filename)
            by_name[info.filename[: -len(".npy")]] = info
        unknown = sorted(set(by_name) - set(specs))
        if unknown:
            raise _npz_fail(path, "names an input the engine does not have",
                            found=unknown[:5], expected=sorted(specs))
        missing = [name for name in specs if name not in by_name]
        if missing:
            raise _npz_fail(path, "lacks an input", missing=missing[:5])
        arrays: dict[str, np.ndarray[Any, Any]] = {}
        for name, spec in specs.items():
            arrays[name] = _read_member(path, archive, by_name[name], spec)
    return arrays


def _read_member(
    path: Path, archive: zipfile.ZipFile, info: zipfile.ZipInfo, spec: EngineInput
) -> np.ndarray[Any, Any]:
    fmt = np.lib.format
    try:
        with archive.open(info) as fh:
            version = fmt.read_magic(fh)
            if version == (1, 0):
                shape, _fortran, dtype = fmt.read_array_header_1_0(fh)
            else:
                shape, _fortran, dtype = fmt.read_array_header_2_0(fh)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _npz_fail(path, "array header is unreadable", input=spec.name) from exc
    if dtype != spec.dtype:
        raise _npz_fail(path, "input has the wrong dtype", input=spec.name,
                        expected=spec.dtype.name, found=str(dtype))
    problem = spec.shape_problem(shape)
    if problem is not None:
        raise _npz_fail(path, f"input {spec.name!r} has a bad shape: {problem}",
                        found=list(shape))
    expected_bytes = math.prod(shape) * dtype.itemsize
    if info.file_size > expected_bytes + _NPY_HEADER_SLACK:
        raise _npz_fail(path, "array is larger than its header says", input=spec.name)
    try:
        with archive.open(info) as fh:
            array = fmt.read_array(fh, allow_pickle=False)
    except (ValueError, OSError, zipfile.BadZipFile, EOFError) as exc:
        raise _npz_fail(path, f"array data is unreadable: {exc}", input=spec.name) from exc
    return np.ascontiguousarray(array)


# ---------------------------------------------------------------- comparison


@dataclass(frozen=True)
class OutputComparison:
    name: str
    elements: int
    cosine: float
    max_abs_error: float
    max_rel_error: float
    mismatched: int
    passed: bool
    note: str = ""

    def to_dict(self) -> dict[str, Any]:
        return {
            "elements": self.elements,
            "cosine": _finite_or_text(self.cosine),
            "max_abs_error": _finite_or_text(self.max_abs_error),
            "max_rel_error": _finite_or_text(self.max_rel_error),
            "mismatched": self.mismatched,
            "passed": self.passed,
            **({"note": self.note} if self.note else {}),
        }


@dataclass(frozen=True)
class Comparison:
    reference: str  # what produced the reference outputs
    model: str
    atol: float
    rtol: float
    outputs: tuple[OutputComparison, ...]
    model_sha256_matches: bool = True

    @property
    def passed(self) -> bool:
        return bool(self.outputs) and all(o.passed for o in self.outputs)

    def to_dict(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "model": self.model,
            "model_sha256_matches": self.model_sha256_matches,
            "atol": self.atol,
            "rtol": self.rtol,
            "passed": self.passed,
            "outputs": {o.name: o.to_dict() for o in self.outputs},
        }


def _finite_or_text(value: float) -> float | str | None:
    """A figure for JSON: rounded; None where it could not be computed (NaN)."""
    if math.isnan(value):
        return None
    return round(value, 9) if math.isfinite(value) else str(value)


_NA = math.nan  # a figure that could not be computed: never a score


def _compare_one(name: str, ref: Any, cand: Any, atol: float, rtol: float) -> OutputComparison:
    if cand is None:
        return OutputComparison(name, 0, _NA, _NA, _NA, 0, False,
                                "the engine did not return this output")
    r = np.asarray(ref)
    c = np.asarray(cand)
    if r.shape != c.shape:
        return OutputComparison(name, int(r.size), _NA, _NA, _NA, int(r.size), False,
                                f"shape {list(c.shape)} differs from the reference "
                                f"{list(r.shape)}")
    if r.size == 0:
        # Nothing compared is never a perfect score.
        return OutputComparison(name, 0, _NA, _NA, _NA, 0, False, "no elements to compare")
    r64 = r.astype(np.float64).reshape(-1)
    c64 = c.astype(np.float64).reshape(-1)
    if not np.any(np.isfinite(r64) & np.isfinite(c64)):
        # All NaN/Inf (e.g. NaN inputs): matching NaNs compare nothing, never a perfect score.
        return OutputComparison(name, int(r.size), _NA, _NA, _NA, int(r.size), False,
                                "no finite elements to compare (NaN/Inf in the outputs)")
    with np.errstate(invalid="ignore", over="ignore", divide="ignore"):
        close = np.isclose(c64, r64, atol=atol, rtol=rtol, equal_nan=True)
        diff = np.abs(c64 - r64)
        both_finite = np.isfinite(r64) & np.isfinite(c64)
        nonfinite_mismatch = int(np.count_nonzero(~close & ~both_finite))
        max_abs = float(np.max(diff, where=both_finite, initial=0.0))
        nonzero = both_finite & (r64 != 0)
        if np.any(nonzero):
            max_rel = float(np.max(diff[nonzero] / np.abs(r64[nonzero])))
        else:
            max_rel = 0.0 if max_abs == 0.0 else math.inf
        rf, cf = np.where(both_finite, r64, 0.0), np.where(both_finite, c64, 0.0)
        ref_sq, cand_sq = float(np.dot(rf, rf)), float(np.dot(cf, cf))
        if ref_sq == 0.0 and cand_sq == 0.0:
            cosine = 1.0
        elif ref_sq == 0.0 or cand_sq == 0.0:
            cosine = 0.0
        else:
            cosine = max(-1.0, min(1.0, float(np.dot(rf, cf)) / math.sqrt(ref_sq * cand_sq)))
    mismatched = int(close.size - int(np.count_nonzero(close)))
    note = (f"{nonfinite_mismatch} element(s) NaN/Inf on one side only; the figures are over "
            "the finite pairs" if nonfinite_mismatch else "")
    return OutputComparison(name, int(r.size), cosine, max_abs, max_rel, mismatched,
                            mismatched == 0, note)


def compare_outputs(
    reference: Mapping[str, Any],
    candidate: Mapping[str, Any],
    *,
    atol: float,
    rtol: float,
) -> tuple[OutputComparison, ...]:
    """Compare every reference output by name (see the module docstring for the rules)."""
    return tuple(
        _compare_one(name, ref, candidate.get(name), atol, rtol) for name, ref in reference.items()
    )


def reference_outputs(
    model_path: Path, inputs: Mapping[str, np.ndarray[Any, Any]]
) -> dict[str, np.ndarray[Any, Any]]:
    """The source model on ONNX Runtime's CPU provider, FP32 as exported."""
    import onnxruntime as ort  # declared dependency; imported lazily to keep the CLI fast

    options = ort.SessionOptions()
    options.log_severity_level = 4  # errors are raised (and reported once), not logged
    try:
        session = ort.InferenceSession(str(model_path), options,
                                       providers=["CPUExecutionProvider"])
        feed: dict[str, np.ndarray[Any, Any]] = {}
        for meta in session.get_inputs():
            if meta.name not in inputs:
                raise ModelError("the source model has an input the engine does not",
                                 path=str(model_path), input=meta.name)
            inner = meta.type[len("tensor(") : -1] if meta.type.startswith("tensor(") else ""
            wanted = _ONNX_TYPE_NAMES.get(inner)
            value = inputs[meta.name]
            feed[meta.name] = value.astype(wanted) if wanted and value.dtype != wanted else value
        names = [o.name for o in session.get_outputs()]
        results = session.run(names, feed)
    except ModelError:
        raise
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph / InvalidArgument types
        raise ModelError(
            f"ONNX Runtime cannot run the source model: {type(exc).__name__}: {exc}",
            path=str(model_path),
        ) from exc
    return dict(zip(names, results, strict=True))


# ---------------------------------------------------------------- measuring


def latency_summary(seconds: Sequence[float]) -> dict[str, float]:
    """Latency percentiles in milliseconds (linear interpolation between ranks)."""
    if not seconds:
        raise ValueError("no latencies to summarise")
    ms = np.asarray(seconds, dtype=np.float64) * 1e3
    p50, p90, p99 = (float(v) for v in np.percentile(ms, [50, 90, 99]))
    return {
        "p50": round(p50, 4),
        "p90": round(p90, 4),
        "p99": round(p99, 4),
        "mean": round(float(ms.mean()), 4),
        "min": round(float(ms.min()), 4),
        "max": round(float(ms.max()), 4),
    }


def _host_rss_bytes() -> int | None:
    try:
        with open("/proc/self/status", "rb") as fh:
            for line in fh.read(1 << 16).splitlines():
                if line.startswith(b"VmRSS:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def _host_peak_rss_bytes() -> int | None:
    try:
        import resource
    except ImportError:  # not on Windows
        return None
    peak = int(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
    peak = peak if sys.platform == "darwin" else peak * 1024  # macOS reports bytes
    now = _host_rss_bytes()
    return max(peak, now) if now is not None else peak  # the kernel updates maxrss lazily


def _device_free_bytes(budget: MemoryBudget | None) -> int | None:
    snapshot = getattr(budget, "snapshot", None)
    if snapshot is None:
        return None
    try:
        free = snapshot().free_bytes
    except Exception:  # a telemetry hiccup must not fail a measurement
        log.debug("device free memory unavailable", exc_info=True)
        return None
    return free if isinstance(free, int) else None


@dataclass(frozen=True)
class RunOptions:
    iterations: int = 100
    warmup: int = 10
    inputs_file: Path | None = None
    model: Path | None = None  # source model named by the user (else from the metadata)
    compare: bool = True
    atol: float | None = None
    rtol: float | None = None
    seed: int = 0
    record: bool = True

    def __post_init__(self) -> None:
        if isinstance(self.iterations, bool) or self.iterations < 1:
            raise ValueError(f"iterations must be >= 1, got {self.iterations}")
        if isinstance(self.warmup, bool) or self.warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {self.warmup}")
        for label in ("atol", "rtol"):
            value = getattr(self, label)
            if value is not None and not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{label} must be a finite number >= 0, got {value}")


@dataclass
class RunReport:
    engine: Path
    model_name: str
    precision: str
    runtime: str
    inputs: dict[str, dict[str, Any]] = field(default_factory=dict)
    input_source: str = ""
    iterations: int = 0
    warmup: int = 0
    latency_ms: dict[str, float] = field(default_factory=dict)
    throughput: dict[str, float] = field(default_factory=dict)
    memory: dict[str, int | None] = field(default_factory=dict)
    comparison: Comparison | None = None
    comparison_skipped: str | None = None
    recorded: Path | None = None
    record_error: str | None = None
    measured_at: str = ""

    @property
    def passed(self) -> bool:
        return self.comparison is None or self.comparison.passed

    def measurement(self) -> dict[str, Any]:
        """What the perf sidecar keeps of this run."""
        return {
            "measured_at": self.measured_at,
            "runtime": self.runtime,
            "inputs": self.inputs,
            "input_source": self.input_source,
            "iterations": self.iterations,
            "warmup": self.warmup,
            "latency_ms": self.latency_ms,
            "throughput": self.throughput,
            "memory": self.memory,
            "accuracy_passed": None if self.comparison is None else self.comparison.passed,
        }

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": str(self.engine),
            "model": self.model_name,
            "precision": self.precision,
            **self.measurement(),
            "comparison": None if self.comparison is None else self.comparison.to_dict(),
            "comparison_skipped": self.comparison_skipped,
            "passed": self.passed,
            "recorded": None if self.recorded is None else str(self.recorded),
            "record_error": self.record_error,
        }


ProgressFn = Callable[[int, int], None]  # (iterations done, total) including warm-up


def _source_model(
    options: RunOptions, metadata: Mapping[str, Any], identity: EngineIdentity
) -> tuple[Path | None, str | None, bool]:
    """(model path, why it cannot be used, whether its hash matches the engine's identity)."""
    from trt_provision.identity import model_sha256

    if options.model is not None:
        path = Path(options.model)
        if not path.is_file():
            raise ModelError("ONNX model given with --model not found", path=str(path))
        return path, None, model_sha256(path) == identity.model_sha256
    model = metadata.get("model")
    # The compiler records {"path": ...}; a runtime's own metadata may replace it by the path.
    recorded = model.get("path") if isinstance(model, Mapping) else model
    if not isinstance(recorded, str) or not recorded:
        return None, "the engine's metadata names no source model; pass --model", False
    path = Path(recorded)
    try:
        regular = stat.S_ISREG(os.stat(path).st_mode)
    except OSError:
        regular = False
    if not regular:
        return None, f"source model {path} is not on this machine; pass --model", False
    try:
        matches = model_sha256(path) == identity.model_sha256
    except ModelError as exc:
        return None, f"source model {path} is unreadable ({exc.message}); pass --model", False
    if not matches:
        return None, (f"source model {path} changed since the engine was built; "
                      "pass --model to compare anyway"), False
    return path, None, True


def _compared_as(identity: EngineIdentity, metadata: Mapping[str, Any]) -> PrecisionMode:
    """The precision whose tolerance applies: an auto engine is the engine it chose (its
    sidecar says which); an unreadable choice gets the loosest tolerance of the candidates."""
    if identity.precision is not PrecisionMode.AUTO:
        return identity.precision
    auto = metadata.get("auto")
    chosen = auto.get("chosen") if isinstance(auto, Mapping) else None
    try:
        mode = PrecisionMode(chosen)
    except ValueError:
        return PrecisionMode.MIXED
    return mode if mode in DEFAULT_TOLERANCES else PrecisionMode.MIXED


def run_engine(
    runtime: InferenceRuntime,
    entry: EngineCacheEntry,
    options: RunOptions,
    *,
    budget: MemoryBudget | None = None,
    progress: ProgressFn | None = None,
) -> RunReport:
    """Load (gate, budget), run and time, release, then compare with ONNX Runtime FP32."""
    identity = entry.identity
    report = RunReport(
        engine=entry.engine_path,
        model_name=identity.model_name,
        precision=identity.precision.value,
        runtime=f"{identity.runtime}-{identity.runtime_version}",
        iterations=options.iterations,
        warmup=options.warmup,
    )
    rss_before = _host_rss_bytes()
    free_before = _device_free_bytes(budget)
    handle = runtime.deserialize_engine(entry)  # the engine gate, then the memory budget
    try:
        verified = handle.entry
        metadata = verified.extras.get("metadata")
        metadata = metadata if isinstance(metadata, Mapping) else read_metadata(entry.engine_path)
        model_path, skipped, hash_matches = _source_model(options, metadata, identity)
        info = describe_model(model_path) if model_path is not None else None
        specs = engine_inputs(metadata, info, where=str(entry.engine_path))
        if options.inputs_file is not None:
            inputs = load_inputs_npz(options.inputs_file, specs)
            report.input_source = str(options.inputs_file)
        else:
            inputs = synthetic_inputs(specs, seed=options.seed)
            report.input_source = f"synthetic (seed {options.seed})"
        report.inputs = {
            name: {"shape": list(a.shape), "dtype": a.dtype.name} for name, a in inputs.items()
        }
        log.info("running %s: %d warm-up + %d timed iterations", entry.engine_path.name,
                 options.warmup, options.iterations,
                 extra={"event": "engine.run.start", "engine": str(entry.engine_path)})
        total = options.warmup + options.iterations
        # The first call doubles as a warm-up; its outputs are the ones compared.
        outputs = {k: np.array(v, copy=True) for k, v in runtime.infer(handle, inputs).items()}
        done = 1
        # At most ~100 progress updates per run, so a bar costs nothing next to inference.
        step = max(1, total // 100)

        def tick() -> None:
            if progress is not None and (done % step == 0 or done == total):
                progress(done, total)

        for _ in range(max(options.warmup - 1, 0)):
            runtime.infer(handle, inputs)
            done += 1
            tick()
        latencies: list[float] = []
        clock = time.perf_counter
        started = clock()
        for _ in range(options.iterations):
            t0 = clock()
            runtime.infer(handle, inputs)
            latencies.append(clock() - t0)
            done += 1
            tick()
        wall = clock() - started
        report.latency_ms = latency_summary(latencies)
        first = next(iter(inputs.values()), None)
        batch = int(first.shape[0]) if first is not None and first.ndim >= 1 else 1
        qps = options.iterations / wall if wall > 0 else math.inf
        report.throughput = {
            "qps": round(qps, 3),
            "batch": batch,
            "samples_per_s": round(qps * batch, 3),
        }
        device_meta = metadata.get("device_memory_bytes")
        report.memory = {
            "host_rss_bytes": _host_rss_bytes(),
            "host_rss_before_load_bytes": rss_before,
            "host_peak_rss_bytes": _host_peak_rss_bytes(),
            "device_reserved_bytes": budget.predicted_bytes(verified) if budget else None,
            "device_memory_bytes": device_meta if isinstance(device_meta, int)
            and not isinstance(device_meta, bool) else None,
            "device_free_before_bytes": free_before,
            "device_free_after_bytes": _device_free_bytes(budget),
        }
    finally:
        runtime.release_engine(handle)  # idempotent; always, so the budget is given back
    report.measured_at = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    log.info("finished running %s: p50 %.3f ms", entry.engine_path.name,
             report.latency_ms["p50"], extra={"event": "engine.run.finish"})
    if options.compare and model_path is not None:
        default_atol, default_rtol = DEFAULT_TOLERANCES[_compared_as(identity, metadata)]
        atol = default_atol if options.atol is None else options.atol
        rtol = default_rtol if options.rtol is None else options.rtol
        reference = reference_outputs(model_path, inputs)
        report.comparison = Comparison(
            reference="onnxruntime-fp32-cpu",
            model=str(model_path),
            atol=atol,
            rtol=rtol,
            outputs=compare_outputs(reference, outputs, atol=atol, rtol=rtol),
            model_sha256_matches=hash_matches,
        )
        if not hash_matches:
            log.warning("the model given with --model is not the one %s was built from",
                        entry.engine_path.name, extra={"event": "engine.run.model_mismatch"})
    elif options.compare:
        report.comparison_skipped = skipped
        log.warning("not comparing %s with ONNX Runtime: %s", entry.engine_path.name, skipped,
                    extra={"event": "engine.run.no_reference"})
    else:
        report.comparison_skipped = "disabled with --no-compare"
    if options.record:
        try:
            report.recorded = record_perf(verified.engine_path, verified.sha256,
                                          report.measurement())
        except StoreError as exc:  # a read-only cache is still runnable
            report.record_error = str(exc)
            log.warning("measurements not recorded: %s", exc,
                        extra={"event": "engine.perf.not_recorded"})
    return report


# ---------------------------------------------------------------- the measurements sidecar


def perf_sidecar_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + PERF_SUFFIX)


def read_perf_sidecar(engine_path: Path) -> dict[str, Any] | None:
    """The recorded measurements of an engine; None when there are none.

    StoreError when the file is there but not ours to believe: not a regular file, larger
    than :data:`MAX_PERF_BYTES`, not our JSON shape, or for another file."""
    path = perf_sidecar_path(Path(engine_path))
    where = str(path)
    if not os.path.lexists(path):
        return None
    # The checks every sidecar gets (integrity.read_cache_file): no symlink, no FIFO or
    # device, owned by us or root and not writable by others, bounded size and nesting.
    try:
        raw = read_cache_file(path, MAX_PERF_BYTES, what="measurements sidecar")
        data = loads_bounded(raw, where, "measurements sidecar", MAX_PERF_BYTES)
    except EngineGateError as exc:
        raise StoreError(exc.message, **exc.context) from exc
    if not (isinstance(data, dict) and data.get("format") == PERF_FORMAT
            and isinstance(data.get("runs"), list)
            and all(isinstance(r, dict) for r in data["runs"])
            and isinstance(data.get("sha256"), str)):
        raise StoreError("measurements sidecar has an unknown shape", path=where)
    if data.get("engine") != Path(engine_path).name:
        raise StoreError("measurements sidecar is for another file", path=where)
    return data


def record_perf(engine_path: Path, sha256: str, measurement: Mapping[str, Any]) -> Path:
    """Append one measurement (the newest :data:`MAX_PERF_RUNS` are kept), atomically.

    Measurements of other engine bytes (a rebuild under the same name) are dropped."""
    runs: list[dict[str, Any]] = []
    with contextlib.suppress(StoreError):  # an unreadable old file is replaced, not trusted
        old = read_perf_sidecar(engine_path)
        if old is not None and old["sha256"] == sha256:
            runs = list(old["runs"])
    runs = [*runs, dict(measurement)][-MAX_PERF_RUNS:]
    doc: dict[str, Any] = {"format": PERF_FORMAT, "engine": engine_path.name, "sha256": sha256}
    while True:
        data = (json.dumps({**doc, "runs": runs}, indent=2, sort_keys=True, default=str)
                + "\n").encode()
        if len(data) <= MAX_PERF_BYTES or len(runs) <= 1:
            break
        runs = runs[1:]
    if len(data) > MAX_PERF_BYTES:  # one run of a model with very many inputs
        slim = {k: v for k, v in runs[0].items() if k != "inputs"}
        data = (json.dumps({**doc, "runs": [slim]}, indent=2, sort_keys=True, default=str)
                + "\n").encode()
    path = perf_sidecar_path(engine_path)
    atomic_write_bytes(path, data)
    return path
