"""The precision pipeline is one-way: following one build from the compiler, each stage
module is entered once, in order, and the BuildConfig goes no further than the spec stage."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from trt_provision.compose import wire
from trt_provision.config import Settings
from trt_provision.types import (
    BackboneSpec,
    BuildConfig,
    CalibrationSpec,
    EngineCompileRequest,
    HostCapabilities,
    OptimizationProfile,
    PrecisionMode,
)

from ._trace import Trace, follow
from .models import make_mlp_classifier

pytestmark = pytest.mark.tier1

STAGES = "trt_provision.calibration.stages."
ORDER = ["spec", "splits", "ranges", "graph", "verdict"]
# Where the BuildConfig may go: the driver, the spec stage and what the spec stage reads.
CONFIG_READERS = {
    ("trt_provision.calibration.precision", "prepare"),  # the PrecisionPipeline seam
    ("trt_provision.calibration.precision", "prepare_model_for_precision"),
    (STAGES + "spec", "resolve_spec"),
    ("trt_provision.calibration.planner", "calibration_spec_of"),
    ("trt_provision.calibration.planner", "key_basis_of"),
    ("trt_provision.calibration.accuracy", "accuracy_gate"),
    (STAGES + "verification", "verify"),  # the EngineVerifier seam (the built engine)
}


def test_returns_count_steps_back_into_a_module_already_left() -> None:
    assert Trace.returns(["a", "a", "b", "c"]) == 0
    assert Trace.returns(["a", "b", "a", "c", "b"]) == 2


def _build(tmp_path: Path, precision: PrecisionMode, algorithm: str) -> Trace:
    model = make_mlp_classifier(tmp_path / "mlp.onnx")
    data = tmp_path / "data.npz"
    np.savez(data, x=np.random.default_rng(0).standard_normal((3200, 16)).astype(np.float32))
    config = BuildConfig(
        precision=precision,
        calibration=CalibrationSpec(source=str(data), algorithm=algorithm),
        profiles=(OptimizationProfile("x", (1, 16), (8, 16), (8, 16)),),
        min_cosine=0.9, min_top1_agreement=0.9,
    )
    wired = wire(Settings(cache_dir=tmp_path / "cache", runtime="onnxruntime"),
                 host=HostCapabilities(), use_remote=False)
    request = EngineCompileRequest((BackboneSpec("mlp", model, config),), fail_fast=True)
    # Phase 1 (identity) runs on worker threads; the trace follows the build, phase 2.
    with follow(config, ["trt_provision.calibration"]) as trace:
        summary = wired.compiler.compile_engines_for_corpus(request)
    assert summary.built == 1
    return trace


@pytest.mark.parametrize(("precision", "algorithm"), [
    (PrecisionMode.INT8, "minmax"), (PrecisionMode.INT8, "auto"), (PrecisionMode.FP16, "minmax"),
])
def test_each_stage_is_entered_once_in_order(
    tmp_path: Path, precision: PrecisionMode, algorithm: str
) -> None:
    trace = _build(tmp_path, precision, algorithm)
    entered = [m.removeprefix(STAGES) for m in trace.visits if m.startswith(STAGES)]
    assert [m for m in entered if m in ORDER] == ORDER, entered
    assert Trace.returns(entered) == 0, entered
    # The BuildConfig reaches the spec stage and what it reads, once each, and no further.
    assert trace.stops, "the build was not followed"
    assert set(trace.stops) <= CONFIG_READERS, trace.stops
    assert len(trace.stops) == len(set(trace.stops)), trace.stops
    assert Trace.returns(trace.stop_modules) == 0, trace.stops
