"""Cache upkeep: list what is cached, plan and apply garbage collection, clear.

The compiler never deletes; only these functions do, and ``gc`` first returns a plan
(what would go, why, how many bytes) that the CLI prints on a dry run.

Superseded for this host means: built for a runtime, runtime version, platform or target
that none of the host's expected :class:`RuntimeTarget`s accepts, or built from an older
hash of a model the manifest still lists. Orphan sidecars (their engine is gone) and
temp files of dead writers go too.

What may be deleted is decided by our naming schema alone (a mistaken ``--cache-dir``
pointing at a user's directory must lose nothing):

- an engine: a regular file in ``<root>/<model>/`` whose name parses as an engine filename
  (``identity.parse_engine_filename``) for that same model;
- a sidecar: ``<engine filename><suffix>`` for a suffix in ``SIDECAR_SUFFIXES``, where the
  engine filename parses as above (``projects/app.engine.json`` does not); a remembered
  refusal ``<engine filename>.refused.json`` likewise (it goes when its identity is
  superseded, never as an orphan: a refused engine has no file);
- a temp file: a regular file whose name parses as ``.tmp-<pid>-<nonce>-<final>``
  (``_fs.parse_temp_name``), whose writer pid is gone, and, in a model directory, whose
  final name is an engine or sidecar name of that model;
- a build (or engine check) work directory ``.tmp-<pid>-<ort|trt|chk>-<mkdtemp suffix>`` of
  a dead writer, owned by this user: the only directories ever removed recursively.

Nothing is deleted through a symlink, outside the cache directory, or in a cache another
user can write (``StoreError``).
"""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import stat
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision._fs import (
    TEMP_PREFIX,
    iter_temp_files,
    parse_temp_name,
    untrusted_chain,
    writer_alive,
)
from trt_provision.errors import InvalidNameError, StoreError
from trt_provision.gates.engine_gate import target_accepts
from trt_provision.identity import (
    ENGINE_SUFFIX,
    HASH_CHARS,
    REFUSAL_SUFFIX,
    ParsedEngineName,
    parse_engine_filename,
)
from trt_provision.integrity import SIDECAR_SUFFIXES
from trt_provision.types import RuntimeTarget

__all__ = [
    "SIDECAR_SUFFIXES",
    "CachedEngine",
    "GcItem",
    "GcPlan",
    "apply_gc",
    "clear_cache",
    "list_engines",
    "plan_gc",
    "remove_paths",
    "stale_temps",
]

log = logging.getLogger(__name__)

DEFAULT_TEMP_GRACE_S = 3600.0
# Dot-directories of the cache where calibration and timing caches write temp files.
AUX_DIRS = (".calibration", ".timing")


def _owner_name(name: str) -> str | None:
    """The engine filename a file name stands for: itself, or the owner of a sidecar."""
    if name.endswith(ENGINE_SUFFIX):
        return name
    if name.endswith(ENGINE_SUFFIX + REFUSAL_SUFFIX):  # a remembered refusal: no engine
        return name[: -len(REFUSAL_SUFFIX)]
    # Longest suffix first: ".perf.json" before ".json".
    for suffix in sorted(SIDECAR_SUFFIXES, key=len, reverse=True):
        if name.endswith(ENGINE_SUFFIX + suffix):
            return name[: -len(suffix)]
    return None


def _engine_name_of(name: str, model: str) -> ParsedEngineName | None:
    """The parsed engine filename ``name`` stands for (itself, or the owner of a sidecar),
    when it is an engine of ``model``; None otherwise."""
    owner = _owner_name(name)
    if owner is None:
        return None
    try:
        parsed = parse_engine_filename(owner)
    except InvalidNameError:
        return None
    return parsed if parsed.model_name == model else None


def _lstat(path: Path) -> os.stat_result | None:
    try:
        return os.lstat(path)
    except OSError:
        return None


def _check_trusted(root: Path) -> None:
    if not root.is_dir():
        return
    found = untrusted_chain(root)
    if found is not None:
        raise StoreError(
            f"cache directory or a directory above it {found[1]}; refusing to delete in it",
            path=str(found[0]),
            fix=found[2],
        )


def stale_temps(root: Path) -> list[Path]:
    """Temp files and work directories of dead writers that our naming proves are ours, in
    the model directories and the calibration/timing directories of ``root``."""
    root = Path(root)
    found: list[Path] = []
    dirs: list[tuple[Path, str | None]] = [(d, d.name) for d in _model_dirs(root)]
    dirs += [(root / name, None) for name in AUX_DIRS]
    for directory, model in dirs:
        for path, parsed in iter_temp_files(directory):
            if writer_alive(parsed.pid):
                continue  # a live writer's temp is never removed, however long its build
            st = _lstat(path)
            if st is None:
                continue
            if parsed.is_workdir:
                # Only directories we created: our name, a real directory, owned by us.
                ours = model is not None and stat.S_ISDIR(st.st_mode) and st.st_uid == os.geteuid()
            else:
                # In a model directory the final name must be an engine/sidecar of that model.
                final = parsed.final or ""
                ours = stat.S_ISREG(st.st_mode) and (
                    model is None or _engine_name_of(final, model) is not None
                )
            if ours:
                found.append(path)
    return found


def _remove_one(root: Path, path: Path) -> bool:
    """Delete one entry we own; False when it is gone or not provably ours and inside."""
    parent = path.parent
    if parent != root and parent.parent != root:
        return False
    pst = _lstat(parent)
    if pst is None or not stat.S_ISDIR(pst.st_mode):
        return False  # a symlinked (or vanished) directory: never delete through it
    st = _lstat(path)
    if st is None:
        return False
    if stat.S_ISDIR(st.st_mode):
        parsed = parse_temp_name(path.name)
        if parsed is None or not parsed.is_workdir or st.st_uid != os.geteuid():
            return False  # never rmtree a directory we did not create
        shutil.rmtree(path)  # does not follow symlinks inside (fd-based on Linux)
    else:
        path.unlink()
    return True


def remove_paths(root: Path, paths: Iterable[Path]) -> list[Path]:
    """Remove ``paths`` (each checked again by ``_remove_one``); return those removed."""
    removed: list[Path] = []
    for path in paths:
        with contextlib.suppress(FileNotFoundError):
            if _remove_one(Path(root), path):
                removed.append(path)
    return removed


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _model_dirs(root: Path) -> Iterator[Path]:
    """Real (not symlinked) non-dot directories directly under ``root``."""
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        cst = _lstat(child)
        if cst is not None and stat.S_ISDIR(cst.st_mode) and not child.name.startswith("."):
            yield child


@dataclass(frozen=True)
class CachedEngine:
    """One engine of the cache and what its name and sidecars say."""

    path: Path
    parsed: ParsedEngineName
    size_bytes: int  # engine plus its sidecars
    last_used: float  # atime/mtime of the metadata sidecar (the gate reads it on each load)
    complete: bool  # .sha256 and .json present
    signed: bool

    def to_dict(self) -> dict[str, Any]:
        return {
            "engine": str(self.path),
            **self.parsed.to_dict(),
            "size_bytes": self.size_bytes,
            "last_used": self.last_used,
            "complete": self.complete,
            "signed": self.signed,
        }


def _cached_engine(path: Path, parsed: ParsedEngineName) -> CachedEngine:
    sidecars = {s: path.with_name(path.name + s) for s in SIDECAR_SUFFIXES}
    meta = sidecars[".json"]
    stamp_source = meta if meta.exists() else path
    try:
        st = stamp_source.stat()
        last_used = max(st.st_atime, st.st_mtime)
    except OSError:
        last_used = 0.0
    return CachedEngine(
        path=path,
        parsed=parsed,
        size_bytes=_size(path) + sum(_size(s) for s in sidecars.values()),
        last_used=last_used,
        complete=sidecars[".sha256"].exists() and meta.exists(),
        signed=sidecars[".sig"].exists(),
    )


def _engines_in(model_dir: Path) -> Iterator[tuple[Path, ParsedEngineName]]:
    """Regular files of ``model_dir`` whose names parse as engines of that model."""
    for path in sorted(model_dir.iterdir()):
        name = path.name
        if name.startswith(TEMP_PREFIX) or not name.endswith(ENGINE_SUFFIX):
            continue
        st = _lstat(path)
        if st is None or not stat.S_ISREG(st.st_mode):
            continue
        parsed = _engine_name_of(name, model_dir.name)
        if parsed is not None:
            yield path, parsed


def list_engines(root: Path) -> list[CachedEngine]:
    """Every schema-named engine under ``root``, by model then name."""
    return [
        _cached_engine(path, parsed)
        for model_dir in _model_dirs(Path(root))
        for path, parsed in _engines_in(model_dir)
    ]


@dataclass(frozen=True)
class GcItem:
    """Files that go together (an engine and its sidecars, or one stray file)."""

    path: Path
    reason: str
    files: tuple[Path, ...]
    size_bytes: int

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "reason": self.reason,
            "files": [str(f) for f in self.files],
            "size_bytes": self.size_bytes,
        }


@dataclass(frozen=True)
class GcPlan:
    root: Path
    items: tuple[GcItem, ...] = ()

    @property
    def total_bytes(self) -> int:
        return sum(i.size_bytes for i in self.items)

    def to_dict(self) -> dict[str, Any]:
        return {
            "cache_dir": str(self.root),
            "items": [i.to_dict() for i in self.items],
            "count": len(self.items),
            "total_bytes": self.total_bytes,
        }


def superseded_reason(
    parsed: ParsedEngineName,
    host_targets: Sequence[RuntimeTarget],
    current_models: Mapping[str, str],
) -> str | None:
    """Why an engine is of no more use on this host, or None to keep it."""
    current = current_models.get(parsed.model_name)
    if current is not None and parsed.model_hash != current[:HASH_CHARS]:
        return f"older hash of model {parsed.model_name} (now {current[:HASH_CHARS]})"
    if host_targets and not any(
        parsed.runtime == t.runtime
        and parsed.runtime_version == t.runtime_version
        and parsed.platform == t.platform
        and target_accepts(parsed.target, t.target)
        for t in host_targets
    ):
        wanted = sorted(
            {f"{t.runtime}-{t.runtime_version} {t.target} {t.platform}" for t in host_targets}
        )
        return (
            f"built for {parsed.runtime}-{parsed.runtime_version} {parsed.target} "
            f"{parsed.platform}; this host runs {', '.join(wanted)}"
        )
    return None


def _engine_files(path: Path) -> tuple[Path, ...]:
    return (path, *(p for p in (path.with_name(path.name + s) for s in SIDECAR_SUFFIXES)
                    if os.path.lexists(p)))


def _ours(path: Path, model: str) -> bool:
    """A regular file of model directory ``model`` that ``clear`` may remove: an engine or
    a sidecar by its name (temp files are decided by ``stale_temps``)."""
    st = _lstat(path)
    if st is None or not stat.S_ISREG(st.st_mode) or path.name.startswith(TEMP_PREFIX):
        return False
    return _engine_name_of(path.name, model) is not None


def plan_gc(
    root: Path,
    *,
    host_targets: Sequence[RuntimeTarget] = (),
    current_models: Mapping[str, str] | None = None,
    temp_grace_s: float = DEFAULT_TEMP_GRACE_S,
    now: float | None = None,
) -> GcPlan:
    """What ``gc`` would remove: superseded engines, orphan sidecars, stale temp files.

    ``host_targets`` empty means "host unknown": no engine goes for its target alone.
    ``current_models`` maps model name to its current sha256 (only listed models count).
    Temp files go as soon as their writer is gone (``temp_grace_s`` and ``now`` are kept
    for callers; a live writer's files are never removed).
    """
    root = Path(root)
    _check_trusted(root)
    models = dict(current_models or {})
    items = [_item(p, "temp file of an interrupted run", (p,)) for p in stale_temps(root)]
    for model_dir in _model_dirs(root):
        engines: set[str] = set()
        for path, parsed in _engines_in(model_dir):
            engines.add(path.name)
            reason = superseded_reason(parsed, host_targets, models)
            if reason is not None:
                items.append(_item(path, reason, _engine_files(path)))
        for path in sorted(model_dir.iterdir()):
            name = path.name
            if name.endswith(ENGINE_SUFFIX) or not _ours(path, model_dir.name):
                continue
            owner = _owner_name(name)
            if name.endswith(REFUSAL_SUFFIX):
                # A refusal has no engine by nature: it goes when its identity is of no
                # more use here, as that engine would.
                refused = _engine_name_of(name, model_dir.name)
                why = (superseded_reason(refused, host_targets, models)
                       if refused is not None else None)
                if why:
                    items.append(_item(path, f"refusal record: {why}", (path,)))
                continue
            if owner is not None and owner not in engines and not os.path.lexists(
                model_dir / owner
            ):
                items.append(_item(path, "sidecar without its engine", (path,)))
    return GcPlan(root=root, items=tuple(items))


def _item(path: Path, reason: str, files: Iterable[Path]) -> GcItem:
    files = tuple(files)
    size = 0
    for f in files:
        st = _lstat(f)
        if st is not None and stat.S_ISDIR(st.st_mode):
            size += sum(_size(p) for p in f.rglob("*"))
        else:
            size += _size(f)
    return GcItem(path=path, reason=reason, files=files, size_bytes=size)


def apply_gc(plan: GcPlan) -> int:
    """Delete what ``plan`` lists (engine first, then its sidecars); return bytes freed.

    Each file is checked again as it goes (inside the cache, not through a symlink, a
    directory only when it is one of our work directories)."""
    _check_trusted(plan.root)
    freed = 0
    for item in plan.items:
        try:
            remove_paths(plan.root, item.files)
        except OSError as exc:
            raise StoreError(
                f"cannot remove cached file: {exc.strerror}", path=str(item.path)
            ) from exc
        freed += item.size_bytes
        log.info(
            "removed %s (%s)",
            item.path,
            item.reason,
            extra={"event": "cache.gc.removed", "path": str(item.path), "bytes": item.size_bytes},
        )
    return freed


def clear_cache(root: Path, *, now: float | None = None) -> GcPlan:
    """Remove every engine, sidecar and stale temp file under ``root``.

    Temp files of a run still in progress, lock files and other data under the cache
    directory (dot-directories such as calibration caches) are left alone, and so is every
    file whose name does not prove it is ours. A model directory is removed (``rmdir``) only
    when it held something of ours and is empty afterwards.
    """
    root = Path(root)
    _check_trusted(root)
    stale = set(stale_temps(root))
    items: list[GcItem] = []
    touched: list[Path] = []
    for model_dir in _model_dirs(root):
        files = tuple(
            p for p in sorted(model_dir.iterdir()) if p in stale or _ours(p, model_dir.name)
        )
        if files:
            items.append(_item(model_dir, "clear", files))
            touched.append(model_dir)
    items.extend(_item(p, "clear", (p,)) for p in sorted(stale) if p.parent.name in AUX_DIRS)
    plan = GcPlan(root=root, items=tuple(items))
    apply_gc(plan)
    for model_dir in touched:
        with contextlib.suppress(OSError):
            model_dir.rmdir()
    return plan
