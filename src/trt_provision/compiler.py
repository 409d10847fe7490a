"""EngineCompiler: stateless orchestration of identity → reuse → fetch → build → publish.

The compiler knows only the Protocols in ``seams.py``; ``compose.py`` wires the concrete
strategies. It never deletes anything: stale engines are left for ``cache gc``.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import logging
import os
import platform
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

from trt_provision._version import __version__
from trt_provision.auto_precision import auto_identity, build_auto, decision_of, summary_line
from trt_provision.config_json import build_config_to_json
from trt_provision.errors import (
    AccuracyGateError,
    EngineBuildError,
    EngineGateError,
    TrtProvisionError,
)
from trt_provision.identity import compute_identity, model_sha256
from trt_provision.seams import (
    CalibrationPlanner,
    EngineGate,
    EngineStore,
    InferenceRuntime,
    RemoteEngineStore,
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
    RuntimeTarget,
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
    if not config.precision.needs_calibration or spec is None or spec.source is None:
        return False
    source = str(spec.source)
    return spec.dataset_version is None and (".py:" in source or source.endswith(".py"))


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
        self._max_temp = max_temperature_c
        self._workers = verify_workers
        self._sign = sign
        self._log = logger or log

    # ------------------------------------------------------------------ public

    def identity_for(
        self, backbone: BackboneSpec, *, unresolved_calibration: str | None = None,
        parse_model: bool = True,
    ) -> tuple[EngineIdentity, RuntimeTarget, str]:
        """``unresolved_calibration``: a stand-in calibration key, so no calibration data
        is loaded (a dry run with a Python loader). ``parse_model=False``: see model_sha256;
        only where nothing reads the model before the cache is looked at."""
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
            and backbone.build_config.precision.needs_calibration
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
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="verify") as pool:
            plans = list(
                pool.map(lambda b: self._plan_or_failure(b, request), request.backbones)
            )
        # Phase 2 (sequential): fetch or build what is missing, in manifest order. A model
        # that fails is reported and the run goes on, unless the request says fail fast.
        results: list[EngineCompileResult] = []
        for plan in plans:
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
                         "rebuilt: --force-rebuild")
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
        if request.dry_run:
            return EngineCompileResult(
                name=name,
                identity=plan.identity,
                outcome=CompileOutcome.PLANNED,
                entry=None,
                total_seconds=time.perf_counter() - plan.started,
                notes=(plan.why_build.replace("built:", "would be built:", 1),)
                if plan.why_build else (),
            )
        with self._store.lock(plan.identity):
            # Another process may have published it while we waited for the lock.
            if not request.force_rebuild:
                entry = self._try_reuse(plan.identity, plan.target, quiet=True)
                if entry is not None:
                    return self._result(plan, CompileOutcome.REUSED, entry, 0.0)
                if self._remote is not None and request.use_remote:
                    fetched = self._remote.fetch(
                        plan.identity, self._store, self._gate, plan.target
                    )
                    if fetched is not None:
                        return self._result(plan, CompileOutcome.FETCHED, fetched, 0.0,
                                            notes=("fetched from the remote store",))
            entry, seconds = self._build(plan)
            if self._sign is not None:
                self._sign(entry)
        if self._remote is not None and request.use_remote:
            uploaded = self._remote.upload(entry)
            self._log.info(
                "%s %s to the remote store",
                "uploaded" if uploaded else "did not upload",
                entry.engine_path.name,
                extra={"event": "engine.remote.upload", "uploaded": uploaded},
            )
        return self._result(plan, CompileOutcome.BUILT, entry, seconds,
                            notes=(plan.why_build,) if plan.why_build else ())

    def _check_profiles(self, backbone: BackboneSpec) -> None:
        from trt_provision.calibration.data import model_input_specs

        inputs = {spec.name: spec.shape for spec in model_input_specs(backbone.model_path)}
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
            return build_auto(self, plan)  # builds each candidate through this method
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
        try:
            artifact = self._runtime.compile_engine(
                backbone.model_path, backbone.build_config, staged
            )
            seconds = time.perf_counter() - started
            entry = self._store.publish(
                plan.identity, staged, self._metadata(plan, artifact.metadata, seconds)
            )
        finally:  # a failure is reported once, by the caller (the model's result or raise)
            with contextlib.suppress(FileNotFoundError):
                staged.unlink()
        self._log.info(
            "finished building %s in %.2f s",
            entry.engine_path.name,
            seconds,
            extra={"event": "engine.build.finish", "model": backbone.name, "seconds": seconds},
        )
        return entry, seconds

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
            notes=((summary_line(auto),) if auto else ()) + notes,
        )
