"""Ed25519 signing and the trust policies (no server needed)."""

from __future__ import annotations

import hashlib
import json
import stat
from pathlib import Path

import pytest

from trt_provision.errors import EngineGateError, ManifestError, StoreError
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.trust import (
    SignatureTrust,
    TrustPolicy,
    generate_keypair,
    load_public_key,
    sign_engine,
    signature_path,
    verify_engine,
)
from trt_provision.types import EngineCacheEntry, EngineIdentity, PrecisionMode, RuntimeTarget

pytestmark = pytest.mark.tier0

TARGET = RuntimeTarget(
    runtime="ortcpu", runtime_version="1.20.1", target="cpu-avx2", platform="host"
)


def _engine(root: Path) -> EngineCacheEntry:
    store = LocalEngineStore(root)
    identity = EngineIdentity(
        model_name="m1",
        model_sha256=hashlib.sha256(b"m1").hexdigest(),
        precision=PrecisionMode.FP16,
        runtime=TARGET.runtime,
        runtime_version=TARGET.runtime_version,
        target=TARGET.target,
        platform=TARGET.platform,
        options_digest="abcdefabcdef",
    )
    staged = store.staging_path(identity)
    staged.write_bytes(b"engine" * 100)
    return store.publish(identity, staged, {})


@pytest.fixture
def keypair(tmp_path: Path) -> tuple[Path, Path]:
    private = tmp_path / "keys" / "fleet.key"
    public_path, _ = generate_keypair(private)
    return private, public_path


def test_private_key_is_0600_and_never_overwritten(keypair: tuple[Path, Path]) -> None:
    private, public = keypair
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert public.name == "fleet.key.pub"
    assert b"PRIVATE KEY" in private.read_bytes()
    assert b"PUBLIC KEY" in public.read_bytes()
    with pytest.raises(StoreError, match="already exists"):
        generate_keypair(private)


def test_sign_and_verify(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    private, public_path = keypair
    entry = _engine(tmp_path / "cache")
    sig = sign_engine(entry.engine_path, private)
    assert sig == signature_path(entry.engine_path)
    assert sig.read_text().startswith("ed25519:")
    public = load_public_key(public_path)
    assert verify_engine(entry.engine_path, [public]) == public.key_id


def test_changed_metadata_breaks_the_signature(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    private, public_path = keypair
    entry = _engine(tmp_path / "cache")
    sign_engine(entry.engine_path, private)
    meta = json.loads(entry.metadata_path.read_text())
    meta["sha256"] = "0" * 64
    entry.metadata_path.write_text(json.dumps(meta))
    with pytest.raises(EngineGateError, match="does not verify"):
        verify_engine(entry.engine_path, [load_public_key(public_path)])


@pytest.mark.parametrize(
    ("policy", "signed", "key", "error"),
    [
        (TrustPolicy.OFF, False, None, None),
        (TrustPolicy.VERIFY_IF_SIGNED, False, "fleet", None),
        (TrustPolicy.VERIFY_IF_SIGNED, True, "fleet", None),
        (TrustPolicy.VERIFY_IF_SIGNED, True, "other", "unknown key"),
        (TrustPolicy.REQUIRE, True, "fleet", None),
        (TrustPolicy.REQUIRE, False, "fleet", "not signed"),
        (TrustPolicy.REQUIRE, True, "other", "unknown key"),
    ],
)
def test_gate_with_trust_policy(
    tmp_path: Path,
    keypair: tuple[Path, Path],
    policy: TrustPolicy,
    signed: bool,
    key: str | None,
    error: str | None,
) -> None:
    private, public_path = keypair
    keys = []
    if key == "fleet":
        keys = [load_public_key(public_path)]
    elif key == "other":
        keys = [generate_keypair(tmp_path / "other.key")[1]]
    root = tmp_path / "cache"
    entry = _engine(root)
    if signed:
        sign_engine(entry.engine_path, private)
    gate = DefaultEngineGate(cache_root=root, trust=SignatureTrust(policy, keys))
    if error is None:
        assert gate.validate(entry.engine_path, TARGET).sha256 == entry.sha256
    else:
        with pytest.raises(EngineGateError, match=error):
            gate.validate(entry.engine_path, TARGET)


def test_garbage_signature_is_refused(tmp_path: Path, keypair: tuple[Path, Path]) -> None:
    entry = _engine(tmp_path / "cache")
    signature_path(entry.engine_path).write_bytes(b"not a signature\n")
    trust = SignatureTrust(TrustPolicy.VERIFY_IF_SIGNED, [load_public_key(keypair[1])])
    with pytest.raises(EngineGateError, match="malformed"):
        trust.check(entry.engine_path, json.loads(entry.metadata_path.read_bytes()))


def test_policy_needs_a_key_and_parses() -> None:
    with pytest.raises(ManifestError):
        SignatureTrust(TrustPolicy.REQUIRE, [])
    assert TrustPolicy.parse("verify-if-signed") is TrustPolicy.VERIFY_IF_SIGNED
    with pytest.raises(ManifestError, match="unknown trust policy"):
        TrustPolicy.parse("maybe")


def test_bad_key_files(tmp_path: Path) -> None:
    bad = tmp_path / "bad.pub"
    bad.write_text("hello")
    with pytest.raises(ManifestError, match="not a PEM public key"):
        load_public_key(bad)
    with pytest.raises(ManifestError, match="public key missing"):
        load_public_key(tmp_path / "missing.pub")


def test_generate_refuses_the_same_path_for_both_keys(tmp_path: Path) -> None:
    from trt_provision.errors import ManifestError
    from trt_provision.trust import generate_keypair

    with pytest.raises(ManifestError, match="must differ"):
        generate_keypair(tmp_path / "k", tmp_path / "k")
    assert not (tmp_path / "k").exists()
