"""The ONNX Runtime strategy: the embedded default wherever TensorRT is absent.

Its "engine" is the ORT-optimized ONNX model of the (precision-converted) input model.
Optimized graphs can hold layout transforms and fused kernels specific to the execution
provider and CPU ISA, so the identity names the EP (``ortcpu``/``ortcuda``), the ISA level
(or sm) and the ORT version.
"""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from trt_provision._fs import no_space_left
from trt_provision.errors import EngineBuildError, InferenceError
from trt_provision.host import cpu_isa_level
from trt_provision.seams import EngineGate, EngineHandle, MemoryBudget, ThermalStatePublisher
from trt_provision.types import (
    BuildArtifact,
    BuildConfig,
    EngineCacheEntry,
    HostCapabilities,
    PreparedGraph,
    RuntimeTarget,
    ThermalState,
)

__all__ = ["OnnxRuntimeEngineHandle", "OnnxRuntimeRuntime", "PrecisionConverter"]

# (model, build config, work dir) -> (the prepared graph, its precision metadata). The
# composition root wires the precision pipeline here; the strategy never imports it.
PrecisionConverter = Callable[[Path, BuildConfig, Path], tuple[Path, Mapping[str, Any]]]

log = logging.getLogger(__name__)

_ORT_TYPES: dict[str, np.dtype[Any]] = {
    "tensor(float)": np.dtype(np.float32),
    "tensor(float16)": np.dtype(np.float16),
    "tensor(double)": np.dtype(np.float64),
    "tensor(int8)": np.dtype(np.int8),
    "tensor(uint8)": np.dtype(np.uint8),
    "tensor(int16)": np.dtype(np.int16),
    "tensor(int32)": np.dtype(np.int32),
    "tensor(int64)": np.dtype(np.int64),
    "tensor(bool)": np.dtype(np.bool_),
}


@dataclass(frozen=True)
class _InputSpec:
    name: str
    dtype: np.dtype[Any]
    shape: tuple[int | None, ...]  # None for a dynamic dimension

    @property
    def static_dims(self) -> tuple[tuple[int, int], ...]:
        return tuple((i, d) for i, d in enumerate(self.shape) if d is not None)


@dataclass(eq=False)
class OnnxRuntimeEngineHandle:
    """A loaded ORT session plus its budget reservation."""

    entry: EngineCacheEntry
    session: Any
    inputs: tuple[_InputSpec, ...]
    output_names: list[str]
    owner: int
    # Per input: name, dtype, rank, (dim, size) of static dims, (dim, min, max) of the
    # profiled dynamic dims - everything infer checks, resolved once at load.
    checks: tuple[
        tuple[str, np.dtype[Any], int, tuple[tuple[int, int], ...],
              tuple[tuple[int, int, int], ...]], ...
    ] = ()
    run: Any = None  # the session's run entry point, resolved once at load
    # (input, min, max) of the engine's optimization profile, from its metadata
    bounds: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()
    reservation: int | None = None
    released: bool = False
    lock: threading.Lock = field(default_factory=threading.Lock)



def _utf8_path(path: Path) -> str:
    """ONNX Runtime takes paths as UTF-8 strings only: a name that is not valid UTF-8 (kept by
    Python as surrogate escapes) would be a TypeError from its bindings, so name it instead."""
    text = str(path)
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise EngineBuildError(
            "ONNX Runtime needs paths that are valid UTF-8; rename the directory or file",
            path=text.encode("utf-8", "backslashreplace").decode("ascii"),
        ) from None
    return text

def _ort() -> Any:
    import onnxruntime  # declared dependency, imported lazily to keep the CLI start fast

    return onnxruntime


class OnnxRuntimeRuntime:
    """Builds and runs ORT-optimized models on one execution provider."""

    def __init__(
        self,
        *,
        host: HostCapabilities,
        gate: EngineGate,
        budget: MemoryBudget | None = None,
        thermal: ThermalStatePublisher | None = None,
        provider: str = "CPUExecutionProvider",
        intra_op_threads: int | None = None,
        calibration_cache_dir: Path | None = None,
        precision_converter: PrecisionConverter | None = None,
    ) -> None:
        if provider not in ("CPUExecutionProvider", "CUDAExecutionProvider"):
            raise ValueError(f"unsupported ONNX Runtime execution provider {provider!r}")
        if provider == "CUDAExecutionProvider" and host.sm is None:
            raise ValueError("CUDAExecutionProvider needs a visible GPU")
        self._host = host
        self._gate = gate
        self._budget = budget
        self._thermal = thermal
        self._provider = provider
        self._threads = intra_op_threads
        self._calibration_cache_dir = calibration_cache_dir  # kept for callers; unused here
        self._precision_converter = precision_converter

    # ------------------------------------------------------------------ identity

    def current_runtime_label(self) -> str:
        return "onnxruntime"

    def runtime_target(self, build_config: BuildConfig) -> RuntimeTarget:
        version = self._host.ort_version or str(_ort().__version__)
        if self._provider == "CUDAExecutionProvider":
            platform = f"jp{self._host.jetpack}" if self._host.jetpack else "dgpu"
            return RuntimeTarget("ortcuda", version, str(self._host.sm), platform)
        isa = cpu_isa_level(self._host.cpu_isa, self._host.cpu_arch)
        return RuntimeTarget("ortcpu", version, f"cpu-{isa}", "host")

    def _session_options(self, level: str) -> Any:
        ort = _ort()
        options = ort.SessionOptions()
        options.graph_optimization_level = getattr(ort.GraphOptimizationLevel, level)
        # Fatal only: ORT logs each error (coloured) before raising it, and we report the
        # raised error once, as ours; its warnings would flood the CLI.
        options.log_severity_level = 4
        if self._threads:
            options.intra_op_num_threads = self._threads
        return options

    # ------------------------------------------------------------------ build

    def graph_consumer(self, build_config: BuildConfig) -> str | None:
        """Every reduced precision is built from the pipeline's graph (CPU Q/DQ options)."""
        return None if build_config.precision.value == "fp32" else "onnxruntime-cpu"

    def compile_engine(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path,
        prepared: PreparedGraph | None = None,
    ) -> BuildArtifact:
        started = time.perf_counter()
        if (build_config.precision.value != "fp32" and prepared is None
                and self._precision_converter is None):
            raise EngineBuildError(
                f"precision {build_config.precision.value} needs the precision pipeline's "
                "graph (the compiler passes it when compose.wire gives it the pipeline) or a "
                "precision converter; this build has neither",
                model=str(model_path),
            )
        # The writer's pid in the name lets cache gc tell live work dirs from dead ones.
        workdir = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-ort-", dir=staged_path.parent))
        try:
            prepared_path = Path(model_path)
            prepared_meta: Mapping[str, Any] = {}
            if prepared is not None:
                prepared_path, prepared_meta = Path(prepared.model_path), prepared.metadata
            elif (self._precision_converter is not None
                  and build_config.precision.value != "fp32"):
                prepared_path, prepared_meta = self._precision_converter(
                    Path(model_path), build_config, workdir
                )
            options = self._session_options("ORT_ENABLE_ALL")
            options.optimized_model_filepath = _utf8_path(staged_path)
            try:
                session = _ort().InferenceSession(
                    _utf8_path(prepared_path), sess_options=options,
                    providers=[self._provider],
                )
            except Exception as exc:  # ORT raises its own Fail/InvalidGraph/... types
                # A full disk while ORT writes the staged engine surfaces as "Protobuf
                # serialization failed": name the real cause.
                if no_space_left(staged_path.parent):
                    raise EngineBuildError(
                        "cannot write the staged engine: no space left on device",
                        model=str(model_path),
                        path=str(staged_path.parent),
                        errno=errno.ENOSPC,
                    ) from exc
                raise EngineBuildError(
                    f"ONNX Runtime could not build the model: {type(exc).__name__}: {exc}",
                    model=str(model_path),
                ) from exc
            _check_profile_inputs(session, build_config, model_path)
            io = _describe_io(session, build_config)
            del session
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        if not staged_path.is_file() or staged_path.stat().st_size == 0:
            raise EngineBuildError("ONNX Runtime wrote no optimized model", model=str(model_path))
        metadata: dict[str, Any] = dict(prepared_meta)
        metadata.update(io)
        metadata["runtime"] = {
            "label": self.current_runtime_label(),
            "provider": self._provider,
            "graph_optimization_level": "ORT_ENABLE_ALL",
        }
        return BuildArtifact(
            staged_path=staged_path,
            build_seconds=time.perf_counter() - started,
            metadata=metadata,
        )

    # ------------------------------------------------------------------ load / run

    def deserialize_engine(self, entry: EngineCacheEntry) -> EngineHandle:
        # Gate and budget before any ORT call: a refused engine never reaches the runtime.
        verified = self._gate.validate(entry.engine_path, self.runtime_target(BuildConfig()))
        bounds = _profile_bounds(verified)
        reservation = self._budget.reserve(verified) if self._budget is not None else None
        try:
            options = self._session_options("ORT_DISABLE_ALL")  # already optimized at build
            session = _ort().InferenceSession(
                str(verified.engine_path), sess_options=options, providers=[self._provider]
            )
            inputs = tuple(
                _InputSpec(
                    name=i.name,
                    dtype=_ORT_TYPES.get(i.type, np.dtype(object)),
                    shape=tuple(d if isinstance(d, int) else None for d in i.shape),
                )
                for i in session.get_inputs()
            )
            outputs = [o.name for o in session.get_outputs()]
        except Exception as exc:
            if reservation is not None and self._budget is not None:
                self._budget.release(reservation)
            raise InferenceError(
                f"ONNX Runtime could not load the engine: {type(exc).__name__}: {exc}",
                path=str(verified.engine_path),
            ) from exc
        return OnnxRuntimeEngineHandle(
            entry=verified,
            session=session,
            inputs=inputs,
            output_names=outputs,
            owner=id(self),
            checks=tuple(
                (i.name, i.dtype, len(i.shape), i.static_dims, _ranged(i, bounds))
                for i in inputs
            ),
            run=self._run_entry(session),
            bounds=bounds,
            reservation=reservation,
        )

    def _run_entry(self, session: Any) -> Any:
        """``session.run`` minus the wrapper's per-call checks, where that is safe.

        ``InferenceSession.run`` re-lists the model inputs, checks OrtValue ownership and
        graph-capture options on every call (~4 µs, more than the model on tiny graphs).
        ``infer`` has already checked every name, dtype and rank, and only numpy arrays get
        through, so those checks cannot fail here. On the CPU EP the compiled session's own
        ``run(names, feed, options)`` is then the same call. The CUDA EP keeps the wrapper:
        it is where ORT's EP-failure fallback lives.
        """
        inner = getattr(session, "_sess", None)
        run = getattr(inner, "run", None)
        if self._provider != "CPUExecutionProvider" or not callable(run):
            return lambda names, feed: session.run(names, feed)
        return lambda names, feed: run(names, feed, None)

    def _own(self, handle: EngineHandle) -> OnnxRuntimeEngineHandle:
        if not isinstance(handle, OnnxRuntimeEngineHandle) or handle.owner != id(self):
            raise InferenceError("engine handle does not belong to this runtime")
        if handle.released:
            raise InferenceError("engine handle was released", path=str(handle.entry.engine_path))
        return handle

    def infer(self, handle: EngineHandle, inputs: Mapping[str, Any]) -> dict[str, Any]:
        h = self._own(handle)
        # One tight pass over precomputed (name, dtype, rank, fixed dims): these checks run
        # on every call, so they must cost next to nothing next to session.run.
        # The class test comes first: only a real ndarray reaches the attribute reads (no
        # duck-typed object's properties run here), and numpy's builtin dtypes are
        # singletons, so ``is`` settles the common case before the slower ``==``.
        for name, dtype, rank, fixed, ranged in h.checks:
            value = inputs.get(name)
            if value.__class__ is not np.ndarray:
                if value is None:
                    raise InferenceError("missing input", input=name)
                self._explain(h, name, value)
            vdtype = value.dtype
            if (vdtype is not dtype and vdtype != dtype) or value.ndim != rank:
                self._explain(h, name, value)
            if fixed or ranged:
                shape = value.shape
                for i, d in fixed:
                    if shape[i] != d:
                        self._explain(h, name, value)
                # As TensorRT's setInputShape: a shape outside the profile the engine was
                # built for is refused, so what runs here also runs on the device.
                for i, lo, hi in ranged:
                    if not lo <= shape[i] <= hi:
                        self._outside(h, name, shape)
        if len(inputs) != len(h.checks):
            unknown = sorted(set(inputs) - {c[0] for c in h.checks})
            raise InferenceError("unknown input names", found=unknown)
        try:
            results = h.run(h.output_names, inputs)
        except Exception as exc:
            raise InferenceError(
                f"inference failed: {type(exc).__name__}: {str(exc).strip()}",
                path=str(h.entry.engine_path),
            ) from exc
        return dict(zip(h.output_names, results, strict=True))

    @staticmethod
    def _outside(h: OnnxRuntimeEngineHandle, name: str, shape: tuple[int, ...]) -> None:
        lo, hi = next((lo, hi) for n, lo, hi in h.bounds if n == name)
        raise InferenceError(
            "input shape outside the engine's optimization profile",
            input=name, found=list(shape), min=list(lo), max=list(hi),
        )

    @staticmethod
    def _explain(h: OnnxRuntimeEngineHandle, name: str, value: Any) -> None:
        """Raise the precise error for an input the fast check refused (the slow path)."""
        spec = next(s for s in h.inputs if s.name == name)
        if not isinstance(value, np.ndarray):
            raise InferenceError(
                "input must be a numpy array", input=name, found=type(value).__name__
            )
        if value.dtype != spec.dtype:
            raise InferenceError(
                "input dtype mismatch", input=name, expected=str(spec.dtype), found=str(value.dtype)
            )
        raise InferenceError(
            "input shape mismatch", input=name, expected=str(spec.shape), found=str(value.shape)
        )

    def release_engine(self, handle: EngineHandle) -> None:
        if not isinstance(handle, OnnxRuntimeEngineHandle):
            raise InferenceError("engine handle does not belong to this runtime")
        with handle.lock:
            if handle.released:
                return
            handle.released = True
            handle.session = None
            handle.run = None  # it holds the session too
            if handle.reservation is not None and self._budget is not None:
                self._budget.release(handle.reservation)

    def thermal_state(self) -> ThermalState:
        if self._thermal is None:
            return ThermalState()
        return self._thermal.thermal_state()


def _ranged(
    spec: _InputSpec, bounds: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
) -> tuple[tuple[int, int, int], ...]:
    """(dim, min, max) of the input's dynamic dims its profile bounds (static dims are
    checked for equality already, and a profile cannot disagree with them: the build
    refuses that)."""
    for name, lo, hi in bounds:
        if name == spec.name:
            return tuple(
                (i, lo[i], hi[i])
                for i, d in enumerate(spec.shape[: min(len(lo), len(hi))])
                if d is None
            )
    return ()


def _profile_bounds(
    entry: EngineCacheEntry,
) -> tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]:
    """The [min, max] of each profiled input, from the gate-checked metadata sidecar."""
    from trt_provision.types import OptimizationProfile

    metadata = entry.extras.get("metadata") or {}
    build = metadata.get("build_config") if isinstance(metadata, Mapping) else None
    raw = build.get("profiles") if isinstance(build, Mapping) else None
    if not raw:
        return ()
    bounds = []
    try:
        for item in raw:
            if isinstance(item, Mapping) and item.get("defaulted") is True:
                continue  # chosen for TensorRT's sake, not the user's: ORT serves any size
            profile = OptimizationProfile(
                str(item["input"]), tuple(item["min"]), tuple(item["opt"]), tuple(item["max"])
            )
            bounds.append((profile.input_name, profile.min_shape, profile.max_shape))
    except (KeyError, TypeError, ValueError) as exc:
        raise InferenceError(
            "engine metadata holds a malformed optimization profile",
            path=str(entry.engine_path),
        ) from exc
    return tuple(bounds)


def _check_profile_inputs(session: Any, config: BuildConfig, model_path: Path) -> None:
    """A profile for an input the model does not have is a build error, not a no-op."""
    names = [i.name for i in session.get_inputs()]
    unknown = sorted(p.input_name for p in config.profiles if p.input_name not in names)
    if unknown:
        raise EngineBuildError(
            "optimization profile names an input the model does not have",
            model=str(model_path),
            input=unknown[0],
            model_inputs=names,
        )


def _describe_io(session: Any, config: BuildConfig) -> dict[str, Any]:
    """IO names/types/shapes and the IO bytes at max shapes (for the memory budget)."""
    io_bytes = 0
    described: dict[str, list[dict[str, Any]]] = {"inputs": [], "outputs": []}
    for kind, tensors in (("inputs", session.get_inputs()), ("outputs", session.get_outputs())):
        for t in tensors:
            shape = [d if isinstance(d, int) else str(d) for d in t.shape]
            described[kind].append({"name": t.name, "type": t.type, "shape": shape})
            dtype = _ORT_TYPES.get(t.type)
            profile = config.profile_for(t.name)
            dims = (
                list(profile.max_shape)
                if profile
                else [d if isinstance(d, int) and d > 0 else 1 for d in t.shape]
            )
            if dtype is not None:
                # Python ints: a product of large dims must not wrap around or overflow.
                io_bytes += math.prod(int(d) for d in dims) * dtype.itemsize
    return {"io": described, "io_bytes_at_max_shapes": io_bytes, "device_memory_bytes": 0}
