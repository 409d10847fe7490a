"""TensorrtRuntime: the TensorRT strategy behind the ``InferenceRuntime`` seam.

A thin strategy over the parts it delegates to, the way Polygraphy separates loaders from
runners: :mod:`.builder` (TensorRT Python builder), :mod:`.trtexec_build` (trtexec
builder), :mod:`.loader` (deserialize, plugins first) and :mod:`.runner` (inference). Only
this package imports ``tensorrt`` and cuda-python, lazily, on first use; tests inject a
recording fake through ``trt_module`` / ``cuda_module``. Which precision path a build takes
is decided by feature detection on the loaded module (``_paths.path_available``).

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
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from trt_provision.errors import (
    EngineBuildError,
    EngineGateError,
    InferenceError,
    TrtProvisionError,
)
from trt_provision.runtimes.tensorrt import runner
from trt_provision.runtimes.tensorrt._context import TrtContext, check_dla_int8
from trt_provision.runtimes.tensorrt.builder import AMPERE_SM, PythonBuilder
from trt_provision.runtimes.tensorrt.loader import load_into
from trt_provision.runtimes.tensorrt.network import (
    ModelNodes,
    NetworkSource,
    choose_precision_path,
    network_signature,
    parse_onnx,
)
from trt_provision.runtimes.tensorrt.onnx_graph import (
    check_dequantize_inputs,
    model_nodes,
    quantized_nodes,
    reduced_precision_tensors,
)
from trt_provision.runtimes.tensorrt.options import PrecisionConverter, TensorrtOptions
from trt_provision.runtimes.tensorrt.runner import TensorrtEngineHandle
from trt_provision.runtimes.tensorrt.timing_cache import timing_cache_path
from trt_provision.runtimes.tensorrt.trtexec_build import TrtexecBuilder, path_from_config
from trt_provision.seams import EngineGate, EngineHandle, MemoryBudget, ThermalStatePublisher
from trt_provision.types import (
    BuildArtifact,
    BuildConfig,
    CalibrationInput,
    EngineCacheEntry,
    HardwareCompatibility,
    HostCapabilities,
    PrecisionMode,
    PreparedGraph,
    RuntimeTarget,
    ThermalState,
)

__all__ = [
    "CalibrationInput",
    "PrecisionConverter",
    "TensorrtEngineHandle",
    "TensorrtOptions",
    "TensorrtRuntime",
]

log = logging.getLogger(__name__)

# The identity's mark of a reduced-precision engine no accuracy gate judged (identity.py
# then leaves the gate's thresholds out of the options digest).
UNGATED = "not run"


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
        self._options = options or TensorrtOptions()
        self._ctx = TrtContext(self._options, host, trt_module, cuda_module)
        self._python = PythonBuilder(self._ctx)
        self._trtexec = TrtexecBuilder(self._ctx)
        self._handles: dict[int, TensorrtEngineHandle] = {}

    # ----------------------------------------------------------------- identity
    def trt_version(self) -> str:
        return self._ctx.version()

    def current_runtime_label(self) -> str:
        return "tensorrt"

    def _target_for(
        self, level: HardwareCompatibility, dla_core: int | None = None
    ) -> RuntimeTarget:
        sm = self._ctx.device_sm()
        if level is HardwareCompatibility.AMPERE_PLUS:
            target = f"sm{AMPERE_SM}+"
        elif level is HardwareCompatibility.SAME_COMPUTE_CAPABILITY:
            target = f"{sm}cc"
        else:
            target = sm
        if dla_core is not None:
            target = f"{sm}-dla{dla_core}"
        host = self._ctx.host
        jetpack = host.jetpack if host else None
        return RuntimeTarget(
            runtime="trt",
            runtime_version=self.trt_version(),
            target=target,
            platform=f"jp{jetpack}" if jetpack else "dgpu",
        )

    def runtime_target(self, build_config: BuildConfig) -> RuntimeTarget:
        target = self._target_for(build_config.hardware_compatibility, build_config.dla_core)
        options: list[tuple[str, str]] = []
        mode = self._int8_quantization(build_config)
        if mode is not None:
            # An engine calibrated through the implicit calibrator is another engine than the
            # one built from the Q/DQ graph: the mode enters the options digest.
            options.append(("int8_quantization", mode))
        if self._ungated(build_config, mode):
            options.append(("accuracy_gate", UNGATED))
        return dataclasses.replace(target, build_options=tuple(options)) if options else target

    def _ungated(self, build_config: BuildConfig, int8_mode: str | None) -> bool:
        """Weakly typed FP16 (the builder flag) and implicit INT8 (the calibrator) build no
        prepared graph, so no accuracy gate judges them: the identity must not claim one."""
        if build_config.precision is PrecisionMode.FP32:
            return False
        try:
            trt = self._ctx.optional_trt()
            if trt is None:
                path = path_from_config(build_config, self._ctx.prefer_strong(build_config))
            else:
                path = choose_precision_path(
                    trt, build_config, implicit_int8=self._ctx.implicit_int8(trt, build_config),
                    prefer_strong=self._ctx.prefer_strong(build_config))
        except EngineBuildError:
            return False  # the build refuses it anyway
        if path != "weak":
            return False
        return build_config.precision is PrecisionMode.FP16 or int8_mode == "implicit"

    def _int8_quantization(self, build_config: BuildConfig) -> str | None:
        """``"implicit"`` or ``"explicit"``, as the builders will resolve it (the value the
        sidecar records as ``int8_quantization``); None for builds without INT8."""
        if not build_config.precision.needs_calibration:
            return None
        trt = self._ctx.optional_trt()
        if trt is None:
            return "explicit"  # only trtexec builds without the module, never through a calibrator
        implicit = self._ctx.implicit_int8(trt, build_config)
        try:
            path = choose_precision_path(trt, build_config, implicit_int8=implicit,
                                         prefer_strong=self._ctx.prefer_strong(build_config))
        except EngineBuildError:
            return "implicit" if implicit else "explicit"  # the build refuses it anyway
        return "implicit" if path == "weak" and implicit else "explicit"

    def thermal_state(self) -> ThermalState:
        if self._thermal is None:
            return ThermalState()
        return self._thermal.thermal_state()

    # ----------------------------------------------------------------- build
    def timing_cache_file(self, build_config: BuildConfig) -> Path | None:
        """The timing cache file both builders read and merge into for ``build_config``,
        when devices of this type may share it (``seams.TimingCacheOwner``): None without a
        cache directory, or when the device's name is unknown (an A30 and an A100 are both
        sm80; their tactic timings are not interchangeable)."""
        directory = build_config.timing_cache_path or self._options.timing_cache_dir
        device = self._ctx.device_name()
        if directory is None or device is None:
            return None
        return timing_cache_path(directory, self._ctx.version(), self._ctx.device_sm(), device)

    def graph_consumer(self, build_config: BuildConfig) -> str | None:
        """"tensorrt" where this build parses the pipeline's FP16 or Q/DQ graph (see
        ``_needs_conversion``); None where it parses the model as it is (fp32, or the weakly
        typed path with TensorRT's own calibrator, fed by ``options.calibration``)."""
        return "tensorrt" if self._needs_conversion(build_config) else None

    def compile_engine(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path,
        prepared: PreparedGraph | None = None,
    ) -> BuildArtifact:
        """Parse ``model_path`` (or its precision-carrying form: ``prepared``, else the
        configured converter's) and build into ``staged_path``.

        The graph TensorRT will parse is checked first (DequantizeLinear inputs INT8 with
        zero point 0), before any build starts.
        """
        model_path = Path(model_path)
        staged_path = Path(staged_path)
        check_dla_int8(self._options, self._ctx.optional_trt(), build_config)  # before any work
        workdir: Path | None = None
        converted: Mapping[str, Any] = {}
        source = model_path
        if prepared is not None:
            source, converted = Path(prepared.model_path), prepared.metadata
        convert = self._options.precision_converter if prepared is None else None
        if convert is not None and self._needs_conversion(build_config):
            # The writer's pid in the name lets cache gc tell live work dirs from dead ones.
            workdir = Path(
                tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-trt-", dir=staged_path.parent)
            )
        try:
            if workdir is not None and convert is not None:
                source, converted = convert(model_path, build_config, workdir)
            # A converter's graph is ours (INT8 only); the model as given is the user's.
            quantizers = check_dequantize_inputs(source, ours=source != model_path)
            if quantizers == 0 and self._needs_qdq_graph(build_config):
                raise EngineBuildError(
                    "INT8 without a calibrator needs an explicitly quantized (Q/DQ) graph; "
                    "none was prepared for this build (no precision converter configured)",
                    model=str(model_path), precision=build_config.precision.value)
            self._check_strong_graph_is_reduced(source, model_path, build_config)
            own = ModelNodes(model_nodes(model_path), quantized_nodes(source),
                             kept_fp32_by_converter(converted))
            artifact = self._compile_onnx(source, build_config, staged_path, own)
        finally:
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        if not converted:
            return artifact
        metadata = {**converted, **artifact.metadata, "model": str(model_path),
                    "converted_model": "precision-carrying graph from " + model_path.name}
        return dataclasses.replace(artifact, metadata=metadata)

    def _check_strong_graph_is_reduced(
        self, source: Path, model_path: Path, build_config: BuildConfig
    ) -> None:
        """A strongly typed network computes in its graph's types: an fp16/int8 build whose
        graph has no tensor below FP32 (no converter configured, or one that converted
        nothing) would be the FP32 engine under a reduced-precision label."""
        if build_config.precision is PrecisionMode.FP32:
            return
        if self._planned_precision_path(build_config) != "strong":
            return
        if reduced_precision_tensors(source) == 0:
            raise EngineBuildError(
                "strongly typed builds take their precision from the graph, and this graph "
                "has no tensor below FP32 (configure a precision converter or give an "
                f"{build_config.precision.value} model); it would be the FP32 engine",
                model=str(model_path), precision=build_config.precision.value,
                converter=self._options.precision_converter is not None)

    def _needs_conversion(self, build_config: BuildConfig) -> bool:
        """Strong path: any reduced precision. Weak path: INT8/mixed under explicit
        quantization (the Q/DQ graph replaces the calibrator)."""
        if build_config.precision is PrecisionMode.FP32:
            return False
        path = self._planned_precision_path(build_config)
        if path == "strong":
            return True
        if path == "weak" and build_config.precision.needs_calibration:
            return not self._ctx.implicit_int8(self._ctx.optional_trt(), build_config)
        return False

    def _needs_qdq_graph(self, build_config: BuildConfig) -> bool:
        """INT8/mixed on the strong path, or on the weak path without a calibrator."""
        if not build_config.precision.needs_calibration:
            return False
        path = self._planned_precision_path(build_config)
        if path == "weak":
            return not self._ctx.implicit_int8(self._ctx.optional_trt(), build_config)
        return path == "strong"

    def _planned_precision_path(self, build_config: BuildConfig) -> str | None:
        """The precision path an ONNX build will take; None when it cannot be known yet.

        The Python builder needs the tensorrt module anyway (a missing one fails here, before
        any conversion work). A trtexec build may run without it: then the path follows from
        the build config alone.
        """
        if self._options.builder == "python":
            trt = self._ctx.trt()
        else:
            trt = self._ctx.optional_trt()
            if trt is None:
                return path_from_config(build_config, self._ctx.prefer_strong(build_config))
        return choose_precision_path(trt, build_config,
                                     implicit_int8=self._ctx.implicit_int8(trt, build_config),
                                     prefer_strong=self._ctx.prefer_strong(build_config))

    def _compile_onnx(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path, own: ModelNodes
    ) -> BuildArtifact:
        if self._options.builder != "python":
            delegated = self._trtexec.delegate(model_path, build_config, staged_path, own)
            if delegated is not None:
                return delegated

        def populate(trt: Any, network: Any, logger: Any) -> dict[str, Any]:
            parse_onnx(trt, network, logger, model_path)
            return {"model": str(model_path)}

        return self._python.build(populate, build_config, staged_path, model_path, own)

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

        return self._python.build(populate, build_config, Path(staged_path), None)

    # ----------------------------------------------------------------- load
    def deserialize_engine(self, entry: EngineCacheEntry) -> TensorrtEngineHandle:
        identity = entry.identity
        if identity.dla_core is not None:
            self._check_dla_core_present(identity.dla_core, entry.engine_path)
        expected = self._target_for(identity.hardware_compatibility, identity.dla_core)
        verified = self._gate.validate(entry.engine_path, expected)
        reservation = self._budget.reserve(verified) if self._budget is not None else None
        handle = TensorrtEngineHandle(entry=verified, _owner=id(self), _reservation=reservation)
        try:
            load_into(self._ctx, handle)
        except BaseException as exc:
            runner.free(handle, self._budget)
            if isinstance(exc, TrtProvisionError) or not isinstance(exc, Exception):
                raise
            raise InferenceError(
                f"cannot load engine: {type(exc).__name__}: {exc}", path=str(entry.engine_path)
            ) from exc
        self._handles[id(handle)] = handle
        log.info("engine loaded", extra={"event": "trt.engine.loaded",
                                         "path": str(verified.engine_path)})
        return handle

    def _check_dla_core_present(self, core: int, engine_path: Path) -> None:
        """A DLA engine runs only on the core it was built for (the loader sets
        ``Runtime.DLA_core``, which does nothing where the core is missing: NvInferRuntime.h,
        IRuntime::setDLACore); refuse it by name before anything is deserialized."""
        trt = self._ctx.trt()
        available = int(trt.Runtime(self._ctx.logger(trt)).num_DLA_cores)
        if core >= available:
            raise EngineGateError(
                "engine was built for a DLA core this host does not have",
                path=str(engine_path), dla_core=core, num_dla_cores=available)

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
        return runner.input_views(self._own(handle), shapes)

    def infer_staged(
        self, handle: EngineHandle, *, copy_outputs: bool = True
    ) -> dict[str, np.ndarray[Any, Any]]:
        """Run on what the caller wrote into the views of the last :meth:`input_views` call."""
        return runner.infer_staged(self._own(handle), copy_outputs)

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
        runner.check_names(own, inputs)
        return runner.run(own, inputs, copy_outputs)

    # ----------------------------------------------------------------- release
    def release_engine(self, handle: EngineHandle) -> None:
        if not isinstance(handle, TensorrtEngineHandle) or handle._owner != id(self):
            raise InferenceError("engine handle does not belong to this runtime")
        if handle.released:
            return
        self._handles.pop(id(handle), None)
        runner.free(handle, self._budget)


def kept_fp32_by_converter(converted: Mapping[str, Any]) -> dict[str, str]:
    """Pinned nodes the precision converter kept FP32, with its reason (its
    ``pinned_layers`` report: ``{"node": ..., "precision": "fp32 (<reason>)"}``)."""
    kept: dict[str, str] = {}
    for entry in converted.get("pinned_layers") or ():
        if not isinstance(entry, Mapping):
            continue
        node, precision = entry.get("node"), str(entry.get("precision") or "")
        if isinstance(node, str) and precision.startswith("fp32"):
            kept[node] = precision.removeprefix("fp32").strip(" ()") or "kept fp32"
    return kept
