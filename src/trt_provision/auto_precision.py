"""``precision = "auto"``: time the candidates this host can build, judge only those fast
enough to win, keep the fastest that passes - within a time budget.

Candidates are every precision the runtime can build here; timing decides which are worth
judging, not an assumption about the hardware:

* TensorRT      - fp32, fp16, and with calibration data int8 and mixed on the GPU (a DLA
  engine's target names its core, which the auto identity cannot know before the choice:
  DLA takes an explicit precision, and ``dla_core`` with ``auto`` is refused);
* ONNX Runtime (CPU or CUDA) - fp32, and with calibration data fp16, int8, and mixed where
  layers are pinned (without pinned layers a mixed graph is the int8 graph).

An fp16 candidate needs calibration data like int8: without held-out data its verdict is a
smoke check on synthetic inputs, which never makes a winner, so it is not built at all.

The search, in order, every step through the compiler's public API (``CandidateBuilder``):

1. fp32, the reference: reused or built like any fp32 engine.
2. A trial engine per candidate, built from the precision pipeline's unjudged preview graph
   (``PrecisionPipeline.preview``: the governed ranges, one graph, no search, no verdict),
   published under an identity of its own (never one a judged engine has; its sidecar says
   "not judged"), so a later search reuses it.
3. fp32 and the trials timed together at the opt profile: warm-up, interleaved rounds,
   median.
4. Fastest first, a trial that beats FP32 by ``MIN_SPEEDUP`` and is not slower than a
   candidate already accepted is judged: the candidate built through the compiler's normal
   path (its own identity, the governed calibration, the pipeline's gate; a refusal raises
   AccuracyGateError, "not enough evidence" included), then checked on the verdict its
   sidecar records (a gate that passed on validation and on held-out data; never synthetic
   inputs, ``allow_inaccurate`` or no gate). A judged engine is timed against FP32 again,
   since the judged graph may keep layers in higher precision; the first that still beats
   FP32 by the margin wins, and every slower candidate is "slower, not judged".
5. ``auto_budget_s`` (per model, or ``[settings]``; default ``AUTO_BUDGET_S``) bounds the
   search: once spent, no further trial or judgement starts (a step under way finishes);
   what it cut is named in the decision table. FP32 is never cut.

The winner is published under the auto identity - a copy of the engine whose sidecar
carries the decision table and one line per candidate saying why it won or lost - so the
next run reuses it through the ordinary verified cache hit, without building or timing
again. The auto identity covers the model, the host target, the build options (the gate's
thresholds among them), the calibration data version, the candidate set and the budget.
"""

from __future__ import annotations

import dataclasses
import hashlib
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
    "AUTO_BUDGET_S",
    "AutoCandidates",
    "CandidateBuilder",
    "auto_identity",
    "build_auto",
    "candidates_for",
    "decision_of",
    "evidence_of",
    "explanation",
    "judge",
    "judge_candidate",
    "summary_line",
    "time_candidates",
    "trial_identity",
]

log = logging.getLogger(__name__)

AUTO_VERSION = 3  # bump when the candidate rules or the choice change meaning
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
# The default search budget per model. A search here costs one fp32 build, a trial per
# candidate (an FP16 graph; an int8 calibration pass shared with the judged build; a Q/DQ
# graph), one or two judged builds and two timing rounds: about 2-3 int8 builds, which is
# 5-60 s for the models measured on the CPU strategy (_docs/benchmarks.md) and minutes for a
# large TensorRT model. Ten minutes lets such a search finish and stops a runaway one (a
# slow sensitivity search, a huge model) after the step under way.
AUTO_BUDGET_S = 600.0
# The budget's clock (a seam: tests move it by hand instead of waiting).
clock = time.perf_counter
# What a trial engine's identity adds to its candidate's: no judged engine ever has it.
_TRIAL_SALT = "auto-trial-v1"
_MAX_LINES, _MAX_LINE_CHARS = 16, 400  # read back from sidecars: bounded


@dataclasses.dataclass(frozen=True)
class AutoCandidates:
    precisions: tuple[PrecisionMode, ...]
    skipped: tuple[tuple[str, str], ...]  # (precision, why not a candidate)

    def to_dict(self) -> dict[str, Any]:
        return {
            "candidates": [p.value for p in self.precisions],
            "skipped": {p: why for p, why in self.skipped},
        }


def candidates_for(
    config: BuildConfig, target: RuntimeTarget, host: HostCapabilities
) -> AutoCandidates:
    """Every precision the runtime can build and judge here. ``host`` is not consulted:
    which of them is fast on this CPU or GPU is measured, not assumed from its ISA."""
    del host
    has_data = config.calibration is not None and config.calibration.source is not None
    no_data = "no calibration data (calibration.data) to judge it with"
    chosen: list[PrecisionMode] = [PrecisionMode.FP32]
    skipped: list[tuple[str, str]] = []
    if not has_data:
        skipped += [("fp16", no_data + ": an FP16 engine is judged on held-out data, "
                             "never on synthetic inputs"),
                    ("int8", no_data), ("mixed", no_data)]
    else:
        # On ONNX Runtime a mixed graph differs from the int8 one only in its pinned layers:
        # without any, the search drops it after the int8 trial (``_same_as_int8``).
        chosen += [PrecisionMode.FP16, PrecisionMode.INT8, PrecisionMode.MIXED]
    if target.runtime == "trt":
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

    def reuse_or_build_trial(
        self, backbone: BackboneSpec, identity: EngineIdentity, target: RuntimeTarget,
        model_hash: str,
    ) -> tuple[EngineCacheEntry, bool]: ...


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


def budget_of(config: BuildConfig) -> float:
    return AUTO_BUDGET_S if config.auto_budget_s is None else float(config.auto_budget_s)


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
                     "judge": "timed first; gate verdict", "min_speedup": MIN_SPEEDUP,
                     "budget_s": budget_of(config)},
        },
    )


def trial_identity(identity: EngineIdentity) -> EngineIdentity:
    """The trial engine's identity: the candidate's, its options digest salted, so a trial
    is never taken for the judged engine (nor the reverse)."""
    digest = identity.options_digest
    salted = hashlib.sha256(f"{_TRIAL_SALT}:{digest}".encode()).hexdigest()[: len(digest)]
    return dataclasses.replace(identity, options_digest=salted)


# ------------------------------------------------------------------ judging


def read_sidecar(entry: EngineCacheEntry) -> dict[str, Any]:
    from trt_provision.integrity import read_cache_file

    path = entry.engine_path.with_name(entry.engine_path.name + ".json")
    try:  # the cache's checked read: no symlink out, no FIFO, owner and size checked
        raw = read_cache_file(path, _MAX_SIDECAR_BYTES, what="engine sidecar")
    except TrtProvisionError as exc:
        raise EngineBuildError(f"engine sidecar is not usable: {exc}", path=str(path)) from exc
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


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value)


_EVIDENCE_KEYS = ("samples", "agreeing", "bound", "threshold", "required_samples")


def evidence_of(record: Mapping[str, Any] | None) -> dict[str, Any]:
    """On how many samples a verdict rests and how sure it is, from an accuracy record (a
    sidecar's ``accuracy``, or an AccuracyGateError's context): the held-out report's
    ``evidence`` (per-sample gate with a Wilson bound), its flat ``samples`` / ``bound`` /
    ``threshold``, or the record's own keys. Records from before per-sample verdicts hold
    none of these: only the split and the worst cosine are given then."""
    if not isinstance(record, Mapping):
        return {}
    test = record.get("test")
    report = test if isinstance(test, Mapping) else record
    nested = report.get("evidence")
    out: dict[str, Any] = {}
    for key in _EVIDENCE_KEYS:
        for where in (nested, report, record):
            value = _number(where.get(key)) if isinstance(where, Mapping) else None
            if value is not None:
                out[key] = int(value) if key in ("samples", "agreeing",
                                                 "required_samples") else value
                break
    if not out.get("samples"):  # a report without per-sample kinds says 0: no figure
        out.pop("samples", None)
    data = report.get("data", record.get("data"))
    if isinstance(data, str):
        out["data"] = data[:40]
    cosine = _worst_cosine(report)
    if cosine is None:
        cosine = _number(record.get("cosine"))
    if cosine is not None:
        out["worst_cosine"] = cosine
    return out


def _on_evidence(ev: Mapping[str, Any], passed: bool) -> str:
    """``400 test samples (bound 0.991 ≥ 0.99)``, or for older records ``test (worst
    cosine 0.99990)``."""
    data = ev.get("data", "test")
    samples, bound, threshold = ev.get("samples"), ev.get("bound"), ev.get("threshold")
    if samples and bound is not None and threshold is not None:
        sign = "≥" if passed else "<"
        return f"{samples} {data} samples (bound {bound:.3f} {sign} {threshold:g})"
    if samples:
        return f"{samples} {data} samples"
    cosine = ev.get("worst_cosine")
    return f"{data}" + (f" (worst cosine {cosine:.5f})" if cosine is not None else "")


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
    thresholds = {k: v for k, v in gate.items()
                  if k in _GATE_THRESHOLDS and v is not None} if isinstance(gate, Mapping) \
        else {}
    if not thresholds:
        return False, "no gate thresholds recorded"
    test = accuracy.get("test")
    if not isinstance(test, Mapping) or test.get("data") not in _HELD_OUT:
        return False, "the verdict was not confirmed on a held-out test split"
    splits = accuracy.get("splits")
    if isinstance(splits, Mapping) and splits.get("judged") is not True:
        return False, "too little data to judge on"
    ev = evidence_of(accuracy)
    if ev.get("samples") and ev.get("required_samples") and \
            ev["samples"] < ev["required_samples"]:
        return False, (f"not enough evidence: {ev['samples']} {ev.get('data', 'test')} "
                       f"samples, need {ev['required_samples']}")
    shown = ", ".join(f"{k} {v}" for k, v in sorted(thresholds.items()))
    return True, f"gate passed on validation and {_on_evidence(ev, True)}; {shown}"


# Gate keys that are thresholds (the rest - origin, confidence, kinds - describe them).
_GATE_THRESHOLDS = frozenset({"min_cosine", "max_rel_error", "min_top1_agreement",
                              "agreement_bar", "accuracy_metric"})


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


@dataclasses.dataclass
class _Row:
    """One candidate's line of the decision table, filled in as the search goes (working
    state of one search, not a DTO: only its ``to_dict`` leaves this module)."""

    precision: PrecisionMode
    engine: str = ""
    verdict: str = "pending"
    line: str = ""
    extra: dict[str, Any] = dataclasses.field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        return {"precision": self.precision.value, "engine": self.engine,
                "verdict": self.verdict, "why": self.line, **self.extra}


def judge_candidate(
    compiler: CandidateBuilder, backbone: BackboneSpec
) -> tuple[EngineCacheEntry, dict[str, Any], bool]:
    """Build (or reuse) the candidate through the compiler's normal path - the pipeline's
    full graph and verdict - and read back what its sidecar records. AccuracyGateError is
    the gate's refusal. The one place a candidate is judged (tests count its calls)."""
    identity, target, model_hash = compiler.identity_for(backbone)
    entry, reused = compiler.reuse_or_build(backbone, identity, target, model_hash)
    return entry, read_sidecar(entry), reused


def _refusal(precision: PrecisionMode, exc: AccuracyGateError) -> tuple[str, dict[str, Any]]:
    ctx = dict(exc.context)
    ev = evidence_of(ctx)
    message = exc.message
    bound, threshold = ev.get("bound"), ev.get("threshold")
    if message.startswith("not enough evidence"):
        why = message.split(";")[0]
    elif ev.get("samples") and bound is not None and threshold is not None \
            and bound < threshold:
        why = f"{ev['samples']} samples, bound {bound:.2f} < {threshold:g}"
    else:  # another bar failed (e.g. cosine): the gate's own words
        why = message
    return f"{precision.value} refused: {why}"[:_MAX_LINE_CHARS], ev


def _ratio(fp32_s: float | None, seconds: float | None) -> float | None:
    return round(fp32_s / seconds, 3) if fp32_s and seconds else None


def build_auto(
    compiler: CandidateBuilder, backbone: BackboneSpec, identity: EngineIdentity,
    target: RuntimeTarget, model_hash: str,
) -> tuple[EngineCacheEntry, float]:
    """Time every candidate's trial, judge the fast ones, publish the winner under
    ``identity``."""
    started = clock()
    config = backbone.build_config
    budget = budget_of(config)
    cands = candidates_for(config, target, compiler.host)
    rows = {p: _Row(p) for p in cands.precisions}
    cut: list[str] = []

    def spent() -> float:
        return clock() - started

    def over_budget(row: _Row, step: str) -> bool:
        if spent() < budget:
            return False
        row.verdict = "cut"
        row.line = f"{row.precision.value}: cut by auto_budget_s={budget:g} (before its {step})"
        cut.append(row.precision.value)
        return True

    # 1. The reference. Never cut: without it nothing can be chosen.
    fp32_entry, fp32_meta, fp32_reused = judge_candidate(
        compiler, _candidate(backbone, PrecisionMode.FP32, target))
    rows[PrecisionMode.FP32].engine = fp32_entry.engine_path.name
    rows[PrecisionMode.FP32].extra["reused"] = fp32_reused

    # 2. A trial engine per candidate, from the unjudged preview graph.
    trials: dict[PrecisionMode, EngineCacheEntry] = {}
    for precision in cands.precisions[1:]:
        row = rows[precision]
        if over_budget(row, "trial build"):
            continue
        if precision is PrecisionMode.MIXED and _same_as_int8(trials, target):
            row.verdict = "skipped"
            row.line = ("mixed: the same graph as int8 (no layer matches "
                        "fp16_pinned_keywords), not built")
            continue
        cand = _candidate(backbone, precision, target)
        cand_identity, cand_target, cand_hash = compiler.identity_for(cand)
        try:
            entry, reused = compiler.reuse_or_build_trial(
                cand, trial_identity(cand_identity), cand_target, cand_hash)
        except AccuracyGateError as exc:  # too little data for any verdict: not timed
            row.verdict = "refused"
            row.line, ev = _refusal(precision, exc)
            row.extra.update(evidence=ev, accuracy=dict(exc.context))
            continue
        except TrtProvisionError as exc:  # e.g. nothing to quantize / convert
            row.verdict = "failed"
            row.line = f"{precision.value} failed: {exc}"[:_MAX_LINE_CHARS]
            continue
        row.engine = entry.engine_path.name
        row.extra.update(trial_engine=entry.engine_path.name, trial_reused=reused)
        trials[precision] = entry

    # 3. Time the reference and the trials together.
    feed = timing_feed(backbone.model_path, config)
    timed = [PrecisionMode.FP32, *trials]
    medians = dict(zip(timed, time_candidates(
        compiler.runtime, [fp32_entry, *trials.values()], feed), strict=True))
    fp32_s = medians[PrecisionMode.FP32]
    for precision in trials:
        seconds = medians[precision]
        rows[precision].extra.update(
            trial_median_ms=None if seconds is None else round(seconds * 1e3, 4),
            median_ms=None if seconds is None else round(seconds * 1e3, 4),
            vs_fp32=_ratio(fp32_s, seconds))
    rows[PrecisionMode.FP32].extra.update(
        median_ms=None if fp32_s is None else round(fp32_s * 1e3, 4), vs_fp32=1.0)

    # 4. Fastest first: judge only what can still win.
    # (precision, engine, sidecar, speed-up as judged, speed-up of its trial)
    winner: tuple[PrecisionMode, EngineCacheEntry, dict[str, Any], float, float] | None = None
    order = sorted(trials, key=lambda p: (medians[p] is None, medians[p] or 0.0))
    for precision in order:
        row = rows[precision]
        seconds = medians[precision]
        speedup = _ratio(fp32_s, seconds)
        if seconds is None or fp32_s is None:
            row.verdict = "not timed"
            row.line = f"{precision.value}: does not run at the opt profile, not judged"
            continue
        if seconds * MIN_SPEEDUP > fp32_s:
            row.verdict = "slower"
            row.line = (f"{precision.value}: slower than fp32 by the margin "
                        f"({speedup:.2f}× fp32 < {MIN_SPEEDUP}×), not judged"
                        if seconds < fp32_s else
                        f"{precision.value}: slower than fp32 ({speedup:.2f}× fp32), "
                        "not judged")
            continue
        if winner is not None:
            row.verdict = "slower"
            row.line = (f"{precision.value}: slower than {winner[0].value} "
                        f"({speedup:.2f}× vs {winner[4]:.2f}×), not judged")
            continue
        if over_budget(row, "judgement"):
            continue
        cand = _candidate(backbone, precision, target)
        try:
            entry, meta, reused = judge_candidate(compiler, cand)
        except AccuracyGateError as exc:
            row.verdict = "refused"
            row.line, ev = _refusal(precision, exc)
            row.extra.update(evidence=ev, accuracy=dict(exc.context),
                             worst_cosine=ev.get("worst_cosine"))
            continue
        except TrtProvisionError as exc:
            row.verdict = "failed"
            row.line = f"{precision.value} failed: {exc}"[:_MAX_LINE_CHARS]
            continue
        ok, why = judge(precision, meta)
        accuracy = meta.get("accuracy")
        accuracy = accuracy if isinstance(accuracy, Mapping) else {}
        ev = evidence_of(accuracy)
        row.engine = entry.engine_path.name
        row.extra.update(reused=reused, evidence=ev, worst_cosine=ev.get("worst_cosine"),
                         gate_verdict=accuracy.get("verdict"), gate=accuracy.get("gate"),
                         accuracy_data=ev.get("data"))
        if not ok:
            row.verdict = "refused"
            row.line = f"{precision.value} refused: {why}"[:_MAX_LINE_CHARS]
            continue
        # The judged graph may differ from the trial's (algorithm, layers kept in higher
        # precision): the engine that would be published is timed against FP32 again.
        again = time_candidates(compiler.runtime, [fp32_entry, entry], feed)
        ref_s, final_s = again[0], again[1]
        final = _ratio(ref_s, final_s)
        row.extra.update(median_ms=None if final_s is None else round(final_s * 1e3, 4),
                         vs_fp32=final)
        if final_s is None or ref_s is None or final_s * MIN_SPEEDUP > ref_s:
            row.verdict = "slower"
            row.line = (f"{precision.value}: gate passed, but the judged engine runs "
                        + (f"{final:.2f}× fp32" if final else "not at the opt profile")
                        + f" (under {MIN_SPEEDUP}×), not picked")
            continue
        assert final is not None and speedup is not None  # both timings ran
        row.verdict = "chosen"
        row.line = (f"{precision.value}: picked, {final:.2f}× fp32, gate passed on "
                    f"{_on_evidence(ev, True)}")
        winner = (precision, entry, meta, final, speedup)

    # 5. The choice, and one line per candidate saying why.
    reference = rows[PrecisionMode.FP32]
    if winner is None:
        reference.verdict = "chosen"
        reference.line = "fp32: picked, no faster candidate passed the gate"
        chosen, entry, meta, speedup_f = (PrecisionMode.FP32, fp32_entry, fp32_meta, 1.0)
    else:
        reference.verdict = "reference"
        reference.line = "fp32: the reference, 1.00×"
        chosen, entry, meta, speedup_f, _ = winner
    for row in rows.values():
        if row.verdict == "pending":  # defensive: every path above names its verdict
            row.verdict, row.line = "not judged", f"{row.precision.value}: not judged"
    table = [rows[p].to_dict() for p in cands.precisions]
    lines = [rows[p].line for p in cands.precisions]
    lines += [f"{p}: not a candidate: {why}" for p, why in cands.skipped
              if p not in {r.precision.value for r in rows.values()}]
    decision = {
        "chosen": chosen.value,
        "speedup_vs_fp32": round(speedup_f, 3) if winner is not None else None,
        "judge": ("timed on trial engines first; only a candidate fast enough to win is "
                  "judged, by the precision pipeline's gate verdict (validation and test)"),
        "min_speedup": MIN_SPEEDUP,
        "budget": {"auto_budget_s": budget, "spent_s": round(spent(), 3), "cut": cut},
        "timing": {"input_shapes": {k: list(v.shape) for k, v in feed.items()},
                   "statistic": _STATISTIC},
        "table": table,
        "lines": lines,
        **cands.to_dict(),
    }
    log.info(
        "%s", summary_line(decision),
        extra={"event": "engine.auto.choice", "model": backbone.name, "chosen": chosen.value},
    )
    for line in lines:
        log.info("%s: %s", backbone.name, line,
                 extra={"event": "engine.auto.candidate", "model": backbone.name})
    # The winner's own build facts (IO, accuracy, calibration...) describe this copy too;
    # what the compiler and the store write is written afresh for the auto identity.
    inherited = {k: v for k, v in meta.items() if k not in _OWN_KEYS}
    inherited["auto"] = decision
    seconds = spent()
    published = compiler.publish_copy(
        entry, inherited, seconds, backbone=backbone, identity=identity, target=target,
        model_hash=model_hash,
    )
    return published, seconds


def _same_as_int8(trials: Mapping[PrecisionMode, EngineCacheEntry],
                  target: RuntimeTarget) -> bool:
    """On ONNX Runtime, whether the int8 trial pinned no layer: the mixed graph would then
    be the same graph (it differs only in the pinned layers' precision)."""
    int8 = trials.get(PrecisionMode.INT8)
    if target.runtime == "trt" or int8 is None:
        return False
    try:
        pinned = read_sidecar(int8).get("pinned_layers")
    except TrtProvisionError:
        return False
    return isinstance(pinned, list) and not pinned


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


def explanation(decision: Mapping[str, Any]) -> tuple[str, ...]:
    """One line per candidate (picked, refused, slower, cut...), as the decision recorded
    them; bounded, since a sidecar is outside input."""
    lines = decision.get("lines")
    if not isinstance(lines, list):
        return ()
    return tuple(line[:_MAX_LINE_CHARS] for line in lines[:_MAX_LINES]
                 if isinstance(line, str))


def decision_of(engine: Path) -> dict[str, Any] | None:
    """The auto decision recorded in an engine's sidecar (None for a non-auto engine)."""
    from trt_provision.integrity import read_cache_file

    try:
        raw = read_cache_file(engine.with_name(engine.name + ".json"), _MAX_SIDECAR_BYTES,
                              what="engine sidecar")
        data = loads_bounded(raw, max_bytes=_MAX_SIDECAR_BYTES, what="engine sidecar")
    except (TrtProvisionError, ValueError):  # outside input; BoundedInputError included
        return None
    auto = data.get("auto") if isinstance(data, dict) else None
    return auto if isinstance(auto, dict) else None
