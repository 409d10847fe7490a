"""The trust decisions the store asks for, over raw bytes: a fetched set's signature is
checked before any of its metadata is parsed, and a host whose own policy requires
signatures never uploads an unsigned engine. The policy itself (keys, ``trust = auto``)
lives in ``trt_provision.trust``; the store knows only this Protocol."""

from __future__ import annotations

from typing import Protocol

from trt_provision.errors import EngineGateError

UNAUTHENTICATED_WARNING = "remote engines are not authenticated; set public_key"


class SignatureVerifier(Protocol):
    """Trust decision over raw sidecar bytes, before anything is published locally."""

    def check_bytes(self, metadata: bytes, signature: bytes | None, where: str) -> None: ...


def check_before_parse(
    trust: SignatureVerifier | None, metadata: bytes, signature: bytes | None, where: str
) -> None:
    """The signature covers the raw metadata bytes: where one is required, nothing of the
    metadata may be parsed before this returns (EngineGateError when it does not verify)."""
    if trust is not None:
        trust.check_bytes(metadata, signature, where)


def refuses_unsigned(trust: SignatureVerifier | None) -> bool:
    """Whether this host's own trust policy would refuse an unsigned engine."""
    if trust is None:
        return False
    try:
        trust.check_bytes(b"{}", None, "unsigned engine")
    except EngineGateError:
        return True
    return False
