"""A long build a person can watch: TensorRT's build-phase events reach the progress line,
while the console keeps the verbosity the user chose."""

from __future__ import annotations

import io
import logging

import pytest

from trt_provision.cli.provision import watch_build_phases

pytestmark = pytest.mark.tier0


def _phase(logger: logging.Logger, event: str, **extra: object) -> None:
    logger.info("TensorRT build phase", extra={"event": event, **extra})


def test_build_phases_reach_the_progress_line_but_not_the_console() -> None:
    package = logging.getLogger("trt_provision")
    console = io.StringIO()
    handler = logging.StreamHandler(console)
    saved = (package.level, package.handlers[:], package.propagate)
    package.handlers[:] = [handler]
    package.setLevel(logging.WARNING)  # the CLI's default verbosity
    package.propagate = False
    shown: list[str] = []
    log = logging.getLogger("trt_provision.runtimes.tensorrt.builder")
    try:
        with watch_build_phases(shown.append):
            logging.getLogger("trt_provision.compiler").info(
                "building", extra={"event": "engine.build.start", "model": "det"})
            _phase(log, "trt.build.phase.start", model="det", phase="Building engine",
                   elapsed_s=12.4)
            _phase(log, "trt.build.phase.finish", model="det", phase="Building engine",
                   elapsed_s=61.0)
            log.info("unrelated", extra={"event": "engine.cache.hit"})
        assert package.level == logging.WARNING and handler.level == logging.NOTSET
        _phase(log, "trt.build.phase.start", model="det", phase="after", elapsed_s=1.0)
    finally:
        package.setLevel(saved[0])
        package.handlers[:] = saved[1]
        package.propagate = saved[2]
    assert shown == [
        "det: building",
        "det: building — Building engine … (12 s)",
        "det: building — Building engine done (61 s)",
    ]
    assert console.getvalue() == ""  # INFO stayed off the console under the default level
