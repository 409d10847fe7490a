"""The default EngineGate: refuse an engine before any runtime import unless it is intact,
built for this host and runtime, and trusted.

Checks run cheapest first; the engine bytes are read once, last, to hash them.
"""

from __future__ import annotations

import logging
import os
import stat
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Protocol

from trt_provision.errors import EngineGateError, InvalidNameError
from trt_provision.identity import ParsedEngineName, parse_engine_filename
from trt_provision.integrity import parse_sha256_sidecar, read_metadata, sha256_file
from trt_provision.types import EngineCacheEntry, EngineIdentity, PrecisionMode, RuntimeTarget

__all__ = ["DefaultEngineGate", "TrustCheck", "target_accepts"]

log = logging.getLogger(__name__)

DEFAULT_MAX_ENGINE_BYTES = 64 << 30


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
        return int(host_sm) >= int(built_for[2:-1])
    if built_for.endswith("cc"):
        return built_for[2:-2] == host_sm
    return False


class DefaultEngineGate:
    """Integrity, host match, runtime match, size limit and (optional) trust policy."""

    def __init__(
        self,
        *,
        cache_root: Path | None = None,
        max_engine_bytes: int = DEFAULT_MAX_ENGINE_BYTES,
        trust: TrustCheck | None = None,
    ) -> None:
        if max_engine_bytes <= 0:
            raise ValueError(f"max_engine_bytes must be > 0, got {max_engine_bytes}")
        self._root = cache_root.resolve() if cache_root is not None else None
        self._max_bytes = max_engine_bytes
        self._trust = trust

    def validate(self, engine_path: Path, expected: RuntimeTarget) -> EngineCacheEntry:
        engine_path = Path(engine_path)
        where = str(engine_path)
        self._check_file(engine_path)
        try:
            parsed = parse_engine_filename(engine_path.name)
        except InvalidNameError as exc:
            raise EngineGateError("not an engine filename", path=where) from exc
        self._check_host(parsed, expected, where)
        metadata = read_metadata(engine_path)
        identity = self._identity_from_metadata(metadata, parsed, where)
        claimed = parse_sha256_sidecar(
            engine_path.with_name(engine_path.name + ".sha256"), engine_path.name
        )
        if metadata["sha256"] != claimed:
            raise EngineGateError(
                "metadata and sha256 sidecars disagree",
                path=where,
                expected=claimed,
                found=metadata["sha256"],
            )
        if self._trust is not None:
            self._trust.check(engine_path, metadata)
        try:
            actual, hashed_size = sha256_file(engine_path)
        except OSError as exc:
            raise EngineGateError(f"engine unreadable: {exc.strerror}", path=where) from exc
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
            size_bytes=hashed_size,
            extras={"metadata": metadata},
        )

    # ------------------------------------------------------------------ checks

    def _check_file(self, engine_path: Path) -> int:
        where = str(engine_path)
        try:
            st = os.lstat(engine_path)
        except FileNotFoundError as exc:
            raise EngineGateError("engine file missing", path=where) from exc
        if stat.S_ISLNK(st.st_mode):
            target = engine_path.resolve()
            if self._root is None or self._root not in target.parents:
                raise EngineGateError(
                    "engine is a symlink pointing outside the cache", path=where, found=str(target)
                )
            st = os.stat(target)
        if not stat.S_ISREG(st.st_mode):
            raise EngineGateError("engine is not a regular file", path=where)
        if self._root is not None and self._root not in engine_path.resolve().parents:
            raise EngineGateError("engine is outside the cache directory", path=where)
        if st.st_size == 0:
            raise EngineGateError("engine file is empty", path=where)
        if st.st_size > self._max_bytes:
            raise EngineGateError(
                "engine file larger than the configured limit",
                path=where,
                expected=f"<= {self._max_bytes} bytes",
                found=st.st_size,
            )
        return st.st_size

    @staticmethod
    def _check_host(parsed: ParsedEngineName, expected: RuntimeTarget, where: str) -> None:
        if parsed.runtime != expected.runtime:
            raise EngineGateError(
                "engine was built for another runtime",
                path=where,
                expected=expected.runtime,
                found=parsed.runtime,
            )
        if parsed.runtime_version != expected.runtime_version:
            raise EngineGateError(
                "engine was built by another runtime version",
                path=where,
                expected=expected.runtime_version,
                found=parsed.runtime_version,
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
        except (KeyError, ValueError, TypeError) as exc:
            raise EngineGateError(
                f"metadata identity is malformed: {exc}", path=where
            ) from exc
        if ParsedEngineName.of(identity) != parsed:
            raise EngineGateError(
                "metadata identity does not match the engine filename", path=where
            )
        return identity
