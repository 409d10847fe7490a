"""``precision = "auto"``: build the candidates this host offers, judge, time, keep the fastest.

Candidates by runtime and host:

* TensorRT      - fp32, fp16, and with calibration data int8 and mixed on the GPU (a DLA
  engine's target names its core, which the auto identity cannot know before the choice:
  DLA takes an explicit precision, and ``dla_core`` with ``auto`` is refused);
* ONNX Runtime CPU  - fp32; int8 where the CPU has int8 dot-product instructions (VNNI,
  AMX, Arm dot-product / i8mm) and calibration data is given; fp16 only where the CPU EP has
  fp16 kernels (Arm with FP16 arithmetic) - elsewhere an FP16 graph is casts around FP32
  kernels;
* ONNX Runtime CUDA - fp32, fp16 (the CUDA EP runs Q/DQ graphs unfused, so no int8).

Each candidate is built through the compiler's normal path (its own identity, the governed
calibration, the precision pipeline's gate: a refused candidate raises AccuracyGateError),
then judged here on the verdict its sidecar records: only a candidate whose gate passed on
validation and on the untouched test split wins (never one judged on synthetic inputs only,
published under ``allow_inaccurate``, or without a gate), then timed at the opt profile:
warm-up, interleaved repetitions, median. On TensorRT the fp16 candidate is built strongly
typed when calibration data is given and the typed path is left open, because only then is
its graph the pipeline's FP16 graph, judged like the int8 ones; a weakly typed FP16 engine
is precision chosen by the builder per layer, which nothing here measures. The fastest
candidate that passes wins; a candidate not faster than FP32 never wins. The winner is
published under the auto identity - a copy of the engine whose sidecar carries the decision
table - so the next run reuses it through the ordinary verified cache hit, without building
or timing again. The auto identity covers the model, the host target, the build options (the
gate's thresholds among them), the calibration data version and the candidate set.
"""

from __future__ import annotations

import dataclasses
import logging
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from trt_provision._bounded import loads_bounded
from trt_provision.errors import AccuracyGateError, EngineBuildError, TrtProvisionError
from trt_provision.identity import compute_identity
from trt_provision.types import (
    BackboneSpec,
    BuildConfig,
    EngineCacheEntry,
    EngineIdentity,
    HostCapabilities,
    PrecisionMode,
    RuntimeTarget,
)

if TYPE_CHECKING:
    import numpy.typing as npt

    from trt_provision.seams import InferenceRuntime

__all__ = [
    "AutoCandidates",
    "CandidateBuilder",
    "auto_identity",
    "build_auto",
    "candidates_for",
    "summary_line",
]

log = logging.getLogger(__name__)

AUTO_VERSION = 2  # bump when the candidate rules or the choice change meaning
# The verdict the precision pipeline records when its gate passed on validation and test.
GATE_PASSED = "passed"
# Splits a verdict may rest on: the untouched test split or the user's own evaluation data.
_HELD_OUT = frozenset({"test", "evaluation"})
_MAX_SIDECAR_BYTES = 16 << 20
_MIN_REPS, _MAX_REPS = 5, 200
_TIME_BUDGET_S = 2.0  # timed runs per candidate set, after warm-up
# A candidate must beat FP32 by more than timing noise to win: a 1% "gain" measured on a
# loaded machine is not worth an engine that is less exact.
MIN_SPEEDUP = 1.05


@dataclasses.dataclass(frozen=True)
class AutoCandidates:
    precisions: tuple[PrecisionMode, ...]
    skipped: tuple[tuple[str, str], ...]  # (precision, why not a candidate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": [p.value for p in self.precisions],
            "skipped": {p: why for p, why in self.skipped},
        }


_INT8_DOT_FLAGS = {
    "avx512_vnni", "avx_vnni", "avx512vnni", "avxvnni", "amx_int8", "amx_tile",
    "asimddp", "i8mm", "svei8mm",
}
_FP16_ARITH_FLAGS = {"asimdhp", "fphp"}


def candidates_for(
    config: BuildConfig, target: RuntimeTarget, host: HostCapabilities
) -> AutoCandidates:
    has_data = config.calibration is not None and config.calibration.source is not None
    no_data = "no calibration data (calibration.data) to calibrate and judge with"
    flags = set(host.cpu_isa)
    chosen: list[PrecisionMode] = [PrecisionMode.FP32]
    skipped: list[tuple[str, str]] = []
    if target.runtime == "ortcpu":
        if flags & _FP16_ARITH_FLAGS:
            chosen.append(PrecisionMode.FP16)
        else:
            skipped.append(("fp16", "the CPU has no FP16 arithmetic: ONNX Runtime's CPU EP "
                                    "would run FP32 kernels between casts"))
        if not flags & _INT8_DOT_FLAGS:
            skipped.append(("int8", "the CPU has no int8 dot-product instructions "
                                    "(VNNI/AMX/dot-product)"))
        elif not has_data:
            skipped.append(("int8", no_data))
        else:
            chosen.append(PrecisionMode.INT8)
    elif target.runtime == "ortcuda":
        chosen.append(PrecisionMode.FP16)
        skipped.append(("int8", "ONNX Runtime's CUDA EP runs Q/DQ graphs unfused"))
    else:  # TensorRT
        chosen.append(PrecisionMode.FP16)
        if has_data:
            chosen += [PrecisionMode.INT8, PrecisionMode.MIXED]
        else:
            skipped += [("int8", no_data), ("mixed", no_data)]
        skipped.append(("dla", "DLA builds take an explicit precision (dla_core with fp16, "
                               "int8 or mixed)"))
    return AutoCandidates(tuple(chosen), tuple(skipped))


class CandidateBuilder(Protocol):
    """What ``auto`` needs from the compiler: its public API, nothing of its internals."""

    @property
    def host(self) -> HostCapabilities: ...

    @property
    def runtime(self) -> InferenceRuntime: ...

    def calibration_key(self, backbone: BackboneSpec, model_hash: str) -> str | None: ...

    def identity_for(
        self, backbone: BackboneSpec, *, unresolved_calibration: str | None = None
    ) -> tuple[EngineIdentity, RuntimeTarget, str]: ...

    def reuse_or_build(
        self, backbone: BackboneSpec, identity: EngineIdentity, target: RuntimeTarget,
        model_hash: str,
    ) -> tuple[EngineCacheEntry, bool]: ...

    def publish_copy(
        self, source: EngineCacheEntry, metadata: Mapping[str, Any], seconds: float, *,
        backbone: BackboneSpec, identity: EngineIdentity, target: RuntimeTarget,
        model_hash: str,
    ) -> EngineCacheEntry: ...


def _candidate(
    backbone: BackboneSpec, precision: PrecisionMode, target: RuntimeTarget | None = None
) -> BackboneSpec:
    # Never allow_inaccurate: a candidate that fails the gate is refused, not published.
    config = dataclasses.replace(backbone.build_config, precision=precision,
                                 allow_inaccurate=False)
    has_data = config.calibration is not None and config.calibration.source is not None
    if (target is not None and target.runtime == "trt" and precision is PrecisionMode.FP16
            and has_data and config.strongly_typed is None):
        # Strongly typed: TensorRT builds the pipeline's FP16 graph, which the gate judged.
        config = dataclasses.replace(config, strongly_typed=True)
    return dataclasses.replace(backbone, build_config=config)


def auto_identity(
    compiler: CandidateBuilder, backbone: BackboneSpec, model_hash: str, target: RuntimeTarget
) -> EngineIdentity:
    """The identity of the auto engine: everything its choice depends on."""
    config = backbone.build_config
    cands = candidates_for(config, target, compiler.host)
    calibration_key = None
    calibrated = [p for p in cands.precisions if p.needs_calibration]
    if calibrated:
        calibration_key = compiler.calibration_key(
            _candidate(backbone, calibrated[0]), model_hash
        )
    return compute_identity(
        model_name=backbone.name,
        model_hash=model_hash,
        config=config,
        target=target,
        calibration_key=calibration_key,
        runtime_options={
            "auto": {"version": AUTO_VERSION, **cands.to_dict(),
                     "judge": "gate verdict", "min_speedup": MIN_SPEEDUP},
        },
    )


# ------------------------------------------------------------------ judging


def read_sidecar(entry: EngineCacheEntry) -> dict[str, Any]:
    path = entry.engine_path.with_name(entry.engine_path.name + ".json")
    with open(path, "rb") as fh:
        raw = fh.read(_MAX_SIDECAR_BYTES + 1)
    if len(raw) > _MAX_SIDECAR_BYTES:
        raise EngineBuildError("engine sidecar is too large", path=str(path))
    try:
        data = loads_bounded(raw, max_bytes=_MAX_SIDECAR_BYTES, what="engine sidecar")
    except ValueError as exc:  # BoundedInputError is one
        raise EngineBuildError(f"engine sidecar is not usable: {exc}", path=str(path)) from exc
    if not isinstance(data, dict):
        raise EngineBuildError("engine sidecar is not a JSON object", path=str(path))
    return data


def _worst_cosine(accuracy: Mapping[str, Any] | None) -> float | None:
    if not isinstance(accuracy, Mapping):
        return None
    outputs = accuracy.get("outputs")
    if not isinstance(outputs, Mapping) or not outputs:
        return None
    values = []
    for out in outputs.values():
        cos = out.get("cosine") if isinstance(out, Mapping) else None
        values.append(float(cos) if isinstance(cos, int | float) else float("nan"))
    return min(values)


def judge(precision: PrecisionMode, meta: Mapping[str, Any]) -> tuple[bool, str]:
    """Pass/fail of a built candidate: the precision pipeline's own gate verdict, as its
    sidecar records it. Anything short of a gate that passed on held-out data fails."""
    if precision is PrecisionMode.FP32:
        return True, "reference"
    accuracy = meta.get("accuracy")
    if not isinstance(accuracy, Mapping):
        return False, "no accuracy recorded"
    config = meta.get("build_config")
    if isinstance(config, Mapping) and config.get("allow_inaccurate") is True:
        return False, "built with allow_inaccurate: the gate did not bind it"
    verdict = accuracy.get("verdict")
    if accuracy.get("data") == "synthetic" or verdict == "smoke only":
        # Synthetic stand-in inputs say the graph runs, not that it is right.
        return False, "judged on synthetic inputs only: not an accuracy figure"
    quantization = meta.get("quantization")
    if (precision.needs_calibration and isinstance(quantization, Mapping)
            and quantization.get("dequantize_nodes") == 0):
        return False, "nothing was quantized: the graph is FP32 under an int8 label"
    if verdict != GATE_PASSED:
        return False, (f"gate verdict {verdict!r}" if isinstance(verdict, str)
                       else "no gate verdict recorded")
    gate = accuracy.get("gate")
    thresholds = {k: v for k, v in gate.items() if k != "origin" and v is not None} \
        if isinstance(gate, Mapping) else {}
    if not thresholds:
        return False, "no gate thresholds recorded"
    test = accuracy.get("test")
    if not isinstance(test, Mapping) or test.get("data") not in _HELD_OUT:
        return False, "the verdict was not confirmed on a held-out test split"
    splits = accuracy.get("splits")
    if isinstance(splits, Mapping) and splits.get("judged") is not True:
        return False, "too little data to judge on"
    cosine = _worst_cosine(test)
    shown = ", ".join(f"{k} {v}" for k, v in sorted(thresholds.items()))
    return True, (f"gate passed on validation and {test.get('data')} ({shown})"
                  + (f"; worst {test.get('data')} cosine {cosine:.5f}" if cosine is not None
                     else ""))


# ------------------------------------------------------------------ timing


def timing_feed(model_path: Path, config: BuildConfig) -> dict[str, npt.NDArray[Any]]:
    """Inputs at the opt profile: calibration data's first batch where its shapes fit, else
    seeded data of the model's input types (values do not change the timing of the graphs
    built here, shapes do)."""
    import numpy as np

    from trt_provision.calibration.data import model_input_specs, open_calibration_source

    specs = model_input_specs(model_path)
    sample: dict[str, Any] = {}
    spec = config.calibration
    if spec is not None and spec.source is not None:
        try:
            for batch in open_calibration_source(spec.source, model_path, config):
                sample = dict(batch)
                break
        except (TrtProvisionError, OSError, ValueError):
            sample = {}
    rng = np.random.default_rng(0)
    feed: dict[str, Any] = {}
    for item in specs:
        dtype = np.dtype(item.dtype)
        profile = config.profile_for(item.name)
        shape = tuple(profile.opt_shape) if profile else tuple(
            d if isinstance(d, int) and d > 0 else 1 for d in item.shape
        )
        given = sample.get(item.name)
        if isinstance(given, np.ndarray) and given.dtype == dtype:
            # np.array, not ascontiguousarray: that one turns a 0-d scalar input into 1-d.
            if given.shape == shape:
                feed[item.name] = np.array(given, dtype=dtype, order="C")
                continue
            if given.ndim == len(shape) + 1 and given.shape[1:] == shape:
                feed[item.name] = np.array(given[0], dtype=dtype, order="C")
                continue
        if dtype.kind == "f":
            feed[item.name] = rng.standard_normal(shape).astype(dtype)
        else:
            feed[item.name] = np.zeros(shape, dtype)
    return feed


def time_candidates(
    runtime: Any, entries: Sequence[EngineCacheEntry], feed: Mapping[str, Any]
) -> list[float | None]:
    """Median seconds per candidate: warm-up, then interleaved rounds (drift, thermal and
    other load hit every candidate alike). None where a candidate does not run."""
    handles: list[Any] = []
    try:
        for entry in entries:
            try:
                handles.append(runtime.deserialize_engine(entry))
            except TrtProvisionError as exc:
                log.warning("auto: cannot load %s for timing: %s", entry.engine_path.name, exc)
                handles.append(None)
        first: list[float] = []
        for i, h in enumerate(handles):
            if h is None:
                continue
            try:
                for _ in range(3):
                    t0 = time.perf_counter()
                    runtime.infer(h, dict(feed))
                    t1 = time.perf_counter()
                first.append(t1 - t0)
            except TrtProvisionError as exc:
                log.warning("auto: %s does not run on the timing input: %s",
                            entries[i].engine_path.name, exc)
                runtime.release_engine(h)
                handles[i] = None
        per_round = 2 * sum(first) or 1e-3
        reps = max(_MIN_REPS, min(_MAX_REPS, int(_TIME_BUDGET_S / per_round)))
        samples: list[list[float]] = [[] for _ in handles]
        for _ in range(reps):
            for i, h in enumerate(handles):
                if h is None:
                    continue
                # One untimed call first: the first call after switching engines pays for
                # the previous engine's thread pool still spinning and for cold caches.
                runtime.infer(h, dict(feed))
                t0 = time.perf_counter()
                runtime.infer(h, dict(feed))
                samples[i].append(time.perf_counter() - t0)
        return [statistics.median(s) if s else None for s in samples]
    finally:
        for h in handles:
            if h is not None:
                runtime.release_engine(h)


# ------------------------------------------------------------------ the choice


def build_auto(
    compiler: CandidateBuilder, backbone: BackboneSpec, identity: EngineIdentity,
    target: RuntimeTarget, model_hash: str,
) -> tuple[EngineCacheEntry, float]:
    """Build, judge and time every candidate; publish the winner under ``identity``."""
    started = time.perf_counter()
    auto_target = target
    cands = candidates_for(backbone.build_config, auto_target, compiler.host)
    rows: list[dict[str, Any]] = []
    built: list[tuple[PrecisionMode, EngineCacheEntry, dict[str, Any]]] = []
    for precision in cands.precisions:
        cand = _candidate(backbone, precision, auto_target)
        cand_identity, cand_target, cand_hash = compiler.identity_for(cand)
        row: dict[str, Any] = {"precision": precision.value, "engine": cand_identity.filename}
        try:
            entry, row["reused"] = compiler.reuse_or_build(cand, cand_identity, cand_target,
                                                           cand_hash)
            meta = read_sidecar(entry)
        except AccuracyGateError as exc:
            rows.append({**row, "verdict": "refused", "why": exc.message,
                         "accuracy": dict(exc.context)})
            continue
        except TrtProvisionError as exc:
            if precision is PrecisionMode.FP32:
                raise
            rows.append({**row, "verdict": "failed", "why": str(exc)})
            continue
        ok, why = judge(precision, meta)
        accuracy = meta.get("accuracy")
        accuracy = accuracy if isinstance(accuracy, Mapping) else {}
        test = accuracy.get("test")
        rows.append({**row, "verdict": "pass" if ok else "refused", "why": why,
                     "worst_cosine": _worst_cosine(test if isinstance(test, Mapping)
                                                   else accuracy),
                     "gate_verdict": accuracy.get("verdict"),
                     "gate": accuracy.get("gate"),
                     "accuracy_data": accuracy.get("data")})
        if ok:
            built.append((precision, entry, meta))
    feed = timing_feed(backbone.model_path, backbone.build_config)
    medians = time_candidates(compiler.runtime, [e for _, e, _ in built], feed)
    fp32_s = medians[0]
    by_precision = {p.value: (e, m, s) for (p, e, m), s in zip(built, medians, strict=True)}
    winner = PrecisionMode.FP32
    best = fp32_s
    for (precision, _, _), seconds in zip(built, medians, strict=True):
        if (seconds is not None and best is not None and fp32_s is not None
                and seconds < best and seconds * MIN_SPEEDUP <= fp32_s):
            winner, best = precision, seconds
    for row in rows:
        hit = by_precision.get(row["precision"])
        if hit is None:
            continue
        seconds = hit[2]
        row["median_ms"] = None if seconds is None else round(seconds * 1e3, 4)
        row["vs_fp32"] = (
            round(fp32_s / seconds, 3) if seconds and fp32_s else None
        )
        if row["verdict"] == "pass":
            row["verdict"] = (
                "chosen" if row["precision"] == winner.value
                else "not timed" if seconds is None else "slower"
            )
    entry, meta, _ = by_precision[winner.value]
    decision = {
        "chosen": winner.value,
        "speedup_vs_fp32": round(fp32_s / best, 3) if fp32_s and best else None,
        "judge": "the precision pipeline's gate verdict (validation and test split)",
        "min_speedup": MIN_SPEEDUP,
        "timing": {"input_shapes": {k: list(v.shape) for k, v in feed.items()},
                   "statistic": _STATISTIC},
        "table": rows,
        **cands.to_dict(),
    }
    log.info(
        "%s", summary_line(decision),
        extra={"event": "engine.auto.choice", "model": backbone.name, "chosen": winner.value},
    )
    # The winner's own build facts (IO, accuracy, calibration...) describe this copy too;
    # what the compiler and the store write is written afresh for the auto identity.
    inherited = {k: v for k, v in meta.items() if k not in _OWN_KEYS}
    inherited["auto"] = decision
    seconds = time.perf_counter() - started
    published = compiler.publish_copy(
        entry, inherited, seconds, backbone=backbone, identity=identity, target=auto_target,
        model_hash=model_hash,
    )
    return published, seconds


_STATISTIC = (
    "median of interleaved rounds after 3 warm-up runs; each timed call follows an untimed "
    "one of the same engine"
)
_OWN_KEYS = frozenset({
    "model", "build_config", "host", "runtime_target", "tool_versions", "timings",
    "format", "engine", "sha256", "size_bytes", "identity",
})


def summary_line(decision: Mapping[str, Any]) -> str:
    """``auto → int8, 1.9× fp32`` (the summary table's and the log's words)."""
    chosen = decision.get("chosen", "?")
    speedup = decision.get("speedup_vs_fp32")
    if chosen == "fp32" or not isinstance(speedup, int | float):
        return f"auto → {chosen}"
    return f"auto → {chosen}, {speedup:.2f}× fp32"


def decision_of(engine: Path) -> dict[str, Any] | None:
    """The auto decision recorded in an engine's sidecar (None for a non-auto engine)."""
    try:
        with open(engine.with_name(engine.name + ".json"), "rb") as fh:
            raw = fh.read(_MAX_SIDECAR_BYTES + 1)
        data = loads_bounded(raw, max_bytes=_MAX_SIDECAR_BYTES, what="engine sidecar")
    except (OSError, ValueError):  # a sidecar is outside input; BoundedInputError included
        return None
    auto = data.get("auto") if isinstance(data, dict) else None
    return auto if isinstance(auto, dict) else None
