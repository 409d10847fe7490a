"""The default EngineGate: refuse an engine before any runtime import unless it is intact,
built for this host and runtime, and trusted.

Order of checks (cheapest first; nothing after a refusal runs):

1. the engine file: present, a regular file (a symlink only when it stays inside the cache
   directory), not empty, not larger than the configured limit;
2. the filename: runtime label, platform (JetPack / dGPU), GPU target (``sm80+`` runs on any
   sm >= 80) and runtime version;
3. the sidecars: ``.sha256`` and ``.json`` are regular files inside the cache; the metadata
   parses, names this file, carries the identity the filename encodes and the size the file
   has; a version-compatible engine is refused unless host code is allowed;
4. the two sidecars agree on the digest, then the trust policy (signatures) runs;
5. last, the engine bytes are read once, through the descriptor whose size was checked, and
   hashed.

Nothing here imports a runtime, NVML or numpy.
"""

from __future__ import annotations

import hashlib
import logging
import os
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from trt_provision.errors import EngineGateError, InvalidNameError
from trt_provision.identity import ParsedEngineName, parse_engine_filename
from trt_provision.integrity import BLOCK_SIZE, parse_sha256_sidecar, read_metadata
from trt_provision.types import EngineCacheEntry, EngineIdentity, PrecisionMode, RuntimeTarget

__all__ = [
    "DEFAULT_MAX_ENGINE_BYTES",
    "DefaultEngineGate",
    "TrustCheck",
    "is_version_compatible",
    "target_accepts",
    "version_compatible_accepts",
]

log = logging.getLogger(__name__)

DEFAULT_MAX_ENGINE_BYTES = 64 << 30
# Sidecars are tiny; anything bigger is not ours (and /dev/zero behind a symlink is endless).
_MAX_SIDECAR_FILE_BYTES = 16 << 20


class TrustCheck(Protocol):
    """Signature policy hook: raise EngineGateError when the engine is not trusted."""

    def check(self, engine_path: Path, metadata: Mapping[str, Any]) -> None: ...


def target_accepts(built_for: str, host_target: str) -> bool:
    """Whether an engine built for ``built_for`` runs on a host whose target is ``host_target``.

    ``sm80+`` (hardware-compatible, AMPERE_PLUS) runs on any sm >= 80; ``sm90cc`` runs on
    sm90; everything else must match exactly.
    """
    if built_for == host_target:
        return True
    if not (built_for.startswith("sm") and host_target.startswith("sm")):
        return False
    host_sm = host_target[2:].rstrip("+").removesuffix("cc")
    if not host_sm.isdigit():
        return False
    if built_for.endswith("+"):
        built_sm = built_for[2:-1]
        return built_sm.isdigit() and int(host_sm) >= int(built_sm)
    if built_for.endswith("cc"):
        return built_for[2:-2] == host_sm
    return False


def is_version_compatible(metadata: Mapping[str, Any]) -> bool:
    """Whether the metadata says the engine was built with TensorRT's VERSION_COMPATIBLE flag.

    Such an engine embeds the lean runtime, i.e. host code that deserialization executes.
    The flag is read from the top-level ``version_compatible`` key, or the same key under
    ``build_config`` or ``runtime`` (where runtimes stamp their own facts).
    """
    if metadata.get("version_compatible") is True:
        return True
    for section in ("build_config", "runtime"):
        inner = metadata.get(section)
        if isinstance(inner, Mapping) and inner.get("version_compatible") is True:
            return True
    return False


def _version_tuple(version: str) -> tuple[int, ...] | None:
    parts: list[int] = []
    for part in version.split("."):
        if not part.isdigit():
            return None
        parts.append(int(part))
    return tuple(parts)


def version_compatible_accepts(built_with: str, host_version: str) -> bool:
    """A version-compatible engine runs on the same or a later runtime of the same major."""
    built = _version_tuple(built_with)
    host = _version_tuple(host_version)
    if built is None or host is None:
        return built_with == host_version
    return built[0] == host[0] and host >= built


@dataclass(frozen=True)
class _FileFacts:
    path: Path  # the path to open: the symlink target when the engine is a link
    size: int
    device: int
    inode: int


class DefaultEngineGate:
    """Integrity, host match, runtime match, size limit and (optional) trust policy.

    ``cache_root``: symlinks (engine and sidecars) may only point inside it, and the engine
    itself must live under it. ``allow_host_code``: the trust policy permits engines that
    run embedded host code (TensorRT version-compatible engines); off by default.
    """

    def __init__(
        self,
        *,
        cache_root: Path | None = None,
        max_engine_bytes: int = DEFAULT_MAX_ENGINE_BYTES,
        trust: TrustCheck | None = None,
        allow_host_code: bool = False,
    ) -> None:
        if isinstance(max_engine_bytes, bool) or max_engine_bytes <= 0:
            raise ValueError(f"max_engine_bytes must be > 0, got {max_engine_bytes}")
        self._root = Path(cache_root).resolve() if cache_root is not None else None
        self._max_bytes = max_engine_bytes
        self._trust = trust
        self._allow_host_code = allow_host_code

    @property
    def max_engine_bytes(self) -> int:
        return self._max_bytes

    @property
    def allow_host_code(self) -> bool:
        return self._allow_host_code

    def validate(
        self, engine_path: Path, expected: RuntimeTarget, *, known_sha256: str | None = None
    ) -> EngineCacheEntry:
        """Validate; ``known_sha256`` is a digest the caller computed while writing this very
        file (a verified download), which spares reading the bytes a second time."""
        engine_path = Path(engine_path)
        try:
            entry = self._validate(engine_path, expected, known_sha256)
        except EngineGateError as exc:
            # DEBUG: callers decide how loud a refusal is (a stale cache entry is routine).
            log.debug(
                "engine refused: %s",
                exc,
                extra={
                    "event": "engine.gate.refused",
                    "path": str(engine_path),
                    "reason": exc.message,
                },
            )
            raise
        log.debug(
            "engine passed the gate: %s",
            engine_path.name,
            extra={
                "event": "engine.gate.passed",
                "path": str(engine_path),
                "size_bytes": entry.size_bytes,
            },
        )
        return entry

    def _validate(
        self, engine_path: Path, expected: RuntimeTarget, known_sha256: str | None
    ) -> EngineCacheEntry:
        where = str(engine_path)
        facts = self._check_file(engine_path)
        try:
            parsed = parse_engine_filename(engine_path.name)
        except InvalidNameError as exc:
            raise EngineGateError("not an engine filename", path=where) from exc
        version_differs = self._check_host(parsed, expected, where)
        sha_path = engine_path.with_name(engine_path.name + ".sha256")
        self._check_sidecar_file(sha_path, "sha256 sidecar")
        self._check_sidecar_file(
            engine_path.with_name(engine_path.name + ".json"), "metadata sidecar"
        )
        metadata = read_metadata(engine_path)
        identity = self._identity_from_metadata(metadata, parsed, where)
        self._check_version_compatibility(metadata, parsed, expected, version_differs, where)
        self._check_recorded_size(metadata, facts.size, where)
        claimed = parse_sha256_sidecar(sha_path, engine_path.name)
        if metadata["sha256"] != claimed:
            raise EngineGateError(
                "metadata and sha256 sidecars disagree",
                path=where,
                expected=claimed,
                found=metadata["sha256"],
            )
        if self._trust is not None:
            self._trust.check(engine_path, metadata)
        actual = known_sha256 if known_sha256 is not None else self._hash_once(facts, where)
        if actual != claimed:
            raise EngineGateError(
                "engine sha256 does not match its sidecar",
                path=where,
                expected=claimed,
                found=actual,
            )
        return EngineCacheEntry(
            engine_path=engine_path,
            sha256=actual,
            identity=identity,
            size_bytes=facts.size,
            extras={"metadata": metadata},
        )

    # ------------------------------------------------------------------ checks

    def _inside_root(self, path: Path) -> bool:
        return self._root is not None and self._root in path.parents

    def _check_file(self, engine_path: Path) -> _FileFacts:
        where = str(engine_path)
        try:
            st = os.lstat(engine_path)
        except FileNotFoundError as exc:
            raise EngineGateError("engine file missing", path=where) from exc
        except OSError as exc:
            raise EngineGateError(f"engine unreadable: {exc.strerror}", path=where) from exc
        target = engine_path
        if stat.S_ISLNK(st.st_mode):
            target = engine_path.resolve()
            if not self._inside_root(target):
                raise EngineGateError(
                    "engine is a symlink pointing outside the cache",
                    path=where,
                    expected=str(self._root) if self._root else "no symlink",
                    found=str(target),
                )
            try:
                st = os.stat(target)
            except OSError as exc:
                raise EngineGateError(
                    "engine symlink is dangling", path=where, found=str(target)
                ) from exc
        if not stat.S_ISREG(st.st_mode):
            raise EngineGateError("engine is not a regular file", path=where)
        if self._root is not None and not self._inside_root(engine_path.resolve()):
            raise EngineGateError(
                "engine is outside the cache directory", path=where, expected=str(self._root)
            )
        if st.st_size == 0:
            raise EngineGateError("engine file is empty", path=where, found=0)
        if st.st_size > self._max_bytes:
            raise EngineGateError(
                "engine file larger than the configured limit",
                path=where,
                expected=f"<= {self._max_bytes} bytes",
                found=st.st_size,
            )
        return _FileFacts(path=target, size=st.st_size, device=st.st_dev, inode=st.st_ino)

    def _check_sidecar_file(self, sidecar: Path, what: str) -> None:
        """Sidecars must be small regular files; a symlink may not leave the cache."""
        where = str(sidecar)
        try:
            st = os.lstat(sidecar)
        except FileNotFoundError as exc:
            raise EngineGateError(f"{what} missing", path=where) from exc
        except OSError as exc:
            raise EngineGateError(f"{what} unreadable: {exc.strerror}", path=where) from exc
        if stat.S_ISLNK(st.st_mode):
            target = sidecar.resolve()
            if not self._inside_root(target):
                raise EngineGateError(
                    f"{what} is a symlink pointing outside the cache",
                    path=where,
                    found=str(target),
                )
            try:
                st = os.stat(target)
            except OSError as exc:
                raise EngineGateError(f"{what} symlink is dangling", path=where) from exc
        if not stat.S_ISREG(st.st_mode):
            raise EngineGateError(f"{what} is not a regular file", path=where)
        if st.st_size > _MAX_SIDECAR_FILE_BYTES:
            raise EngineGateError(f"{what} too large", path=where, found=st.st_size)

    @staticmethod
    def _check_host(parsed: ParsedEngineName, expected: RuntimeTarget, where: str) -> bool:
        """Refuse a runtime/platform/target mismatch; return whether the version differs.

        A version difference is only decided once the metadata says whether the engine is
        version-compatible.
        """
        if parsed.runtime != expected.runtime:
            raise EngineGateError(
                "engine was built for another runtime",
                path=where,
                expected=expected.runtime,
                found=parsed.runtime,
            )
        if parsed.platform != expected.platform:
            raise EngineGateError(
                "engine was built for another platform (JetPack / dGPU)",
                path=where,
                expected=expected.platform,
                found=parsed.platform,
            )
        if not target_accepts(parsed.target, expected.target):
            raise EngineGateError(
                "engine was built for another GPU / CPU target",
                path=where,
                expected=expected.target,
                found=parsed.target,
            )
        return parsed.runtime_version != expected.runtime_version

    def _check_version_compatibility(
        self,
        metadata: Mapping[str, Any],
        parsed: ParsedEngineName,
        expected: RuntimeTarget,
        version_differs: bool,
        where: str,
    ) -> None:
        version_compatible = is_version_compatible(metadata)
        if version_compatible and not self._allow_host_code:
            raise EngineGateError(
                "engine is version-compatible (embeds host code) and the trust policy does "
                "not allow host code",
                path=where,
                expected="allow_host_code",
                found="version_compatible engine",
            )
        if not version_differs:
            return
        if version_compatible and version_compatible_accepts(
            parsed.runtime_version, expected.runtime_version
        ):
            return
        raise EngineGateError(
            "engine was built by another runtime version",
            path=where,
            expected=expected.runtime_version,
            found=parsed.runtime_version,
        )

    @staticmethod
    def _check_recorded_size(metadata: Mapping[str, Any], size: int, where: str) -> None:
        recorded = metadata.get("size_bytes")
        if recorded is None:
            return
        if isinstance(recorded, bool) or not isinstance(recorded, int):
            raise EngineGateError(
                "metadata size_bytes is not an integer", path=where, found=repr(recorded)
            )
        if recorded != size:
            # Catches truncation or an appended tail without reading the engine.
            raise EngineGateError(
                "engine size does not match its metadata",
                path=where,
                expected=recorded,
                found=size,
            )

    def _hash_once(self, facts: _FileFacts, where: str) -> str:
        """Hash through one descriptor; refuse if the file was swapped or grew meanwhile."""
        digest = hashlib.sha256()
        try:
            fd = os.open(facts.path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0))
        except OSError as exc:
            raise EngineGateError(f"engine unreadable: {exc.strerror}", path=where) from exc
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino, st.st_size) != (facts.device, facts.inode, facts.size):
                raise EngineGateError("engine changed while it was being checked", path=where)
            buf = bytearray(BLOCK_SIZE)
            view = memoryview(buf)
            total = 0
            with open(fd, "rb", buffering=0, closefd=False) as fh:
                while n := fh.readinto(buf):
                    total += n
                    if total > facts.size:
                        raise EngineGateError("engine grew while it was being checked", path=where)
                    digest.update(view[:n])
        except OSError as exc:
            raise EngineGateError(f"engine unreadable: {exc.strerror}", path=where) from exc
        finally:
            os.close(fd)
        if total != facts.size:
            raise EngineGateError(
                "engine shrank while it was being checked",
                path=where,
                expected=facts.size,
                found=total,
            )
        return digest.hexdigest()

    @staticmethod
    def _identity_from_metadata(
        metadata: Mapping[str, Any], parsed: ParsedEngineName, where: str
    ) -> EngineIdentity:
        raw = metadata["identity"]
        try:
            identity = EngineIdentity(
                model_name=str(raw["model_name"]),
                model_sha256=str(raw["model_sha256"]),
                precision=PrecisionMode(raw["precision"]),
                runtime=str(raw["runtime"]),
                runtime_version=str(raw["runtime_version"]),
                target=str(raw["target"]),
                platform=str(raw["platform"]),
                options_digest=str(raw["options_digest"]),
            )
        except (KeyError, ValueError, TypeError, InvalidNameError) as exc:
            # An unsafe model name in a sidecar is a bad engine, not a bad manifest.
            raise EngineGateError(f"metadata identity is malformed: {exc}", path=where) from exc
        if ParsedEngineName.of(identity) != parsed:
            raise EngineGateError(
                "metadata identity does not match the engine filename",
                path=where,
                expected=parsed.to_dict(),
                found=ParsedEngineName.of(identity).to_dict(),
            )
        return identity
