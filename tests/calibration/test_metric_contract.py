"""A user's accuracy metric: numpy scalars are a valid answer; exiting or raising is a clear
EngineBuildError naming the metric, never the end of the run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trt_provision.calibration.metric import load_metric, run_metric
from trt_provision.errors import EngineBuildError

pytestmark = pytest.mark.tier0

REF = [{"y": np.ones((2, 3), np.float32)}]


def test_numpy_scalars_are_accepted() -> None:
    def iou(ref: object, cand: object, inputs: object) -> tuple[object, object]:
        value = np.float32(0.75)
        return value, value > 0.5  # np.float32 and np.bool_, as numpy code returns them

    result = run_metric("iou", iou, REF, REF, [{}])
    assert result.score == pytest.approx(0.75) and result.passed is True
    assert type(result.passed) is bool


def test_a_metric_that_calls_sys_exit_is_an_error() -> None:
    def leaves(ref: object, cand: object, inputs: object) -> None:
        raise SystemExit(0)

    with pytest.raises(EngineBuildError, match="metric leaves failed: SystemExit"):
        run_metric("leaves", leaves, REF, REF, [{}])


def test_a_script_that_exits_on_import_is_an_error(tmp_path: Path) -> None:
    script = tmp_path / "exits.py"
    script.write_text("import sys\nsys.exit(0)\n")
    with pytest.raises(EngineBuildError, match="failed to import: SystemExit"):
        load_metric(f"{script}:fn")


@pytest.mark.parametrize("answer", [(np.float64("nan"), True), ("0.5", True), (0.5, 1)])
def test_garbage_answers_are_refused(answer: tuple[object, object]) -> None:
    with pytest.raises(EngineBuildError, match="expected a finite number and a bool"):
        run_metric("bad", lambda *_: answer, REF, REF, [{}])
