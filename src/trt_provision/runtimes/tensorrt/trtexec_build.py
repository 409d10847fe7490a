"""Engine builds delegated to a ``trtexec`` binary (Jetson images ship one).

``TrtexecCommandFromConfig`` maps a :class:`~trt_provision.types.BuildConfig` onto trtexec's
command line; :func:`build_with_trtexec` runs it in its own process group with a timeout
(the same kill logic as the compile subprocess) and turns a failure into an
:class:`~trt_provision.errors.EngineBuildError` carrying the error lines trtexec printed.

What maps, by precision path (the same ``"weak"`` / ``"strong"`` choice as the Python
builder):

* both: ``--onnx``, ``--saveEngine``, ``--skipInference``, one profile as
  ``--minShapes/--optShapes/--maxShapes``, ``--memPoolSize=workspace:<MiB>``,
  ``--builderOptimizationLevel``, ``--hardwareCompatibilityLevel``, ``--timingCacheFile``;
* strong: ``--stronglyTyped`` and no precision flag (precision comes from the graph);
* weak: ``--fp16`` for FP16; ``--fp16 --int8`` for INT8 and MIXED (the flags the Python
  builder sets for them): on an explicitly quantized (Q/DQ) graph nothing more; on the
  implicit calibrator path with ``--calib=<cache>``, since trtexec reads an existing
  calibration cache but cannot feed calibration batches.
* fp32 without ``tf32``: ``--noTF32`` (trtexec, like TensorRT, enables TF32 by default:
  samples/common/sampleOptions.cpp of NVIDIA/TensorRT, ``--noTF32``).
* DLA: ``--useDLACore=N`` and, with ``gpu_fallback``, ``--allowGPUFallback``.

trtexec silently pins a missing dynamic dimension to 1 when no shapes are given
(sampleOptions.cpp / sampleEngines.cpp: "Dynamic dimensions required for input ... set to
1"), so a dynamic input without a profile is refused before trtexec runs. The binary's own
TensorRT version (the ``[TensorRT vMMmmpp]`` banner every trtexec run prints) must equal the
version the engine identity records.
  ``--best`` is never used: it lets TensorRT pick any precision, which the identity of the
  engine would not record.

Per-layer pinning (``fp16_pinned_keywords``) needs the network's layer names, which only the
Python builder sees; a weakly typed reduced-precision build that would need it is refused
with ``strict_precision_constraints`` (``builder="auto"`` then falls back to Python).
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision.errors import EngineBuildError
from trt_provision.runtimes.tensorrt._process import parse_trt_version
from trt_provision.runtimes.tensorrt.subprocess_build import DEFAULT_TIMEOUT_S, run_group
from trt_provision.runtimes.tensorrt.timing_cache import (
    private_copy,
    publish_copy,
    timing_cache_path,
)
from trt_provision.types import BuildArtifact, BuildConfig, HardwareCompatibility, PrecisionMode

if TYPE_CHECKING:
    from trt_provision.runtimes.tensorrt._context import TrtContext
    from trt_provision.runtimes.tensorrt.network import ModelNodes

__all__ = [
    "JETPACK_TRTEXEC",
    "TrtexecCommandFromConfig",
    "build_with_trtexec",
    "find_trtexec",
    "parse_trtexec_version",
    "trtexec_error_lines",
    "trtexec_version",
]

log = logging.getLogger(__name__)

_HW_LEVELS: dict[HardwareCompatibility, str] = {
    HardwareCompatibility.NONE: "none",
    HardwareCompatibility.AMPERE_PLUS: "ampere+",
    HardwareCompatibility.SAME_COMPUTE_CAPABILITY: "sameComputeCapability",
}
_CALIBRATION_LINE = re.compile(r"Starting Calibration|Calibrated batch \d+")
_ERROR_LINE = re.compile(r"\[E\]|\bERROR\b|Error\[\d+\]|&&&& FAILED")


# The first trtexec with --hardwareCompatibilityLevel=sameComputeCapability.
SAME_CC_SINCE = (10, 9)

# Where JetPack installs trtexec; it is not on PATH there.
JETPACK_TRTEXEC = Path("/usr/src/tensorrt/bin/trtexec")


def _executable(path: Path) -> bool:
    return path.is_file() and os.access(path, os.X_OK)


def find_trtexec(
    configured: Path | None = None, *, jetpack_path: Path = JETPACK_TRTEXEC
) -> Path | None:
    """The configured binary when it is executable, else ``trtexec`` on PATH, else JetPack's
    ``/usr/src/tensorrt/bin/trtexec``, else None. The choice is logged."""
    if configured is not None:
        path = Path(configured)
        found: Path | None = path if _executable(path) else None
        how = "configured"
    elif (on_path := shutil.which("trtexec")) is not None:
        found, how = Path(on_path), "PATH"
    else:
        found = jetpack_path if _executable(jetpack_path) else None
        how = "JetPack location"
    if found is not None:
        log.info("using trtexec %s (%s)", found, how,
                 extra={"event": "trt.trtexec.found", "path": str(found), "found_by": how})
    return found


_BANNER = re.compile(r"\[TensorRT v(\d+)\]")


def parse_trtexec_version(output: str) -> str | None:
    """``[TensorRT v101600]`` -> ``"10.16.0"``; None when the banner is absent.

    The number is ``NV_TENSORRT_VERSION`` (NvInferVersion.h): ``major*10000 + minor*100 +
    patch`` from TensorRT 10 on, ``major*1000 + minor*100 + patch`` before.
    """
    match = _BANNER.search(output)
    if match is None:
        return None
    number = int(match.group(1))
    if number >= 100000:
        major, rest = divmod(number, 10000)
    else:
        major, rest = divmod(number, 1000)
    minor, patch = divmod(rest, 100)
    return f"{major}.{minor}.{patch}"


def trtexec_version(binary: Path, *, timeout: float = 120.0) -> str | None:
    """The TensorRT version the binary itself was built with (from ``trtexec --help``)."""
    try:
        _code, stdout, stderr = run_group((str(binary), "--help"), timeout,
                                          what="trtexec --help", context={"binary": str(binary)})
    except EngineBuildError:
        return None
    return parse_trtexec_version(stdout.decode(errors="replace") + stderr.decode(errors="replace"))


def _shape_spec(pairs: Sequence[tuple[str, tuple[int, ...]]]) -> str:
    def name(n: str) -> str:
        # trtexec splits on ',' and ':'; a name containing them must be quoted.
        return f"'{n}'" if ("," in n or ":" in n) else n

    return ",".join(f"{name(n)}:{'x'.join(str(d) for d in shape)}" for n, shape in pairs)


@dataclass(frozen=True)
class TrtexecCommandFromConfig:
    """The trtexec argv for one build; ``precision_flags`` are also recorded as evidence."""

    argv: tuple[str, ...]
    precision_flags: tuple[str, ...]

    @classmethod
    def build(
        cls,
        binary: Path,
        model_path: Path,
        staged_path: Path,
        build_config: BuildConfig,
        precision_path: str,
        *,
        timing_cache: Path | None = None,
        calibration_cache: Path | None = None,
        explicit_int8: bool = False,
        plugin_libraries: Sequence[Path] = (),
    ) -> TrtexecCommandFromConfig:
        cfg = build_config
        args = [str(binary), f"--onnx={model_path}", f"--saveEngine={staged_path}",
                "--skipInference"]
        # Plugin libraries the parser and the build need, loaded by trtexec itself after
        # initLibNvInferPlugins (samples/trtexec/trtexec.cpp, v10.3.0..v11.1;
        # "--staticPlugins" in SystemOptions::parse, samples/common/sampleOptions.cpp).
        args += [f"--staticPlugins={library}" for library in plugin_libraries]
        flags: list[str] = []
        if precision_path == "strong":
            flags.append("--stronglyTyped")
        elif precision_path == "weak":
            if cfg.precision is not PrecisionMode.FP32:
                # INT8 too: the Python builder sets FP16 with INT8 (an FP16 fallback for
                # layers without INT8 kernels); one name, one engine semantics.
                flags.append("--fp16")
            if cfg.precision.needs_calibration and explicit_int8:
                flags.append("--int8")  # the Q/DQ graph carries the scales
            elif cfg.precision.needs_calibration:
                if calibration_cache is None:
                    raise EngineBuildError(
                        "trtexec cannot calibrate from batches; INT8 on the weakly typed path "
                        "needs an existing calibration cache", model=str(model_path))
                flags.append("--int8")
                flags.append(f"--calib={calibration_cache}")
        else:
            raise EngineBuildError(f"unknown precision path {precision_path!r}")
        if cfg.precision is PrecisionMode.FP32 and not cfg.tf32:
            flags.append("--noTF32")
        if cfg.dla_core is not None:
            flags.append(f"--useDLACore={cfg.dla_core}")
            if cfg.gpu_fallback:
                flags.append("--allowGPUFallback")
        args += flags
        if cfg.profiles:
            for option, attr in (("--minShapes", "min_shape"), ("--optShapes", "opt_shape"),
                                 ("--maxShapes", "max_shape")):
                pairs = [(p.input_name, tuple(getattr(p, attr))) for p in cfg.profiles]
                args.append(f"{option}={_shape_spec(pairs)}")
        # A bare number is MiB for --memPoolSize in every trtexec that has the option.
        args.append(f"--memPoolSize=workspace:{cfg.workspace_mib}")
        args.append(f"--builderOptimizationLevel={cfg.builder_optimization_level}")
        args.append(f"--hardwareCompatibilityLevel={_HW_LEVELS[cfg.hardware_compatibility]}")
        if timing_cache is not None:
            args.append(f"--timingCacheFile={timing_cache}")
        return cls(argv=tuple(args), precision_flags=tuple(
            f.split("=", 1)[0] for f in flags))


def trtexec_error_lines(output: str, limit: int = 50) -> list[str]:
    """The lines of trtexec's log that report an error, in order (at most ``limit``)."""
    lines = [ln.strip() for ln in output.splitlines() if _ERROR_LINE.search(ln)]
    return lines[:limit]


def build_with_trtexec(
    command: TrtexecCommandFromConfig,
    staged_path: Path,
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    env: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """Run trtexec; return metadata facts or raise EngineBuildError with its error lines."""
    started = time.monotonic()
    log.info("building TensorRT engine with trtexec",
             extra={"event": "trt.trtexec.start", "command": list(command.argv),
                    "timeout_s": timeout})
    staged_path.parent.mkdir(parents=True, exist_ok=True)
    code, stdout, stderr = run_group(
        command.argv, timeout, env=dict(env) if env is not None else None, what="trtexec build",
        context={"command": " ".join(command.argv)},
    )
    output = stdout.decode(errors="replace") + "\n" + stderr.decode(errors="replace")
    errors = trtexec_error_lines(output)
    if code != 0:
        raise EngineBuildError(
            f"trtexec failed with exit code {code}", exit_code=code, errors=errors,
            output_tail=output[-2000:], command=" ".join(command.argv))
    if not staged_path.is_file() or staged_path.stat().st_size == 0:
        raise EngineBuildError(
            "trtexec exited without writing the engine", errors=errors,
            output_tail=output[-2000:], command=" ".join(command.argv))
    with open(staged_path, "rb") as fh:
        os.fsync(fh.fileno())
    seconds = time.monotonic() - started
    log.info("finished TensorRT engine with trtexec in %.1f s", seconds,
             extra={"event": "trt.trtexec.finish", "seconds": seconds})
    return {
        "builder": "trtexec",
        "builder_command": list(command.argv),
        "builder_warnings": [ln.strip() for ln in output.splitlines() if "[W]" in ln][:50],
        # The builder's calibration log ("Starting Calibration", "Calibrated batch N in ...":
        # NVIDIA/TensorRT samples/sampleINT8/README.md): calibration ran during this build.
        "calibrated": [ln.strip() for ln in output.splitlines()
                       if _CALIBRATION_LINE.search(ln)][:5],
    }


class NotExpressible(Exception):
    """A build the trtexec command line cannot express (``builder="auto"`` falls back)."""


class UnusableTrtexec(NotExpressible):
    """The trtexec found cannot build for this run (another TensorRT, no readable version):
    ``builder="trtexec"`` refuses with this message and context, ``"auto"`` uses Python."""

    def __init__(self, message: str, **context: Any) -> None:
        super().__init__(message)
        self.message = message
        self.context = context


class TrtexecBuilder:
    """Delegates an ONNX build to trtexec; the tensorrt module is optional here."""

    def __init__(self, ctx: TrtContext) -> None:
        self._ctx = ctx
        self._versions: dict[Path, str | None] = {}

    def delegate(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path,
        own: ModelNodes | None = None,
    ) -> BuildArtifact | None:
        """Build with trtexec when the options ask for it; None means: use the Python builder."""
        options = self._ctx.options
        mode = options.builder
        binary = find_trtexec(options.trtexec_path)
        if binary is None:
            if mode == "trtexec":
                raise EngineBuildError(
                    "builder='trtexec' but no executable trtexec was found",
                    configured=str(options.trtexec_path or ""),
                    searched=f"PATH, {JETPACK_TRTEXEC}")
            return None
        try:
            return self._build(binary, model_path, build_config, staged_path, own)
        except NotExpressible as exc:
            if mode == "trtexec" and isinstance(exc, UnusableTrtexec):
                raise EngineBuildError(exc.message, **exc.context) from exc
            if mode == "trtexec":
                raise EngineBuildError(f"this build cannot be delegated to trtexec: {exc}",
                                       model=str(model_path)) from exc
            log.info("build not delegated to trtexec",
                     extra={"event": "trt.trtexec.fallback", "reason": str(exc)})
            return None

    def precision_path(self, trt: Any | None, build_config: BuildConfig) -> str:
        from trt_provision.runtimes.tensorrt.network import choose_precision_path

        if trt is not None:
            # The same choice (and the same refusals) as the Python builder: a weakly typed
            # build on a TensorRT without that path (TRT 11) is an EngineBuildError.
            return choose_precision_path(
                trt, build_config, implicit_int8=self._ctx.implicit_int8(trt, build_config),
                prefer_strong=self._ctx.prefer_strong(build_config))
        path = path_from_config(build_config, self._ctx.prefer_strong(build_config))
        if path is None:
            raise NotExpressible(
                "without the tensorrt module the precision path is unknown; set strongly_typed")
        if (path == "weak" and build_config.strongly_typed is None
                and parse_trt_version(self._ctx.version())[0] >= 11):
            return "strong"  # TensorRT 11 has only the strongly typed path, fp32 included
        return path

    def _check_version(self, binary: Path) -> str:
        expected = self._ctx.version()
        if binary not in self._versions:  # one `trtexec --help` per binary and run
            self._versions[binary] = trtexec_version(binary)
        found = self._versions[binary]
        if found is None:
            raise UnusableTrtexec("cannot read the TensorRT version of trtexec",
                                  trtexec=str(binary))
        if tuple(expected.split(".")[:3]) != tuple(found.split(".")[:3]):
            raise UnusableTrtexec(
                "trtexec was built with another TensorRT than the one this run uses",
                trtexec=str(binary), trtexec_version=found, trt_version=expected)
        return found

    def _build(
        self, binary: Path, model_path: Path, build_config: BuildConfig, staged_path: Path,
        own: ModelNodes | None = None,
    ) -> BuildArtifact:
        from trt_provision.runtimes.tensorrt._context import check_dla_int8
        from trt_provision.runtimes.tensorrt.builder import (
            check_dla_profiles,
            check_hardware_compatibility,
            check_plugins,
            write_synced,
        )
        from trt_provision.runtimes.tensorrt.loader import memory_stamp
        from trt_provision.runtimes.tensorrt.onnx_graph import dynamic_inputs

        ctx = self._ctx
        started = time.monotonic()
        trt = ctx.optional_trt()
        path = self.precision_path(trt, build_config)
        check_dla_int8(ctx.options, trt, build_config)
        implicit = trt is not None and ctx.implicit_int8(trt, build_config)
        reduced = build_config.precision is not PrecisionMode.FP32
        pinned = _pinned_nodes(own, build_config) if path == "weak" and reduced else []
        if pinned:
            # Only nodes a keyword matches need pinning; without such a node the weak
            # build is the same with or without the keywords.
            raise NotExpressible("FP16-pinned layers need the Python builder (layer names): "
                                 + ", ".join(pinned[:5]))
        commas = [p.input_name for p in build_config.profiles if "," in p.input_name]
        if commas:
            # trtexec splits the shape list on ',' before it reads quotes (getShapesBuild,
            # samples/common/sampleOptions.cpp v10.3.0..v11.1): such a name cannot be said.
            raise NotExpressible(f"trtexec cannot take input names containing ',': {commas}")
        if (path == "strong" and build_config.dla_core is not None
                and parse_trt_version(ctx.version())[0] < 11):
            # trtexec 10.x sets BuilderFlag::kFP16 for every --useDLACore build without
            # --int8 (samples/common/sampleEngines.cpp, v10.3.0 and v10.16), a precision flag
            # a strongly typed network refuses; the Python builder sets none.
            raise NotExpressible("trtexec 10.x adds --fp16 to DLA builds, which a strongly "
                                 "typed network refuses")
        uncovered = [n for n in dynamic_inputs(model_path) if build_config.profile_for(n) is None]
        if uncovered:
            # trtexec would pin the missing dimensions to 1 and build anyway.
            raise EngineBuildError("dynamic inputs need an optimization profile",
                                   inputs=uncovered, model=str(model_path))
        if build_config.hardware_compatibility is not HardwareCompatibility.NONE:
            check_hardware_compatibility(build_config.hardware_compatibility, ctx.sm_number())
        check_dla_profiles(build_config)
        version = self._check_version(binary)
        if path == "weak" and reduced and parse_trt_version(version)[0] >= 11:
            # trtexec 11 has no --fp16 and no --calib (samples/common/sampleOptions.cpp,
            # v11.1): without the tensorrt module the config alone chose the weak path.
            raise EngineBuildError(
                f"trtexec {version} has no weakly typed precision flags; set strongly_typed "
                "and prepare the precision-carrying graph", trtexec=str(binary),
                precision=build_config.precision.value)
        if (build_config.hardware_compatibility is HardwareCompatibility.SAME_COMPUTE_CAPABILITY
                and parse_trt_version(version)[:2] < SAME_CC_SINCE):
            # trtexec before 10.9 knows only none and ampere+ and throws on anything else
            # (samples/common/sampleOptions.cpp, v10.3.0 .. v10.8.0).
            raise EngineBuildError(
                f"trtexec {version} has no --hardwareCompatibilityLevel=sameComputeCapability "
                "(TensorRT 10.9 or newer)", trtexec=str(binary))
        if ctx.options.plugin_namespace:
            # trtexec registers TensorRT's plugins under the empty namespace only
            # (initLibNvInferPlugins(logger, ""), samples/trtexec/trtexec.cpp v10.3.0..v11.1)
            # and has no option for another one.
            raise NotExpressible("trtexec registers plugins only under the empty namespace; "
                                 f"plugin_namespace={ctx.options.plugin_namespace!r} needs the "
                                 "Python builder")
        plugins: list[dict[str, Any]] = []
        if trt is not None:
            plugins = check_plugins(ctx, trt, build_config.plugins)
        elif build_config.plugins:
            raise NotExpressible("the plugin check needs the tensorrt module")

        calib_file: Path | None = None
        if path == "weak" and build_config.precision.needs_calibration and implicit:
            calib_file = self._calibration_cache_file(model_path, build_config, staged_path,
                                                      write_synced)
        cache_path: Path | None = None
        cache_copy: Path | None = None
        cache_before = b""
        cache_dir = build_config.timing_cache_path or ctx.options.timing_cache_dir
        if cache_dir is not None:
            cache_path = timing_cache_path(cache_dir, ctx.version(), ctx.device_sm(),
                                           ctx.device_name())
            # trtexec rewrites the file it is given in place: it gets its own copy, so a
            # failed or killed run never leaves a half-written shared cache and nobody
            # waits on the lock for a whole build.
            cache_copy = staged_path.with_name(staged_path.name + ".timing-cache")
            cache_before = private_copy(cache_path, cache_copy)
        command = TrtexecCommandFromConfig.build(
            binary, model_path, staged_path, build_config, path,
            timing_cache=cache_copy, calibration_cache=calib_file,
            explicit_int8=not implicit, plugin_libraries=ctx.options.plugin_libraries)
        timeout = ctx.options.trtexec_timeout_s
        try:
            facts = build_with_trtexec(command, staged_path, timeout=timeout)
            if cache_path is not None and cache_copy is not None:
                config = trt.Builder(ctx.logger(trt)).create_builder_config() if trt else None
                publish_copy(cache_path, cache_before, cache_copy, config)
        finally:
            if calib_file is not None:
                calib_file.unlink(missing_ok=True)
            if cache_copy is not None:
                cache_copy.unlink(missing_ok=True)
        calibrated = facts.pop("calibrated", [])
        if calib_file is not None and calibrated:
            # TensorRT calibrates when it rejects the cache, and trtexec's calibrator feeds
            # random data (RndInt8Calibrator, samples/common/sampleEngines.cpp): not our scales.
            staged_path.unlink(missing_ok=True)
            raise EngineBuildError(
                "trtexec calibrated instead of reading the calibration cache (TensorRT "
                "rejected it), i.e. on random data; the engine is discarded",
                calibration_log=calibrated, trtexec=str(binary))
        data = staged_path.read_bytes()
        stamp: dict[str, Any]
        if trt is not None:
            ctx.register_plugins(trt)
            stamp = memory_stamp(trt, ctx.logger(trt), data, integrated=ctx.integrated,
                                 dla_core=build_config.dla_core)
        else:
            stamp = {"memory_stamp": "unavailable: the tensorrt module is not installed"}
        seconds = time.monotonic() - started
        metadata: dict[str, Any] = {
            "trt_version": ctx.version(),
            "trtexec_binary": str(binary),
            "trtexec_version": version,
            "trt_path": path,
            "int8_quantization": (None if not build_config.precision.needs_calibration
                                  else "implicit" if calib_file is not None else "explicit"),
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

    def _calibration_cache_file(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path,
        write: Callable[[Path, bytes], None],
    ) -> Path:
        provider = self._ctx.options.calibration
        data = provider(model_path, build_config, self._ctx.version()) if provider else None
        cache = data.read_cache() if data is not None else None
        if not cache:
            raise NotExpressible("INT8 needs an existing calibration cache for trtexec")
        target = staged_path.with_name(staged_path.name + ".calib")
        write(target, cache)
        return target


def path_from_config(build_config: BuildConfig, prefer_strong: bool = False) -> str | None:
    """The precision path the build config alone decides; None when only TensorRT can."""
    if build_config.strongly_typed is True or prefer_strong:
        return "strong"
    if build_config.strongly_typed is False:
        return "weak"
    if build_config.precision is PrecisionMode.FP32:
        return "weak"  # no precision flag at all: the same engine on either path
    return None


def _pinned_nodes(own: ModelNodes | None, build_config: BuildConfig) -> list[str]:
    """The model's own nodes a pinned keyword matches (all of them unknown: the keywords)."""
    keywords = build_config.fp16_pinned_keywords
    if not keywords:
        return []
    if own is None or own.nodes is None:
        return list(keywords)
    return sorted(n for n in own.nodes if own.pinned_keyword(n, keywords) is not None)
