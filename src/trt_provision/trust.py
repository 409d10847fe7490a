"""Engine trust: Ed25519 signatures over the metadata sidecar.

The metadata sidecar (``X.engine.json``) names the engine file and carries its sha256, so a
signature over those exact bytes authenticates the engine too. The signature lives beside
it as ``X.engine.sig``, one ASCII line::

    ed25519:<key id, 16 hex>:<base64 signature>

The key id (a prefix of the sha256 of the raw public key) only picks the key to try and
names it in errors; the signature itself is what is checked.

Policies: ``off`` (no check), ``verify-if-signed`` (a present signature must verify),
``require`` (every engine needs a valid signature from a configured key).
``cryptography`` is imported on first use (pip extra ``remote``).
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import enum
import hashlib
import logging
import os
import re
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision._fs import atomic_write_bytes, fsync_dir, read_named_file
from trt_provision._lazy import import_optional
from trt_provision.errors import EngineGateError, ManifestError, StoreError
from trt_provision.integrity import (
    BLOCK_SIZE,
    MAX_METADATA_BYTES,
    MAX_SIGNATURE_FILE_BYTES,
    loads_bounded,
    read_cache_file,
)

__all__ = [
    "SIGNATURE_SUFFIX",
    "PublicKey",
    "SignatureTrust",
    "TrustPolicy",
    "format_signature",
    "generate_keypair",
    "load_public_key",
    "remove_signature",
    "sign_engine",
    "sign_metadata",
    "signature_path",
    "trust_from_settings",
    "verify_engine",
]

log = logging.getLogger(__name__)

SIGNATURE_SUFFIX = ".sig"
MAX_SIGNATURE_BYTES = 1024
# An Ed25519 PEM key is a few hundred bytes: a key file is read to this bound, without
# blocking, so /dev/zero or a FIFO named as a key is an error, not 4 GB or a hang.
MAX_KEY_FILE_BYTES = 64 << 10
KEY_ID_CHARS = 16
_SIG_RE = re.compile(r"ed25519:([0-9a-f]{16}):([A-Za-z0-9+/=]{86,88})")


class TrustPolicy(str, enum.Enum):
    OFF = "off"
    VERIFY_IF_SIGNED = "verify-if-signed"
    REQUIRE = "require"

    @classmethod
    def parse(cls, value: str) -> TrustPolicy:
        try:
            return cls(value)
        except ValueError as exc:
            raise ManifestError(
                "unknown trust policy",
                key="trust",
                expected="off | verify-if-signed | require",
                found=value,
            ) from exc


def _serialization() -> Any:
    return import_optional("cryptography.hazmat.primitives.serialization", "remote")


def _ed25519() -> Any:
    return import_optional("cryptography.hazmat.primitives.asymmetric.ed25519", "remote")


def signature_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + SIGNATURE_SUFFIX)


def _metadata_path(engine_path: Path) -> Path:
    return engine_path.with_name(engine_path.name + ".json")


@dataclass(frozen=True)
class PublicKey:
    """A loaded Ed25519 public key and its short id."""

    key_id: str
    raw: bytes
    source: str = ""

    @classmethod
    def from_raw(cls, raw: bytes, source: str = "") -> PublicKey:
        if len(raw) != 32:
            raise ValueError("an Ed25519 public key has 32 bytes")
        return cls(key_id=hashlib.sha256(raw).hexdigest()[:KEY_ID_CHARS], raw=raw, source=source)

    def verify(self, signature: bytes, data: bytes) -> bool:
        exceptions = import_optional("cryptography.exceptions", "remote")
        key = _ed25519().Ed25519PublicKey.from_public_bytes(self.raw)
        try:
            key.verify(signature, data)
        except exceptions.InvalidSignature:
            return False
        return True


def _key_error(message: str, path: Path, exc: BaseException | None = None) -> ManifestError:
    err = ManifestError(message, path=str(path))
    if exc is not None:
        err.__cause__ = exc
    return err


def generate_keypair(
    private_path: Path, public_path: Path | None = None, *, overwrite: bool = False
) -> tuple[Path, PublicKey]:
    """Write a new private key (PEM, mode 0600) and its public key (PEM); return the latter."""
    private_path = Path(private_path)
    public_path = Path(public_path) if public_path else private_path.with_name(
        private_path.name + ".pub"
    )
    if public_path.resolve() == private_path.resolve():
        raise ManifestError(
            "the public key path must differ from the private key path",
            path=str(private_path),
        )
    ser = _serialization()
    key = _ed25519().Ed25519PrivateKey.generate()
    private_pem = key.private_bytes(
        ser.Encoding.PEM, ser.PrivateFormat.PKCS8, ser.NoEncryption()
    )
    public_pem = key.public_key().public_bytes(
        ser.Encoding.PEM, ser.PublicFormat.SubjectPublicKeyInfo
    )
    raw = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    for path in (private_path, public_path):
        if path.exists() and not overwrite:
            raise StoreError(
                "key file already exists (pass overwrite to replace it)", path=str(path)
            )
    try:
        private_path.parent.mkdir(parents=True, exist_ok=True)
        public_path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise StoreError(
            f"cannot create key directory: {exc.strerror}", path=str(private_path.parent)
        ) from exc
    # The temp file is created 0600, so the private key is never readable by others.
    atomic_write_bytes(private_path, private_pem, mode=0o600)
    os.chmod(private_path, 0o600)
    atomic_write_bytes(public_path, public_pem, mode=0o644)
    public = PublicKey.from_raw(raw, source=str(public_path))
    log.info(
        "generated Ed25519 key pair %s (key id %s)",
        public_path,
        public.key_id,
        extra={"event": "trust.key.generated", "key_id": public.key_id},
    )
    return public_path, public


def _read_key(path: Path, what: str) -> bytes:
    """A key file's bytes: a regular file (a symlink followed to one), at most
    MAX_KEY_FILE_BYTES, opened without blocking; ManifestError naming the file if not."""
    if not str(path) or Path(path).name == "":
        raise _key_error(f"{what} is an empty path or a directory", path)
    return read_named_file(path, MAX_KEY_FILE_BYTES, what=what, error=ManifestError)


def _load_private_key(path: Path) -> Any:
    path = Path(path)
    pem = _read_key(path, "private key")
    try:
        key = _serialization().load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        # The message of these errors never contains key material.
        raise _key_error("not an unencrypted PEM private key", path, exc) from exc
    if not isinstance(key, _ed25519().Ed25519PrivateKey):
        raise _key_error("private key is not Ed25519", path)
    return key


def load_public_key(path: Path) -> PublicKey:
    path = Path(path)
    pem = _read_key(path, "public key")
    ser = _serialization()
    try:
        key = ser.load_pem_public_key(pem)
    except (ValueError, TypeError) as exc:
        raise _key_error("not a PEM public key", path, exc) from exc
    if not isinstance(key, _ed25519().Ed25519PublicKey):
        raise _key_error("public key is not Ed25519", path)
    return PublicKey.from_raw(key.public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw), str(path))


def format_signature(key_id: str, signature: bytes) -> bytes:
    return f"ed25519:{key_id}:{base64.b64encode(signature).decode()}\n".encode()


def sign_metadata(metadata_bytes: bytes, private_key_path: Path) -> bytes:
    """Return the signature-file content for ``metadata_bytes``."""
    ser = _serialization()
    key = _load_private_key(private_key_path)
    raw_public = key.public_key().public_bytes(ser.Encoding.Raw, ser.PublicFormat.Raw)
    key_id = PublicKey.from_raw(raw_public).key_id
    return format_signature(key_id, key.sign(metadata_bytes))


def _read_named_file(path: Path, cap: int, what: str) -> bytes:
    """A sidecar of an engine the user named (``keys sign|verify``, or beside a checked
    engine): a regular file (a symlink is followed, but only to a regular file), at most
    ``cap`` bytes, opened without blocking. A FIFO, ``/dev/zero`` or an endless file is
    refused instead of hanging or filling memory; EngineGateError names the path."""
    return read_cache_file(path, cap, what=what, root=Path(os.sep), check_owner=False)


def sign_engine(engine_path: Path, private_key_path: Path) -> Path:
    """Sign the metadata sidecar of ``engine_path``; write ``<engine>.sig`` atomically."""
    engine_path = Path(engine_path)
    meta = _metadata_path(engine_path)
    try:
        data = _read_named_file(meta, MAX_METADATA_BYTES, "metadata sidecar")
    except EngineGateError as exc:
        raise StoreError(f"cannot sign: {exc.message}", path=str(meta)) from exc
    sig = signature_path(engine_path)
    atomic_write_bytes(sig, sign_metadata(data, private_key_path))
    log.info(
        "signed %s",
        engine_path.name,
        extra={"event": "trust.engine.signed", "engine": engine_path.name},
    )
    return sig


def _parse_signature(raw: bytes, where: str) -> tuple[str, bytes]:
    if len(raw) > MAX_SIGNATURE_BYTES:
        raise EngineGateError("signature file too large", path=where)
    try:
        text = raw.decode("ascii").strip()
    except UnicodeDecodeError as exc:
        raise EngineGateError("signature file is not ASCII", path=where) from exc
    match = _SIG_RE.fullmatch(text)
    if match is None:
        raise EngineGateError("signature file is malformed", path=where)
    try:
        signature = base64.b64decode(match.group(2), validate=True)
    except binascii.Error as exc:
        raise EngineGateError("signature is not valid base64", path=where) from exc
    if len(signature) != 64:
        raise EngineGateError("signature has the wrong length", path=where)
    return match.group(1), signature


class SignatureTrust:
    """The gate's ``TrustCheck`` hook: enforce a :class:`TrustPolicy` with a set of keys."""

    def __init__(self, policy: TrustPolicy, public_keys: Iterable[PublicKey] = ()) -> None:
        self._policy = TrustPolicy(policy)
        self._keys: tuple[PublicKey, ...] = tuple(public_keys)
        if self._policy is not TrustPolicy.OFF and not self._keys:
            raise ManifestError(
                "trust policy needs at least one public key",
                key="trust",
                found=self._policy.value,
            )

    @classmethod
    def from_key_files(cls, policy: TrustPolicy, paths: Sequence[Path]) -> SignatureTrust:
        return cls(policy, [load_public_key(p) for p in paths])

    @property
    def policy(self) -> TrustPolicy:
        return self._policy

    @property
    def key_ids(self) -> tuple[str, ...]:
        return tuple(k.key_id for k in self._keys)

    def check(self, engine_path: Path, metadata: Mapping[str, Any]) -> None:
        """Raise EngineGateError unless the policy accepts the engine's signature."""
        if self._policy is TrustPolicy.OFF:
            return
        engine_path = Path(engine_path)
        sig_path = signature_path(engine_path)
        signature: bytes | None = None
        if os.path.lexists(sig_path):
            signature = _read_named_file(sig_path, MAX_SIGNATURE_FILE_BYTES, "signature")
        if signature is None and self._policy is TrustPolicy.VERIFY_IF_SIGNED:
            return
        meta_path = _metadata_path(engine_path)
        data = _read_named_file(meta_path, MAX_METADATA_BYTES, "metadata sidecar")
        self.check_bytes(data, signature, str(engine_path))
        # The gate parsed the sidecar earlier; refuse if it changed since (what was signed
        # must be what was checked). Parsed with bounded depth: it may have been swapped.
        signed = loads_bounded(data, str(meta_path), "signed metadata")
        if signed != dict(metadata):
            raise EngineGateError(
                "metadata sidecar changed while it was checked", path=str(meta_path)
            )

    def check_bytes(self, metadata: bytes, signature: bytes | None, where: str) -> None:
        """Policy decision over raw sidecar bytes (used before anything is published)."""
        if self._policy is TrustPolicy.OFF:
            return
        if signature is None:
            if self._policy is TrustPolicy.REQUIRE:
                raise EngineGateError(
                    "engine is not signed and the trust policy requires a signature",
                    path=where,
                    policy=self._policy.value,
                )
            return
        key_id, raw_sig = _parse_signature(signature, where)
        # Try the named key first; any configured key that verifies is accepted.
        keys = sorted(self._keys, key=lambda k: k.key_id != key_id)
        for key in keys:
            if key.verify(raw_sig, metadata):
                return
        known = key_id in self.key_ids
        raise EngineGateError(
            "signature does not verify" if known else "engine is signed by an unknown key",
            path=where,
            key_id=key_id,
            policy=self._policy.value,
        )


def verify_engine(engine_path: Path, public_keys: Sequence[PublicKey]) -> str:
    """Verify ``<engine>.sig`` over the metadata sidecar, and the engine's bytes against the
    sha256 that signed metadata carries; return the key id that signed it.

    Every file is read bounded and without blocking (``_read_named_file``): a ``.sig``,
    ``.json`` or engine that is a FIFO, a device or a symlink to one is refused, never
    waited on or read to the end of memory.
    """
    engine_path = Path(engine_path)
    sig = signature_path(engine_path)
    if not os.path.lexists(sig):
        raise EngineGateError("engine is not signed", path=str(sig))
    raw = _read_named_file(sig, MAX_SIGNATURE_FILE_BYTES, "signature")
    meta = _metadata_path(engine_path)
    data = _read_named_file(meta, MAX_METADATA_BYTES, "metadata sidecar")
    SignatureTrust(TrustPolicy.REQUIRE, public_keys).check_bytes(data, raw, str(engine_path))
    # Only now, signed, are the metadata bytes parsed.
    metadata = loads_bounded(data, str(meta))
    expected = metadata.get("sha256") if isinstance(metadata, dict) else None
    if not isinstance(expected, str):
        raise EngineGateError("signed metadata carries no sha256", path=str(meta))
    actual = _hash_engine(engine_path)
    if actual != expected:
        raise EngineGateError(
            "engine bytes do not match the signed metadata's sha256",
            path=str(engine_path),
            expected=expected,
            found=actual,
        )
    return _parse_signature(raw, str(sig))[0]


def _hash_engine(engine_path: Path) -> str:
    """sha256 of a regular file (a symlink followed only to a regular file), opened
    without blocking so that a FIFO or device named like an engine is refused."""
    where = str(engine_path)
    try:
        fd = os.open(
            os.path.realpath(engine_path),
            os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | getattr(os, "O_CLOEXEC", 0),
        )
    except FileNotFoundError as exc:
        raise EngineGateError("engine file missing", path=where) from exc
    except OSError as exc:
        raise EngineGateError(f"engine unreadable: {exc.strerror}", path=where) from exc
    digest = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise EngineGateError("engine is not a regular file", path=where)
        while chunk := os.read(fd, BLOCK_SIZE):
            digest.update(chunk)
    except OSError as exc:
        raise EngineGateError(f"engine unreadable: {exc.strerror}", path=where) from exc
    finally:
        os.close(fd)
    return digest.hexdigest()


def remove_signature(engine_path: Path) -> None:
    """Drop a stale signature (e.g. after the metadata was rewritten)."""
    sig = signature_path(engine_path)
    with contextlib.suppress(FileNotFoundError):
        sig.unlink()
        fsync_dir(sig.parent)


def trust_from_settings(policy: str, public_keys: Sequence[Path] = ()) -> SignatureTrust | None:
    """The trust hook for a configured policy, or None when it is ``off``.

    With a public key configured and no explicit policy, callers pass ``require`` (the
    default for remote pulls).
    """
    parsed = TrustPolicy.parse(policy)
    if parsed is TrustPolicy.OFF:
        return None
    return SignatureTrust.from_key_files(parsed, public_keys)
