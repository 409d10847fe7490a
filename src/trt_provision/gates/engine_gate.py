"""The default EngineGate: refuse an engine before any runtime import unless it is intact,
built for this host and runtime, and trusted.

Order of checks (cheapest first; nothing after a refusal runs):

0. the directories: the model directory is a real directory (never a symlink), and it, the
   cache directory and every directory above it are owned by this user or root and not
   writable by others (``_fs.untrusted_reason``: the rule ssh applies to ``~/.ssh``);
1. the engine file: present, a regular file (a symlink only when it stays inside the cache
   directory), owned and writable as above, not empty, not larger than the configured limit;
2. the filename: runtime label, platform (JetPack / dGPU), GPU target (``sm80+`` runs on any
   sm >= 80) and runtime version;
3. the sidecars (``.sha256``, ``.json``, and ``.sig`` when a trust policy runs) are read
   through ``integrity.read_cache_file``: regular files inside the cache, owned as above,
   size-bounded; a trust policy that can check raw bytes checks the signature now, before
   the metadata is parsed;
4. the ``.sha256`` sidecar's second line matches the metadata bytes (a one-line sidecar of
   the older form is refused); the metadata parses (bounded depth), names this file,
   carries the identity the filename encodes and the size the file has; a
   version-compatible engine is refused unless host code is allowed; the two sidecars
   agree on the digest;
5. the engine bytes are read once, through the descriptor whose size was checked, and
   hashed;
6. an ONNX Runtime engine is an ONNX file: external-data locations that leave the cache
   directory (absolute, ``..``, a symlink out) are refused before ONNX Runtime opens it.

Nothing here imports a runtime, NVML, numpy or onnx.
"""

from __future__ import annotations

import errno
import hashlib
import logging
import mmap
import os
import stat
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Protocol

from trt_provision._fs import untrusted_chain, untrusted_reason
from trt_provision.errors import EngineGateError, InvalidNameError, ManifestError
from trt_provision.identity import ParsedEngineName, parse_engine_filename
from trt_provision.integrity import (
    BLOCK_SIZE,
    MAX_METADATA_BYTES,
    MAX_SIDECAR_BYTES,
    MAX_SIGNATURE_FILE_BYTES,
    parse_metadata_bytes,
    parse_sha256_bytes,
    read_cache_file,
)
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
# Runtimes whose engines are ONNX files (ONNX Runtime's optimized models).
ONNX_ENGINE_RUNTIMES = frozenset({"ortcpu", "ortcuda"})


class TrustCheck(Protocol):
    """Signature policy hook: raise EngineGateError when the engine is not trusted.

    A hook that also has ``check_bytes(metadata: bytes, signature: bytes | None, where)``
    gets the sidecar bytes the gate read (bounded, checked), before they are parsed.
    """

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
        # os.path.realpath, not Path.resolve: a symlink loop must not raise RuntimeError.
        self._root = Path(os.path.realpath(cache_root)) if cache_root is not None else None
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
        self._check_directories(engine_path)
        try:
            parsed = parse_engine_filename(engine_path.name)
        except InvalidNameError as exc:
            raise EngineGateError("not an engine filename", path=where) from exc
        version_differs = self._check_host(parsed, expected, where)
        sha_path = engine_path.with_name(engine_path.name + ".sha256")
        meta_path = engine_path.with_name(engine_path.name + ".json")
        sha_raw = read_cache_file(
            sha_path, MAX_SIDECAR_BYTES, what="sha256 sidecar", root=self._root
        )
        meta_raw = read_cache_file(
            meta_path, MAX_METADATA_BYTES, what="metadata sidecar", root=self._root
        )
        check_bytes: Callable[[bytes, bytes | None, str], None] | None = getattr(
            self._trust, "check_bytes", None
        )
        if check_bytes is not None:
            # The signature covers the metadata bytes: check it before parsing them.
            check_bytes(meta_raw, self._read_signature(engine_path), where)
        # The .sha256 covers the metadata too (it decides shapes and the memory budget): an
        # edited .json, or a sidecar of the older one-line form, is refused before parsing.
        claimed = parse_sha256_bytes(sha_raw, sha_path, engine_path.name, meta_raw)
        metadata = parse_metadata_bytes(meta_raw, meta_path, engine_path.name)
        identity = self._identity_from_metadata(metadata, parsed, where)
        self._check_version_compatibility(metadata, parsed, expected, version_differs, where)
        self._check_recorded_size(metadata, facts.size, where)
        if metadata["sha256"] != claimed:
            raise EngineGateError(
                "metadata and sha256 sidecars disagree",
                path=where,
                expected=claimed,
                found=metadata["sha256"],
            )
        if self._trust is not None and check_bytes is None:
            self._trust.check(engine_path, metadata)
        actual = known_sha256 if known_sha256 is not None else self._hash_once(facts, where)
        if actual != claimed:
            raise EngineGateError(
                "engine sha256 does not match its sidecar",
                path=where,
                expected=claimed,
                found=actual,
            )
        if parsed.runtime in ONNX_ENGINE_RUNTIMES:
            self._check_onnx_external_data(engine_path, facts, where)
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
            # realpath leaves a symlink loop unresolved (Path.resolve raises RuntimeError):
            # the stat below then fails with ELOOP and the engine is refused.
            target = Path(os.path.realpath(engine_path))
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
                    "engine symlink loops" if exc.errno == errno.ELOOP
                    else "engine symlink is dangling",
                    path=where,
                    found=str(target),
                ) from exc
        if not stat.S_ISREG(st.st_mode):
            raise EngineGateError("engine is not a regular file", path=where)
        untrusted = untrusted_reason(target, st)
        if untrusted is not None:
            raise EngineGateError(f"engine {untrusted[0]}", path=where, fix=untrusted[1])
        if self._root is not None and not self._inside_root(Path(os.path.realpath(engine_path))):
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

    def _check_directories(self, engine_path: Path) -> None:
        """The model directory is real and trusted; so is every directory down to the cache."""
        model_dir = engine_path.parent
        try:
            st = os.lstat(model_dir)
        except OSError as exc:
            raise EngineGateError(
                f"model directory unreadable: {exc.strerror}", path=str(model_dir)
            ) from exc
        if stat.S_ISLNK(st.st_mode):
            raise EngineGateError(
                "model directory is a symlink; the cache never follows one",
                path=str(model_dir),
                fix=f"remove the symlink {model_dir}",
            )
        untrusted = untrusted_reason(model_dir, st)
        if untrusted is not None:
            raise EngineGateError(
                f"model directory {untrusted[0]}", path=str(model_dir), fix=untrusted[1]
            )
        if self._root is not None:
            found = untrusted_chain(self._root)
            if found is not None:
                raise EngineGateError(
                    f"cache directory or a directory above it {found[1]}",
                    path=str(found[0]),
                    fix=found[2],
                )

    def _read_signature(self, engine_path: Path) -> bytes | None:
        sig = engine_path.with_name(engine_path.name + ".sig")
        if not os.path.lexists(sig):
            return None
        return read_cache_file(sig, MAX_SIGNATURE_FILE_BYTES, what="signature", root=self._root)

    def _check_onnx_external_data(self, engine_path: Path, facts: _FileFacts, where: str) -> None:
        """Refuse an ONNX engine whose external data would be read from outside the cache.

        The protobuf wire format is walked over a read-only map of the file, skipping
        tensor payloads by their length, so the cost is the number of graph fields, not
        the size of the weights."""
        try:
            fd = os.open(facts.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            raise EngineGateError(f"engine unreadable: {exc.strerror}", path=where) from exc
        try:
            st = os.fstat(fd)
            if (st.st_dev, st.st_ino, st.st_size) != (facts.device, facts.inode, facts.size):
                raise EngineGateError("engine changed while it was being checked", path=where)
            with mmap.mmap(fd, 0, access=mmap.ACCESS_READ) as mapped:
                try:
                    locations = list(_external_locations(mapped))
                except _TooDeep as exc:
                    raise EngineGateError(
                        "engine's graphs nest too deeply to check", path=where
                    ) from exc
                except _NotProtobuf:
                    # Not parseable as protobuf: ONNX Runtime cannot parse it either, so it
                    # reads no external data; it refuses the file when it loads it.
                    return
        except OSError as exc:
            raise EngineGateError(f"engine unreadable: {exc.strerror}", path=where) from exc
        finally:
            os.close(fd)
        base = Path(os.path.realpath(engine_path.parent))
        inside = self._root if self._root is not None else base
        for location in locations:
            reason = _location_escapes(location, base, inside)
            if reason is not None:
                raise EngineGateError(
                    f"engine's external data {reason}",
                    path=where,
                    expected=f"a file inside {inside}",
                    found=location,
                )

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
            # O_NONBLOCK: a FIFO swapped in after the lstat never blocks the open.
            fd = os.open(facts.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
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
        identity = identity_from_metadata(metadata, where)
        if ParsedEngineName.of(identity) != parsed:
            raise EngineGateError(
                "metadata identity does not match the engine filename",
                path=where,
                expected=parsed.to_dict(),
                found=ParsedEngineName.of(identity).to_dict(),
            )
        return identity


class _NotProtobuf(ValueError):
    """The bytes are not a valid protobuf message."""


class _TooDeep(ValueError):
    """Messages nested deeper than the walker follows (ONNX Runtime's parser might not)."""


# Where tensors can sit in an ONNX ModelProto (field numbers from onnx/onnx.proto3): for
# each message kind, the length-delimited fields that hold a message worth entering.
_CHILDREN: dict[str, dict[int, str]] = {
    "model": {7: "graph", 20: "training", 25: "function"},
    "training": {1: "graph", 2: "graph"},
    "graph": {1: "node", 5: "tensor", 15: "sparse"},
    "function": {7: "node", 11: "attribute"},
    "node": {5: "attribute"},
    "attribute": {5: "tensor", 6: "graph", 10: "tensor", 11: "graph", 22: "sparse",
                  23: "sparse"},
    "sparse": {1: "tensor", 2: "tensor"},
    "tensor": {},
    "entry": {},
}
_TENSOR_EXTERNAL_DATA = 13  # repeated StringStringEntryProto (key = 1, value = 2)
_TENSOR_DATA_LOCATION = 14  # enum; EXTERNAL = 1
_MAX_NESTING = 100  # protobuf's default recursion limit


def _varint(data: Any, pos: int, end: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= end or shift > 63:
            raise _NotProtobuf("truncated or over-long varint")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7


def _fields(data: Any, pos: int, end: int) -> Iterator[tuple[int, int, int, int]]:
    """(field, wire type, value or payload start, payload end) of one message's fields."""
    groups = 0
    while pos < end:
        key, pos = _varint(data, pos, end)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _varint(data, pos, end)
            if not groups:
                yield field, wire, value, pos
            continue
        if wire == 2:
            length, pos = _varint(data, pos, end)
            start, pos = pos, pos + length
        elif wire in (1, 5):
            start, pos = pos, pos + (8 if wire == 1 else 4)
        elif wire == 3:  # a (deprecated) group: protobuf skips it as an unknown field
            groups += 1
            continue
        elif wire == 4 and groups:
            groups -= 1
            continue
        else:
            raise _NotProtobuf(f"wire type {wire}")
        if pos > end:
            raise _NotProtobuf("field runs past its message")
        if not groups:
            yield field, wire, start, pos
    if pos != end or groups:
        raise _NotProtobuf("message ends inside a field")


def _external_locations(data: Any) -> Iterator[str]:
    """Every external-data location of every tensor of a serialized ONNX model: in
    initializers, sparse initializers, node attributes, subgraphs (If/Loop/Scan),
    functions and training graphs. A tensor marked EXTERNAL without a location yields
    ""."""
    stack: list[tuple[str, int, int, int]] = [("model", 0, len(data), 0)]
    while stack:
        kind, start, end, depth = stack.pop()
        if depth > _MAX_NESTING:
            raise _TooDeep("nested too deeply")
        external = False
        locations: list[str] = []
        for field, wire, a, b in _fields(data, start, end):
            if wire == 0:
                external |= kind == "tensor" and field == _TENSOR_DATA_LOCATION and a == 1
            elif wire == 2:
                child = _CHILDREN[kind].get(field)
                if child is not None:
                    stack.append((child, a, b, depth + 1))
                elif kind == "tensor" and field == _TENSOR_EXTERNAL_DATA:
                    entry = {f: bytes(data[x:y]) for f, w, x, y in _fields(data, a, b) if w == 2}
                    if entry.get(1) == b"location":
                        locations.append(entry.get(2, b"").decode("utf-8", "replace"))
        if kind == "tensor":
            if external and not locations:
                yield ""
            yield from locations


def _location_escapes(location: str, base: Path, inside: Path) -> str | None:
    """Why an external-data location (relative to the engine's directory ``base``) is not a
    path inside ``inside``, or None."""
    if not location or "\x00" in location or "\\" in location:
        return "has an empty or malformed location"
    pure = PurePosixPath(location)
    if pure.is_absolute():
        return "location is an absolute path"
    if ".." in pure.parts:
        return "location climbs out with '..'"
    real = Path(os.path.realpath(base / pure))
    if Path(os.path.realpath(inside)) not in real.parents:
        return "location leaves the cache directory (through a symlink)"
    try:
        st = os.stat(real)
    except FileNotFoundError:
        return None  # ONNX Runtime refuses the engine when it finds no data there
    except OSError as exc:
        return f"location cannot be checked: {exc.strerror}"
    if not stat.S_ISREG(st.st_mode):
        # A FIFO or a device: not left to the installed ONNX Runtime to refuse.
        return "location is not a regular file"
    return None


def identity_from_metadata(metadata: Mapping[str, Any], where: str) -> EngineIdentity:
    """The identity a metadata sidecar claims (checked by the caller against the filename)."""
    try:
        raw = metadata["identity"]
        return EngineIdentity(
            model_name=str(raw["model_name"]),
            model_sha256=str(raw["model_sha256"]),
            precision=PrecisionMode(raw["precision"]),
            runtime=str(raw["runtime"]),
            runtime_version=str(raw["runtime_version"]),
            target=str(raw["target"]),
            platform=str(raw["platform"]),
            options_digest=str(raw["options_digest"]),
        )
    except (KeyError, ValueError, TypeError, ManifestError) as exc:
        # An unsafe model name in a sidecar is a bad engine, not a bad manifest.
        raise EngineGateError(f"metadata identity is malformed: {exc}", path=where) from exc
