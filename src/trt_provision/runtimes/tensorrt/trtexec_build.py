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
  builder sets for them) with ``--calib=<cache>``,
  since trtexec reads an existing calibration cache but cannot feed calibration batches.
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
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.errors import EngineBuildError
from trt_provision.runtimes.tensorrt.subprocess_build import DEFAULT_TIMEOUT_S, run_group
from trt_provision.types import BuildConfig, HardwareCompatibility, PrecisionMode

__all__ = [
    "TrtexecCommandFromConfig",
    "build_with_trtexec",
    "find_trtexec",
    "trtexec_error_lines",
]

log = logging.getLogger(__name__)

_HW_LEVELS: dict[HardwareCompatibility, str] = {
    HardwareCompatibility.NONE: "none",
    HardwareCompatibility.AMPERE_PLUS: "ampere+",
    HardwareCompatibility.SAME_COMPUTE_CAPABILITY: "sameComputeCapability",
}
_ERROR_LINE = re.compile(r"\[E\]|\bERROR\b|Error\[\d+\]|&&&& FAILED")


def find_trtexec(configured: Path | None = None) -> Path | None:
    """The configured binary when it is executable, else ``trtexec`` on PATH, else None."""
    if configured is not None:
        path = Path(configured)
        return path if path.is_file() and os.access(path, os.X_OK) else None
    found = shutil.which("trtexec")
    return Path(found) if found else None


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
    ) -> TrtexecCommandFromConfig:
        cfg = build_config
        args = [str(binary), f"--onnx={model_path}", f"--saveEngine={staged_path}",
                "--skipInference"]
        flags: list[str] = []
        if precision_path == "strong":
            flags.append("--stronglyTyped")
        elif precision_path == "weak":
            if cfg.precision is not PrecisionMode.FP32:
                # INT8 too: the Python builder sets FP16 with INT8 (an FP16 fallback for
                # layers without INT8 kernels); one name, one engine semantics.
                flags.append("--fp16")
            if cfg.precision.needs_calibration:
                if calibration_cache is None:
                    raise EngineBuildError(
                        "trtexec cannot calibrate from batches; INT8 on the weakly typed path "
                        "needs an existing calibration cache", model=str(model_path))
                flags.append("--int8")
                flags.append(f"--calib={calibration_cache}")
        else:
            raise EngineBuildError(f"unknown precision path {precision_path!r}")
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
    }
