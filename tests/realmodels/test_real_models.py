"""Five real pretrained models from PyPI wheels, provisioned at fp32/fp16/int8/auto through
the CLI on the ONNX Runtime strategy, scored with task metrics on data calibration never saw.

The properties asserted are the ones a user relies on:

* FP32 is exact: the engine's outputs equal raw ONNX Runtime's, bit for bit;
* no configuration yields a wrong engine with exit 0 and no warning: either the task metric
  holds, or the run refuses the engine (exit 1, one line) or warns;
* a published reduced-precision engine records how it was judged, on held-out data;
* ``auto`` picks an engine that is right on the task and never one slower than FP32.

The wheels are fetched once (``.cache/realmodels``); without network access the tests skip.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from realmodels import tasks
from realmodels.tasks import TASKS, Provisioned, Task
from trt_provision.types import BuildConfig

pytestmark = pytest.mark.tier1

# The precision pipeline's default gate (int8/mixed, fp16 with data) is what turns a wrong
# reduced-precision engine into a refusal. Until BuildConfig has it, a wrong engine with
# exit 0 is the known defect this suite exists to catch: reported as xfail with its metric.
GATE_BY_DEFAULT = "allow_inaccurate" in {f.name for f in dataclasses.fields(BuildConfig)}


@dataclasses.dataclass
class _Env:
    task: Task
    work: Path
    cache: Path
    calibration: Path
    reference: tasks.Runner
    runs: dict[str, Provisioned]


@pytest.fixture(scope="session")
def real_env(tmp_path_factory: pytest.TempPathFactory) -> Callable[[Task], _Env]:
    made: dict[str, _Env] = {}

    def get(task: Task) -> _Env:
        if task.name not in made:
            try:
                model = task.model_path()
            except tasks.Unavailable as exc:
                pytest.skip(f"real model {task.name} unavailable (offline?): {exc}")
            root = tmp_path_factory.mktemp(f"real-{task.name}")
            made[task.name] = _Env(
                task, root / "work", root / "cache",
                tasks.write_calibration(task, root / f"{task.name}.npz"),
                tasks.session_runner(model), {},
            )
        return made[task.name]

    return get


def _run(env: _Env, precision: str) -> Provisioned:
    if precision not in env.runs:
        env.runs[precision] = tasks.provision(
            env.task, precision, env.work, env.cache,
            calibration=None if precision == "fp32" else env.calibration,
        )
    return env.runs[precision]


def _check_right_or_refused(env: _Env, run: Provisioned) -> float | None:
    """Either refused (exit 1, one line), warned, or right on the task. Returns the metric."""
    assert run.exit_code in (0, 1), run.stderr  # never exit 3
    if run.exit_code == 1:
        lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
        assert lines, "a refusal names why"
        return None
    assert run.runner is not None and run.metadata is not None
    metric = env.task.score(env.reference, run.runner)
    if run.warned:
        return metric
    accuracy = run.metadata.get("accuracy")
    assert isinstance(accuracy, dict), "a reduced-precision engine records its accuracy"
    # Measured on real held-out data (a "test" split where the pipeline records splits).
    assert "test" in accuracy or accuracy.get("data") not in ("synthetic", None), accuracy
    if metric < env.task.threshold and not GATE_BY_DEFAULT:
        pytest.xfail(
            f"{env.task.name} {run.precision}: {env.task.metric} = {metric:.3f} "
            f"< {env.task.threshold} with exit 0 and no warning (no default gate yet)"
        )
    assert metric >= env.task.threshold, (
        f"{env.task.name} {run.precision}: {env.task.metric} = {metric:.3f}, exit 0, no warning"
    )
    return metric


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_fp32_engine_equals_raw_onnxruntime(
    task: Task, real_env: Callable[[Task], _Env]
) -> None:
    env = real_env(task)
    run = _run(env, "fp32")
    assert run.exit_code == 0, run.stderr
    assert run.runner is not None
    for batch in task.make_batches(9001, 3):
        got, want = run.runner(batch), env.reference(batch)
        for g, w in zip(got, want, strict=True):
            assert g.dtype == w.dtype and g.shape == w.shape
            assert np.array_equal(g, w), float(np.max(np.abs(g - w)))
    assert task.score(env.reference, run.runner) == 1.0


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_fp16_with_data_is_right_or_refused(
    task: Task, real_env: Callable[[Task], _Env]
) -> None:
    env = real_env(task)
    _check_right_or_refused(env, _run(env, "fp16"))


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_int8_is_right_or_refused(task: Task, real_env: Callable[[Task], _Env]) -> None:
    env = real_env(task)
    run = _run(env, "int8")
    if run.exit_code == 0 and run.metadata is not None:
        # Judged on batches calibration did not use, and says so.
        accuracy = run.metadata.get("accuracy") or {}
        assert "test" in accuracy or accuracy.get("data") != "calibration", accuracy
    _check_right_or_refused(env, run)


@pytest.mark.parametrize("task", TASKS, ids=lambda t: t.name)
def test_auto_is_right_and_never_slower_than_fp32(
    task: Task, real_env: Callable[[Task], _Env]
) -> None:
    env = real_env(task)
    run = _run(env, "auto")
    assert run.exit_code == 0, run.stderr
    assert run.runner is not None and run.metadata is not None and run.result is not None
    decision = run.metadata["auto"]
    rows = {r["precision"]: r for r in decision["table"]}
    chosen = rows[decision["chosen"]]
    assert chosen["verdict"] == "chosen"
    assert chosen["precision"] == "fp32" or chosen["median_ms"] < rows["fp32"]["median_ms"]
    assert run.result["notes"] and run.result["notes"][0].startswith(f"auto → {chosen['precision']}")
    # Candidates are the ones already built in this cache (fp32, int8): reused, not rebuilt.
    published = {p for p, r in env.runs.items() if r.exit_code == 0}
    assert all(r.get("reused") for r in rows.values() if r["precision"] in published)
    metric = task.score(env.reference, run.runner)
    assert metric >= task.threshold, (task.name, decision["chosen"], metric)
