"""Where the remote store is and how patiently to talk to it: ``S3Settings`` from a
manifest's ``[remote]`` table and the environment, and the redaction of URLs for logs."""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from trt_provision.errors import ManifestError

__all__ = ["DEFAULT_REGION", "S3Settings", "redact_url", "redact_urls", "settings_from_config"]

DEFAULT_REGION = "us-east-1"


def _env(environ: Mapping[str, str], *names: str) -> str | None:
    for name in names:
        value = environ.get(name)
        if value:
            return value
    return None


def redact_url(url: str) -> str:
    """``scheme://host[:port]/path`` of ``url``: no credentials, query or fragment."""
    try:
        parts = urlsplit(url)
        host = parts.hostname or ""
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "<unparseable URL>"
    if not parts.scheme:
        return "<URL>"
    if ":" in host:  # IPv6 literal
        host = f"[{host}]"
    return f"{parts.scheme}://{host}{port}{parts.path}"


_URL_RE = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+")


def redact_urls(text: str) -> str:
    """Every URL inside ``text`` redacted (for messages of third-party exceptions)."""
    return _URL_RE.sub(lambda m: redact_url(m.group(0)), text)


@dataclass(frozen=True)
class S3Settings:
    """Where the shared store lives and how patiently to talk to it. Keys never print."""

    bucket: str
    endpoint: str | None = field(default=None, repr=False)  # None: AWS S3 of ``region``
    prefix: str = ""
    region: str = DEFAULT_REGION
    access_key: str | None = field(default=None, repr=False)
    secret_key: str | None = field(default=None, repr=False)
    session_token: str | None = field(default=None, repr=False)
    path_style: bool = True  # MinIO / SeaweedFS need it; AWS accepts it
    connect_timeout_s: float = 3.0
    read_timeout_s: float = 30.0
    max_attempts: int = 3  # total attempts per request, the first one included
    upload_enabled: bool = True
    max_engine_bytes: int = 64 << 30
    # Every GET (sidecars and engine) ends within this many seconds...
    get_deadline_s: float = 3600.0
    # ...and is given up when slower than this (0: no rate check; the deadline still holds).
    min_rate_bytes_s: int = 64 << 10

    def __post_init__(self) -> None:
        if not self.bucket or "/" in self.bucket:
            raise ManifestError("remote bucket must be a non-empty name", key="remote.bucket")
        object.__setattr__(self, "prefix", self.prefix.strip("/"))
        if self.endpoint is not None and not self.endpoint.startswith(("http://", "https://")):
            raise ManifestError(
                "remote endpoint must be an http:// or https:// URL",
                key="remote.endpoint",
                found=redact_url(self.endpoint),  # never echo credentials in a URL
            )
        if self.endpoint is not None and "@" in self.endpoint:
            raise ManifestError(
                "remote endpoint must not embed credentials", key="remote.endpoint"
            )
        if (self.access_key is None) != (self.secret_key is None):
            raise ManifestError(
                "remote access key and secret key must be given together",
                key="remote.access_key",
            )
        for name in ("connect_timeout_s", "read_timeout_s", "get_deadline_s"):
            value = getattr(self, name)
            if not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
                raise ManifestError(
                    "remote timeouts must be finite and > 0 seconds", key=f"remote.{name}"
                )
        if self.max_attempts < 1:
            raise ManifestError("remote max_attempts must be >= 1", key="remote.max_attempts")
        if self.max_engine_bytes < 1:
            raise ManifestError("remote max_engine_bytes must be >= 1", key="remote")
        if self.min_rate_bytes_s < 0:
            raise ManifestError("remote min_rate_kib_s must be >= 0", key="remote.min_rate_kib_s")

    def __repr__(self) -> str:
        return f"S3Settings({self.describe()})"

    @property
    def has_static_credentials(self) -> bool:
        return self.access_key is not None

    def describe(self) -> dict[str, Any]:
        """What may be logged or printed: no credentials, no query strings."""
        return {
            "endpoint": redact_url(self.endpoint) if self.endpoint else f"aws:{self.region}",
            "bucket": self.bucket,
            "prefix": self.prefix,
            "region": self.region,
            "path_style": self.path_style,
            "credentials": "static" if self.has_static_credentials else "default chain",
        }

    @classmethod
    def from_env(
        cls, environ: Mapping[str, str] | None = None, **overrides: Any
    ) -> S3Settings:
        """Settings from ``ARTIFACTS_*`` (then standard ``AWS_*``) variables.

        ``overrides`` (e.g. from the config file or the command line) win over the
        environment; a None override is ignored.
        """
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {
            "endpoint": _env(env, "ARTIFACTS_ENDPOINT", "AWS_ENDPOINT_URL_S3", "AWS_ENDPOINT_URL"),
            "bucket": _env(env, "ARTIFACTS_BUCKET"),
            "prefix": _env(env, "ARTIFACTS_PREFIX") or "",
            "region": _env(env, "ARTIFACTS_REGION", "AWS_REGION", "AWS_DEFAULT_REGION")
            or DEFAULT_REGION,
        }
        access = _env(env, "ARTIFACTS_ACCESS_KEY")
        secret = _env(env, "ARTIFACTS_SECRET_KEY")
        token = None
        if access is None and secret is None:
            access = _env(env, "AWS_ACCESS_KEY_ID")
            secret = _env(env, "AWS_SECRET_ACCESS_KEY")
            token = _env(env, "AWS_SESSION_TOKEN")
        values.update(access_key=access, secret_key=secret, session_token=token)
        values.update({k: v for k, v in overrides.items() if v is not None})
        if not values.get("bucket"):
            raise ManifestError(
                "no remote bucket configured", key="remote.bucket", env="ARTIFACTS_BUCKET"
            )
        return cls(**values)


_CONFIG_KEYS = {
    "endpoint": "endpoint",
    "bucket": "bucket",
    "prefix": "prefix",
    "region": "region",
    "path_style": "path_style",
    "access_key": "access_key",
    "secret_key": "secret_key",
    "connect_timeout_s": "connect_timeout_s",
    "read_timeout_s": "read_timeout_s",
    "max_attempts": "max_attempts",
    "upload": "upload_enabled",
    "max_engine_mib": "max_engine_bytes",
    "get_deadline_s": "get_deadline_s",
    "min_rate_kib_s": "min_rate_bytes_s",
}


_MAX_MIB = 1 << 43  # bytes stay below 2**63


def settings_from_config(
    table: Mapping[str, Any] | None, environ: Mapping[str, str] | None = None
) -> S3Settings | None:
    """S3Settings from a manifest's ``[remote]`` table plus the environment.

    None when neither configures a bucket (no remote store). Unknown keys and wrong types
    raise ManifestError naming the key.
    """
    env = os.environ if environ is None else environ
    raw = dict(table or {})
    if not raw.get("bucket") and not env.get("ARTIFACTS_BUCKET"):
        return None
    overrides: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in _CONFIG_KEYS:
            raise ManifestError(
                "unknown remote key", key=f"remote.{key}", expected=f"one of {sorted(_CONFIG_KEYS)}"
            )
        target = _CONFIG_KEYS[key]
        if key in ("path_style", "upload"):
            if not isinstance(value, bool):
                raise ManifestError("expected true or false", key=f"remote.{key}")
        elif key in ("connect_timeout_s", "read_timeout_s", "max_engine_mib", "get_deadline_s"):
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value <= 0
            ):
                raise ManifestError(
                    "expected a finite number > 0", key=f"remote.{key}", found=repr(value)[:40]
                )
            if key == "max_engine_mib":
                if value >= _MAX_MIB:
                    raise ManifestError(
                        f"expected a number of MiB below {_MAX_MIB}", key=f"remote.{key}"
                    )
                value = int(value * (1 << 20))
        elif key == "min_rate_kib_s":
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or not 0 <= value < _MAX_MIB
            ):
                raise ManifestError(
                    "expected a finite number >= 0 (0: no minimum rate)",
                    key=f"remote.{key}",
                    found=repr(value)[:40],
                )
            value = int(value * 1024)
        elif key == "max_attempts":
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ManifestError(
                    "expected an integer >= 1", key=f"remote.{key}", found=repr(value)[:40]
                )
        elif not isinstance(value, str):
            raise ManifestError("expected a string", key=f"remote.{key}")
        overrides[target] = value
    return S3Settings.from_env(env, **overrides)

