"""Run an engine build in a child process, with a timeout that kills the whole group.

A TensorRT build can hang in driver code or exhaust memory; running it as
``python -m trt_provision compile --config build.json MODEL OUT --json`` in its own session
lets the parent kill the child *and everything it started* (``os.killpg``) when the timeout
expires. The child prints one JSON object on stdout; its exit code says what went wrong.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from trt_provision.errors import EngineBuildError

__all__ = ["DEFAULT_TIMEOUT_S", "compile_command", "run_compile_subprocess", "run_group"]

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT_S = 600.0
_KILL_GRACE_S = 5.0


def compile_command(model: Path, out: Path, config_json_path: Path) -> list[str]:
    return [
        sys.executable, "-m", "trt_provision", "compile",
        "--config", str(config_json_path), str(model), str(out), "--json",
    ]


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGTERM the child's process group, then SIGKILL whatever is left."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout=_KILL_GRACE_S)
            if sig == signal.SIGTERM:
                # The leader is gone; make sure nothing it forked outlives it.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(proc.pid, signal.SIGKILL)
            return
        except subprocess.TimeoutExpired:
            continue


def run_group(
    argv: Sequence[str],
    timeout: float,
    *,
    env: dict[str, str] | None = None,
    what: str = "subprocess",
    context: dict[str, Any] | None = None,
) -> tuple[int, bytes, bytes]:
    """Run ``argv`` in its own session; on timeout kill its whole process group.

    Returns ``(exit code, stdout, stderr)``; a start failure or a timeout is an
    :class:`EngineBuildError` carrying ``context``.
    """
    ctx = dict(context or {})
    try:
        proc = subprocess.Popen(
            list(argv), stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True,
            env=env,
        )
    except OSError as exc:
        raise EngineBuildError(f"cannot start the {what}: {exc}", command=argv[0], **ctx) from exc
    try:
        stdout, stderr = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        _kill_group(proc)
        with contextlib.suppress(Exception):
            proc.communicate(timeout=_KILL_GRACE_S)
        raise EngineBuildError(
            f"{what} timed out; its process group was killed",
            timeout_s=timeout, pid=proc.pid, **ctx,
        ) from exc
    except BaseException:
        _kill_group(proc)
        raise
    return proc.returncode, stdout, stderr


def run_compile_subprocess(
    model: Path,
    out: Path,
    config_json_path: Path,
    timeout: float = DEFAULT_TIMEOUT_S,
    *,
    command: Sequence[str] | None = None,
    env: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Run the compile entry (or ``command``); return its JSON result or raise EngineBuildError."""
    argv = list(command) if command is not None else compile_command(model, out, config_json_path)
    started = time.monotonic()
    log.info("starting compile subprocess", extra={"event": "trt.subprocess.start",
                                                   "model": str(model), "timeout_s": timeout})
    proc_returncode, stdout, stderr = run_group(
        argv, timeout, env=env, what="compile subprocess", context={"model": str(model)})
    seconds = time.monotonic() - started
    result: dict[str, Any] | None = None
    text = stdout.decode(errors="replace").strip()
    # The entry prints one JSON document (possibly indented); tolerate log lines before it.
    for candidate in (text, text.splitlines()[-1] if text else ""):
        try:
            parsed = json.loads(candidate)
        except json.JSONDecodeError:
            continue
        if isinstance(parsed, dict):
            result = parsed
            break
    if proc_returncode != 0:
        tail = stderr.decode(errors="replace")[-2000:]
        message = (result or {}).get("error") or "compile subprocess failed"
        raise EngineBuildError(
            str(message), model=str(model), exit_code=proc_returncode, stderr_tail=tail,
        )
    if result is None:
        raise EngineBuildError("compile subprocess printed no JSON result", model=str(model),
                               stdout_tail=text[-500:])
    log.info("finished compile subprocess in %.1f s", seconds,
             extra={"event": "trt.subprocess.finish", "seconds": seconds})
    return result
