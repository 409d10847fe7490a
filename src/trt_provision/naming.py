"""The engine filename schema: field patterns, their checks and the name itself.

The lowest layer of the identity (see :mod:`trt_provision.identity` for the schema): the DTOs
in ``types.py`` validate their fields here, and ``identity.py`` builds on both.
"""

from __future__ import annotations

import re
from typing import Protocol

from trt_provision.errors import InvalidNameError

__all__ = [
    "DIGEST_CHARS",
    "ENGINE_SUFFIX",
    "HASH_CHARS",
    "MAX_MODEL_NAME",
    "MAX_VERSION_CHARS",
    "IdentityFields",
    "engine_filename",
    "normalize_runtime_version",
    "validate_identity_fields",
    "validate_model_name",
]


class _Precision(Protocol):
    @property
    def value(self) -> str: ...


class IdentityFields(Protocol):
    """The fields of an engine identity that its filename carries."""

    @property
    def model_name(self) -> str: ...
    @property
    def model_sha256(self) -> str: ...
    @property
    def precision(self) -> _Precision: ...
    @property
    def runtime(self) -> str: ...
    @property
    def runtime_version(self) -> str: ...
    @property
    def target(self) -> str: ...
    @property
    def platform(self) -> str: ...
    @property
    def options_digest(self) -> str: ...


ENGINE_SUFFIX = ".engine"
MAX_MODEL_NAME = 64
HASH_CHARS = 16
DIGEST_CHARS = 12

_MODEL_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_-]*")
_VERSION_RE = re.compile(r"[0-9][0-9a-z]*(\.[0-9a-z]+)*(\+[0-9a-z]+(\.[0-9a-z]+)*)?")
MAX_VERSION_CHARS = 64
_TARGET_RE = re.compile(r"sm[0-9]{2,3}((\+|cc)|-dla[0-9]{1,2})?|cpu-[a-z0-9]+")
_PLATFORM_RE = re.compile(r"jp[0-9]+(\.[0-9]+)*|dgpu|host")
_RUNTIME_RE = re.compile(r"[a-z][a-z0-9]*")
_HEX_RE = re.compile(r"[0-9a-f]+")


def validate_model_name(name: str) -> str:
    """Refuse names that could escape the cache directory or break the schema."""
    if not isinstance(name, str) or not name:
        raise InvalidNameError("model name must be a non-empty string", name=repr(name))
    if len(name) > MAX_MODEL_NAME:
        raise InvalidNameError(
            f"model name is longer than {MAX_MODEL_NAME} characters", name=repr(name[:80])
        )
    if "\x00" in name or "/" in name or "\\" in name or ".." in name:
        raise InvalidNameError(
            "model name must not contain path separators, '..' or NUL", name=repr(name)
        )
    if not _MODEL_RE.fullmatch(name):
        raise InvalidNameError(
            "model name may use only letters, digits, '_' and '-' and must start with a "
            "letter or digit",
            name=repr(name),
        )
    return name


def normalize_runtime_version(version: str) -> str:
    """The canonical filename-safe form of a runtime version (see the module docstring)."""
    if not isinstance(version, str):
        raise InvalidNameError("runtime version must be a string", found=repr(version))
    text = version.strip().lower()
    release, plus, local = text.partition("+")
    canonical = re.sub(r"[-_]", ".", release) + (plus + re.sub(r"[-_]", ".", local))
    if len(canonical) > MAX_VERSION_CHARS or not _VERSION_RE.fullmatch(canonical):
        raise InvalidNameError(
            "runtime version cannot be written in an engine filename",
            expected="<release>[+<local>] of letters, digits and '.'",
            found=repr(version[:80]),
        )
    return canonical


def validate_identity_fields(identity: IdentityFields) -> None:
    """Check every field against the filename schema; a bad one raises InvalidNameError."""
    validate_model_name(identity.model_name)
    checks: list[tuple[str, str, re.Pattern[str]]] = [
        ("model_sha256", identity.model_sha256, _HEX_RE),
        ("runtime", identity.runtime, _RUNTIME_RE),
        ("runtime_version", identity.runtime_version, _VERSION_RE),
        ("target", identity.target, _TARGET_RE),
        ("platform", identity.platform, _PLATFORM_RE),
        ("options_digest", identity.options_digest, _HEX_RE),
    ]
    for field_name, value, pattern in checks:
        if not isinstance(value, str) or not pattern.fullmatch(value):
            raise InvalidNameError(
                f"identity field {field_name} is malformed", field=field_name, found=repr(value)
            )
    if len(identity.model_sha256) < HASH_CHARS:
        raise InvalidNameError(
            "identity model_sha256 must have at least 16 hex characters", field="model_sha256"
        )
    if len(identity.options_digest) != DIGEST_CHARS:
        raise InvalidNameError(
            f"identity options_digest must have {DIGEST_CHARS} hex characters",
            field="options_digest",
        )


def engine_filename(identity: IdentityFields) -> str:
    return (
        ".".join(
            [
                identity.model_name,
                identity.model_sha256[:HASH_CHARS],
                identity.precision.value,
                identity.target,
                identity.platform.replace(".", "_"),
                f"{identity.runtime}-{identity.runtime_version.replace('.', '_')}",
                identity.options_digest,
            ]
        )
        + ENGINE_SUFFIX
    )
