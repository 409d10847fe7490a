"""Long builds a person can watch, and builds sized for the memory a Jetson has.

* **Phases.** TensorRT >= 10 reports build phases to an ``IProgressMonitor`` set on the
  builder config (``config.progress_monitor``; the binding's trampoline class in
  python/src/infer/pyCore.cpp of NVIDIA/TensorRT v10.3.0..v11.1, ``PyProgressMonitor``).
  Each phase start, step and finish becomes a log event (``trt.build.phase.start`` /
  ``.step`` / ``.finish``) carrying the phase, its parent, the step count and the seconds
  since the build started, which a progress display can follow. The monitor never raises:
  an exception in ``step_complete`` makes the trampoline return false, which *cancels* the
  build (NvInfer.h, ``IProgressMonitor::stepComplete``: "true to continue to the next step
  or false to stop the build").
* **Jetson memory.** The GPU of an integrated device allocates from the RAM every process
  shares: a workspace larger than what is free makes TensorRT skip every tactic that needs
  it, and a build that runs out altogether ends with "could not find any implementation"
  rather than an out-of-memory error (after warnings "Device memory is insufficient to use
  tactic": open-mmlab/mmdeploy#1059, a Jetson NX build). So on such a device the workspace
  is capped to a share of ``MemAvailable`` before the build, and a failed build whose
  TensorRT log says so is named out of memory, with the free memory in the error.
"""

from __future__ import annotations

import contextlib
import logging
import re
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

__all__ = [
    "WORKSPACE_FREE_SHARE",
    "attach_progress_monitor",
    "build_messages",
    "meminfo_available_bytes",
    "out_of_memory",
    "workspace_for_free_memory",
]

log = logging.getLogger(__name__)

# Share of the free memory a Jetson build may give TensorRT's workspace: weights, the
# network's activations and tactic timing need the rest.
WORKSPACE_FREE_SHARE = 0.5
# Below this a workspace cap would starve every tactic; the build is attempted as asked.
_MIN_WORKSPACE = 32 << 20


def attach_progress_monitor(trt: Any, config: Any, label: str) -> Any | None:
    """Set a logging ``IProgressMonitor`` on ``config``; None where the bindings have none.

    The caller keeps the returned object alive until the build returns (the config holds
    only a pointer to it).
    """
    if not hasattr(trt, "IProgressMonitor") or not hasattr(config, "progress_monitor"):
        return None
    started = time.monotonic()
    phase_started: dict[str, float] = {}

    def elapsed() -> float:
        return round(time.monotonic() - started, 3)

    class LoggingProgressMonitor(trt.IProgressMonitor):  # type: ignore[misc]
        def __init__(self) -> None:
            trt.IProgressMonitor.__init__(self)  # pybind11 needs the base initialised

        def phase_start(self, phase_name: str, parent_phase: str | None,
                        num_steps: int) -> None:
            with contextlib.suppress(Exception):  # a monitor that raises cancels the build
                phase_started[phase_name] = time.monotonic()
                log.info("TensorRT build: %s (%d steps)", phase_name, num_steps,
                         extra={"event": "trt.build.phase.start", "model": label,
                                "phase": phase_name, "parent": parent_phase or None,
                                "steps": int(num_steps), "elapsed_s": elapsed()})

        def step_complete(self, phase_name: str, step: int) -> bool:
            with contextlib.suppress(Exception):
                log.debug("TensorRT build: %s step %d", phase_name, step,
                          extra={"event": "trt.build.phase.step", "model": label,
                                 "phase": phase_name, "step": int(step),
                                 "elapsed_s": elapsed()})
            return True  # never cancel: a long build is watched, not stopped

        def phase_finish(self, phase_name: str) -> None:
            with contextlib.suppress(Exception):
                began = phase_started.pop(phase_name, None)
                seconds = None if began is None else round(time.monotonic() - began, 3)
                log.info("TensorRT build: %s done", phase_name,
                         extra={"event": "trt.build.phase.finish", "model": label,
                                "phase": phase_name, "phase_s": seconds,
                                "elapsed_s": elapsed()})

    monitor = LoggingProgressMonitor()
    config.progress_monitor = monitor
    return monitor


def meminfo_available_bytes(meminfo: Path = Path("/proc/meminfo")) -> int | None:
    """``MemAvailable`` of the host (what an integrated GPU can still allocate)."""
    try:
        text = meminfo.read_text(errors="replace")
    except OSError:
        return None
    match = re.search(r"^MemAvailable:\s+(\d+)\s*kB", text, re.MULTILINE)
    return int(match.group(1)) * 1024 if match else None


def workspace_for_free_memory(
    requested: int, free: Callable[[], int | None]
) -> tuple[int, int | None]:
    """(workspace to set, free bytes seen): the request, capped to a share of free memory."""
    available = free()
    if available is None:
        return requested, None
    cap = max(int(available * WORKSPACE_FREE_SHARE), _MIN_WORKSPACE)
    return min(requested, cap), available


_NO_IMPLEMENTATION = re.compile(r"could not find any implementation", re.IGNORECASE)
_INSUFFICIENT = re.compile(r"memory is insufficient|insufficient memory", re.IGNORECASE)


def build_messages(before: list[str], after: list[str]) -> list[str]:
    """What TensorRT logged during one build: ``after`` less the ``before`` it starts with
    (both from a bounded ring, so an overflow keeps all of ``after``)."""
    if len(after) >= len(before) and after[:len(before)] == before:
        return after[len(before):]
    return after


def out_of_memory(messages: list[str], *, integrated: bool) -> bool:
    """A failed build that ran out of memory: TensorRT skipped tactics for insufficient
    memory, or (on a device sharing RAM with the host) found no implementation at all."""
    if any(_INSUFFICIENT.search(m) for m in messages):
        return any(_NO_IMPLEMENTATION.search(m) for m in messages) or integrated
    return integrated and any(_NO_IMPLEMENTATION.search(m) for m in messages)
