"""The TensorRT Python builder: network, builder config, precision, build, memory stamp.

Every TensorRT call of a build runs under :func:`~._process.captured_warnings`: deprecated
bindings (``utils::deprecateMember``) warn instead of failing, and what they said ends up in
the artifact's ``build_log``.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from trt_provision.errors import EngineBuildError, TrtProvisionError
from trt_provision.runtimes.tensorrt._context import TrtContext, check_dla_int8
from trt_provision.runtimes.tensorrt._paths import trt_path
from trt_provision.runtimes.tensorrt._process import captured_warnings, recent_messages
from trt_provision.runtimes.tensorrt.calibrator import (
    CalibrationFeeder,
    calibration_batches,
    make_entropy_calibrator,
)
from trt_provision.runtimes.tensorrt.cuda_buffers import CudaBuffers
from trt_provision.runtimes.tensorrt.loader import check_io_dtype, memory_stamp
from trt_provision.runtimes.tensorrt.network import (
    LayerEvidence,
    ModelNodes,
    apply_weak_precision,
    choose_precision_path,
    strong_precision_evidence,
)
from trt_provision.runtimes.tensorrt.progress import (
    attach_progress_monitor,
    build_messages,
    out_of_memory,
    workspace_for_free_memory,
)
from trt_provision.runtimes.tensorrt.timing_cache import TimingCacheFile, timing_cache_path
from trt_provision.types import (
    BuildArtifact,
    BuildConfig,
    HardwareCompatibility,
    PluginSpec,
    PrecisionMode,
)

__all__ = [
    "PythonBuilder",
    "check_dla_profiles",
    "check_hardware_compatibility",
    "check_plugins",
    "write_synced",
]

log = logging.getLogger(__name__)

AMPERE_SM = 80
# SAME_COMPUTE_CAPABILITY "is only supported for engines built on NVIDIA Turing and later
# GPUs" (NVIDIA/TensorRT v10.16 include/NvInfer.h, HardwareCompatibilityLevel).
TURING_SM = 75

Populate = Callable[[Any, Any, Any], dict[str, Any]]


class PythonBuilder:
    """Builds one engine through ``trt.Builder`` into a staged path."""

    def __init__(self, ctx: TrtContext) -> None:
        self._ctx = ctx

    def build(
        self,
        populate: Populate,
        build_config: BuildConfig,
        staged_path: Path,
        model_path: Path | None,
        own: ModelNodes | None = None,
    ) -> BuildArtifact:
        ctx = self._ctx
        trt = ctx.trt()
        started = time.monotonic()
        log.info("building TensorRT engine", extra={"event": "trt.build.start",
                                                      "model": str(model_path)})
        build_log: list[str] = []
        with captured_warnings(build_log):
            artifact = self._build(trt, populate, build_config, staged_path, model_path, own,
                                   build_log)
        seconds = time.monotonic() - started
        log.info("finished TensorRT engine in %.1f s", seconds,
                 extra={"event": "trt.build.finish", "seconds": seconds,
                        "bytes": artifact.metadata["engine_bytes"]})
        metadata = {**artifact.metadata, "build_log": build_log}
        return BuildArtifact(staged_path=staged_path, build_seconds=seconds, metadata=metadata)

    def _build(
        self, trt: Any, populate: Populate, build_config: BuildConfig, staged_path: Path,
        model_path: Path | None, own: ModelNodes | None, build_log: list[str],
    ) -> BuildArtifact:
        ctx = self._ctx
        logger = ctx.logger(trt)
        plugins = check_plugins(ctx, trt, build_config.plugins)
        check_dla_int8(ctx.options, trt, build_config)
        implicit = ctx.implicit_int8(trt, build_config)
        path = choose_precision_path(
            trt, build_config, implicit_int8=implicit,
            prefer_strong=ctx.prefer_strong(build_config, onnx=model_path is not None))
        builder = trt.Builder(logger)
        network = builder.create_network(_network_flags(trt, path))
        source_facts = populate(trt, network, logger)
        check_network_io(trt, network)
        config = builder.create_builder_config()
        requested = build_config.workspace_mib << 20
        workspace, free_at_start = requested, None
        if ctx.integrated:
            workspace, free_at_start = workspace_for_free_memory(requested, ctx.free_memory)
            if workspace < requested:
                log.warning("workspace capped to %d MiB of %d MiB free", workspace >> 20,
                            (free_at_start or 0) >> 20,
                            extra={"event": "trt.build.workspace_capped",
                                   "requested_bytes": requested, "workspace_bytes": workspace,
                                   "free_bytes": free_at_start})
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, workspace)
        config.builder_optimization_level = build_config.builder_optimization_level
        set_hardware_compatibility(trt, config, build_config.hardware_compatibility,
                                   ctx.sm_number())
        profile = _add_profiles(builder, network, config, build_config)
        flags: list[str] = []
        flags += _apply_tf32(trt, config, build_config)
        flags += _apply_dla(trt, builder, config, build_config)

        evidence: list[LayerEvidence]
        feeder: CalibrationFeeder | None = None
        if path == "weak":
            precision_flags, evidence = apply_weak_precision(trt, network, config, build_config,
                                                             own)
            flags += precision_flags
            if build_config.precision.needs_calibration and implicit:
                feeder = self._attach_calibrator(trt, network, config, profile, model_path,
                                                 build_config)
        else:
            evidence = strong_precision_evidence(network, build_config, own)

        cache_file: TimingCacheFile | None = None
        timing_cache: Any = None
        cache_dir = build_config.timing_cache_path or ctx.options.timing_cache_dir
        if cache_dir is not None:
            cache_file = TimingCacheFile(
                timing_cache_path(cache_dir, ctx.version(), ctx.device_sm(), ctx.device_name()))
            timing_cache = cache_file.attach(config)
            if timing_cache is None:
                cache_file = None  # TensorRT refused it: build without, leave the file alone

        monitor = attach_progress_monitor(trt, config, str(model_path or "network"))
        seen = recent_messages(logger)
        try:
            serialized = builder.build_serialized_network(network, config)
        except Exception as exc:
            raise EngineBuildError(
                f"TensorRT build raised {type(exc).__name__}: {exc}", model=str(model_path)
            ) from exc
        finally:
            if feeder is not None:
                feeder.finish()
        if feeder is not None:
            feeder.raise_if_failed()
        del monitor  # kept alive through the build: the config holds only a pointer
        if serialized is None:
            said = build_messages(seen, recent_messages(logger))
            if out_of_memory(said, integrated=ctx.integrated):
                raise EngineBuildError(
                    "TensorRT ran out of memory building this engine (it reports that as "
                    "'could not find any implementation'); free memory, lower workspace_mib "
                    "or build where more memory is free",
                    model=str(model_path), precision_path=path, out_of_memory=True,
                    free_bytes_at_start=free_at_start, free_bytes_after=ctx.free_memory()
                    if ctx.integrated else None, workspace_bytes=workspace,
                    tensorrt_said=said[-10:])
            raise EngineBuildError(
                "TensorRT returned no engine (see the TensorRT log above)",
                model=str(model_path), precision_path=path,
                pinned_layers=[e.layer for e in evidence], build_log=build_log[-20:],
                tensorrt_said=said[-10:],
            )
        data = bytes(serialized)
        write_synced(staged_path, data)
        if cache_file is not None:
            cache_file.merge_back(config, timing_cache)
        ctx.register_plugins(trt)  # the stamp deserializes: plugins first
        stamp = memory_stamp(trt, logger, data, integrated=ctx.integrated,
                             dla_core=build_config.dla_core)
        metadata: dict[str, Any] = {
            "builder": "python",
            "trt_version": ctx.version(),
            "trt_path": path,
            "int8_quantization": _int8_mode(build_config, path, implicit),
            "builder_flags": sorted(set(flags)),
            "layer_precision": [e.to_dict() for e in evidence],
            "plugins": plugins,
            "hardware_compatibility": build_config.hardware_compatibility.value,
            "builder_optimization_level": build_config.builder_optimization_level,
            "workspace_bytes": workspace,
            "workspace_requested_bytes": requested,
            "timing_cache": str(cache_file.path) if cache_file else None,
            "engine_bytes": len(data),
            **stamp,
            **source_facts,
        }
        if build_config.dla_core is not None:
            metadata["dla"] = {"core": build_config.dla_core,
                               "gpu_fallback": build_config.gpu_fallback}
        if feeder is not None:
            metadata["calibration"] = {"batches": feeder.batches_fed}
        return BuildArtifact(staged_path=staged_path, build_seconds=0.0, metadata=metadata)

    def _attach_calibrator(
        self, trt: Any, network: Any, config: Any, profile: Any | None,
        model_path: Path | None, build_config: BuildConfig,
    ) -> CalibrationFeeder:
        """Calibrator fed at the profile's ``opt`` shapes (TensorRT calibrates at those)."""
        provider = self._ctx.options.calibration
        # The cache is bound to the TensorRT that reads it: the imported one, not the probe's.
        data = (provider(model_path or Path(), build_config, self._ctx.version())
                if provider else None)
        if data is None:
            raise EngineBuildError(
                "INT8 through a calibrator needs calibration data or a calibration cache",
                model=str(model_path),
            )
        targets = _calibration_targets(trt, network, build_config)
        if profile is not None and not _set_calibration_profile(config, profile):
            raise EngineBuildError("TensorRT refused the calibration profile",
                                   model=str(model_path))
        batch_size = next(iter(targets.values()))[0][0]
        feeder = CalibrationFeeder(
            calibration_batches(data.batches, targets), data.read_cache, data.write_cache,
            CudaBuffers(self._ctx.cuda()), batch_size=int(batch_size),
        )
        _set_calibrator(config, make_entropy_calibrator(trt, feeder))
        return feeder


def _int8_mode(build_config: BuildConfig, path: str, implicit: bool) -> str | None:
    if not build_config.precision.needs_calibration:
        return None
    return "implicit" if path == "weak" and implicit else "explicit"


def check_plugins(
    ctx: TrtContext, trt: Any, wanted: tuple[PluginSpec, ...]
) -> list[dict[str, Any]]:
    """Register plugins (once per process), then look every configured one up."""
    ctx.register_plugins(trt)
    if not wanted and not ctx.options.optional_plugins:
        return []
    registry = trt.get_plugin_registry()
    available = {
        (creator.name, str(creator.plugin_version), creator.plugin_namespace)
        for creator in registry.all_creators
    }
    specs = list(wanted) + [
        PluginSpec(name=n, required=False)
        for n in ctx.options.optional_plugins
        if n not in {p.name for p in wanted}
    ]
    report: list[dict[str, Any]] = []
    missing: list[str] = []
    for spec in specs:
        found = (spec.name, spec.version, spec.namespace) in available
        report.append({"name": spec.name, "version": spec.version,
                       "namespace": spec.namespace, "required": spec.required,
                       "found": found})
        if not found and spec.required:
            missing.append(f"{spec.name} v{spec.version} ns={spec.namespace!r}")
        elif not found:
            log.info("optional plugin absent", extra={"event": "trt.plugin.absent",
                                                      "plugin": spec.name})
    if missing:
        if ctx.options.strict_plugins:
            raise EngineBuildError("required TensorRT plugins are not registered",
                                   missing=missing)
        log.warning("required plugins missing", extra={"event": "trt.plugin.missing",
                                                       "missing": missing})
    return report


def check_network_io(trt: Any, network: Any) -> None:
    """Refuse I/O this strategy cannot stage: no numpy dtype, or shape tensors (host memory)."""
    tensors = [network.get_input(i) for i in range(network.num_inputs)]
    tensors += [network.get_output(i) for i in range(network.num_outputs)]
    for tensor in tensors:
        try:
            check_io_dtype(trt, tensor.name, tensor.dtype)
        except TrtProvisionError as exc:
            raise EngineBuildError(exc.message, **exc.context) from None
        if tensor.is_shape_tensor:
            raise EngineBuildError(
                "network I/O tensor is a shape tensor (it lives in host memory); such "
                "engines are not supported", tensor=tensor.name)


def _network_flags(trt: Any, path: str) -> int:
    return _strong_flag(trt) if path == "strong" else 0


@trt_path("strong")
def _strong_flag(trt: Any) -> int:
    return 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)


@trt_path("weak_int8")
def _set_calibrator(config: Any, calibrator: Any) -> None:
    config.int8_calibrator = calibrator


@trt_path("weak_int8")
def _set_calibration_profile(config: Any, profile: Any) -> bool:
    """TensorRT calibrates a dynamic-shape network at this profile's ``opt`` shapes."""
    return bool(config.set_calibration_profile(profile))


def _apply_tf32(trt: Any, config: Any, build_config: BuildConfig) -> list[str]:
    """TensorRT enables TF32 by default (BuilderFlag.TF32; trtexec says so at start): an
    fp32 engine would then compute FP32 layers in TF32. Cleared unless ``tf32`` is set."""
    if build_config.precision is PrecisionMode.FP32 and not build_config.tf32:
        config.clear_flag(trt.BuilderFlag.TF32)
        return []
    return ["TF32"] if config.get_flag(trt.BuilderFlag.TF32) else []


def _apply_dla(trt: Any, builder: Any, config: Any, build_config: BuildConfig) -> list[str]:
    core = build_config.dla_core
    if core is None:
        return []
    if build_config.precision is PrecisionMode.FP32:
        raise EngineBuildError("DLA cannot build fp32 engines; use fp16, int8 or mixed",
                               dla_core=core)
    available = int(builder.num_DLA_cores)
    if available == 0:
        # Not only a GPU without DLA: TensorRT 10.7 was the last 10.x with DLA, 11.0 to 11.3
        # have none and 11.4.0 only on Windows on ARM (TensorRT 11.4 docs, "Working with
        # DLA"); JetPack 6.2's TensorRT 10.3 has it.
        raise EngineBuildError(
            "dla_core is set but TensorRT reports no DLA cores (the device has none, or this "
            "TensorRT has no DLA support: 10.8 to 11.3 have none)", dla_core=core,
            trt_version=str(getattr(trt, "__version__", "")))
    if core >= available:
        raise EngineBuildError("dla_core is out of range for this device",
                               dla_core=core, num_dla_cores=available)
    check_dla_profiles(build_config)
    config.default_device_type = trt.DeviceType.DLA
    config.DLA_core = core
    flags = [f"DLA_CORE_{core}"]
    if build_config.gpu_fallback:
        config.set_flag(trt.BuilderFlag.GPU_FALLBACK)
        flags.append("GPU_FALLBACK")
    return flags


def check_dla_profiles(build_config: BuildConfig) -> None:
    """DLA layers need min == opt == max (NVIDIA/TensorRT v10.3.0 include/NvInferRuntime.h,
    IOptimizationProfile::setDimensions: "If run on DLA, minimum, optimum, and maximum
    dimensions must to be the same"). With GPU fallback a ranged profile does not fail: its
    layers run on the GPU, and the engine named ``smNN-dlaK`` would not be a DLA engine. So
    a ranged profile is refused with or without ``gpu_fallback``."""
    if build_config.dla_core is None:
        return
    ranged = sorted(p.input_name for p in build_config.profiles
                    if not p.min_shape == p.opt_shape == p.max_shape)
    if ranged:
        raise EngineBuildError(
            "a DLA build needs min == opt == max in every profile (with or without "
            "gpu_fallback: a shape range runs on the GPU)",
            inputs=ranged, dla_core=build_config.dla_core,
            gpu_fallback=build_config.gpu_fallback)


def _calibration_targets(
    trt: Any, network: Any, build_config: BuildConfig
) -> dict[str, tuple[tuple[int, ...], np.dtype[Any]]]:
    """Input -> (shape, dtype) the calibrator must feed: the profile's opt shape, else the
    static shape; every input shares the batch size (dim 0) the batches are re-cut to."""
    targets: dict[str, tuple[tuple[int, ...], np.dtype[Any]]] = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        spec = build_config.profile_for(tensor.name)
        shape = tuple(spec.opt_shape) if spec is not None else tuple(
            int(d) for d in tensor.shape)
        targets[tensor.name] = (shape, np.dtype(trt.nptype(tensor.dtype)))
    batch_sizes = {n: (s[0] if s else None) for n, (s, _) in targets.items()}
    if len(set(batch_sizes.values())) > 1 or None in batch_sizes.values():
        raise EngineBuildError(
            "INT8 calibration needs every input to share one batch size (dim 0) in its opt "
            "shape", batch_sizes=batch_sizes)
    return targets


def set_hardware_compatibility(
    trt: Any, config: Any, level: HardwareCompatibility, device_sm: int
) -> None:
    if level is HardwareCompatibility.AMPERE_PLUS:
        # TensorRT refuses AMPERE_PLUS below sm80 (NvInfer.h, HardwareCompatibilityLevel:
        # "supported on Ampere and later"); say so before the build does.
        check_hardware_compatibility(level, device_sm)
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif level is HardwareCompatibility.SAME_COMPUTE_CAPABILITY:
        if not hasattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY"):
            raise EngineBuildError(
                "this TensorRT has no SAME_COMPUTE_CAPABILITY hardware compatibility level"
            )
        check_hardware_compatibility(level, device_sm)
        _set_same_compute_capability(trt, config)


def check_hardware_compatibility(level: HardwareCompatibility, device_sm: int) -> None:
    """Refuse a level the build GPU cannot produce, before any build (both builders)."""
    if level is HardwareCompatibility.AMPERE_PLUS and device_sm < AMPERE_SM:
        raise EngineBuildError(
            "hardware_compatibility ampere_plus needs an Ampere or newer build GPU",
            device_sm=f"sm{device_sm}")
    if level is HardwareCompatibility.SAME_COMPUTE_CAPABILITY and device_sm < TURING_SM:
        raise EngineBuildError(
            "hardware_compatibility same_compute_capability needs a Turing or newer build GPU",
            device_sm=f"sm{device_sm}")


@trt_path("same_compute_capability")
def _set_same_compute_capability(trt: Any, config: Any) -> None:
    config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.SAME_COMPUTE_CAPABILITY


def _add_profiles(
    builder: Any, network: Any, config: Any, build_config: BuildConfig
) -> Any | None:
    """One optimization profile from BuildConfig.profiles (returned; None without profiles);
    dynamic inputs need an entry."""
    inputs = {}
    for i in range(network.num_inputs):
        tensor = network.get_input(i)
        inputs[tensor.name] = tuple(int(d) for d in tensor.shape)
    unknown = [p.input_name for p in build_config.profiles if p.input_name not in inputs]
    if unknown:
        raise EngineBuildError("profiles name inputs the network does not have",
                               unknown=unknown, inputs=sorted(inputs))
    dynamic = [n for n, s in inputs.items() if any(d < 0 for d in s)]
    uncovered = [n for n in dynamic if build_config.profile_for(n) is None]
    if uncovered:
        raise EngineBuildError("dynamic inputs need an optimization profile", inputs=uncovered)
    if not build_config.profiles:
        return None
    profile = builder.create_optimization_profile()
    for spec in build_config.profiles:
        dims = inputs[spec.input_name]
        if len(spec.min_shape) != len(dims):
            raise EngineBuildError("profile rank differs from the input's", input=spec.input_name,
                                   rank=len(dims), profile_rank=len(spec.min_shape))
        # A static network dimension must be the same in min, opt and max
        # (NvInferRuntime.h v10.3.0, IOptimizationProfile::setDimensions, condition (3));
        # TensorRT finds out only when the build fails.
        fixed = [i for i, d in enumerate(dims) if d >= 0
                 and not spec.min_shape[i] == spec.opt_shape[i] == spec.max_shape[i] == d]
        if fixed:
            raise EngineBuildError(
                "profile differs from the network in a static dimension", input=spec.input_name,
                network_shape=list(dims), dims=fixed)
        profile.set_shape(spec.input_name, spec.min_shape, spec.opt_shape, spec.max_shape)
    config.add_optimization_profile(profile)
    return profile


def write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
