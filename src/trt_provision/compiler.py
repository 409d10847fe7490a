"""EngineCompiler: stateless orchestration of identity → reuse → fetch → build → publish.

A build: the precision pipeline prepares the graph (spec → splits → ranges → graph →
verdict) → the strategy builds the engine from it → the engine is verified on its own
runtime, loaded the way ``run`` loads it (engine gate → memory budget → deserialize → infer
→ release) from a staging entry → publish, with the engine's verdict in its sidecar. A
refusal is remembered under the identity it was judged for (``<engine>.refused.json``): the
next run with the same inputs answers at once, unless ``--force-rebuild``.

The compiler knows only the Protocols in ``seams.py``; ``compose.py`` wires the concrete
strategies. It never deletes anything: stale engines are left for ``cache gc``.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import logging
import os
import platform
import shutil
import tempfile
import time
from collections.abc import Callable, Mapping
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision._version import __version__
from trt_provision.auto_precision import (
    auto_identity,
    build_auto,
    decision_of,
    explanation,
    summary_line,
)
from trt_provision.config_json import build_config_to_json
from trt_provision.errors import (
    AccuracyGateError,
    EngineBuildError,
    EngineGateError,
    TrtProvisionError,
)
from trt_provision.identity import compute_identity, judged_on_data, model_sha256
from trt_provision.integrity import sha256_file
from trt_provision.seams import (
    CalibrationPlanner,
    EngineGate,
    EngineStore,
    EngineVerifier,
    InferenceRuntime,
    PrecisionPipeline,
    RemoteEngineStore,
    TimingCacheOwner,
)
from trt_provision.thermal import check_temperature_limit
from trt_provision.types import (
    BackboneSpec,
    CompileOutcome,
    EngineCacheEntry,
    EngineCompileRequest,
    EngineCompileResult,
    EngineCompileSummary,
    EngineIdentity,
    HostCapabilities,
    PrecisionMode,
    PreparedGraph,
    RuntimeTarget,
    default_profiles,
    profile_problems,
)

__all__ = ["EngineCompiler", "ProgressCallback"]

log = logging.getLogger(__name__)

ProgressCallback = Callable[[EngineCompileResult], None]


@dataclass(frozen=True)
class _Plan:
    backbone: BackboneSpec
    identity: EngineIdentity
    target: RuntimeTarget
    model_hash: str
    reusable: EngineCacheEntry | None
    started: float
    why_build: str = ""  # for --json notes: why this engine is (re)built
    force_rebuild: bool = False  # a remembered refusal is judged again


@dataclass(frozen=True)
class _Failed:
    """A model whose identity could not even be computed (e.g. the model is missing)."""

    backbone: BackboneSpec
    error: BaseException
    started: float


def outcome_for(exc: BaseException) -> CompileOutcome:
    """REFUSED for the accuracy gate, FAILED for anything else."""
    return CompileOutcome.REFUSED if isinstance(exc, AccuracyGateError) else CompileOutcome.FAILED


def _python_calibration_loader(backbone: BackboneSpec) -> bool:
    """Whether the calibration key of ``backbone`` needs data from a ``file.py:fn`` loader."""
    config = backbone.build_config
    spec = config.calibration
    # fp16 judged on data is keyed by that data too (so is auto, which may choose it).
    if config.precision is PrecisionMode.FP32 or spec is None or spec.source is None:
        return False
    source = str(spec.source)
    return spec.dataset_version is None and (".py:" in source or source.endswith(".py"))


def with_default_profiles(
    backbone: BackboneSpec, logger: logging.Logger | None = None
) -> BackboneSpec:
    """The backbone with a defaulted profile (dynamic dims 1) for each dynamic input it
    gives none, as trtexec and Polygraphy build; part of the build config, so of the
    identity. ``logger``: warn, naming the input and how to give a profile."""
    from trt_provision.calibration.data import model_input_specs

    config = backbone.build_config
    if any(p.defaulted for p in config.profiles) or not backbone.model_path.is_file():
        return backbone  # already defaulted, or a missing model the hash step reports
    inputs = {spec.name: spec.named_shape for spec in model_input_specs(backbone.model_path)}
    if any(p.input_name not in inputs for p in config.profiles):
        return backbone  # a misspelt input: the profile check names it, and what is uncovered
    added = default_profiles(config.profiles, inputs)
    if not added:
        return backbone
    for p in added:
        if logger is None:
            break
        shapes = (str(list(p.opt_shape)) if p.min_shape == p.max_shape else
                  f"min {list(p.min_shape)} opt {list(p.opt_shape)} max {list(p.max_shape)}")
        logger.warning(
            "%s: input %r %s has dynamic dimensions and no optimization profile: using "
            "%s (TensorRT builds for that only; ONNX Runtime serves any size); give "
            "--minShapes/--optShapes/--maxShapes, or a [[models.profiles]] entry in the "
            "manifest", backbone.name, p.input_name,
            "[" + ", ".join("?" if d is None else str(d) for d in inputs[p.input_name]) + "]",
            shapes,
            extra={"event": "profile.defaulted", "model": backbone.name, "input": p.input_name},
        )
    return dataclasses.replace(backbone, build_config=dataclasses.replace(
        config, profiles=config.profiles + added))


class EngineCompiler:
    """Compiles, or reuses from cache, one engine per backbone for this host."""

    def __init__(
        self,
        *,
        runtime: InferenceRuntime,
        store: EngineStore,
        gate: EngineGate,
        host: HostCapabilities,
        remote: RemoteEngineStore | None = None,
        calibration: CalibrationPlanner | None = None,
        precision: PrecisionPipeline | None = None,
        verifier: EngineVerifier | None = None,
        max_temperature_c: float | None = None,
        verify_workers: int = 0,
        sign: Callable[[EngineCacheEntry], None] | None = None,
        logger: logging.Logger | None = None,
    ) -> None:
        self._runtime = runtime
        self._store = store
        self._gate = gate
        self._host = host
        self._remote = remote
        self._calibration = calibration
        self._precision = precision
        self._verifier = verifier
        self._max_temp = max_temperature_c
        self._workers = verify_workers
        self._sign = sign
        self._log = logger or log

    # ------------------------------------------------------------------ public

    @property
    def host(self) -> HostCapabilities:
        return self._host

    @property
    def runtime(self) -> InferenceRuntime:
        return self._runtime

    def calibration_key(self, backbone: BackboneSpec, model_hash: str) -> str | None:
        """The calibration key of ``backbone`` (None without a calibration planner)."""
        if self._calibration is None:
            return None
        return self._calibration.calibration_key(backbone, model_hash)

    def reuse_or_build(
        self, backbone: BackboneSpec, identity: EngineIdentity, target: RuntimeTarget,
        model_hash: str,
    ) -> tuple[EngineCacheEntry, bool]:
        """Under the identity's lock: the cached engine if it verifies, else a build,
        published. Returns the entry and whether it was reused."""
        with self._store.lock(identity):
            entry = self._try_reuse(identity, target, quiet=True)
            if entry is not None:
                return entry, True
            entry, _ = self._build(
                _Plan(backbone, identity, target, model_hash, None, time.perf_counter())
            )
            return entry, False

    def reuse_or_build_trial(
        self, backbone: BackboneSpec, identity: EngineIdentity, target: RuntimeTarget,
        model_hash: str,
    ) -> tuple[EngineCacheEntry, bool]:
        """As :meth:`reuse_or_build`, for an engine built from the precision pipeline's
        unjudged preview graph (``PrecisionPipeline.preview``): ``auto`` times a candidate
        on it before deciding whether to judge it. ``identity`` must be one no judged engine
        has (auto derives it from the candidate's); its sidecar records "not judged", so no
        judge ever passes it. Never signed nor uploaded."""
        with self._store.lock(identity):
            entry = self._try_reuse(identity, target, quiet=True)
            if entry is not None:
                return entry, True
            plan = _Plan(backbone, identity, target, model_hash, None, time.perf_counter())
            config = backbone.build_config
            staged = self._store.staging_path(identity)
            workdir: Path | None = None
            try:
                consumer = self._runtime.graph_consumer(config)
                prepared = None
                if (self._precision is not None and consumer is not None
                        and config.precision is not PrecisionMode.FP32):
                    kind = "trt" if consumer == "tensorrt" else "ort"
                    workdir = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{kind}-",
                                                    dir=staged.parent))
                    prepared = self._precision.preview(
                        backbone.model_path, config, workdir, consumer=consumer,
                        model_hash=model_hash,
                    )
                artifact = (
                    self._runtime.compile_engine(backbone.model_path, config, staged)
                    if prepared is None else
                    self._runtime.compile_engine(backbone.model_path, config, staged,
                                                 prepared=prepared)
                )
                seconds = time.perf_counter() - plan.started
                entry = self._store.publish(
                    identity, staged, self._metadata(plan, artifact.metadata, seconds)
                )
            finally:
                with contextlib.suppress(FileNotFoundError):
                    staged.unlink()
                if workdir is not None:
                    shutil.rmtree(workdir, ignore_errors=True)
            return entry, False

    def publish_copy(
        self, source: EngineCacheEntry, metadata: Mapping[str, Any], seconds: float, *,
        backbone: BackboneSpec, identity: EngineIdentity, target: RuntimeTarget,
        model_hash: str,
    ) -> EngineCacheEntry:
        """Publish a copy of the verified engine ``source`` under ``identity``, its sidecar
        written afresh with ``metadata`` (``auto`` publishes its winner so)."""
        plan = _Plan(backbone, identity, target, model_hash, None, time.perf_counter())
        staged = self._store.staging_path(identity)
        shutil.copyfile(source.engine_path, staged)
        if sha256_file(staged)[0] != source.sha256:
            # The engine changed on disk after it was verified: publish nothing.
            staged.unlink(missing_ok=True)
            raise EngineBuildError("the chosen candidate engine changed after verification",
                                   path=str(source.engine_path))
        try:
            return self._store.publish(identity, staged, self._metadata(plan, metadata, seconds))
        finally:
            staged.unlink(missing_ok=True)

    def identity_for(
        self, backbone: BackboneSpec, *, unresolved_calibration: str | None = None,
        parse_model: bool = True,
    ) -> tuple[EngineIdentity, RuntimeTarget, str]:
        """``unresolved_calibration``: a stand-in calibration key, so no calibration data
        is loaded (a dry run with a Python loader). ``parse_model=False``: see model_sha256;
        only where nothing reads the model before the cache is looked at; the config is then
        taken as given (no defaulted profiles, which need the model's inputs)."""
        if parse_model:
            backbone = with_default_profiles(backbone)
        model_hash = model_sha256(
            backbone.model_path,
            parse=parse_model
            or backbone.build_config.precision.needs_calibration
            or backbone.build_config.precision is PrecisionMode.AUTO,
        )
        if backbone.build_config.precision is PrecisionMode.AUTO:
            target = self._runtime.runtime_target(backbone.build_config)
            return auto_identity(self, backbone, model_hash, target), target, model_hash
        calibration_key = (
            self._calibration.calibration_key(backbone, model_hash)
            if self._calibration is not None
            and judged_on_data(backbone.build_config)
            and unresolved_calibration is None
            else unresolved_calibration
        )
        target = self._runtime.runtime_target(backbone.build_config)
        identity = compute_identity(
            model_name=backbone.name,
            model_hash=model_hash,
            config=backbone.build_config,
            target=target,
            calibration_key=calibration_key,
        )
        return identity, target, model_hash

    def compile_engines_for_corpus(
        self, request: EngineCompileRequest, progress: ProgressCallback | None = None
    ) -> EngineCompileSummary:
        started = time.perf_counter()
        if not request.backbones:
            return EngineCompileSummary(results=(), wall_seconds=0.0)
        self._log.info(
            "provisioning %d model(s) with %s",
            len(request.backbones),
            self._runtime.current_runtime_label(),
            extra={"event": "provision.start", "models": len(request.backbones)},
        )
        # Phase 1 (parallel): identity and local verification. Hashing releases the GIL,
        # so an all-hit run verifies its engines concurrently, each read once.
        # One verifier per core: hashing is CPU-bound and releases the GIL.
        workers = self._workers or min(len(request.backbones), os.cpu_count() or 4)
        # A model settled here (reused, or failed to plan) is reported as it finishes, not
        # after the builds of the models listed before it.
        settled: dict[int, EngineCompileResult] = {}
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            futures = [pool.submit(self._plan_or_failure, b, request) for b in request.backbones]
            index = {f: i for i, f in enumerate(futures)}
            for future in as_completed(futures):
                if future.exception() is not None:
                    continue  # fail fast: raised below
                plan = future.result()
                if isinstance(plan, _Failed):
                    result = self._failure(plan.backbone, None, plan.error, plan.started)
                elif plan.reusable is not None:
                    result = self._resolve(plan, request)
                else:
                    continue
                settled[index[future]] = result
                if progress is not None:
                    progress(result)
            plans = [f.result() for f in futures]  # fail fast: the first in manifest order
        # Phase 2 (sequential): fetch or build what is missing, in manifest order. A model
        # that fails is reported and the run goes on, unless the request says fail fast.
        results: list[EngineCompileResult] = []
        for i, plan in enumerate(plans):
            if i in settled:
                results.append(settled[i])
                continue
            if isinstance(plan, _Failed):
                result = self._failure(plan.backbone, None, plan.error, plan.started)
            else:
                try:
                    result = self._resolve(plan, request)
                except Exception as exc:
                    if request.fail_fast:
                        raise
                    result = self._failure(plan.backbone, plan.identity, exc, plan.started)
            results.append(result)
            if progress is not None:
                progress(result)
        summary = EngineCompileSummary(
            results=tuple(results), wall_seconds=time.perf_counter() - started
        )
        self._log.info(
            "finished provisioning in %.2f s: %d built, %d reused, %d fetched, %d failed, "
            "%d refused",
            summary.wall_seconds,
            summary.built,
            summary.reused,
            summary.fetched,
            summary.failed,
            summary.refused,
            extra={
                "event": "provision.finish",
                "built": summary.built,
                "reused": summary.reused,
                "fetched": summary.fetched,
                "failed": summary.failed,
                "refused": summary.refused,
                "seconds": summary.wall_seconds,
            },
        )
        return summary

    def _plan_or_failure(
        self, backbone: BackboneSpec, request: EngineCompileRequest
    ) -> _Plan | _Failed:
        started = time.perf_counter()
        try:
            return self._plan(backbone, request)
        except Exception as exc:
            if request.fail_fast:
                raise
            return _Failed(backbone, exc, started)

    def _failure(
        self,
        backbone: BackboneSpec,
        identity: EngineIdentity | None,
        exc: BaseException,
        started: float,
    ) -> EngineCompileResult:
        """The result of a model that failed: its error named, the run going on."""
        internal = not isinstance(exc, TrtProvisionError)
        outcome = outcome_for(exc)
        message = str(exc).replace("\n", " ")[:2000]
        if internal:  # our bug: name it plainly; the traceback is there with -vv
            self._log.error(
                "internal error while provisioning %s (a bug in trt-provision, please report "
                "it): %s: %s", backbone.name, type(exc).__name__, message,
                extra={"event": "provision.model.internal_error", "model": backbone.name,
                       "error": type(exc).__name__},
            )
            self._log.debug("traceback of the internal error", exc_info=exc)
        else:
            self._log.error(
                "%s %s: %s: %s", backbone.name, outcome.value, type(exc).__name__, message,
                extra={"event": f"provision.model.{outcome.value}", "model": backbone.name,
                       "error": type(exc).__name__},
            )
        return EngineCompileResult(
            name=backbone.name,
            identity=identity,
            outcome=outcome,
            entry=None,
            total_seconds=time.perf_counter() - started,
            error_type=type(exc).__name__,
            error=message,
            internal=internal,
        )

    # ------------------------------------------------------------------ steps

    def _plan(self, backbone: BackboneSpec, request: EngineCompileRequest) -> _Plan:
        started = time.perf_counter()
        if not (request.dry_run or request.force_rebuild):
            # The all-hit path reads no model: engines are published only under the identity
            # of a defaulted config, and a config whose dynamic inputs all have profiles is
            # its own default, so its engine is found under the config as given. A config
            # that needs defaulted profiles misses here and is planned in full below.
            identity, target, model_hash = self.identity_for(backbone, parse_model=False)
            entry = self._try_reuse(identity, target, quiet=True)
            if entry is not None:
                return _Plan(backbone, identity, target, model_hash, entry, started, "")
        backbone = with_default_profiles(backbone, self._log)
        if request.dry_run and _python_calibration_loader(backbone):
            # A file.py:fn source is Python code: a dry run never executes it. Without its
            # data the calibration key (and so the identity) is unknown: planned, not reused.
            self._log.warning(
                "dry run: not executing the calibration loader of %s; a real run decides "
                "whether its engine is reused",
                backbone.name,
                extra={"event": "provision.dry_run.loader_skipped", "model": backbone.name},
            )
            identity, target, model_hash = self.identity_for(
                backbone, unresolved_calibration="dry-run-unresolved"
            )
            return _Plan(backbone, identity, target, model_hash, None, started,
                         "planned: the calibration loader is not executed in a dry run")
        # A reusable engine proves its model parsed when it was built: the model is parsed
        # (and refused as before) only when it is not reused.
        identity, target, model_hash = self.identity_for(
            backbone, parse_model=request.force_rebuild
        )
        if request.force_rebuild:
            return _Plan(backbone, identity, target, model_hash, None, started,
                         "rebuilt: --force-rebuild", force_rebuild=True)
        why: list[str] = []
        reusable = self._try_reuse(identity, target, why=why)
        if reusable is None:
            model_sha256(backbone.model_path)
        return _Plan(backbone, identity, target, model_hash, reusable, started,
                     why[0] if why else "")

    def _try_reuse(
        self,
        identity: EngineIdentity,
        target: RuntimeTarget,
        *,
        quiet: bool = False,
        why: list[str] | None = None,
    ) -> EngineCacheEntry | None:
        path = self._store.path_for(identity)
        if not path.exists() and not path.is_symlink():
            if why is not None:
                why.append("built: no engine in cache")
            return None
        try:
            entry = self._gate.validate(path, target)
        except EngineGateError as exc:
            if why is not None:
                why.append(f"rebuilt: cached engine did not verify ({exc.message})")
            if quiet:  # already reported by the first look
                return None
            self._log.warning(
                "cached engine %s is not reusable and will be rebuilt: %s",
                path.name,
                exc,
                extra={"event": "engine.cache.invalid", "engine": str(path), "reason": exc.message},
            )
            return None
        self._log.debug("cache hit %s", path.name, extra={"event": "engine.cache.hit"})
        return entry

    def _resolve(self, plan: _Plan, request: EngineCompileRequest) -> EngineCompileResult:
        name = plan.backbone.name
        if plan.reusable is not None:
            return self._result(plan, CompileOutcome.REUSED, plan.reusable, 0.0)
        # A profile TensorRT would refuse is refused here for every strategy, dry run too.
        self._check_profiles(plan.backbone)
        # build = "always" is the builder of record: it never takes another device's engine.
        remote = self._remote if request.use_remote and request.build != "always" else None
        ident = plan.identity
        missing = EngineCompileResult(
            name=name,
            identity=plan.identity,
            outcome=CompileOutcome.MISSING,
            entry=None,
            total_seconds=time.perf_counter() - plan.started,
            error=(
                f"no published engine for {ident.target} {ident.platform} "
                f"{ident.runtime}-{ident.runtime_version}"
                + ("" if remote is not None else " (no remote store in use)")
                + f' and settings.build = "never": build {ident.filename} on a '
                f"{ident.target} {ident.platform} builder of record and publish it"
            ),
        )
        if request.dry_run:
            on_remote: bool | None = None
            if remote is not None:
                try:
                    on_remote = remote.exists(plan.identity)
                except TrtProvisionError as exc:
                    self._log.warning(
                        "dry run: cannot tell whether the remote store has %s: %s",
                        plan.identity.filename, exc,
                        extra={"event": "provision.dry_run.remote_unknown", "model": name},
                    )
            if on_remote is not True and request.build == "never":
                return missing
            note = plan.why_build.replace("built:", "would be built:", 1)
            earlier = None if plan.force_rebuild else self._store.refusal(plan.identity)
            if on_remote:
                note = "would be fetched: the remote store has it"
            elif earlier is not None:
                note = f"would be refused: refused earlier: {earlier.get('reason', '')}"[:2000]
            elif on_remote is False and note:
                note += "; the remote store does not have it"
            return EngineCompileResult(
                name=name,
                identity=plan.identity,
                outcome=CompileOutcome.PLANNED,
                entry=None,
                total_seconds=time.perf_counter() - plan.started,
                notes=(note,) if note else (),
            )
        with self._store.lock(plan.identity):
            # Another process may have published it while we waited for the lock.
            if not request.force_rebuild:
                entry = self._try_reuse(plan.identity, plan.target, quiet=True)
                if entry is not None:
                    return self._result(plan, CompileOutcome.REUSED, entry, 0.0)
                if remote is not None:
                    fetched = remote.fetch(plan.identity, self._store, self._gate, plan.target)
                    if fetched is not None:
                        return self._result(plan, CompileOutcome.FETCHED, fetched, 0.0,
                                            notes=("fetched from the remote store",))
            if request.build == "never":
                self._log.error(
                    "%s missing: %s", name, missing.error,
                    extra={"event": "provision.model.missing", "model": name},
                )
                return missing
            timing = self._fleet_timing_cache(plan, request)
            fetched_timing = self._fetch_timing_cache(timing)
            entry, seconds = self._build(plan)
            if self._sign is not None:
                self._sign(entry)
        # The upload is a conditional put: it never replaces another device's signed engine.
        if self._remote is not None and request.use_remote:
            uploaded = self._remote.upload(entry)
            self._log.info(
                "%s %s to the remote store",
                "uploaded" if uploaded else "did not upload",
                entry.engine_path.name,
                extra={"event": "engine.remote.upload", "uploaded": uploaded},
            )
            if timing is not None and request.build == "always":
                # The builder of record shares what its builds measured.
                self._remote.upload_timing_cache(timing.name, timing)
        notes: tuple[str, ...] = (plan.why_build,) if plan.why_build else ()
        if fetched_timing:
            notes += ("built with the fleet's timing cache",)
        return self._result(plan, CompileOutcome.BUILT, entry, seconds, notes=notes)

    def _fleet_timing_cache(self, plan: _Plan, request: EngineCompileRequest) -> Path | None:
        """The local timing cache this build shares with devices of its type through the
        remote store (a runtime that keeps one: TensorRT), or None."""
        if self._remote is None or not request.use_remote:
            return None
        if not isinstance(self._runtime, TimingCacheOwner):
            return None
        try:
            return self._runtime.timing_cache_file(plan.backbone.build_config)
        except TrtProvisionError:
            return None  # the build itself reports what is missing

    def _fetch_timing_cache(self, timing: Path | None) -> bool:
        """Before a build on a device without a timing cache of its own: the fleet's."""
        if timing is None or self._remote is None or os.path.lexists(timing):
            return False
        return self._remote.fetch_timing_cache(timing.name, timing)

    def _check_profiles(self, backbone: BackboneSpec) -> None:
        from trt_provision.calibration.data import model_input_specs

        inputs = {spec.name: spec.named_shape for spec in model_input_specs(backbone.model_path)}
        problems = profile_problems(backbone.build_config.profiles, inputs)
        if problems:
            raise EngineBuildError(
                "optimization profiles do not fit the model: " + "; ".join(problems),
                model=str(backbone.model_path),
            )

    def _check_thermal(self) -> None:
        if self._max_temp is not None:
            check_temperature_limit(self._runtime.thermal_state(), self._max_temp)

    def _build(self, plan: _Plan) -> tuple[EngineCacheEntry, float]:
        backbone = plan.backbone
        if backbone.build_config.precision is PrecisionMode.AUTO:
            # Each candidate is built through reuse_or_build, the winner published by
            # publish_copy: auto uses this class's public API only.
            return build_auto(self, backbone, plan.identity, plan.target, plan.model_hash)
        if not plan.force_rebuild:
            self._answer_remembered_refusal(plan)
        self._check_thermal()
        staged = self._store.staging_path(plan.identity)
        self._log.info(
            "building %s (%s, %s)",
            plan.identity.filename,
            backbone.build_config.precision.value,
            self._runtime.current_runtime_label(),
            extra={"event": "engine.build.start", "model": backbone.name},
        )
        started = time.perf_counter()
        workdir: Path | None = None
        try:
            prepared, workdir = self._prepare(plan, staged)
            if prepared is None:
                artifact = self._runtime.compile_engine(
                    backbone.model_path, backbone.build_config, staged
                )
            else:
                artifact = self._runtime.compile_engine(
                    backbone.model_path, backbone.build_config, staged, prepared=prepared
                )
            seconds = time.perf_counter() - started
            metadata = self._metadata(plan, artifact.metadata, seconds)
            # The engine itself, on its own runtime: after the build, before any publish.
            metadata = self._verify(plan, staged, metadata, prepared)
            entry = self._store.publish(plan.identity, staged, metadata)
            self._store.forget_refusal(plan.identity)  # judged again (--force-rebuild): passed
        except AccuracyGateError as exc:
            self._remember_refusal(plan, exc)
            raise
        finally:  # a failure is reported once, by the caller (the model's result or raise)
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
            if workdir is not None:
                shutil.rmtree(workdir, ignore_errors=True)
        self._log.info(
            "finished building %s in %.2f s",
            entry.engine_path.name,
            seconds,
            extra={"event": "engine.build.finish", "model": backbone.name, "seconds": seconds},
        )
        return entry, seconds

    def _verify(
        self, plan: _Plan, staged: Path, metadata: dict[str, Any], prepared: PreparedGraph | None
    ) -> dict[str, Any]:
        """Judge the staged engine as ``run`` would load it - a staging entry through the
        engine gate and the memory budget, then the runtime's own infer - and return the
        metadata with the engine's verdict (``accuracy.engine``). A refusal raises
        AccuracyGateError and nothing is published."""
        if self._verifier is None:
            return metadata
        backbone = plan.backbone
        started = time.perf_counter()
        runtime = f"{plan.target.runtime} {plan.target.runtime_version}"
        workdir = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-chk-", dir=staged.parent))
        try:
            with self._store.staged_entry(plan.identity, staged, metadata) as entry:
                if self._sign is not None:  # a gate that requires signatures sees ours
                    self._sign(entry)
                try:
                    handle = self._runtime.deserialize_engine(entry)  # gate, budget, load
                except TrtProvisionError as exc:  # same type and facts, and where it happened
                    raise type(exc)(f"cannot load the built engine to verify it, nothing "
                                    f"published: {exc.message}", **exc.context) from exc
                try:
                    record = self._verifier.verify(
                        backbone.model_path, backbone.build_config, prepared,
                        lambda feed: self._runtime.infer(handle, feed), runtime=runtime,
                        workdir=workdir, model_hash=plan.model_hash,
                    )
                finally:
                    self._runtime.release_engine(handle)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)
        seconds = time.perf_counter() - started
        record = {**dict(record), "seconds": round(seconds, 4)}
        accuracy = metadata.get("accuracy")
        accuracy = dict(accuracy) if isinstance(accuracy, Mapping) else {}
        accuracy["engine"] = record
        self._log.info(
            "verified %s on %s: %s (%s inputs, %s samples) in %.2f s",
            plan.identity.filename, runtime, record.get("verdict"), record.get("inputs"),
            record.get("samples"), seconds,
            extra={"event": "engine.verify.finish", "model": backbone.name,
                   "verdict": record.get("verdict"), "seconds": seconds},
        )
        timings = dict(metadata.get("timings") or {})
        timings["verify_seconds"] = round(seconds, 4)
        return {**metadata, "accuracy": accuracy, "timings": timings}

    def _answer_remembered_refusal(self, plan: _Plan) -> None:
        """A refusal remembered for this identity is the answer, at once."""
        record = self._store.refusal(plan.identity)
        if record is None:
            return
        reason = str(record.get("reason", ""))[:2000]
        when = record.get("refused_at")
        self._log.info(
            "%s was refused earlier%s; not judged again (--force-rebuild judges it again)",
            plan.identity.filename, f" ({when})" if when else "",
            extra={"event": "engine.refusal.remembered", "model": plan.backbone.name},
        )
        evidence = record.get("context")
        context: dict[str, Any] = {str(k)[:64]: v for k, v in list(evidence.items())[:32]
                   if isinstance(v, (str, int, float, bool))} if isinstance(evidence, Mapping) \
            else {}
        context.update(model=plan.backbone.name, refused_at=when,
                       note="judged again with --force-rebuild")
        raise AccuracyGateError(f"refused earlier: {reason}", **context)

    def _remember_refusal(self, plan: _Plan, exc: AccuracyGateError) -> None:
        if exc.message.startswith("refused earlier: "):
            return
        context = {k: v for k, v in exc.context.items()
                   if isinstance(v, (str, int, float, bool)) or v is None}
        self._store.record_refusal(plan.identity, {
            "reason": exc.message[:4000],
            "context": context,
            "refused_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            "trt_provision": __version__,
        })

    def _prepare(self, plan: _Plan, staged: Path) -> tuple[PreparedGraph | None, Path | None]:
        """The precision pipeline's graph for this strategy, in a work directory next to the
        staging file (removed after the build); None where the strategy builds the model as
        it is (fp32, or TensorRT's own calibrator on the weakly typed path)."""
        config = plan.backbone.build_config
        if self._precision is None or config.precision is PrecisionMode.FP32:
            return None, None
        consumer = self._runtime.graph_consumer(config)
        if consumer is None:
            return None, None
        # The writer's pid and the runtime in the name let cache gc tell live work dirs
        # from dead ones.
        kind = "trt" if consumer == "tensorrt" else "ort"
        workdir = Path(tempfile.mkdtemp(prefix=f".tmp-{os.getpid()}-{kind}-", dir=staged.parent))
        try:
            prepared = self._precision.prepare(
                plan.backbone.model_path, config, workdir, consumer=consumer,
                model_hash=plan.model_hash,
            )
        except BaseException:
            shutil.rmtree(workdir, ignore_errors=True)
            raise
        return prepared, workdir

    def _metadata(
        self, plan: _Plan, artifact_meta: dict[str, Any] | Any, seconds: float
    ) -> dict[str, Any]:
        backbone = plan.backbone
        meta: dict[str, Any] = {
            "model": {
                "name": backbone.name,
                "path": str(backbone.model_path),
                "version_label": backbone.version_label,
                "sha256": plan.model_hash,
            },
            "build_config": build_config_to_json(backbone.build_config),
            "host": self._host.to_dict(),
            "runtime_target": {
                "runtime": plan.target.runtime,
                "runtime_version": plan.target.runtime_version,
                "target": plan.target.target,
                "platform": plan.target.platform,
            },
            "tool_versions": {
                "trt_provision": __version__,
                "python": platform.python_version(),
            },
            "timings": {
                "build_seconds": round(seconds, 4),
                "built_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            },
        }
        meta.update(dict(artifact_meta))
        return meta

    def _result(
        self,
        plan: _Plan,
        outcome: CompileOutcome,
        entry: EngineCacheEntry,
        seconds: float,
        notes: tuple[str, ...] = (),
    ) -> EngineCompileResult:
        auto = decision_of(entry.engine_path) if plan.identity.precision is PrecisionMode.AUTO \
            else None
        return EngineCompileResult(
            name=plan.backbone.name,
            identity=plan.identity,
            outcome=outcome,
            entry=entry,
            compile_seconds=seconds,
            total_seconds=time.perf_counter() - plan.started,
            notes=((summary_line(auto), *explanation(auto)) if auto else ()) + notes,
        )
