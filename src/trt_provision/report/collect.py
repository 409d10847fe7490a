"""Gather what a report shows from the cache (and optionally the remote store) into frozen
rows. Read-only: nothing here builds, writes, signs or deletes.

Everything read from a sidecar is outside input: files are read with the cache's bounded
readers (``integrity.read_cache_file``), and each value is checked for its type and
clipped in length here, so the renderers only ever see strings, finite numbers and None.
"""

from __future__ import annotations

import datetime as _dt
import math
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

from trt_provision.errors import EngineGateError, InvalidNameError, TrtProvisionError
from trt_provision.identity import HASH_CHARS, ParsedEngineName
from trt_provision.integrity import (
    MAX_METADATA_BYTES,
    MAX_SIGNATURE_FILE_BYTES,
    PERF_SUFFIX,
    loads_bounded,
    parse_metadata_bytes,
    parse_sha256_sidecar,
    read_cache_file,
    sha256_file,
)
from trt_provision.stores.maintenance import CachedEngine, list_engines
from trt_provision.types import EngineIdentity, PrecisionMode, RuntimeTarget

__all__ = [
    "SCHEMA_VERSION",
    "Accuracy",
    "AutoCandidate",
    "Cell",
    "EngineRow",
    "Latency",
    "ModelInfo",
    "RemoteProbe",
    "Report",
    "Signature",
    "TargetKey",
    "collect_report",
]

SCHEMA_VERSION = 1
MAX_TEXT = 300  # a sidecar string shown in a report is clipped to this many characters
MAX_LIST = 32  # at most this many items of any list a sidecar holds
MAX_PERF_BYTES = 64 << 10

# Cell states, best first: a cell shows the best state among its current engines.
VERIFIED = "verified"
BAD = "bad"
STALE = "stale"
MISSING = "missing"
CELL_STATES = (VERIFIED, BAD, STALE, MISSING)

_SIG_RE = re.compile(r"ed25519:([0-9a-f]{16}):")


class RemoteProbe(Protocol):
    """What the report asks of a remote store: whether an engine is there."""

    def exists(self, identity: EngineIdentity) -> bool: ...


# ------------------------------------------------------------------ hostile-value helpers


def _text(value: Any, limit: int = MAX_TEXT) -> str | None:
    """A sidecar string, clipped; anything else (a dict, a list) is None."""
    if isinstance(value, bool) or value is None:
        return None if value is None else str(value).lower()
    if isinstance(value, int | float):
        return _fmt_number(value)
    if not isinstance(value, str):
        return None
    return value if len(value) <= limit else value[: limit - 1] + "…"


def _fmt_number(value: float) -> str | None:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return f"{value:g}" if isinstance(value, float) else str(value)


def _num(value: Any) -> float | None:
    """A finite number from a sidecar, else None (bools are not numbers here)."""
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    number = float(value)
    return number if math.isfinite(number) else None


def _int(value: Any) -> int | None:
    number = _num(value)
    return int(number) if number is not None and number == int(number) else None


def _get(data: Any, *path: str) -> Any:
    for key in path:
        if not isinstance(data, Mapping):
            return None
        data = data.get(key)
    return data


# ------------------------------------------------------------------ rows


@dataclass(frozen=True, order=True)
class TargetKey:
    """One column of the coverage matrix: where an engine runs."""

    runtime: str
    runtime_version: str
    target: str
    platform: str

    @property
    def label(self) -> str:
        runtime = "TensorRT" if self.runtime == "trt" else (
            "ONNX Runtime" if self.runtime.startswith("ort") else self.runtime)
        where = self.target.replace("-dla", " DLA")
        platform = f"JetPack {self.platform[2:]}" if self.platform.startswith("jp") else (
            self.platform)
        return f"{where} · {platform} · {runtime} {self.runtime_version}"

    @classmethod
    def of(cls, item: ParsedEngineName | RuntimeTarget | EngineIdentity) -> TargetKey:
        return cls(item.runtime, item.runtime_version, item.target, item.platform)

    def to_dict(self) -> dict[str, Any]:
        return {"runtime": self.runtime, "runtime_version": self.runtime_version,
                "target": self.target, "platform": self.platform, "label": self.label}


@dataclass(frozen=True)
class AutoCandidate:
    precision: str
    verdict: str  # chosen | refused | slower | ... as the sidecar says
    speedup: float | None  # vs fp32 (1.0 for fp32 itself)
    median_ms: float | None
    worst_cosine: float | None
    gate_verdict: str | None
    why: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Accuracy:
    """The accuracy section of a sidecar, as far as it holds each value."""

    verdict: str | None
    data: str | None  # which split judged it
    samples: int | None
    bound: float | None
    threshold: float | None
    gate: tuple[tuple[str, str], ...]  # e.g. (("min_cosine", "0.99"), ...)
    splits: tuple[tuple[str, int], ...]  # split name -> rows
    worst_cosine: float | None
    top1_agreement: float | None

    def to_dict(self) -> dict[str, Any]:
        return {
            "verdict": self.verdict, "data": self.data, "samples": self.samples,
            "bound": self.bound, "threshold": self.threshold, "gate": dict(self.gate),
            "splits": dict(self.splits), "worst_cosine": self.worst_cosine,
            "top1_agreement": self.top1_agreement,
        }


@dataclass(frozen=True)
class Latency:
    p50_ms: float | None
    p99_ms: float | None
    measured_at: str | None
    iterations: int | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Signature:
    state: str  # verified | unsigned | bad | not checked
    key_id: str | None
    detail: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class EngineRow:
    model: str
    filename: str
    location: str  # "cache" (with remote presence in ``on_remote``)
    target: TargetKey
    precision: str
    chosen_precision: str | None  # auto: what it chose
    model_hash: str
    role: str  # current | auto candidate | superseded
    state: str  # verified | stale | bad
    problems: tuple[str, ...]
    size_bytes: int | None
    built_at: str | None
    age_days: float | None
    signature: Signature
    accuracy: Accuracy | None
    auto: tuple[AutoCandidate, ...]
    speedup: float | None
    latency: Latency | None
    builder: str | None
    trt_path: str | None
    timing_cache: str | None
    on_remote: bool | None  # None: not asked

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": self.model, "filename": self.filename, "location": self.location,
            "target": self.target.to_dict(), "precision": self.precision,
            "chosen_precision": self.chosen_precision, "model_hash": self.model_hash,
            "role": self.role, "state": self.state, "problems": list(self.problems),
            "size_bytes": self.size_bytes, "built_at": self.built_at, "age_days": self.age_days,
            "signature": self.signature.to_dict(),
            "accuracy": None if self.accuracy is None else self.accuracy.to_dict(),
            "auto": [c.to_dict() for c in self.auto], "speedup": self.speedup,
            "latency": None if self.latency is None else self.latency.to_dict(),
            "provenance": {"builder": self.builder, "trt_path": self.trt_path,
                           "timing_cache": self.timing_cache},
            "on_remote": self.on_remote,
        }


@dataclass(frozen=True)
class ModelInfo:
    name: str
    precision: str
    sha256: str | None  # None: the model file could not be read
    version: str | None

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class Cell:
    model: str
    target: TargetKey
    state: str
    engines: tuple[str, ...]  # filenames of the engines behind the state
    on_remote: bool | None = None  # the expected engine of this host, when asked

    def to_dict(self) -> dict[str, Any]:
        return {"model": self.model, "target": self.target.to_dict(), "state": self.state,
                "engines": list(self.engines), "on_remote": self.on_remote}


@dataclass(frozen=True)
class Report:
    schema_version: int
    generated_at: str
    manifest: str
    cache_dir: str
    trust_policy: str
    key_ids: tuple[str, ...]
    remote_checked: bool
    host_targets: tuple[TargetKey, ...]
    models: tuple[ModelInfo, ...]
    targets: tuple[TargetKey, ...]
    cells: tuple[Cell, ...]
    engines: tuple[EngineRow, ...]
    notes: tuple[str, ...] = field(default=())

    def cell(self, model: str, target: TargetKey) -> Cell:
        for c in self.cells:
            if c.model == model and c.target == target:
                return c
        raise KeyError((model, target))

    def to_dict(self) -> dict[str, Any]:
        return {
            "schema_version": self.schema_version,
            "generated_at": self.generated_at,
            "manifest": self.manifest,
            "cache_dir": self.cache_dir,
            "trust": {"policy": self.trust_policy, "key_ids": list(self.key_ids)},
            "remote_checked": self.remote_checked,
            "host_targets": [t.to_dict() for t in self.host_targets],
            "models": [m.to_dict() for m in self.models],
            "targets": [t.to_dict() for t in self.targets],
            "matrix": [c.to_dict() for c in self.cells],
            "engines": [e.to_dict() for e in self.engines],
            "notes": list(self.notes),
        }


# ------------------------------------------------------------------ reading one engine


def _first(section: Mapping[str, Any], key: str) -> Any:
    value = section.get(key)
    return value if value is not None else _get(section, "test", key)


def _accuracy(meta: Mapping[str, Any]) -> Accuracy | None:
    acc = meta.get("accuracy")
    if not isinstance(acc, Mapping):
        return None
    gate_raw = acc.get("gate")
    gate = tuple(
        (str(k)[:40], text) for k, v in list(gate_raw.items())[:MAX_LIST]
        if (text := _text(v, 80)) is not None
    ) if isinstance(gate_raw, Mapping) else ()
    splits_raw = acc.get("splits")
    splits: list[tuple[str, int]] = []
    if isinstance(splits_raw, Mapping):
        for name in ("calibration", "validation", "test"):
            rows = _int(_get(splits_raw, name, "rows"))
            if rows is not None:
                splits.append((name, rows))
    outputs = acc.get("outputs")
    cosines = [c for o in (list(outputs.values())[:MAX_LIST] if isinstance(outputs, Mapping)
                           else []) if (c := _num(_get(o, "cosine"))) is not None]
    top1 = [c for o in (list(outputs.values())[:MAX_LIST] if isinstance(outputs, Mapping)
                        else []) if (c := _num(_get(o, "top1_agreement"))) is not None]
    return Accuracy(
        verdict=_text(acc.get("verdict"), 40),
        data=_text(acc.get("data"), 40),
        # At the top of the section, else in its test split (the one the verdict is on).
        samples=_int(_first(acc, "samples")),
        bound=_num(_first(acc, "bound")),
        threshold=_num(_first(acc, "threshold")),
        gate=gate,
        splits=tuple(splits),
        worst_cosine=min(cosines) if cosines else None,
        top1_agreement=min(top1) if top1 else None,
    )


def _auto(meta: Mapping[str, Any]) -> tuple[tuple[AutoCandidate, ...], str | None, float | None]:
    auto = meta.get("auto")
    if not isinstance(auto, Mapping):
        return (), None, None
    table = auto.get("table")
    rows: list[AutoCandidate] = []
    for raw in table[:MAX_LIST] if isinstance(table, list) else []:
        if not isinstance(raw, Mapping):
            continue
        precision = _text(raw.get("precision"), 16)
        if precision is None:
            continue
        rows.append(AutoCandidate(
            precision=precision,
            verdict=_text(raw.get("verdict"), 40) or "—",
            speedup=_num(raw.get("vs_fp32")),
            median_ms=_num(raw.get("median_ms")),
            worst_cosine=_num(raw.get("worst_cosine")),
            gate_verdict=_text(raw.get("gate_verdict"), 40),
            why=_text(raw.get("why")),
        ))
    return tuple(rows), _text(auto.get("chosen"), 16), _num(auto.get("speedup_vs_fp32"))


def _latency(engine: Path, root: Path) -> tuple[Latency | None, str | None]:
    path = engine.with_name(engine.name + PERF_SUFFIX)
    if not os.path.lexists(path):
        return None, None
    try:
        raw = read_cache_file(path, MAX_PERF_BYTES, what="measurements sidecar", root=root)
        data = loads_bounded(raw, str(path), "measurements sidecar", MAX_PERF_BYTES)
    except EngineGateError as exc:
        return None, f"measurements not read: {exc.message}"
    runs = data.get("runs") if isinstance(data, Mapping) else None
    if not isinstance(runs, list) or not runs or not isinstance(runs[-1], Mapping):
        return None, "measurements sidecar has an unknown shape"
    if data.get("engine") != engine.name:
        return None, "measurements sidecar is for another file"
    last = runs[-1]
    return Latency(
        p50_ms=_num(_get(last, "latency_ms", "p50")),
        p99_ms=_num(_get(last, "latency_ms", "p99")),
        measured_at=_text(last.get("measured_at"), 40),
        iterations=_int(last.get("iterations")),
    ), None


def _signature(
    engine: Path, meta_bytes: bytes | None, root: Path, policy: str, keys: Sequence[Any]
) -> Signature:
    sig_path = engine.with_name(engine.name + ".sig")
    if not os.path.lexists(sig_path):
        if policy == "require":
            return Signature("bad", None, "unsigned; the trust policy requires a signature")
        return Signature("unsigned", None, None)
    try:
        raw = read_cache_file(sig_path, MAX_SIGNATURE_FILE_BYTES, what="signature", root=root)
    except EngineGateError as exc:
        return Signature("bad", None, exc.message)
    match = _SIG_RE.match(raw.decode("ascii", "replace"))
    key_id = match.group(1) if match else None
    if not keys:
        return Signature("not checked", key_id, "no public_key configured")
    if meta_bytes is None:
        return Signature("bad", key_id, "metadata sidecar unreadable")
    from trt_provision.trust import SignatureTrust, TrustPolicy

    try:
        SignatureTrust(TrustPolicy.REQUIRE, keys).check_bytes(meta_bytes, raw, engine.name)
    except EngineGateError as exc:
        return Signature("bad", key_id, exc.message)
    return Signature("verified", key_id, None)


def _age_days(built_at: str | None, now: float) -> float | None:
    if built_at is None:
        return None
    try:
        stamp = _dt.datetime.fromisoformat(built_at).timestamp()
    except ValueError:
        return None
    return round(max(0.0, now - stamp) / 86400, 2)


def _read_engine(
    cached: CachedEngine, root: Path, policy: str, keys: Sequence[Any], now: float
) -> tuple[dict[str, Any], list[str], Signature, bytes | None]:
    """(metadata or {}, integrity problems, signature, raw metadata bytes)."""
    problems: list[str] = []
    path = cached.path
    meta: dict[str, Any] = {}
    meta_bytes: bytes | None = None
    meta_path = path.with_name(path.name + ".json")
    try:
        meta_bytes = read_cache_file(meta_path, MAX_METADATA_BYTES, what="metadata sidecar",
                                     root=root)
        meta = parse_metadata_bytes(meta_bytes, meta_path, path.name)
    except EngineGateError as exc:
        problems.append(exc.message)
    try:
        # Verified means what the engine gate means: the .sha256 covers the .json too.
        claimed = parse_sha256_sidecar(path.with_name(path.name + ".sha256"), path.name,
                                       root=root, metadata=meta_bytes)
        digest, _ = sha256_file(path)
        if digest != claimed:
            problems.append("engine bytes do not match the .sha256 sidecar")
        elif meta and meta.get("sha256") != digest:
            problems.append("engine bytes do not match the metadata sidecar's sha256")
    except EngineGateError as exc:
        problems.append(exc.message)
    except OSError as exc:
        problems.append(f"engine unreadable: {exc.strerror}")
    signature = _signature(path, meta_bytes, root, policy, keys)
    if signature.state == "bad":
        problems.append(f"signature: {signature.detail}")
    return meta, problems, signature, meta_bytes


# ------------------------------------------------------------------ the report


def collect_report(
    *,
    manifest_path: Path,
    models: Sequence[ModelInfo],
    cache_dir: Path,
    host_targets: Sequence[RuntimeTarget],
    expected: Mapping[str, EngineIdentity | None],
    trust_policy: str = "off",
    public_keys: Sequence[Any] = (),
    remote: RemoteProbe | None = None,
    now: float,
    on_remote_error: Callable[[str], None] | None = None,
) -> Report:
    """Rows for every engine of the manifest's models in ``cache_dir``, the coverage cells
    (model × target) and, with ``remote``, whether the remote store has each engine.

    ``expected``: the identity this host would provision per model (None where it cannot
    be known without running code, e.g. a Python calibration loader); it decides which
    engine of the host's own column is current. In other columns the newest build of the
    manifest's precision and model hash is current, older builds are superseded.
    """
    root = Path(cache_dir)
    by_name = {m.name: m for m in models}
    notes: list[str] = []
    engines = [e for e in list_engines(root) if e.parsed.model_name in by_name] \
        if root.is_dir() else []
    others = len(list_engines(root)) - len(engines) if root.is_dir() else 0
    if others:
        notes.append(f"{others} engine(s) in the cache belong to models this manifest "
                     f"does not list; not shown")
    remote_failed: str | None = None

    def ask_remote(identity: EngineIdentity) -> bool | None:
        nonlocal remote_failed
        if remote is None or remote_failed is not None:
            return None
        try:
            return bool(remote.exists(identity))
        except (TrtProvisionError, OSError) as exc:
            remote_failed = str(exc)[:MAX_TEXT]
            notes.append(f"remote store not checked further: {remote_failed}")
            if on_remote_error is not None:
                on_remote_error(remote_failed)
            return None

    raw_rows: list[dict[str, Any]] = []
    for cached in engines:
        p = cached.parsed
        meta, problems, signature, _ = _read_engine(cached, root, trust_policy, public_keys, now)
        info = by_name[p.model_name]
        auto_rows, chosen, speedup = _auto(meta)
        latency, perf_problem = _latency(cached.path, root)
        if perf_problem:
            notes.append(f"{cached.path.name}: {perf_problem}")
        built_at = _text(_get(meta, "timings", "built_at"), 40)
        identity = _identity_of(p)
        raw_rows.append({
            "cached": cached, "meta": meta, "problems": problems, "signature": signature,
            "auto": auto_rows, "chosen": chosen, "speedup": speedup, "latency": latency,
            "built_at": built_at, "info": info,
            "on_remote": ask_remote(identity) if identity is not None else None,
        })

    rows = _assign_roles(raw_rows, expected, host_targets)
    engine_rows = tuple(
        _row(r, role, now) for r, role in rows
    )
    keys = {e.target for e in engine_rows} | {TargetKey.of(t) for t in host_targets}
    targets = tuple(sorted(keys))
    cells: list[Cell] = []
    for model in models:
        for target in targets:
            mine = [e for e in engine_rows if e.model == model.name and e.target == target]
            cell_remote = None
            want = expected.get(model.name)
            if want is not None and TargetKey.of(want) == target:
                local = [e for e in mine if e.filename == want.filename]
                cell_remote = local[0].on_remote if local else ask_remote(want)
            cells.append(_cell(model.name, target, mine, cell_remote))
    return Report(
        schema_version=SCHEMA_VERSION,
        generated_at=_dt.datetime.fromtimestamp(now, _dt.timezone.utc).isoformat(
            timespec="seconds"),
        manifest=str(manifest_path),
        cache_dir=str(root),
        trust_policy=trust_policy,
        key_ids=tuple(getattr(k, "key_id", "") for k in public_keys),
        remote_checked=remote is not None,
        host_targets=tuple(TargetKey.of(t) for t in host_targets),
        models=tuple(models),
        targets=targets,
        cells=tuple(cells),
        engines=engine_rows,
        notes=tuple(notes),
    )


def _identity_of(p: ParsedEngineName) -> EngineIdentity | None:
    """An identity whose filename is ``p``'s (enough to name the remote object)."""
    try:
        return EngineIdentity(
            model_name=p.model_name, model_sha256=p.model_hash,
            precision=PrecisionMode(p.precision), runtime=p.runtime,
            runtime_version=p.runtime_version, target=p.target, platform=p.platform,
            options_digest=p.options_digest,
        )
    except (InvalidNameError, ValueError):
        return None


def _assign_roles(
    raw_rows: list[dict[str, Any]],
    expected: Mapping[str, EngineIdentity | None],
    host_targets: Sequence[RuntimeTarget],
) -> list[tuple[dict[str, Any], str]]:
    host_keys = {TargetKey.of(t) for t in host_targets}
    # Engines an auto engine timed and judged (and its trial engines, timed before judging)
    # are its candidates, not stale engines.
    candidates = {
        _get(c, key) for r in raw_rows
        for c in (_get(r["meta"], "auto", "table") or []) if isinstance(c, Mapping)
        for key in ("engine", "trial_engine")
    }
    newest: dict[tuple[str, TargetKey], tuple[str, str]] = {}
    for r in raw_rows:
        p: ParsedEngineName = r["cached"].parsed
        info: ModelInfo = r["info"]
        if info.sha256 is not None and p.model_hash != info.sha256[:HASH_CHARS]:
            continue
        if p.precision != info.precision:
            continue
        group = (p.model_name, TargetKey.of(p))
        stamp = r["built_at"] or ""
        if group not in newest or stamp > newest[group][0]:
            newest[group] = (stamp, r["cached"].path.name)
    out: list[tuple[dict[str, Any], str]] = []
    for r in raw_rows:
        p = r["cached"].parsed
        info = r["info"]
        name = r["cached"].path.name
        key = TargetKey.of(p)
        want = expected.get(p.model_name)
        if info.sha256 is not None and p.model_hash != info.sha256[:HASH_CHARS]:
            role = "superseded: older model hash"
        elif name in candidates and p.precision != info.precision:
            role = "auto candidate"
        elif p.precision != info.precision:
            role = f"superseded: the manifest asks for {info.precision}"
        elif key in host_keys and want is not None and TargetKey.of(want) == key:
            role = "current" if name == want.filename else "superseded: other build options"
        else:
            group_newest = newest.get((p.model_name, key))
            role = "current" if group_newest is not None and group_newest[1] == name else (
                "superseded: a newer build exists")
        out.append((r, role))
    return out


def _row(r: dict[str, Any], role: str, now: float) -> EngineRow:
    cached: CachedEngine = r["cached"]
    p = cached.parsed
    meta: dict[str, Any] = r["meta"]
    problems = tuple(r["problems"])
    state = BAD if problems else (VERIFIED if role in ("current", "auto candidate") else STALE)
    timing_cache = _get(meta, "timing_cache")
    if isinstance(timing_cache, str):
        timing_cache = Path(timing_cache).name  # the file, not where it lies on the builder
    return EngineRow(
        model=p.model_name,
        filename=cached.path.name,
        location="cache",
        target=TargetKey.of(p),
        precision=p.precision,
        chosen_precision=r["chosen"],
        model_hash=p.model_hash,
        role=role,
        state=state,
        problems=problems,
        size_bytes=_int(meta.get("size_bytes")) if meta else cached.size_bytes,
        built_at=r["built_at"],
        age_days=_age_days(r["built_at"], now),
        signature=r["signature"],
        accuracy=_accuracy(meta),
        auto=r["auto"],
        speedup=r["speedup"],
        latency=r["latency"],
        builder=_text(_get(meta, "builder"), 40) or _text(_get(meta, "runtime", "label"), 40),
        trt_path=_text(_get(meta, "trt_path"), 60),
        timing_cache=_text(timing_cache, 120),
        on_remote=r["on_remote"],
    )


def _cell(model: str, target: TargetKey, rows: list[EngineRow], on_remote: bool | None) -> Cell:
    current = [e for e in rows if e.role == "current"]
    for state, pool in ((VERIFIED, current), (BAD, current)):
        hits = [e.filename for e in pool if e.state == state]
        if hits:
            return Cell(model, target, state, tuple(hits), on_remote)
    stale = [e.filename for e in rows if e.role.startswith("superseded")]
    if stale:
        return Cell(model, target, STALE, tuple(stale), on_remote)
    return Cell(model, target, MISSING, (), on_remote)

