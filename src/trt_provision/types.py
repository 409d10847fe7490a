"""Frozen data-transfer objects. Validation lives in ``__post_init__``; defaults live here."""

from __future__ import annotations

import enum
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from trt_provision.naming import (
    engine_filename,
    normalize_runtime_version,
    validate_identity_fields,
    validate_model_name,
)

__all__ = [
    "DEFAULT_PINNED_KEYWORDS",
    "FP16_KEPT_FP32_OPS",
    "MAX_SHAPE_DIM",
    "BackboneSpec",
    "BuildArtifact",
    "BuildConfig",
    "CalibrationInput",
    "CalibrationSpec",
    "CompileOutcome",
    "EngineCacheEntry",
    "EngineCompileRequest",
    "EngineCompileResult",
    "EngineCompileSummary",
    "EngineIdentity",
    "HardwareCompatibility",
    "HostCapabilities",
    "OptimizationProfile",
    "PluginSpec",
    "PrecisionMode",
    "PreparedGraph",
    "RuntimeTarget",
    "ThermalState",
    "default_profiles",
    "profile_problems",
    "shape_outside_profile",
]

DEFAULT_PINNED_KEYWORDS: tuple[str, ...] = ("router", "kan")

# Ops the FP16 graph keeps in FP32 (unreliable FP16 results: accumulations, exponentials,
# index maths; or no FP16 kernels: ONNX-ML). One list for the FP16 converter and the
# TensorRT strategy, so a pinned node of these types is "kept FP32" on both precision paths.
FP16_KEPT_FP32_OPS: frozenset[str] = frozenset({
    "ArrayFeatureExtractor", "Binarizer", "CastMap", "CategoryMapper", "DictVectorizer",
    "FeatureVectorizer", "Imputer", "LabelEncoder", "LinearClassifier", "LinearRegressor",
    "Normalizer", "OneHotEncoder", "SVMClassifier", "SVMRegressor", "Scaler",
    "TreeEnsembleClassifier", "TreeEnsembleRegressor", "ZipMap",
    "NonMaxSuppression", "TopK", "RoiAlign", "Range", "CumSum", "Multinomial",
    "RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "EyeLike",
    "ConstantOfShape", "Constant", "Cast", "CastLike", "Shape", "Size",
    "Exp", "Log", "Pow", "ReduceProd", "ReduceLogSumExp", "ReduceSumSquare", "ReduceL2",
    "QuantizeLinear", "DequantizeLinear", "DynamicQuantizeLinear",
    "Loop", "If", "Scan",
})


class PrecisionMode(str, enum.Enum):
    """Engine precision. ``MIXED`` is int8 with FP16-pinned sensitive layers.

    ``AUTO`` is not a precision a strategy builds: the compiler builds the candidates this
    host offers, judges and times them, and publishes the fastest that passes the gate
    (``auto_precision.py``).
    """

    FP32 = "fp32"
    FP16 = "fp16"
    INT8 = "int8"
    MIXED = "mixed"
    AUTO = "auto"

    @property
    def needs_calibration(self) -> bool:
        return self in (PrecisionMode.INT8, PrecisionMode.MIXED)


class HardwareCompatibility(str, enum.Enum):
    """TensorRT hardware-compatibility level; shown in the filename's target field."""

    NONE = "none"
    AMPERE_PLUS = "ampere_plus"
    SAME_COMPUTE_CAPABILITY = "same_compute_capability"


class CompileOutcome(str, enum.Enum):
    BUILT = "built"
    REUSED = "reused"
    FETCHED = "fetched"
    PLANNED = "planned"  # dry run: would be built
    FAILED = "failed"  # the build (or its inputs) failed; the run went on with the next model
    REFUSED = "refused"  # built, but the accuracy gate refused the converted graph
    MISSING = "missing"  # settings.build = "never" and no published engine to fetch

    @property
    def ok(self) -> bool:
        return self not in (CompileOutcome.FAILED, CompileOutcome.REFUSED, CompileOutcome.MISSING)


# settings.build: "fallback" reuses, fetches, then builds; "never" only reuses and fetches
# (a device of a fleet whose builder of record publishes); "always" reuses its own engines
# and builds, never fetching (the builder of record itself).
BUILD_POLICIES = ("fallback", "never", "always")


MAX_SHAPE_DIM = 2**31 - 1  # what TensorRT and ONNX Runtime can address in one dimension


def _check_shape(name: str, shape: tuple[int, ...]) -> None:
    if (
        not shape
        or any(
            isinstance(d, bool) or not isinstance(d, int) or not 1 <= d <= MAX_SHAPE_DIM
            for d in shape
        )
    ):
        raise ValueError(
            f"{name} must be a non-empty tuple of ints in 1..{MAX_SHAPE_DIM}, got {shape!r}"
        )


@dataclass(frozen=True)
class OptimizationProfile:
    """Shape range of one dynamic input: min <= opt <= max in every dimension."""

    input_name: str
    min_shape: tuple[int, ...]
    opt_shape: tuple[int, ...]
    max_shape: tuple[int, ...]
    # Chosen by us for a dynamic input the user gave no profile (its dynamic dims set to 1,
    # as trtexec and Polygraphy do): TensorRT builds for it, ONNX Runtime serves any size.
    defaulted: bool = False

    def __post_init__(self) -> None:
        if not isinstance(self.input_name, str) or not self.input_name:
            raise ValueError(f"profile input_name must be a non-empty string, got "
                             f"{self.input_name!r}")
        for label in ("min_shape", "opt_shape", "max_shape"):
            _check_shape(f"{self.input_name}.{label}", getattr(self, label))
        if not len(self.min_shape) == len(self.opt_shape) == len(self.max_shape):
            raise ValueError(f"profile {self.input_name}: min/opt/max ranks differ")
        for i, (lo, mid, hi) in enumerate(
            zip(self.min_shape, self.opt_shape, self.max_shape, strict=True)
        ):
            if not lo <= mid <= hi:
                raise ValueError(
                    f"profile {self.input_name}: dim {i} needs min <= opt <= max, "
                    f"got {lo} / {mid} / {hi}"
                )

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "input": self.input_name,
            "min": list(self.min_shape),
            "opt": list(self.opt_shape),
            "max": list(self.max_shape),
        }
        if self.defaulted:  # only then: user-given profiles keep the identity they had
            data["defaulted"] = True
        return data


def profile_problems(
    profiles: tuple[OptimizationProfile, ...],
    inputs: Mapping[str, tuple[int | str | None, ...]],
) -> list[str]:
    """What TensorRT would refuse in ``profiles`` for a model with these ``inputs``
    (name -> dims: a size, a symbolic name or None for a dynamic dim); empty when every
    rule holds.

    One place for every strategy, so a manifest that builds with ONNX Runtime on a laptop
    also builds with TensorRT on the device. The rules are TensorRT's, from
    ``IOptimizationProfile::setDimensions`` and ``IBuilderConfig::addOptimizationProfile``
    in NvInfer.h (NVIDIA/TensorRT, include/NvInfer.h, tag v10.3.0):
    - the profile names a network input (``setDimensions`` returns false otherwise);
    - min, opt and max have the input's rank ("nbDims must match the input's");
    - a dimension that is static in the network must equal that value in min, opt and
      max ("the dimensions must match the network's for every non-wildcard dimension");
    - min <= opt <= max in every dimension (checked when the profile is built);
    - every input with a dynamic dimension is covered, else ``addOptimizationProfile``
      fails ("the profile must define all dynamic inputs"; buildSerializedNetwork then
      reports the network's dynamic inputs without a profile);
    - inputs that share a symbolic dimension (``batch``) give it the same size in min, opt
      and max: the engine could not run at its own shapes otherwise.
    """
    problems: list[str] = []
    for p in profiles:
        dims = inputs.get(p.input_name)
        if dims is None:
            problems.append(
                f"profile names input {p.input_name!r}, which the model does not have "
                f"(inputs: {', '.join(sorted(inputs)) or 'none'})"
            )
            continue
        if len(p.min_shape) != len(dims):
            problems.append(
                f"profile {p.input_name!r} has rank {len(p.min_shape)}, the input has rank "
                f"{len(dims)} {_dims_text(dims)}"
            )
            continue
        for i, fixed in enumerate(dims):
            if not isinstance(fixed, int):
                continue
            for label, shape in (("min", p.min_shape), ("opt", p.opt_shape),
                                 ("max", p.max_shape)):
                if shape[i] != fixed:
                    problems.append(
                        f"profile {p.input_name!r} {label} dim {i} is {shape[i]}, but that "
                        f"dimension is static ({fixed}) in the model {_dims_text(dims)}"
                    )
                    break
        for i, (lo, mid, hi) in enumerate(zip(p.min_shape, p.opt_shape, p.max_shape,
                                              strict=True)):
            if not lo <= mid <= hi:
                problems.append(f"profile {p.input_name!r} dim {i} needs min <= opt <= max, "
                                f"got {lo} / {mid} / {hi}")
    problems.extend(_shared_dim_problems(profiles, inputs))
    named = {p.input_name for p in profiles}
    for name, dims in inputs.items():
        if any(not isinstance(d, int) for d in dims) and name not in named:
            problems.append(
                f"input {name!r} {_dims_text(dims)} has dynamic dimensions and needs an "
                f"optimization profile (min/opt/max)"
            )
    return problems


# dim_param strings exporters use for "some size" rather than a named, shared dimension
# (Paddle2ONNX writes "?" for every dynamic dim, others "-1" or "None"): never a constraint.
ANONYMOUS_DIM_NAMES = frozenset({"?", "-1", "None", "none", "null", "dynamic"})


def _shared_dim_problems(
    profiles: tuple[OptimizationProfile, ...],
    inputs: Mapping[str, tuple[int | str | None, ...]],
) -> list[str]:
    sizes: dict[str, list[tuple[str, int, OptimizationProfile]]] = {}
    for p in profiles:
        dims = inputs.get(p.input_name)
        if dims is None or len(dims) != len(p.min_shape):
            continue  # reported above
        for i, d in enumerate(dims):
            if isinstance(d, str) and d and d not in ANONYMOUS_DIM_NAMES:
                sizes.setdefault(d, []).append((p.input_name, i, p))
    problems = []
    for symbol, users in sizes.items():
        differ = []
        for label, attr in (("min", "min_shape"), ("opt", "opt_shape"), ("max", "max_shape")):
            given = [(name, getattr(p, attr)[i]) for name, i, p in users]
            if len({size for _, size in given}) > 1:
                differ.append(f"{label} " + " vs ".join(f"{n} {size}" for n, size in given))
        if differ:
            problems.append(
                f"inputs {', '.join(repr(n) for n in dict.fromkeys(n for n, _, _ in users))} "
                f"share the dynamic dimension {symbol!r} but their profiles give it "
                f"different sizes ({'; '.join(differ)})"
            )
    return problems


def default_profiles(
    profiles: tuple[OptimizationProfile, ...],
    inputs: Mapping[str, tuple[int | str | None, ...]],
) -> tuple[OptimizationProfile, ...]:
    """Profiles for the dynamic inputs ``profiles`` leaves out, marked ``defaulted``: each
    dynamic dim 1 (trtexec's and Polygraphy's default), or the sizes a given profile sets
    for the same symbolic dimension (``mask`` follows ``token_ids`` on ``batch``)."""
    known: dict[str, tuple[int, int, int]] = {}
    for p in profiles:
        for i, d in enumerate(inputs.get(p.input_name) or ()):
            if isinstance(d, str) and d and i < len(p.min_shape):
                known.setdefault(d, (p.min_shape[i], p.opt_shape[i], p.max_shape[i]))
    named = {p.input_name for p in profiles}
    added = []
    for name, dims in inputs.items():
        if name in named or not dims or all(isinstance(d, int) for d in dims):
            continue
        shapes = [
            tuple(d if isinstance(d, int) else known.get(d or "", (1, 1, 1))[k] for d in dims)
            for k in range(3)
        ]
        lo, mid, hi = shapes
        added.append(OptimizationProfile(name, lo, mid, hi, defaulted=True))
    return tuple(added)


def _dims_text(dims: tuple[int | str | None, ...]) -> str:
    return "[" + ", ".join("?" if d is None else str(d) for d in dims) + "]"


def shape_outside_profile(
    profile: OptimizationProfile, shape: tuple[int, ...]
) -> str | None:
    """Why ``shape`` is outside the profile's [min, max] (None when inside): TensorRT's
    ``IExecutionContext::setInputShape`` refuses such a shape, so every runtime does."""
    if len(shape) != len(profile.min_shape):
        return f"rank {len(shape)}, the profile's is {len(profile.min_shape)}"
    for i, (lo, d, hi) in enumerate(zip(profile.min_shape, shape, profile.max_shape,
                                        strict=True)):
        if not lo <= d <= hi:
            return f"dim {i} is {d}, the profile allows {lo}..{hi}"
    return None


@dataclass(frozen=True)
class PluginSpec:
    """A TensorRT plugin the engine depends on (its contract enters the identity)."""

    name: str
    version: str = "1"
    namespace: str = ""
    required: bool = True

    def __post_init__(self) -> None:
        if not self.name:
            raise ValueError("plugin name must not be empty")


CALIBRATION_ALGORITHMS: tuple[str, ...] = ("auto", "entropy", "minmax", "percentile")
# How the accuracy gate judges one output per sample (``[models.outputs.NAME] kind = ...``);
# see _docs/calibration.md. Unnamed outputs get a kind inferred from the graph.
OUTPUT_KINDS: tuple[str, ...] = ("sequence", "classes", "map", "embedding", "regression")


@dataclass(frozen=True)
class CalibrationSpec:
    """Where INT8 calibration data comes from and how ranges are computed."""

    source: str | None = None  # .npz, .npy dir, or "file.py:function"
    dataset_version: str | None = None  # explicit version; else the dataset digest
    # auto: min-max, percentile and entropy from one pass, the best on the validation split
    algorithm: str = "auto"  # auto | entropy | minmax | percentile
    num_bins: int = 2048
    percentile: float = 99.999
    governed: bool = True
    max_batches: int | None = None
    allow_lossy_cast: bool = False  # e.g. float64 batches for a float32 input
    # A user's own held-out data (same forms as ``source``): validation and test come from it.
    evaluation_data: str | None = None
    # A TensorRT calibration cache file (trtexec --calib): its scales are the INT8 ranges.
    trt_cache: str | None = None

    def __post_init__(self) -> None:
        if self.algorithm not in CALIBRATION_ALGORITHMS:
            raise ValueError(
                f"calibration algorithm must be auto, entropy, minmax or percentile, "
                f"got {self.algorithm!r}"
            )
        if self.num_bins < 16:
            raise ValueError(f"calibration num_bins must be >= 16, got {self.num_bins}")
        if not 50.0 < self.percentile <= 100.0:
            raise ValueError(f"calibration percentile must be in (50, 100], got {self.percentile}")
        if self.max_batches is not None and self.max_batches < 1:
            raise ValueError(f"calibration max_batches must be >= 1, got {self.max_batches}")


@dataclass(frozen=True)
class BuildConfig:
    """Everything that changes the engine a runtime builds."""

    precision: PrecisionMode = PrecisionMode.FP32
    workspace_mib: int = 1024
    profiles: tuple[OptimizationProfile, ...] = ()
    calibration: CalibrationSpec | None = None
    timing_cache_path: Path | None = None
    hardware_compatibility: HardwareCompatibility = HardwareCompatibility.NONE
    builder_optimization_level: int = 3
    plugins: tuple[PluginSpec, ...] = ()
    fp16_pinned_keywords: tuple[str, ...] = DEFAULT_PINNED_KEYWORDS
    strict_precision_constraints: bool = True
    strongly_typed: bool | None = None  # None: choose by what the installed TRT offers
    excluded_op_types: tuple[str, ...] = ()
    min_cosine: float | None = None
    max_rel_error: float | None = None
    # Accuracy gate (on by default for int8/mixed, and fp16 with data): top-1 agreement of
    # classification-like outputs, an optional task metric "file.py:function", and the
    # explicit opt-out that publishes a refused graph with a warning in its metadata.
    min_top1_agreement: float | None = None
    accuracy_metric: str | None = None
    allow_inaccurate: bool = False
    # Per-output kind for the per-sample accuracy gate, (output name, kind) sorted by name.
    output_kinds: tuple[tuple[str, str], ...] = ()
    # TensorRT on Jetson: build for this DLA core (None: the GPU); layers the DLA cannot run
    # fall back to the GPU only with gpu_fallback. tf32: let an fp32 build use TF32 kernels.
    dla_core: int | None = None
    gpu_fallback: bool = False
    tf32: bool = False
    # precision = "auto": seconds after which the search starts no further candidate (None:
    # auto_precision.AUTO_BUDGET_S). Enters the auto engine's identity only.
    auto_budget_s: float | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.precision, PrecisionMode):
            raise ValueError(f"precision must be a PrecisionMode, got {self.precision!r}")
        if self.workspace_mib < 1:
            raise ValueError(f"workspace_mib must be >= 1, got {self.workspace_mib}")
        if not 0 <= self.builder_optimization_level <= 5:
            raise ValueError(
                f"builder_optimization_level must be 0..5, got {self.builder_optimization_level}"
            )
        names = [p.input_name for p in self.profiles]
        if len(names) != len(set(names)):
            raise ValueError(f"duplicate profile input names: {names}")
        if any(
            not isinstance(k, str) or not k or k != k.lower() for k in self.fp16_pinned_keywords
        ):
            raise ValueError(
                f"fp16_pinned_keywords must be non-empty lowercase strings, "
                f"got {self.fp16_pinned_keywords!r}"
            )
        if self.min_cosine is not None and not -1.0 <= self.min_cosine <= 1.0:
            raise ValueError(f"min_cosine must be in [-1, 1], got {self.min_cosine}")
        if self.max_rel_error is not None and self.max_rel_error < 0:
            raise ValueError(f"max_rel_error must be >= 0, got {self.max_rel_error}")
        if self.min_top1_agreement is not None and not 0.0 <= self.min_top1_agreement <= 1.0:
            raise ValueError(
                f"min_top1_agreement must be in [0, 1], got {self.min_top1_agreement}"
            )
        if self.accuracy_metric is not None and (
            not isinstance(self.accuracy_metric, str) or ".py:" not in self.accuracy_metric
        ):
            raise ValueError(
                f"accuracy_metric must be 'file.py:function', got {self.accuracy_metric!r}"
            )
        for out_name, kind in self.output_kinds:
            if not out_name or kind not in OUTPUT_KINDS:
                raise ValueError(f"output {out_name!r}: kind must be one of "
                                 f"{list(OUTPUT_KINDS)}, got {kind!r}")
        if self.dla_core is not None and (
            isinstance(self.dla_core, bool) or not isinstance(self.dla_core, int)
            or not 0 <= self.dla_core <= 15
        ):
            raise ValueError(f"dla_core must be an integer 0..15 or None, got {self.dla_core!r}")
        if self.dla_core is not None and self.precision is PrecisionMode.AUTO:
            # The auto engine is looked up before its winner is known, and a DLA engine's
            # target names its core: the two cannot share one identity.
            raise ValueError("dla_core needs an explicit precision (fp16, int8 or mixed), "
                             "not auto")
        if self.dla_core is not None and self.precision is PrecisionMode.FP32:
            raise ValueError("dla_core needs precision fp16, int8 or mixed (DLA has no FP32)")
        if self.auto_budget_s is not None and not (
            isinstance(self.auto_budget_s, int | float) and not isinstance(self.auto_budget_s, bool)
            and 0 < self.auto_budget_s < float("inf")
        ):
            raise ValueError(f"auto_budget_s must be a number of seconds > 0, got "
                             f"{self.auto_budget_s!r}")
        if self.gpu_fallback and self.dla_core is None:
            raise ValueError("gpu_fallback applies only with dla_core")
        if self.dla_core is not None and self.hardware_compatibility is not (
            HardwareCompatibility.NONE
        ):
            raise ValueError("dla_core cannot be combined with hardware_compatibility")

    def profile_for(self, input_name: str) -> OptimizationProfile | None:
        for p in self.profiles:
            if p.input_name == input_name:
                return p
        return None


@dataclass(frozen=True)
class CalibrationInput:
    """INT8 calibration data for TensorRT's implicit (calibrator) path.

    Produced by the calibration package, consumed by the TensorRT strategy; it lives here so
    that neither package imports the other.
    """

    batches: Iterable[Mapping[str, Any]]
    read_cache: Callable[[], bytes | None]
    write_cache: Callable[[bytes], None]


@dataclass(frozen=True)
class HostCapabilities:
    """What this host can run. ``sm`` is e.g. ``"sm90"``; None when no GPU is visible."""

    sm: str | None = None
    gpu_name: str | None = None
    gpu_memory_bytes: int | None = None
    gpu_integrated: bool = False
    jetpack: str | None = None  # e.g. "6.2"
    l4t: str | None = None  # e.g. "36.4.3"
    trt_version: str | None = None
    cuda_driver_version: str | None = None
    nvidia_driver_version: str | None = None
    ort_version: str | None = None
    ort_providers: tuple[str, ...] = ()
    cpu_arch: str = ""
    cpu_isa: tuple[str, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def has_gpu(self) -> bool:
        return self.sm is not None

    @property
    def sm_number(self) -> int | None:
        if self.sm is None:
            return None
        return int(self.sm[2:].rstrip("+"))

    def to_dict(self) -> dict[str, Any]:
        return {
            "sm": self.sm,
            "gpu_name": self.gpu_name,
            "gpu_memory_bytes": self.gpu_memory_bytes,
            "gpu_integrated": self.gpu_integrated,
            "jetpack": self.jetpack,
            "l4t": self.l4t,
            "trt_version": self.trt_version,
            "cuda_driver_version": self.cuda_driver_version,
            "nvidia_driver_version": self.nvidia_driver_version,
            "ort_version": self.ort_version,
            "ort_providers": list(self.ort_providers),
            "cpu_arch": self.cpu_arch,
            "cpu_isa": list(self.cpu_isa),
            "notes": list(self.notes),
        }


@dataclass(frozen=True)
class RuntimeTarget:
    """What a runtime strategy binds an engine to on this host (goes into the identity)."""

    runtime: str  # filename token: "trt", "ortcpu", "ortcuda"
    runtime_version: str  # e.g. "10.3.0"
    target: str  # "sm87", "sm80+", "sm90cc", or "cpu-avx2"
    platform: str  # "jp6.2", "dgpu" or "host"
    # Runtime-level choices that change the engine built for one BuildConfig (e.g. TensorRT's
    # INT8 quantization mode): they enter the options digest, not the filename or the gate.
    build_options: tuple[tuple[str, str], ...] = field(default=(), compare=False)

    def __post_init__(self) -> None:
        # Installed versions come from the environment (e.g. "1.19.0+cpu"): normalise them
        # once, here, so the identity, the filename and the gate all see the same string.
        object.__setattr__(
            self, "runtime_version", normalize_runtime_version(self.runtime_version)
        )


@dataclass(frozen=True)
class EngineIdentity:
    """Every build-relevant input of one engine; its filename is derived from it."""

    model_name: str
    model_sha256: str
    precision: PrecisionMode
    runtime: str
    runtime_version: str
    target: str
    platform: str
    options_digest: str

    def __post_init__(self) -> None:
        # The filename schema (naming.py) checks every field.
        validate_identity_fields(self)

    @property
    def hardware_compatibility(self) -> HardwareCompatibility:
        if self.target.endswith("+"):
            return HardwareCompatibility.AMPERE_PLUS
        if self.target.endswith("cc"):
            return HardwareCompatibility.SAME_COMPUTE_CAPABILITY
        return HardwareCompatibility.NONE

    @property
    def dla_core(self) -> int | None:
        """The DLA core the engine was built for (target ``smNN-dlaK``), else None."""
        _, sep, core = self.target.partition("-dla")
        return int(core) if sep and core.isdigit() else None

    @property
    def jetpack(self) -> str | None:
        return self.platform[2:] if self.platform.startswith("jp") else None

    @property
    def filename(self) -> str:
        return engine_filename(self)

    def to_dict(self) -> dict[str, Any]:
        return {
            "model_name": self.model_name,
            "model_sha256": self.model_sha256,
            "precision": self.precision.value,
            "runtime": self.runtime,
            "runtime_version": self.runtime_version,
            "target": self.target,
            "platform": self.platform,
            "options_digest": self.options_digest,
        }


@dataclass(frozen=True)
class EngineCacheEntry:
    """A published engine: the file, its verified sha256 and its identity."""

    engine_path: Path
    sha256: str
    identity: EngineIdentity
    size_bytes: int = 0
    extras: Mapping[str, Any] = field(default_factory=dict)

    @property
    def sm(self) -> str:
        return self.identity.target

    @property
    def jetpack(self) -> str | None:
        return self.identity.jetpack

    @property
    def trt(self) -> str | None:
        return self.identity.runtime_version if self.identity.runtime == "trt" else None

    @property
    def precision(self) -> PrecisionMode:
        return self.identity.precision

    @property
    def sha256_path(self) -> Path:
        return self.engine_path.with_name(self.engine_path.name + ".sha256")

    @property
    def metadata_path(self) -> Path:
        return self.engine_path.with_name(self.engine_path.name + ".json")


@dataclass(frozen=True)
class PreparedGraph:
    """The graph a strategy builds a reduced-precision engine from (FP16 or Q/DQ), as the
    precision pipeline prepared and judged it, with the evidence its sidecar records."""

    model_path: Path
    metadata: Mapping[str, Any] = field(default_factory=dict)
    # The pipeline's own verdict (its judging split, gate), for its check of the engine
    # built from this graph; opaque to the compiler and the strategies.
    evidence: Any = field(default=None, compare=False, repr=False)


@dataclass(frozen=True)
class BuildArtifact:
    """What a runtime's compile step produced in the staging file it was given."""

    staged_path: Path
    build_seconds: float
    # Per-layer precision evidence, accuracy numbers, memory needs, calibration facts...
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class BackboneSpec:
    """One model of the corpus and how to build it."""

    name: str
    model_path: Path
    build_config: BuildConfig = field(default_factory=BuildConfig)
    version_label: str | None = None

    def __post_init__(self) -> None:
        validate_model_name(self.name)


@dataclass(frozen=True)
class EngineCompileRequest:
    backbones: tuple[BackboneSpec, ...]
    force_rebuild: bool = False
    dry_run: bool = False
    use_remote: bool = True
    # False: a model that fails is reported (FAILED/REFUSED) and the next one is provisioned;
    # True: the first failure is raised and the models after it are not attempted.
    fail_fast: bool = False
    build: str = "fallback"  # one of BUILD_POLICIES

    def __post_init__(self) -> None:
        if self.build not in BUILD_POLICIES:
            raise ValueError(f"build must be one of {BUILD_POLICIES}, got {self.build!r}")
        names = [b.name for b in self.backbones]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"duplicate model names in request: {dupes}")


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def verdict_of(metadata: Mapping[str, Any]) -> dict[str, Any] | None:
    """The accuracy verdict a sidecar records, with the evidence it rests on: verdict,
    samples, Wilson bound and threshold, and whether it judged the engine or its graph.
    Sidecars are outside input: anything malformed reads as absent, never raises."""
    accuracy = metadata.get("accuracy")
    if not isinstance(accuracy, Mapping):
        return None
    engine = accuracy.get("engine")
    record, judged = (engine, "engine") if isinstance(engine, Mapping) else (accuracy, "graph")
    verdict = record.get("verdict")
    if not isinstance(verdict, str):
        return None
    samples = record.get("samples")
    gate = record.get("gate")
    threshold = _number(record.get("threshold"))
    if threshold is None and isinstance(gate, Mapping):
        threshold = _number(gate.get("agreement_bar"))
    return {
        "verdict": verdict[:80],
        "judged": judged,
        "samples": samples if isinstance(samples, int) and not isinstance(samples, bool)
        else None,
        "bound": _number(record.get("bound")),
        "threshold": threshold,
    }


def verdict_cell(verdict: Mapping[str, Any] | None) -> str:
    """One table cell: "passed n=400 bound 0.981/0.95" ("-" when nothing is recorded)."""
    if not verdict:
        return "-"
    text = str(verdict["verdict"])
    if verdict.get("samples") is not None:
        text += f" n={verdict['samples']}"
    if verdict.get("bound") is not None:
        text += f" bound {verdict['bound']:.3f}"
        if verdict.get("threshold") is not None:
            text += f"/{verdict['threshold']:g}"
    return text


@dataclass(frozen=True)
class EngineCompileResult:
    name: str
    identity: EngineIdentity | None  # None when the model failed before its identity was known
    outcome: CompileOutcome
    entry: EngineCacheEntry | None  # None for a dry run or a failed/refused model
    compile_seconds: float = 0.0
    total_seconds: float = 0.0
    notes: tuple[str, ...] = ()
    # FAILED/REFUSED: the error's type name and one-line message; internal: our own bug.
    error_type: str | None = None
    error: str | None = None
    internal: bool = False

    def verdict(self) -> dict[str, Any] | None:
        """What the published engine's accuracy verdict rests on, from its sidecar: the
        engine's own check when it has one, else the graph's (None: nothing recorded)."""
        metadata = self.entry.extras.get("metadata") if self.entry is not None else None
        return verdict_of(metadata) if isinstance(metadata, Mapping) else None

    def to_dict(self) -> dict[str, Any]:
        data: dict[str, Any] = {
            "name": self.name,
            "outcome": self.outcome.value,
            "verdict": self.verdict(),
            "engine": str(self.entry.engine_path) if self.entry else None,
            "filename": self.identity.filename if self.identity else None,
            "sha256": self.entry.sha256 if self.entry else None,
            "compile_seconds": round(self.compile_seconds, 4),
            "total_seconds": round(self.total_seconds, 4),
            "notes": list(self.notes),
        }
        if self.error is not None:
            data["error_type"] = self.error_type
            data["error"] = self.error
            if self.internal:
                data["internal_error"] = True
        return data


@dataclass(frozen=True)
class EngineCompileSummary:
    results: tuple[EngineCompileResult, ...] = ()
    wall_seconds: float = 0.0

    def _count(self, outcome: CompileOutcome) -> int:
        return sum(1 for r in self.results if r.outcome is outcome)

    @property
    def built(self) -> int:
        return self._count(CompileOutcome.BUILT)

    @property
    def reused(self) -> int:
        return self._count(CompileOutcome.REUSED)

    @property
    def fetched(self) -> int:
        return self._count(CompileOutcome.FETCHED)

    @property
    def planned(self) -> int:
        return self._count(CompileOutcome.PLANNED)

    @property
    def failed(self) -> int:
        return self._count(CompileOutcome.FAILED)

    @property
    def refused(self) -> int:
        return self._count(CompileOutcome.REFUSED)

    @property
    def missing(self) -> int:
        return self._count(CompileOutcome.MISSING)

    @property
    def internal_errors(self) -> int:
        return sum(1 for r in self.results if r.internal)

    @property
    def cache_hit_ratio(self) -> float:
        """Share of engines that needed no build (reused locally or fetched)."""
        if not self.results:
            return 0.0
        return (self.reused + self.fetched) / len(self.results)

    def to_dict(self) -> dict[str, Any]:
        return {
            "built": self.built,
            "reused": self.reused,
            "fetched": self.fetched,
            "planned": self.planned,
            "failed": self.failed,
            "refused": self.refused,
            "missing": self.missing,
            "cache_hit_ratio": round(self.cache_hit_ratio, 4),
            "wall_seconds": round(self.wall_seconds, 4),
            "results": [r.to_dict() for r in self.results],
        }


@dataclass(frozen=True)
class ThermalState:
    """Temperatures per zone (°C) and decoded throttling flags."""

    temperatures_c: Mapping[str, float] = field(default_factory=dict)
    throttle_reasons: tuple[str, ...] = ()
    is_telemetry_available: bool = False
    source: str = "none"

    @property
    def max_temperature_c(self) -> float | None:
        return max(self.temperatures_c.values()) if self.temperatures_c else None

    @property
    def is_throttling(self) -> bool:
        return bool(self.throttle_reasons)

    def to_dict(self) -> dict[str, Any]:
        return {
            "source": self.source,
            "is_telemetry_available": self.is_telemetry_available,
            "temperatures_c": dict(self.temperatures_c),
            "max_temperature_c": self.max_temperature_c,
            "throttle_reasons": list(self.throttle_reasons),
        }
