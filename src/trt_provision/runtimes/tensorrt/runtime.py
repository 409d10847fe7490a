"""TensorrtRuntime: the TensorRT strategy behind the ``InferenceRuntime`` seam.

Only this package imports ``tensorrt`` and cuda-python, lazily, on first use; tests inject
a recording fake through ``trt_module`` / ``cuda_module``. Which precision path a build takes
is decided by feature detection on the loaded module (``_paths.path_available``), never by
comparing version strings.

Loading follows the seam's order strictly: ``EngineGate.validate`` first, then
``MemoryBudget.reserve``, and only then any TensorRT or CUDA call; any failure after the
reservation releases everything allocated so far and gives the reservation back.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trt_provision._lazy import import_optional
from trt_provision.errors import (
    EngineBuildError,
    InferenceError,
    InternalError,
    MissingDependencyError,
    TrtProvisionError,
)
from trt_provision.runtimes.tensorrt._paths import trt_path
from trt_provision.runtimes.tensorrt.calibrator import (
    CalibrationFeeder,
    calibration_batches,
    make_entropy_calibrator,
)
from trt_provision.runtimes.tensorrt.cuda_buffers import (
    CudaBuffers,
    device_compute_capability,
    load_cudart,
)
from trt_provision.runtimes.tensorrt.network import (
    LayerEvidence,
    NetworkSource,
    apply_weak_precision,
    choose_precision_path,
    network_signature,
    parse_onnx,
    strong_precision_evidence,
)
from trt_provision.runtimes.tensorrt.subprocess_build import DEFAULT_TIMEOUT_S
from trt_provision.runtimes.tensorrt.timing_cache import (
    TimingCacheFile,
    locked_timing_cache,
    timing_cache_path,
)
from trt_provision.runtimes.tensorrt.trtexec_build import (
    TrtexecCommandFromConfig,
    build_with_trtexec,
    find_trtexec,
)
from trt_provision.seams import EngineGate, EngineHandle, MemoryBudget, ThermalStatePublisher
from trt_provision.types import (
    BuildArtifact,
    BuildConfig,
    EngineCacheEntry,
    HardwareCompatibility,
    HostCapabilities,
    PluginSpec,
    PrecisionMode,
    RuntimeTarget,
    ThermalState,
)

__all__ = ["CalibrationInput", "TensorrtEngineHandle", "TensorrtOptions", "TensorrtRuntime"]

log = logging.getLogger(__name__)

_AMPERE_SM = 80
_BUILDERS = ("python", "trtexec", "auto")


class _NotExpressible(Exception):
    """A build the trtexec command line cannot express (internal: falls back or is rewrapped)."""


@dataclass(frozen=True)
class CalibrationInput:
    """INT8 calibration data for the weakly typed path, provided by the calibration package."""

    batches: Iterable[Mapping[str, np.ndarray[Any, Any]]]
    read_cache: Callable[[], bytes | None]
    write_cache: Callable[[bytes], None]


PrecisionConverter = Callable[[Path, BuildConfig, Path], tuple[Path, Mapping[str, Any]]]


@dataclass(frozen=True)
class TensorrtOptions:
    """Runtime-level settings (build-relevant ones live in BuildConfig)."""

    timing_cache_dir: Path | None = None
    allow_engine_host_code: bool = False  # only when the trust policy allows it
    optional_plugins: tuple[str, ...] = ("DecodeNMS",)
    strict_plugins: bool = True
    plugin_namespace: str = ""
    calibration: Callable[[Path, BuildConfig], CalibrationInput | None] | None = None
    # "python": the TensorRT Python builder; "trtexec": delegate ONNX builds to a trtexec
    # binary (configured, else on PATH); "auto": trtexec when one is found and the build can
    # be expressed on its command line, else Python. Network callbacks always use Python.
    builder: str = "python"
    trtexec_path: Path | None = None
    trtexec_timeout_s: float = DEFAULT_TIMEOUT_S
    # Strongly typed builds take their precision from the graph: this turns an FP32 ONNX into
    # the precision-carrying one (FP16 graph or Q/DQ INT8) before parsing. Returns the new
    # model path and metadata (calibration key, accuracy, pinned layers) for the sidecar.
    precision_converter: PrecisionConverter | None = None

    def __post_init__(self) -> None:
        if self.builder not in _BUILDERS:
            raise ValueError(f"builder must be one of {_BUILDERS}, got {self.builder!r}")
        if self.trtexec_timeout_s <= 0:
            raise ValueError(f"trtexec_timeout_s must be > 0, got {self.trtexec_timeout_s}")


@dataclass
class TensorrtEngineHandle:
    """A deserialized engine with its context, stream and IO buffers."""

    entry: EngineCacheEntry
    _owner: int = 0
    _engine: Any = None
    _context: Any = None
    _buffers: CudaBuffers | None = None
    _reservation: int | None = None
    _inputs: dict[str, tuple[Any, tuple[tuple[int, ...], tuple[int, ...]]]] = field(
        default_factory=dict
    )
    _outputs: dict[str, Any] = field(default_factory=dict)
    _staged: dict[str, tuple[int, ...]] = field(default_factory=dict)
    _released: bool = False

    @property
    def released(self) -> bool:
        return self._released

    @property
    def input_names(self) -> tuple[str, ...]:
        return tuple(self._inputs)

    @property
    def output_names(self) -> tuple[str, ...]:
        return tuple(self._outputs)


def _sm_label(major: int, minor: int) -> str:
    return f"sm{major}{minor}"


class TensorrtRuntime:
    """Builds, loads and runs TensorRT engines."""

    def __init__(
        self,
        *,
        gate: EngineGate,
        budget: MemoryBudget | None = None,
        thermal: ThermalStatePublisher | None = None,
        host: HostCapabilities | None = None,
        options: TensorrtOptions | None = None,
        trt_module: Any | None = None,
        cuda_module: Any | None = None,
    ) -> None:
        self._gate = gate
        self._budget = budget
        self._thermal = thermal
        self._host = host
        self._options = options or TensorrtOptions()
        self._trt_module = trt_module
        self._cuda_module = cuda_module
        self._sm: str | None = host.sm.rstrip("+") if host and host.sm else None
        self._handles: dict[int, TensorrtEngineHandle] = {}

    # ----------------------------------------------------------------- modules
    def _trt(self) -> Any:
        if self._trt_module is None:
            self._trt_module = import_optional("tensorrt", "tensorrt")
        return self._trt_module

    def _cuda(self) -> Any:
        if self._cuda_module is None:
            self._cuda_module = load_cudart()
        return self._cuda_module

    def trt_version(self) -> str:
        if self._trt_module is None and self._host is not None and self._host.trt_version:
            return self._host.trt_version
        return str(self._trt().__version__)

    def _device_sm(self) -> str:
        if self._sm is None:
            major, minor = device_compute_capability(self._cuda())
            self._sm = _sm_label(major, minor)
        return self._sm

    # ----------------------------------------------------------------- identity
    def current_runtime_label(self) -> str:
        return "tensorrt"

    def _target_for(self, level: HardwareCompatibility) -> RuntimeTarget:
        sm = self._device_sm()
        if level is HardwareCompatibility.AMPERE_PLUS:
            target = f"sm{_AMPERE_SM}+"
        elif level is HardwareCompatibility.SAME_COMPUTE_CAPABILITY:
            target = f"{sm}cc"
        else:
            target = sm
        jetpack = self._host.jetpack if self._host else None
        return RuntimeTarget(
            runtime="trt",
            runtime_version=self.trt_version(),
            target=target,
            platform=f"jp{jetpack}" if jetpack else "dgpu",
        )

    def runtime_target(self, build_config: BuildConfig) -> RuntimeTarget:
        return self._target_for(build_config.hardware_compatibility)

    def thermal_state(self) -> ThermalState:
        if self._thermal is None:
            return ThermalState()
        return self._thermal.thermal_state()

    # ----------------------------------------------------------------- build
    def compile_engine(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path
    ) -> BuildArtifact:
        """Parse ``model_path`` with the ONNX parser and build into ``staged_path``."""
        model_path = Path(model_path)
        staged_path = Path(staged_path)
        workdir: Path | None = None
        converted: Mapping[str, Any] = {}
        source = model_path
        convert = self._options.precision_converter
        if (
            convert is not None
            and build_config.precision is not PrecisionMode.FP32
            and self._planned_precision_path(build_config) == "strong"
        ):
            # The writer's pid in the name lets cache gc tell live work dirs from dead ones.
            workdir = Path(
                tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-trt-", dir=staged_path.parent)
            )
            source, converted = convert(model_path, build_config, workdir)
        try:
            artifact = self._compile_onnx(source, build_config, staged_path)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        if not converted:
            return artifact
        metadata = {**converted, **artifact.metadata, "model": str(model_path),
                    "converted_model": "strongly typed graph from " + model_path.name}
        return dataclasses.replace(artifact, metadata=metadata)

    def _planned_precision_path(self, build_config: BuildConfig) -> str | None:
        """The precision path an ONNX build will take; None when it cannot be known yet.

        The Python builder needs the tensorrt module anyway (a missing one fails here, before
        any conversion work). A trtexec build may run without it: then the path follows from
        the build config alone, as :meth:`_trtexec_precision_path` derives it.
        """
        if self._options.builder == "python":
            return choose_precision_path(self._trt(), build_config)
        trt = self._optional_trt()
        if trt is not None:
            return choose_precision_path(trt, build_config)
        return _path_from_config(build_config)

    def _compile_onnx(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path
    ) -> BuildArtifact:
        if self._options.builder != "python":
            delegated = self._delegate_to_trtexec(model_path, build_config, staged_path)
            if delegated is not None:
                return delegated

        def populate(trt: Any, network: Any, logger: Any) -> dict[str, Any]:
            parse_onnx(trt, network, logger, model_path)
            return {"model": str(model_path)}

        return self._build(populate, build_config, staged_path, model_path)

    def compile_network(
        self, source: NetworkSource, build_config: BuildConfig, staged_path: Path
    ) -> BuildArtifact:
        """Build a network defined by code; its signature stands in for the model hash."""

        def populate(trt: Any, network: Any, logger: Any) -> dict[str, Any]:
            try:
                source.build(network, trt)
            except TrtProvisionError:
                raise
            except Exception as exc:
                raise EngineBuildError(
                    f"network callback failed: {type(exc).__name__}: {exc}", network=source.name
                ) from exc
            return {
                "network": source.name,
                "network_signature": network_signature(network, source.weights_sha256),
            }

        return self._build(populate, build_config, Path(staged_path), None)

    def _build(
        self,
        populate: Callable[[Any, Any, Any], dict[str, Any]],
        build_config: BuildConfig,
        staged_path: Path,
        model_path: Path | None,
    ) -> BuildArtifact:
        trt = self._trt()
        started = time.monotonic()
        log.info("building TensorRT engine", extra={"event": "trt.build.start",
                                                      "model": str(model_path)})
        logger = trt.Logger(trt.Logger.WARNING)
        plugins = self._check_plugins(trt, logger, build_config.plugins)
        path = choose_precision_path(trt, build_config)
        builder = trt.Builder(logger)
        network = builder.create_network(_network_flags(trt, path))
        source_facts = populate(trt, network, logger)
        config = builder.create_builder_config()
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, build_config.workspace_mib << 20)
        config.builder_optimization_level = build_config.builder_optimization_level
        _set_hardware_compatibility(trt, config, build_config.hardware_compatibility)
        profile = _add_profiles(builder, network, config, build_config)

        flags: list[str] = []
        evidence: list[LayerEvidence]
        feeder: CalibrationFeeder | None = None
        if path == "weak":
            flags, evidence = apply_weak_precision(trt, network, config, build_config)
            if build_config.precision.needs_calibration:
                feeder = self._attach_calibrator(trt, network, config, profile, model_path,
                                                 build_config)
        else:
            evidence = strong_precision_evidence(network, build_config)

        cache_file: TimingCacheFile | None = None
        timing_cache: Any = None
        cache_dir = build_config.timing_cache_path or self._options.timing_cache_dir
        if cache_dir is not None:
            cache_file = TimingCacheFile(
                timing_cache_path(cache_dir, self.trt_version(), self._device_sm())
            )
            timing_cache = cache_file.attach(config)

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
        if serialized is None:
            raise EngineBuildError(
                "TensorRT returned no engine (see the TensorRT log above)",
                model=str(model_path),
                precision_path=path,
                pinned_layers=[e.layer for e in evidence],
            )
        data = bytes(serialized)
        _write_synced(staged_path, data)
        if cache_file is not None:
            cache_file.merge_back(config, timing_cache)
        stamp = _memory_stamp(trt, logger, data)
        seconds = time.monotonic() - started
        log.info(
            "finished TensorRT engine in %.1f s", seconds,
            extra={"event": "trt.build.finish", "seconds": seconds, "bytes": len(data)},
        )
        metadata: dict[str, Any] = {
            "builder": "python",
            "trt_version": self.trt_version(),
            "trt_path": path,
            "builder_flags": sorted(set(flags)),
            "layer_precision": [e.to_dict() for e in evidence],
            "plugins": plugins,
            "hardware_compatibility": build_config.hardware_compatibility.value,
            "builder_optimization_level": build_config.builder_optimization_level,
            "workspace_bytes": build_config.workspace_mib << 20,
            "timing_cache": str(cache_file.path) if cache_file else None,
            "engine_bytes": len(data),
            **stamp,
            **source_facts,
        }
        if feeder is not None:
            metadata["calibration"] = {"batches": feeder.batches_fed}
        return BuildArtifact(staged_path=staged_path, build_seconds=seconds, metadata=metadata)

    def _attach_calibrator(
        self, trt: Any, network: Any, config: Any, profile: Any | None,
        model_path: Path | None, build_config: BuildConfig,
    ) -> CalibrationFeeder:
        """Calibrator fed at the profile's ``opt`` shapes (TensorRT calibrates at those)."""
        provider = self._options.calibration
        data = provider(model_path or Path(), build_config) if provider else None
        if data is None:
            raise EngineBuildError(
                "INT8 on the weakly typed path needs calibration data or a calibration cache",
                model=str(model_path),
            )
        targets = _calibration_targets(trt, network, build_config)
        if profile is not None and not _set_calibration_profile(config, profile):
            raise EngineBuildError("TensorRT refused the calibration profile",
                                   model=str(model_path))
        feeder = CalibrationFeeder(
            calibration_batches(data.batches, targets), data.read_cache, data.write_cache,
            CudaBuffers(self._cuda()),
        )
        _set_calibrator(config, make_entropy_calibrator(trt, feeder))
        return feeder

    def _check_plugins(
        self, trt: Any, logger: Any, wanted: tuple[PluginSpec, ...]
    ) -> list[dict[str, Any]]:
        """Look every configured plugin up in the registry; strict mode fails on a miss."""
        if not wanted and not self._options.optional_plugins:
            return []
        trt.init_libnvinfer_plugins(logger, self._options.plugin_namespace)
        registry = trt.get_plugin_registry()
        available = {
            (creator.name, str(creator.plugin_version), creator.plugin_namespace)
            for creator in registry.all_creators
        }
        specs = list(wanted) + [
            PluginSpec(name=n, required=False)
            for n in self._options.optional_plugins
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
            if self._options.strict_plugins:
                raise EngineBuildError("required TensorRT plugins are not registered",
                                       missing=missing)
            log.warning("required plugins missing", extra={"event": "trt.plugin.missing",
                                                           "missing": missing})
        return report

    # ----------------------------------------------------------------- trtexec builder
    def _delegate_to_trtexec(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path
    ) -> BuildArtifact | None:
        """Build with trtexec when the options ask for it; None means: use the Python builder."""
        mode = self._options.builder
        binary = find_trtexec(self._options.trtexec_path)
        if binary is None:
            if mode == "trtexec":
                raise EngineBuildError(
                    "builder='trtexec' but no executable trtexec was found",
                    configured=str(self._options.trtexec_path or ""), searched="PATH")
            return None
        try:
            return self._build_with_trtexec(binary, model_path, build_config, staged_path)
        except _NotExpressible as exc:
            if mode == "trtexec":
                raise EngineBuildError(f"this build cannot be delegated to trtexec: {exc}",
                                       model=str(model_path)) from exc
            log.info("build not delegated to trtexec",
                     extra={"event": "trt.trtexec.fallback", "reason": str(exc)})
            return None

    def _optional_trt(self) -> Any | None:
        try:
            return self._trt()
        except MissingDependencyError:
            return None

    def _build_with_trtexec(
        self, binary: Path, model_path: Path, build_config: BuildConfig, staged_path: Path
    ) -> BuildArtifact:
        started = time.monotonic()
        trt = self._optional_trt()
        logger = trt.Logger(trt.Logger.WARNING) if trt is not None else None
        path = self._trtexec_precision_path(trt, build_config)
        reduced = build_config.precision is not PrecisionMode.FP32
        if (path == "weak" and reduced and build_config.fp16_pinned_keywords
                and build_config.strict_precision_constraints):
            raise _NotExpressible("FP16-pinned layers need the Python builder (layer names)")
        plugins: list[dict[str, Any]] = []
        if trt is not None:
            plugins = self._check_plugins(trt, logger, build_config.plugins)
        elif build_config.plugins:
            raise _NotExpressible("the plugin check needs the tensorrt module")

        calib_file: Path | None = None
        if path == "weak" and build_config.precision.needs_calibration:
            calib_file = self._calibration_cache_file(model_path, build_config, staged_path)
        cache_path: Path | None = None
        cache_dir = build_config.timing_cache_path or self._options.timing_cache_dir
        if cache_dir is not None:
            cache_path = timing_cache_path(cache_dir, self._trtexec_version(trt),
                                           self._device_sm())
        command = TrtexecCommandFromConfig.build(
            binary, model_path, staged_path, build_config, path,
            timing_cache=cache_path, calibration_cache=calib_file)
        try:
            if cache_path is not None:
                with locked_timing_cache(cache_path):  # trtexec reads and rewrites the file
                    facts = build_with_trtexec(command, staged_path,
                                               timeout=self._options.trtexec_timeout_s)
            else:
                facts = build_with_trtexec(command, staged_path,
                                           timeout=self._options.trtexec_timeout_s)
        finally:
            if calib_file is not None:
                calib_file.unlink(missing_ok=True)
        data = staged_path.read_bytes()
        stamp: dict[str, Any] = (
            _memory_stamp(trt, logger, data) if trt is not None
            else {"memory_stamp": "unavailable: the tensorrt module is not installed"}
        )
        seconds = time.monotonic() - started
        metadata: dict[str, Any] = {
            "trt_version": self._trtexec_version(trt),
            "trt_path": path,
            "builder_flags": list(command.precision_flags),
            "layer_precision": [],
            "plugins": plugins,
            "hardware_compatibility": build_config.hardware_compatibility.value,
            "builder_optimization_level": build_config.builder_optimization_level,
            "workspace_bytes": build_config.workspace_mib << 20,
            "timing_cache": str(cache_path) if cache_path else None,
            "engine_bytes": len(data),
            "model": str(model_path),
            **stamp,
            **facts,
        }
        if calib_file is not None:
            metadata["calibration"] = {"batches": 0, "from_cache": True}
        return BuildArtifact(staged_path=staged_path, build_seconds=seconds, metadata=metadata)

    def _trtexec_precision_path(self, trt: Any | None, build_config: BuildConfig) -> str:
        if trt is not None:
            # The same choice (and the same refusals) as the Python builder: a weakly typed
            # build on a TensorRT without that path (TRT 11) is an EngineBuildError.
            return choose_precision_path(trt, build_config)
        path = _path_from_config(build_config)
        if path is None:
            raise _NotExpressible(
                "without the tensorrt module the precision path is unknown; set strongly_typed")
        return path

    def _trtexec_version(self, trt: Any | None) -> str:
        if trt is not None or (self._host is not None and self._host.trt_version):
            return self.trt_version()
        return "unknown"

    def _calibration_cache_file(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path
    ) -> Path:
        provider = self._options.calibration
        data = provider(model_path, build_config) if provider else None
        cache = data.read_cache() if data is not None else None
        if not cache:
            raise _NotExpressible("INT8 needs an existing calibration cache for trtexec")
        target = staged_path.with_name(staged_path.name + ".calib")
        _write_synced(target, cache)
        return target

    # ----------------------------------------------------------------- load
    def deserialize_engine(self, entry: EngineCacheEntry) -> TensorrtEngineHandle:
        expected = self._target_for(entry.identity.hardware_compatibility)
        verified = self._gate.validate(entry.engine_path, expected)
        reservation = self._budget.reserve(verified) if self._budget is not None else None
        handle = TensorrtEngineHandle(entry=verified, _owner=id(self), _reservation=reservation)
        try:
            self._load_into(handle)
        except BaseException as exc:
            self._free(handle)
            if isinstance(exc, TrtProvisionError) or not isinstance(exc, Exception):
                raise
            raise InferenceError(
                f"cannot load engine: {type(exc).__name__}: {exc}", path=str(entry.engine_path)
            ) from exc
        self._handles[id(handle)] = handle
        log.info("engine loaded", extra={"event": "trt.engine.loaded",
                                         "path": str(verified.engine_path)})
        return handle

    def _load_into(self, handle: TensorrtEngineHandle) -> None:
        trt = self._trt()
        logger = trt.Logger(trt.Logger.WARNING)
        runtime = trt.Runtime(logger)
        runtime.engine_host_code_allowed = bool(self._options.allow_engine_host_code)
        data = Path(handle.entry.engine_path).read_bytes()
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise InferenceError("TensorRT could not deserialize the engine",
                                 path=str(handle.entry.engine_path))
        handle._engine = engine
        context = engine.create_execution_context()
        if context is None:
            raise InferenceError("TensorRT could not create an execution context",
                                 path=str(handle.entry.engine_path))
        handle._context = context
        handle._buffers = CudaBuffers(self._cuda())
        _ = handle._buffers.stream  # the handle's own stream, created with it
        input_mode = trt.TensorIOMode.INPUT
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) == input_mode:
                lo, _opt, hi = engine.get_tensor_profile_shape(name, 0)
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                handle._inputs[name] = (dtype, (tuple(lo), tuple(hi)))
                _set_input_shape(context, name, tuple(hi), handle)
        for name in names:
            if name in handle._inputs:
                dtype, (_lo, hi) = handle._inputs[name]
                nbytes = int(np.prod(hi)) * dtype.itemsize
            else:
                dtype = np.dtype(trt.nptype(engine.get_tensor_dtype(name)))
                handle._outputs[name] = dtype
                shape = tuple(int(d) for d in context.get_tensor_shape(name))
                if any(d < 0 for d in shape):
                    # Data-dependent output shapes need an output allocator, not a buffer
                    # sized at load time; refuse instead of allocating a wrong one.
                    raise InferenceError(
                        "engine has an output whose shape depends on the data (-1 even at "
                        "the max input shapes); such engines are not supported",
                        path=str(handle.entry.engine_path), output=name, shape=shape)
                nbytes = int(np.prod(shape)) * dtype.itemsize
            buf = handle._buffers.allocate(name, nbytes)
            if not context.set_tensor_address(name, buf.device_ptr):
                raise InferenceError("TensorRT refused the tensor address", name=name,
                                     path=str(handle.entry.engine_path))

    # ----------------------------------------------------------------- run
    def _own(self, handle: EngineHandle) -> TensorrtEngineHandle:
        if not isinstance(handle, TensorrtEngineHandle) or handle._owner != id(self):
            raise InferenceError("engine handle does not belong to this runtime")
        if handle.released or self._handles.get(id(handle)) is not handle:
            raise InferenceError("engine handle was released", path=str(handle.entry.engine_path))
        return handle

    def input_views(
        self, handle: EngineHandle, shapes: Mapping[str, Sequence[int]]
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Writable numpy views over the pinned staging memory of every input, at ``shapes``.

        Write the inputs into these arrays, then call :meth:`infer_staged` (or :meth:`infer`
        with the views themselves): the host-side staging copy is skipped and only the DMA
        transfer to the device remains. The views stay valid until the handle is released;
        a later :meth:`input_views` call reuses the same memory.
        """
        own = self._own(handle)
        buffers = _buffers_of(own)
        _check_names(own, shapes)
        views: dict[str, np.ndarray[Any, Any]] = {}
        for name, (dtype, (lo, hi)) in own._inputs.items():
            shape = tuple(int(d) for d in shapes[name])
            _check_shape(name, shape, lo, hi)
            views[name] = buffers.host_view(name, dtype, shape)
        own._staged = {name: tuple(view.shape) for name, view in views.items()}
        return views

    def infer_staged(
        self, handle: EngineHandle, *, copy_outputs: bool = True
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run on what the caller wrote into the views of the last :meth:`input_views` call."""
        own = self._own(handle)
        if not own._staged:
            raise InferenceError("no staged inputs: call input_views first",
                                 path=str(own.entry.engine_path))
        buffers = _buffers_of(own)
        views = {
            name: buffers.host_view(name, own._inputs[name][0], shape)
            for name, shape in own._staged.items()
        }
        return self._run(own, views, copy_outputs)

    def infer(
        self, handle: EngineHandle, inputs: Mapping[str, Any], *, copy_outputs: bool = True
    ) -> dict[str, Any]:
        """H2D, ``execute_async_v3``, D2H and a sync on the handle's own stream.

        An input that is one of this handle's :meth:`input_views` is uploaded as it is; any
        other array is first copied into pinned memory. With ``copy_outputs=False`` the
        outputs are views over pinned memory, overwritten by the next inference on this handle
        and invalid once it is released.
        """
        own = self._own(handle)
        _check_names(own, inputs)
        return self._run(own, inputs, copy_outputs)

    def _run(
        self, own: TensorrtEngineHandle, inputs: Mapping[str, Any], copy_outputs: bool
    ) -> dict[str, np.ndarray[Any, Any]]:
        arrays = _check_inputs(own, inputs)
        context, buffers = own._context, _buffers_of(own)
        try:
            for name, arr in arrays.items():
                _set_input_shape(context, name, tuple(arr.shape), own)
            for name, arr in arrays.items():
                buffers.copy_in(name, arr)  # no host copy when arr already is the pinned view
            if not context.execute_async_v3(buffers.stream_handle):
                raise InferenceError("TensorRT execute_async_v3 reported failure",
                                     path=str(own.entry.engine_path))
            shapes: dict[str, tuple[int, ...]] = {}
            for name, dtype in own._outputs.items():
                shapes[name] = tuple(int(d) for d in context.get_tensor_shape(name))
                buffers.copy_out(name, int(np.prod(shapes[name])) * dtype.itemsize)
            buffers.synchronize()
            return {
                name: buffers.read_out(name, dtype, shapes[name], copy=copy_outputs)
                for name, dtype in own._outputs.items()
            }
        except TrtProvisionError:
            raise
        except Exception as exc:
            raise InferenceError(
                f"inference failed: {type(exc).__name__}: {exc}", path=str(own.entry.engine_path)
            ) from exc

    # ----------------------------------------------------------------- release
    def release_engine(self, handle: EngineHandle) -> None:
        if not isinstance(handle, TensorrtEngineHandle) or handle._owner != id(self):
            raise InferenceError("engine handle does not belong to this runtime")
        if handle.released:
            return
        self._handles.pop(id(handle), None)
        self._free(handle)

    def _free(self, handle: TensorrtEngineHandle) -> None:
        """Free buffers, drop TensorRT objects, give the reservation back (each at most once)."""
        handle._released = True
        try:
            if handle._buffers is not None:
                handle._buffers.release()
        finally:
            handle._buffers = None
            handle._context = None
            handle._engine = None
            if handle._reservation is not None and self._budget is not None:
                reservation, handle._reservation = handle._reservation, None
                self._budget.release(reservation)


# --------------------------------------------------------------------------- helpers


def _buffers_of(handle: TensorrtEngineHandle) -> CudaBuffers:
    if handle._buffers is None:
        raise InternalError("loaded handle without buffers")
    return handle._buffers


def _check_names(handle: TensorrtEngineHandle, given_names: Iterable[str]) -> None:
    expected, given = set(handle._inputs), set(given_names)
    if expected != given:
        raise InferenceError("input names do not match the engine",
                             missing=sorted(expected - given),
                             unexpected=sorted(given - expected))


def _check_shape(
    name: str, shape: tuple[int, ...], lo: tuple[int, ...], hi: tuple[int, ...]
) -> None:
    if len(shape) != len(lo) or any(
        not a <= d <= b for d, a, b in zip(shape, lo, hi, strict=True)
    ):
        raise InferenceError("input shape outside the engine's profile", name=name,
                             shape=shape, min=lo, max=hi)


def _check_inputs(
    handle: TensorrtEngineHandle, inputs: Mapping[str, Any]
) -> dict[str, np.ndarray[Any, Any]]:
    """Contiguous arrays of the engine's dtypes within its profile (names already checked)."""
    arrays: dict[str, np.ndarray[Any, Any]] = {}
    for name, (dtype, (lo, hi)) in handle._inputs.items():
        arr = np.ascontiguousarray(inputs[name])  # a contiguous array (or view) stays itself
        if arr.dtype != dtype:
            raise InferenceError("input dtype does not match the engine", name=name,
                                 expected=str(dtype), found=str(arr.dtype))
        _check_shape(name, tuple(arr.shape), lo, hi)
        arrays[name] = arr
    return arrays


def _set_input_shape(
    context: Any, name: str, shape: tuple[int, ...], handle: TensorrtEngineHandle
) -> None:
    if not context.set_input_shape(name, shape):
        raise InferenceError("TensorRT refused the input shape", name=name, shape=shape,
                             path=str(handle.entry.engine_path))


def _path_from_config(build_config: BuildConfig) -> str | None:
    """The precision path the build config alone decides; None when only TensorRT can."""
    if build_config.strongly_typed is True:
        return "strong"
    if build_config.strongly_typed is False:
        return "weak"
    if build_config.precision is PrecisionMode.FP32:
        return "weak"  # no precision flag at all: the same engine on either path
    return None


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


def _set_hardware_compatibility(trt: Any, config: Any, level: HardwareCompatibility) -> None:
    if level is HardwareCompatibility.AMPERE_PLUS:
        config.hardware_compatibility_level = trt.HardwareCompatibilityLevel.AMPERE_PLUS
    elif level is HardwareCompatibility.SAME_COMPUTE_CAPABILITY:
        if not hasattr(trt.HardwareCompatibilityLevel, "SAME_COMPUTE_CAPABILITY"):
            raise EngineBuildError(
                "this TensorRT has no SAME_COMPUTE_CAPABILITY hardware compatibility level"
            )
        _set_same_compute_capability(trt, config)


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
        rank = len(inputs[spec.input_name])
        if len(spec.min_shape) != rank:
            raise EngineBuildError("profile rank differs from the input's", input=spec.input_name,
                                   rank=rank, profile_rank=len(spec.min_shape))
        profile.set_shape(spec.input_name, spec.min_shape, spec.opt_shape, spec.max_shape)
    config.add_optimization_profile(profile)
    return profile


def _memory_stamp(trt: Any, logger: Any, data: bytes) -> dict[str, Any]:
    """Device memory and IO bytes at max shapes, read back from the built engine."""
    try:
        runtime = trt.Runtime(logger)
        engine = runtime.deserialize_cuda_engine(data)
        if engine is None:
            raise EngineBuildError("the freshly built engine does not deserialize")
        per_profile = [
            int(engine.get_device_memory_size_for_profile_v2(i))
            for i in range(engine.num_optimization_profiles)
        ]
        context = engine.create_execution_context()
        input_mode = trt.TensorIOMode.INPUT
        io_bytes = 0
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            if engine.get_tensor_mode(name) == input_mode:
                hi = tuple(engine.get_tensor_profile_shape(name, 0)[2])
                if context is not None:
                    context.set_input_shape(name, hi)
        for name in names:
            itemsize = np.dtype(trt.nptype(engine.get_tensor_dtype(name))).itemsize
            if engine.get_tensor_mode(name) == input_mode:
                shape = tuple(engine.get_tensor_profile_shape(name, 0)[2])
            elif context is not None:
                shape = tuple(context.get_tensor_shape(name))
            else:
                shape = tuple(engine.get_tensor_shape(name))
            io_bytes += int(np.prod([max(int(d), 1) for d in shape])) * itemsize
        return {
            "device_memory_bytes": int(engine.device_memory_size_v2),
            "device_memory_bytes_per_profile": per_profile,
            "io_bytes_at_max_shapes": io_bytes,
        }
    except TrtProvisionError:
        raise
    except Exception as exc:
        raise EngineBuildError(
            f"cannot read memory needs from the built engine: {type(exc).__name__}: {exc}"
        ) from exc


def _write_synced(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as fh:
        fh.write(data)
        fh.flush()
        os.fsync(fh.fileno())
