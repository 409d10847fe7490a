"""Cache upkeep: list what is cached, plan and apply garbage collection, clear.

The compiler never deletes; only these functions do, and ``gc`` first returns a plan
(what would go, why, how many bytes) that the CLI prints on a dry run.

Superseded for this host means: built for a runtime, runtime version, platform or target
that none of the host's expected :class:`RuntimeTarget`s accepts, or built from an older
hash of a model the manifest still lists. Orphan sidecars (their engine is gone) and
temp files of dead writers go too. Files that do not follow the engine naming schema are
never touched.
"""

from __future__ import annotations

import contextlib
import logging
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision._fs import TEMP_PREFIX
from trt_provision.errors import InvalidNameError, StoreError
from trt_provision.gates.engine_gate import target_accepts
from trt_provision.identity import (
    ENGINE_SUFFIX,
    HASH_CHARS,
    ParsedEngineName,
    parse_engine_filename,
)
from trt_provision.stores.local import _writer_alive
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
]

log = logging.getLogger(__name__)

SIDECAR_SUFFIXES = (".sha256", ".json", ".sig")
DEFAULT_TEMP_GRACE_S = 3600.0


def _size(path: Path) -> int:
    try:
        return path.lstat().st_size
    except OSError:
        return 0


def _model_dirs(root: Path) -> Iterator[Path]:
    if not root.is_dir():
        return
    for child in sorted(root.iterdir()):
        if child.is_dir() and not child.name.startswith(".") and not child.is_symlink():
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


def _cached_engine(path: Path) -> CachedEngine | None:
    try:
        parsed = parse_engine_filename(path.name)
    except InvalidNameError:
        return None
    sidecars = [path.with_name(path.name + s) for s in SIDECAR_SUFFIXES]
    meta = sidecars[1]
    stamp_source = meta if meta.exists() else path
    try:
        st = stamp_source.stat()
        last_used = max(st.st_atime, st.st_mtime)
    except OSError:
        last_used = 0.0
    return CachedEngine(
        path=path,
        parsed=parsed,
        size_bytes=_size(path) + sum(_size(s) for s in sidecars),
        last_used=last_used,
        complete=sidecars[0].exists() and sidecars[1].exists(),
        signed=sidecars[2].exists(),
    )


def list_engines(root: Path) -> list[CachedEngine]:
    """Every schema-named engine under ``root``, by model then name."""
    found: list[CachedEngine] = []
    for model_dir in _model_dirs(Path(root)):
        for path in sorted(model_dir.iterdir()):
            if path.name.startswith(TEMP_PREFIX) or not path.name.endswith(ENGINE_SUFFIX):
                continue
            if not path.is_file() or path.is_symlink():
                continue
            entry = _cached_engine(path)
            if entry is not None:
                found.append(entry)
    return found


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


def _ours(path: Path, now: float) -> bool:
    """A file ``clear`` may remove: an engine or sidecar by its name, or a stale temp."""
    name = path.name
    if name.startswith(TEMP_PREFIX):
        return _stale_temp(path, now, DEFAULT_TEMP_GRACE_S)
    for suffix in ("", *SIDECAR_SUFFIXES):
        if name.endswith(ENGINE_SUFFIX + suffix) and path.is_file():
            try:
                parse_engine_filename(name[: len(name) - len(suffix)] if suffix else name)
            except InvalidNameError:
                return False
            return True
    return False


def _engine_files(path: Path) -> tuple[Path, ...]:
    return (path, *(p for p in (path.with_name(path.name + s) for s in SIDECAR_SUFFIXES)
                    if p.exists()))


def _stale_temp(path: Path, now: float, grace_s: float) -> bool:
    """A temp file or work dir whose writer is gone. A live writer's files are never
    stale, however old: a long TensorRT build must not lose its staging file."""
    try:
        path.lstat()
    except OSError:
        return False
    return not _writer_alive(path.name)


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
    """
    root = Path(root)
    models = dict(current_models or {})
    now = time.time() if now is None else now
    items: list[GcItem] = []
    dirs = [root, *_model_dirs(root)] if root.is_dir() else []
    # Calibration and timing caches write temp files of their own there.
    dirs += [d for d in (root / ".calibration", root / ".timing") if d.is_dir()]
    for directory in dirs:
        engines: set[str] = set()
        for path in sorted(directory.iterdir()):
            name = path.name
            if name.startswith(TEMP_PREFIX):
                if _stale_temp(path, now, temp_grace_s):
                    items.append(_item(path, "temp file of an interrupted run", (path,)))
                continue
            if directory is root or not name.endswith(ENGINE_SUFFIX) or not path.is_file():
                continue
            try:
                parsed = parse_engine_filename(name)
            except InvalidNameError:
                continue
            engines.add(name)
            reason = superseded_reason(parsed, host_targets, models)
            if reason is not None:
                items.append(_item(path, reason, _engine_files(path)))
        if directory is root:
            continue
        for path in sorted(directory.iterdir()):
            for suffix in SIDECAR_SUFFIXES:
                if path.name.endswith(ENGINE_SUFFIX + suffix) and not path.name.startswith(
                    TEMP_PREFIX
                ):
                    owner = path.name[: -len(suffix)]
                    if owner not in engines and not (directory / owner).exists():
                        items.append(_item(path, "sidecar without its engine", (path,)))
    return GcPlan(root=root, items=tuple(items))


def _item(path: Path, reason: str, files: Iterable[Path]) -> GcItem:
    files = tuple(files)
    size = 0
    for f in files:
        if f.is_dir() and not f.is_symlink():
            size += sum(_size(p) for p in f.rglob("*"))
        else:
            size += _size(f)
    return GcItem(path=path, reason=reason, files=files, size_bytes=size)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()


def apply_gc(plan: GcPlan) -> int:
    """Delete what ``plan`` lists (engine first, then its sidecars); return bytes freed."""
    freed = 0
    for item in plan.items:
        try:
            for f in item.files:
                with contextlib.suppress(FileNotFoundError):
                    _remove(f)
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
    directory (dot-directories such as calibration caches) are left alone.
    """
    root = Path(root)
    now = time.time() if now is None else now
    items: list[GcItem] = []
    for model_dir in _model_dirs(root):
        # Only what this tool writes: schema-named engines, their sidecars, stale temps.
        # Anything else (a mistaken --cache-dir pointing at real data) is left alone.
        files = tuple(
            p for p in sorted(model_dir.iterdir()) if _ours(p, now) and not p.is_symlink()
        )
        if files:
            items.append(_item(model_dir, "clear", files))
    if root.is_dir():
        items.extend(
            _item(p, "clear", (p,))
            for p in sorted(root.iterdir())
            if p.name.startswith(TEMP_PREFIX) and _stale_temp(p, now, DEFAULT_TEMP_GRACE_S)
        )
    plan = GcPlan(root=root, items=tuple(items))
    apply_gc(plan)
    for model_dir in _model_dirs(root):
        with contextlib.suppress(OSError):
            model_dir.rmdir()
    return plan

