"""Every refusal of the default engine gate, on real engines published to a temp cache."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from trt_provision.errors import EngineGateError
from trt_provision.gates import engine_gate as gate_module
from trt_provision.gates.engine_gate import (
    DefaultEngineGate,
    is_version_compatible,
    target_accepts,
    version_compatible_accepts,
)
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import EngineCacheEntry, EngineIdentity, PrecisionMode, RuntimeTarget

pytestmark = pytest.mark.tier1

SRC = Path(__file__).resolve().parents[2] / "src"
HOST = RuntimeTarget(runtime="trt", runtime_version="10.3.0", target="sm87", platform="jp6.2")
PAYLOAD = b"TRTENGINE" + bytes(range(256)) * 64


def identity(**over: Any) -> EngineIdentity:
    fields: dict[str, Any] = {
        "model_name": "resnet_router",
        "model_sha256": "3f9a1c2b4d5e6f70" * 4,
        "precision": PrecisionMode.INT8,
        "runtime": HOST.runtime,
        "runtime_version": HOST.runtime_version,
        "target": HOST.target,
        "platform": HOST.platform,
        "options_digest": "a1b2c3d4e5f6",
    }
    fields.update(over)
    return EngineIdentity(**fields)


Publish = Callable[..., EngineCacheEntry]


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "cache"
    root.mkdir()
    return root


@pytest.fixture
def publish(cache: Path) -> Publish:
    store = LocalEngineStore(cache)

    def _publish(
        ident: EngineIdentity | None = None,
        payload: bytes = PAYLOAD,
        metadata: Mapping[str, Any] | None = None,
    ) -> EngineCacheEntry:
        ident = ident or identity()
        staged = store.staging_path(ident)
        staged.write_bytes(payload)
        return store.publish(ident, staged, dict(metadata or {"device_memory_bytes": 1024}))

    return _publish


class CountingGate(DefaultEngineGate):
    """Counts how often the engine bytes are hashed (must be at most once, and last)."""

    hashed = 0

    def _hash_once(self, facts: Any, where: str) -> str:
        self.hashed += 1
        return super()._hash_once(facts, where)


class RecordingTrust:
    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: list[tuple[Path, Mapping[str, Any]]] = []

    def check(self, engine_path: Path, metadata: Mapping[str, Any]) -> None:
        self.calls.append((engine_path, metadata))
        if self.refuse:
            raise EngineGateError("engine signature missing", path=str(engine_path))


def refused(gate: DefaultEngineGate, path: Path, reason: str,
            expected: RuntimeTarget = HOST) -> EngineGateError:
    with pytest.raises(EngineGateError) as info:
        gate.validate(path, expected)
    assert reason in info.value.message, info.value
    return info.value


def rewrite_metadata(entry: EngineCacheEntry, **changes: Any) -> None:
    data = json.loads(entry.metadata_path.read_text())
    data.update(changes)
    entry.metadata_path.write_text(json.dumps(data))
    reseal(entry)


def reseal(entry: EngineCacheEntry, engine_digest: str | None = None) -> None:
    """Rewrite the .sha256 to agree with the metadata as it is now: a consistent rewrite of
    both sidecars, so that the checks after the sidecar hash are reached."""
    from trt_provision.integrity import sha256_sidecar_bytes

    entry.sha256_path.write_bytes(sha256_sidecar_bytes(
        engine_digest or entry.sha256, entry.engine_path.name,
        entry.metadata_path.read_bytes()))


# ------------------------------------------------------------------ the happy path


def test_valid_engine_passes_and_is_hashed_once(cache: Path, publish: Publish) -> None:
    entry = publish()
    gate = CountingGate(cache_root=cache)
    verified = gate.validate(entry.engine_path, HOST)
    assert verified.sha256 == entry.sha256
    assert verified.size_bytes == len(PAYLOAD)
    assert verified.identity == entry.identity
    assert verified.extras["metadata"]["device_memory_bytes"] == 1024
    assert gate.hashed == 1


def test_gate_without_cache_root_passes_plain_files(publish: Publish) -> None:
    entry = publish()
    assert DefaultEngineGate().validate(entry.engine_path, HOST).sha256 == entry.sha256


@pytest.mark.parametrize("bad", [0, -1, True])
def test_max_engine_bytes_must_be_positive(bad: int) -> None:
    with pytest.raises(ValueError):
        DefaultEngineGate(max_engine_bytes=bad)


# ------------------------------------------------------------------ the engine file


def test_missing_engine(cache: Path) -> None:
    path = cache / "m" / identity().filename
    refused(DefaultEngineGate(cache_root=cache), path, "engine file missing")


def test_zero_byte_engine(cache: Path, publish: Publish) -> None:
    entry = publish()
    entry.engine_path.write_bytes(b"")
    gate = CountingGate(cache_root=cache)
    refused(gate, entry.engine_path, "engine file is empty")
    assert gate.hashed == 0


def test_engine_larger_than_limit(cache: Path, publish: Publish) -> None:
    entry = publish()
    gate = CountingGate(cache_root=cache, max_engine_bytes=100)
    err = refused(gate, entry.engine_path, "larger than the configured limit")
    assert err.context["found"] == len(PAYLOAD)
    assert gate.hashed == 0


def test_directory_named_like_an_engine(cache: Path) -> None:
    path = cache / "resnet_router" / identity().filename
    path.mkdir(parents=True)
    refused(DefaultEngineGate(cache_root=cache), path, "not a regular file")


def test_symlink_pointing_outside_the_cache(cache: Path, publish: Publish, tmp_path: Path) -> None:
    entry = publish()
    outside = tmp_path / "elsewhere.bin"
    outside.write_bytes(PAYLOAD)
    entry.engine_path.unlink()
    entry.engine_path.symlink_to(outside)
    err = refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
                  "symlink pointing outside the cache")
    assert err.context["found"] == str(outside.resolve())


def test_symlink_refused_when_no_cache_root_is_known(publish: Publish, tmp_path: Path) -> None:
    entry = publish()
    blob = entry.engine_path.with_name("blob")
    entry.engine_path.rename(blob)
    entry.engine_path.symlink_to(blob)
    refused(DefaultEngineGate(), entry.engine_path, "symlink pointing outside the cache")


def test_symlink_inside_the_cache_is_followed(cache: Path, publish: Publish) -> None:
    entry = publish()
    blobs = cache / ".blobs"
    blobs.mkdir()
    entry.engine_path.rename(blobs / "engine.bin")
    entry.engine_path.symlink_to(blobs / "engine.bin")
    verified = DefaultEngineGate(cache_root=cache).validate(entry.engine_path, HOST)
    assert verified.sha256 == entry.sha256


def test_dangling_symlink(cache: Path, publish: Publish) -> None:
    entry = publish()
    entry.engine_path.unlink()
    entry.engine_path.symlink_to(cache / "gone.bin")
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "dangling")


def test_engine_outside_the_cache_directory(cache: Path, tmp_path: Path, publish: Publish) -> None:
    entry = publish()
    other = tmp_path / "other"
    other.mkdir()
    for src in (entry.engine_path, entry.sha256_path, entry.metadata_path):
        (other / src.name).write_bytes(src.read_bytes())
    refused(DefaultEngineGate(cache_root=cache), other / entry.engine_path.name,
            "outside the cache directory")


def test_not_an_engine_filename(cache: Path, publish: Publish) -> None:
    entry = publish()
    odd = entry.engine_path.with_name("model.engine")
    entry.engine_path.rename(odd)
    refused(DefaultEngineGate(cache_root=cache), odd, "not an engine filename")


# ------------------------------------------------------------------ host and runtime match


def test_onnxruntime_engine_handed_to_tensorrt(cache: Path, publish: Publish) -> None:
    entry = publish(identity(runtime="ortcuda", runtime_version="1.20.1", target="sm87"))
    err = refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
                  "built for another runtime")
    assert (err.context["expected"], err.context["found"]) == ("trt", "ortcuda")


def test_other_jetpack(cache: Path, publish: Publish) -> None:
    entry = publish(identity(platform="jp5.1.2"))
    err = refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "another platform")
    assert err.context["found"] == "jp5.1.2"


def test_dgpu_engine_on_a_jetson(cache: Path, publish: Publish) -> None:
    entry = publish(identity(platform="dgpu"))
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "another platform")


def test_other_sm(cache: Path, publish: Publish) -> None:
    entry = publish(identity(target="sm86"))
    err = refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
                  "another GPU / CPU target")
    assert (err.context["expected"], err.context["found"]) == ("sm87", "sm86")


def test_other_tensorrt_version(cache: Path, publish: Publish) -> None:
    entry = publish(identity(runtime_version="10.4.0"))
    gate = CountingGate(cache_root=cache)
    err = refused(gate, entry.engine_path, "another runtime version")
    assert (err.context["expected"], err.context["found"]) == ("10.3.0", "10.4.0")
    assert gate.hashed == 0


@pytest.mark.parametrize("host_target", ["sm80", "sm86", "sm87", "sm89", "sm90", "sm120"])
def test_ampere_plus_engine_runs_on_any_sm_from_80(
    cache: Path, publish: Publish, host_target: str
) -> None:
    entry = publish(identity(target="sm80+"))
    host = RuntimeTarget("trt", "10.3.0", host_target, "jp6.2")
    assert DefaultEngineGate(cache_root=cache).validate(entry.engine_path, host).sha256


@pytest.mark.parametrize("host_target", ["sm75", "sm72", "sm53", "cpu-avx2"])
def test_ampere_plus_engine_refused_below_80(
    cache: Path, publish: Publish, host_target: str
) -> None:
    entry = publish(identity(target="sm80+"))
    host = RuntimeTarget("trt", "10.3.0", host_target, "jp6.2")
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
            "another GPU / CPU target", expected=host)


@given(built=st.integers(50, 130), host=st.integers(50, 130))
def test_target_accepts_properties(built: int, host: int) -> None:
    assert target_accepts(f"sm{built}+", f"sm{host}") == (host >= built)
    assert target_accepts(f"sm{built}cc", f"sm{host}") == (host == built)
    assert target_accepts(f"sm{built}", f"sm{host}") == (host == built)
    assert not target_accepts(f"sm{built}", "cpu-avx2")


# ------------------------------------------------------------------ version compatibility


def vc_engine(publish: Publish, version: str = "10.3.0") -> EngineCacheEntry:
    return publish(identity(runtime_version=version), metadata={"version_compatible": True})


def test_version_compatible_engine_refused_without_host_code(
    cache: Path, publish: Publish
) -> None:
    entry = vc_engine(publish)
    err = refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "host code")
    assert err.context["expected"] == "allow_host_code"


def test_version_compatible_engine_accepted_when_host_code_allowed(
    cache: Path, publish: Publish
) -> None:
    entry = vc_engine(publish, "10.3.0")
    gate = DefaultEngineGate(cache_root=cache, allow_host_code=True)
    assert gate.validate(entry.engine_path, HOST).sha256 == entry.sha256
    newer = RuntimeTarget("trt", "10.8.1", "sm87", "jp6.2")
    assert gate.validate(entry.engine_path, newer).sha256 == entry.sha256


@pytest.mark.parametrize("host_version", ["10.2.0", "11.0.0", "9.9"])
def test_version_compatible_engine_needs_same_major_and_not_older(
    cache: Path, publish: Publish, host_version: str
) -> None:
    entry = vc_engine(publish, "10.3.0")
    host = RuntimeTarget("trt", host_version, "sm87", "jp6.2")
    refused(DefaultEngineGate(cache_root=cache, allow_host_code=True), entry.engine_path,
            "another runtime version", expected=host)


def test_version_compatible_flag_locations() -> None:
    assert is_version_compatible({"version_compatible": True})
    assert is_version_compatible({"build_config": {"version_compatible": True}})
    assert is_version_compatible({"runtime": {"version_compatible": True}})
    assert not is_version_compatible({"version_compatible": "yes"})
    assert not is_version_compatible({})
    assert version_compatible_accepts("10.3.0", "10.3.0")
    assert not version_compatible_accepts("10.3.0rc1", "10.3.0")


# ------------------------------------------------------------------ sidecars


def test_sha256_sidecar_missing(cache: Path, publish: Publish) -> None:
    entry = publish()
    entry.sha256_path.unlink()
    gate = CountingGate(cache_root=cache)
    refused(gate, entry.engine_path, "sha256 sidecar missing")
    assert gate.hashed == 0


def test_sha256_sidecar_malformed(cache: Path, publish: Publish) -> None:
    entry = publish()
    entry.sha256_path.write_text("not a digest\n")
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "malformed")


def test_sha256_sidecar_for_another_file(cache: Path, publish: Publish) -> None:
    entry = publish()
    entry.sha256_path.write_text(f"{entry.sha256}  other.engine\n")
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
            "sha256 sidecar is for another file")


def test_engine_bytes_do_not_match_the_sidecar(cache: Path, publish: Publish) -> None:
    entry = publish()
    flipped = bytearray(PAYLOAD)
    flipped[100] ^= 0xFF  # same size: only the hash can tell
    entry.engine_path.write_bytes(bytes(flipped))
    gate = CountingGate(cache_root=cache)
    err = refused(gate, entry.engine_path, "sha256 does not match")
    assert err.context["expected"] == entry.sha256
    assert gate.hashed == 1


def test_sidecars_disagree(cache: Path, publish: Publish) -> None:
    entry = publish()
    reseal(entry, "0" * 64)
    gate = CountingGate(cache_root=cache)
    refused(gate, entry.engine_path, "sidecars disagree")
    assert gate.hashed == 0


def test_sidecar_symlink_outside_the_cache(
    cache: Path, publish: Publish, tmp_path: Path
) -> None:
    entry = publish()
    outside = tmp_path / "sidecar.sha256"
    outside.write_bytes(entry.sha256_path.read_bytes())
    entry.sha256_path.unlink()
    entry.sha256_path.symlink_to(outside)
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
            "sha256 sidecar is a symlink pointing outside the cache")


def test_metadata_sidecar_that_is_a_fifo_is_refused_without_blocking(
    cache: Path, publish: Publish
) -> None:
    entry = publish()
    entry.metadata_path.unlink()
    os.mkfifo(entry.metadata_path)
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
            "metadata sidecar is not a regular file")


def test_metadata_sidecar_missing(cache: Path, publish: Publish) -> None:
    entry = publish()
    entry.metadata_path.unlink()
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "metadata sidecar missing")


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        (b'{"format": 1, "engine": ', "not valid JSON"),
        (b"\xff\xfe garbage", "not valid JSON"),
        (b"[1, 2, 3]", "not a JSON object"),
        (b'{"format": 1}', "lacks a valid field"),
        (b'{"format": 99, "engine": "x", "sha256": "x", "identity": {}}', "unknown format"),
    ],
)
def test_corrupted_metadata_sidecar(
    cache: Path, publish: Publish, content: bytes, reason: str
) -> None:
    entry = publish()
    entry.metadata_path.write_bytes(content)
    reseal(entry)
    gate = CountingGate(cache_root=cache)
    refused(gate, entry.engine_path, reason)
    assert gate.hashed == 0


def test_metadata_for_another_file(cache: Path, publish: Publish) -> None:
    entry = publish()
    rewrite_metadata(entry, engine="someone_else.engine")
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
            "metadata sidecar is for another file")


def test_metadata_identity_malformed(cache: Path, publish: Publish) -> None:
    entry = publish()
    rewrite_metadata(entry, identity={"model_name": "x"})
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "identity is malformed")


def test_metadata_identity_does_not_match_filename(cache: Path, publish: Publish) -> None:
    entry = publish()
    ident = entry.identity.to_dict()
    ident["options_digest"] = "ffffffffffff"
    rewrite_metadata(entry, identity=ident)
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
            "identity does not match the engine filename")


def test_engine_renamed_to_another_hosts_filename(cache: Path, publish: Publish) -> None:
    """An sm86 engine (and its sidecars) renamed to the filename this sm87 host looks for."""
    foreign = publish(identity(target="sm86"))
    wanted = foreign.engine_path.with_name(identity().filename)
    for src, suffix in ((foreign.engine_path, ""), (foreign.sha256_path, ".sha256"),
                        (foreign.metadata_path, ".json")):
        src.rename(wanted.with_name(wanted.name + suffix))
    gate = CountingGate(cache_root=cache)
    refused(gate, wanted, "sidecar is for another file")
    # Also with the sidecars edited to name the new file: the identity still tells.
    data = json.loads(wanted.with_name(wanted.name + ".json").read_text())
    data["engine"] = wanted.name
    wanted.with_name(wanted.name + ".json").write_text(json.dumps(data))
    from trt_provision.integrity import sha256_sidecar_bytes

    wanted.with_name(wanted.name + ".sha256").write_bytes(sha256_sidecar_bytes(
        data["sha256"], wanted.name, wanted.with_name(wanted.name + ".json").read_bytes()))
    err = refused(gate, wanted, "identity does not match the engine filename")
    assert err.context["found"]["target"] == "sm86"
    assert gate.hashed == 0


def test_size_differs_from_metadata_refused_before_hashing(
    cache: Path, publish: Publish
) -> None:
    entry = publish()
    with open(entry.engine_path, "ab") as fh:
        fh.write(b"tail")
    gate = CountingGate(cache_root=cache)
    err = refused(gate, entry.engine_path, "size does not match its metadata")
    assert (err.context["expected"], err.context["found"]) == (len(PAYLOAD), len(PAYLOAD) + 4)
    assert gate.hashed == 0


def test_metadata_size_not_an_integer(cache: Path, publish: Publish) -> None:
    entry = publish()
    rewrite_metadata(entry, size_bytes="big")
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "size_bytes is not")


# ------------------------------------------------------------------ trust


def test_trust_hook_sees_path_and_metadata(cache: Path, publish: Publish) -> None:
    entry = publish()
    trust = RecordingTrust()
    DefaultEngineGate(cache_root=cache, trust=trust).validate(entry.engine_path, HOST)
    assert len(trust.calls) == 1
    path, metadata = trust.calls[0]
    assert path == entry.engine_path
    assert metadata["sha256"] == entry.sha256


def test_signature_required_and_absent(cache: Path, publish: Publish) -> None:
    entry = publish()
    trust = RecordingTrust(refuse=True)
    gate = CountingGate(cache_root=cache, trust=trust)
    refused(gate, entry.engine_path, "signature missing")
    assert gate.hashed == 0  # the expensive hash never runs for an untrusted engine


def test_trust_not_consulted_after_a_cheap_refusal(cache: Path, publish: Publish) -> None:
    entry = publish(identity(target="sm86"))
    trust = RecordingTrust()
    refused(DefaultEngineGate(cache_root=cache, trust=trust), entry.engine_path,
            "another GPU / CPU target")
    assert trust.calls == []


# ------------------------------------------------------------------ races


def test_engine_swapped_between_stat_and_hash(
    cache: Path, publish: Publish, monkeypatch: pytest.MonkeyPatch
) -> None:
    entry = publish()
    gate = DefaultEngineGate(cache_root=cache)
    original = gate._check_file

    def check_then_swap(path: Path) -> Any:
        facts = original(path)
        replacement = path.with_name("replacement")
        replacement.write_bytes(PAYLOAD)
        os.replace(replacement, path)  # same size, new inode
        return facts

    monkeypatch.setattr(gate, "_check_file", check_then_swap)
    refused(gate, entry.engine_path, "changed while it was being checked")


def test_refusals_are_logged(
    cache: Path, publish: Publish, caplog: pytest.LogCaptureFixture
) -> None:
    entry = publish(identity(target="sm86"))
    with caplog.at_level("DEBUG", logger=gate_module.__name__), pytest.raises(EngineGateError):
        DefaultEngineGate(cache_root=cache).validate(entry.engine_path, HOST)
    assert [r.event for r in caplog.records] == ["engine.gate.refused"]  # type: ignore[attr-defined]


# ------------------------------------------------------------------ no runtime import


def test_refusals_happen_before_any_runtime_import(publish: Publish, cache: Path) -> None:
    good = publish()
    bad = publish(identity(model_name="other", target="sm86"))
    corrupted = publish(identity(model_name="third"))
    corrupted.metadata_path.write_text("{not json")
    script = textwrap.dedent(
        f"""
        import sys
        from pathlib import Path
        from trt_provision.errors import EngineGateError
        from trt_provision.gates.engine_gate import DefaultEngineGate
        from trt_provision.gates.budget import GpuMemoryBudget
        from trt_provision.types import RuntimeTarget
        from trt_provision.errors import OutOfMemoryError
        host = RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2")
        gate = DefaultEngineGate(cache_root=Path({str(cache)!r}))
        reasons = []
        for p in ({str(bad.engine_path)!r}, {str(corrupted.engine_path)!r}):
            try:
                gate.validate(Path(p), host)
            except EngineGateError as exc:
                reasons.append(exc.message)
        entry = gate.validate(Path({str(good.engine_path)!r}), host)
        try:
            GpuMemoryBudget(1).reserve(entry)
        except OutOfMemoryError as exc:
            reasons.append(exc.message)
        heavy = sorted(m for m in ("tensorrt", "onnxruntime", "pynvml", "cuda", "cupy",
                                   "torch", "numpy", "onnx") if m in sys.modules)
        print(len(reasons), heavy)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, env=env, check=True
    ).stdout.strip()
    assert out == "3 []"


# ------------------------------------------------------------------ other local users


OTHER_UID = 54321
needs_root = pytest.mark.skipif(
    os.geteuid() != 0, reason="needs root to give a file to another uid (os.chown)"
)


@needs_root
@pytest.mark.parametrize("victim", ["engine", "sha256", "json", "model_dir"])
def test_entry_owned_by_another_user_is_refused(
    cache: Path, publish: Publish, victim: str
) -> None:
    entry = publish()
    target = {"engine": entry.engine_path, "sha256": entry.sha256_path,
              "json": entry.metadata_path, "model_dir": entry.engine_path.parent}[victim]
    os.chown(target, OTHER_UID, OTHER_UID)
    error = refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
                    f"owned by uid {OTHER_UID}")
    assert error.context["fix"].startswith(f"chown {os.geteuid()} ")


@pytest.mark.parametrize("victim", ["engine", "sha256", "json", "model_dir", "cache"])
def test_entry_writable_by_others_is_refused(cache: Path, publish: Publish, victim: str) -> None:
    entry = publish()
    target = {"engine": entry.engine_path, "sha256": entry.sha256_path,
              "json": entry.metadata_path, "model_dir": entry.engine_path.parent,
              "cache": cache}[victim]
    os.chmod(target, stat.S_IMODE(target.stat().st_mode) | 0o002)
    error = refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
                    "writable by group or others")
    assert error.context["fix"] == f"chmod go-w {target}"


def test_world_writable_directory_above_the_cache_is_refused_unless_sticky(
    tmp_path: Path,
) -> None:
    shared = tmp_path / "shared"
    shared.mkdir()
    cache = shared / "cache"
    store = LocalEngineStore(cache)
    ident = identity()
    staged = store.staging_path(ident)
    staged.write_bytes(PAYLOAD)
    entry = store.publish(ident, staged, {})
    os.chmod(shared, 0o777)  # anyone could rename our cache away and put theirs there
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
            "cache directory or a directory above it is writable by group or others")
    os.chmod(shared, 0o1777)  # sticky, like /tmp: nobody else can rename our entries
    DefaultEngineGate(cache_root=cache).validate(entry.engine_path, HOST)


def test_symlinked_model_directory_is_refused(cache: Path, publish: Publish) -> None:
    entry = publish()
    real = cache / "elsewhere"
    entry.engine_path.parent.rename(real)
    entry.engine_path.parent.symlink_to(real, target_is_directory=True)
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path,
            "model directory is a symlink")


# ------------------------------------------------------------------ bounded sidecars


class BytesTrust:
    """A trust hook that checks raw bytes (as SignatureTrust does)."""

    def __init__(self, refuse: bool = False) -> None:
        self.refuse = refuse
        self.calls: list[tuple[bytes, bytes | None]] = []

    def check(self, engine_path: Path, metadata: Mapping[str, Any]) -> None:
        raise AssertionError("a bytes-checking hook gets check_bytes, not check")

    def check_bytes(self, metadata: bytes, signature: bytes | None, where: str) -> None:
        self.calls.append((metadata, signature))
        if self.refuse:
            raise EngineGateError("signature does not verify", path=where)


def test_signature_is_checked_on_the_bytes_read_before_they_are_parsed(
    cache: Path, publish: Publish
) -> None:
    entry = publish()
    entry.engine_path.with_name(entry.engine_path.name + ".sig").write_bytes(b"sig line\n")
    trust = BytesTrust()
    DefaultEngineGate(cache_root=cache, trust=trust).validate(entry.engine_path, HOST)
    assert trust.calls == [(entry.metadata_path.read_bytes(), b"sig line\n")]
    entry.metadata_path.write_bytes(b"[" * 200_000)  # would need parsing to refuse
    refused(DefaultEngineGate(cache_root=cache, trust=BytesTrust(refuse=True)),
            entry.engine_path, "signature does not verify")


def test_missing_signature_is_passed_as_none(cache: Path, publish: Publish) -> None:
    entry = publish()
    trust = BytesTrust()
    DefaultEngineGate(cache_root=cache, trust=trust).validate(entry.engine_path, HOST)
    assert trust.calls[0][1] is None


def _sig_path(entry: EngineCacheEntry) -> Path:
    return entry.engine_path.with_name(entry.engine_path.name + ".sig")


def _refused_in_child(cache: Path, engine: Path, reason: str) -> None:
    """Validate in a child with a memory limit and a hang guard: a regression that reads
    /dev/zero or blocks on a FIFO fails instead of taking the machine down."""
    script = textwrap.dedent(
        f"""
        import resource
        from pathlib import Path
        resource.setrlimit(resource.RLIMIT_AS, (2 << 30, 2 << 30))
        from trt_provision.errors import EngineGateError
        from trt_provision.gates.engine_gate import DefaultEngineGate
        from trt_provision.types import RuntimeTarget

        class Trust:
            def check(self, engine_path, metadata):
                raise AssertionError("unreachable")
            def check_bytes(self, metadata, signature, where):
                raise AssertionError("signature was read")

        host = RuntimeTarget("trt", "10.3.0", "sm87", "jp6.2")
        gate = DefaultEngineGate(cache_root=Path({str(cache)!r}), trust=Trust())
        try:
            gate.validate(Path({str(engine)!r}), host)
        except EngineGateError as exc:
            print(exc.message)
        """
    )
    env = dict(os.environ, PYTHONPATH=str(SRC))
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         env=env, timeout=120)
    assert reason in out.stdout, out.stdout + out.stderr


def test_signature_symlinked_to_dev_zero_is_refused(cache: Path, publish: Publish) -> None:
    entry = publish()
    _sig_path(entry).symlink_to("/dev/zero")
    _refused_in_child(cache, entry.engine_path, "signature is a symlink pointing outside")


def test_signature_that_is_a_fifo_is_refused_without_blocking(
    cache: Path, publish: Publish
) -> None:
    entry = publish()
    os.mkfifo(_sig_path(entry))
    _refused_in_child(cache, entry.engine_path, "signature is not a regular file")


@needs_root
def test_signature_that_is_a_device_inside_the_cache_is_refused(
    cache: Path, publish: Publish
) -> None:
    entry = publish()
    os.mknod(_sig_path(entry), 0o644 | stat.S_IFCHR, os.makedev(1, 5))  # /dev/zero
    _refused_in_child(cache, entry.engine_path, "signature is not a regular file")


def test_oversized_signature_is_refused(cache: Path, publish: Publish) -> None:
    entry = publish()
    _sig_path(entry).write_bytes(b"x" * 100_000)
    refused(DefaultEngineGate(cache_root=cache, trust=BytesTrust()), entry.engine_path,
            "signature too large")


def test_deeply_nested_metadata_is_a_gate_error_not_a_recursion_error(
    cache: Path, publish: Publish
) -> None:
    entry = publish()
    entry.metadata_path.write_bytes(b"[" * 200_000 + b"]" * 200_000)
    reseal(entry)
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "nested deeper")
    nested = {"format": 1, "deep": json.loads("[" * 100 + "]" * 100)}
    entry.metadata_path.write_text(json.dumps(nested))
    reseal(entry)
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "nested deeper")


def test_perf_sidecar_gets_the_same_bounded_checked_read(
    cache: Path, publish: Publish, tmp_path: Path
) -> None:
    from trt_provision.integrity import read_sidecar_json

    entry = publish()
    perf = entry.engine_path.with_name(entry.engine_path.name + ".perf.json")
    perf.write_text('{"latency_ms": {"p50": 1.5}}')
    assert read_sidecar_json(entry.engine_path, ".perf.json", root=cache) == {
        "latency_ms": {"p50": 1.5}
    }
    cases: list[tuple[Callable[[], None], str]] = [
        (lambda: perf.write_bytes(b"[" * 2000 + b"]" * 2000), "nested deeper"),
        (lambda: perf.write_bytes(b" " * 5000), "too large"),
        (lambda: os.chmod(perf, 0o666), "writable by group or others"),
    ]
    for make, reason in cases:
        perf.unlink()
        perf.write_text("{}")
        make()
        with pytest.raises(EngineGateError, match=reason):
            read_sidecar_json(entry.engine_path, ".perf.json", cap=4096, root=cache)
    perf.unlink()
    os.mkfifo(perf)
    with pytest.raises(EngineGateError, match="not a regular file"):
        read_sidecar_json(entry.engine_path, ".perf.json", root=cache)
    perf.unlink()
    perf.symlink_to(tmp_path / "elsewhere.json")
    with pytest.raises(EngineGateError, match="symlink pointing outside the cache"):
        read_sidecar_json(entry.engine_path, ".perf.json", root=cache)


# ------------------------------------------------------------------ ONNX external data


ORT_HOST = RuntimeTarget(runtime="ortcpu", runtime_version="1.20.0", target="cpu-avx2",
                         platform="host")


def _onnx_with_external(location: str) -> bytes:
    """A one-initializer ONNX model whose initializer lives in external data."""
    from onnx import TensorProto, helper

    weight = helper.make_tensor("w", TensorProto.FLOAT, [4], [1.0, 2.0, 3.0, 4.0])
    weight.ClearField("float_data")
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", location), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    return bytes(model.SerializeToString())


def _publish_onnx(publish: Publish, location: str) -> EngineCacheEntry:
    ident = identity(model_name="ortmodel", runtime=ORT_HOST.runtime,
                     runtime_version=ORT_HOST.runtime_version, target=ORT_HOST.target,
                     platform=ORT_HOST.platform, precision=PrecisionMode.FP32)
    return publish(ident, payload=_onnx_with_external(location))


@pytest.mark.parametrize(
    ("location", "reason"),
    [
        ("/etc/hostname", "location is an absolute path"),
        ("../../outside.bin", "climbs out with '..'"),
        ("sub/../../x.bin", "climbs out with '..'"),
        ("", "empty or malformed location"),
        ("link.bin", "leaves the cache directory"),
    ],
)
def test_onnx_engine_with_external_data_outside_the_cache_is_refused(
    cache: Path, publish: Publish, tmp_path: Path, location: str, reason: str
) -> None:
    entry = _publish_onnx(publish, location)
    outside = tmp_path / "outside.bin"
    outside.write_bytes(b"\0" * 16)
    (entry.engine_path.parent / "link.bin").symlink_to(outside)
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, reason, ORT_HOST)


def test_onnx_engine_with_external_data_inside_its_directory_passes(
    cache: Path, publish: Publish
) -> None:
    entry = _publish_onnx(publish, "weights.bin")
    (entry.engine_path.parent / "weights.bin").write_bytes(b"\0" * 16)
    DefaultEngineGate(cache_root=cache).validate(entry.engine_path, ORT_HOST)


def _external(tensor: Any, location: str) -> Any:
    from onnx import TensorProto

    tensor.ClearField("float_data")
    tensor.ClearField("raw_data")
    tensor.data_location = TensorProto.EXTERNAL
    entry = tensor.external_data.add()
    entry.key, entry.value = "location", location
    return tensor


def _model_hiding_external_data(where: str, location: str) -> bytes:
    """A model whose only external tensor sits in a subgraph, a node attribute, a sparse
    initializer or a function body."""
    from onnx import TensorProto, helper

    def tensor(name: str) -> Any:
        return helper.make_tensor(name, TensorProto.FLOAT, [1], [1.0])

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])
    nodes: list[Any] = []
    initializers: list[Any] = []
    sparse: list[Any] = []
    functions: list[Any] = []
    if where == "subgraph":
        inner = helper.make_graph([helper.make_node("Identity", ["w"], ["y"])], "then", [], [y],
                                  initializer=[_external(tensor("w"), location)])
        other = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "else", [], [y])
        nodes.append(helper.make_node("If", ["c"], ["y"], then_branch=inner, else_branch=other))
        initializers.append(helper.make_tensor("c", TensorProto.BOOL, [], [True]))
    elif where == "attribute":
        nodes.append(helper.make_node("Constant", [], ["y"],
                                      value=_external(tensor("k"), location)))
    elif where == "sparse":
        values = _external(tensor("s"), location)
        indices = helper.make_tensor("si", TensorProto.INT64, [1], [0])
        sparse.append(helper.make_sparse_tensor(values, indices, [1]))
        nodes.append(helper.make_node("Identity", ["x"], ["y"]))
    elif where == "function":
        body = helper.make_node("Constant", [], ["o"], value=_external(tensor("k"), location))
        functions.append(helper.make_function("local", "F", [], ["o"], [body],
                                              [helper.make_opsetid("", 17)]))
        nodes.append(helper.make_node("F", [], ["y"], domain="local"))
    graph = helper.make_graph(nodes, "g", [x], [y], initializer=initializers,
                              sparse_initializer=sparse)
    model = helper.make_model(graph, functions=functions,
                              opset_imports=[helper.make_opsetid("", 17),
                                             helper.make_opsetid("local", 1)])
    return bytes(model.SerializeToString())


@pytest.mark.parametrize("where", ["subgraph", "attribute", "sparse", "function"])
def test_external_data_hidden_anywhere_in_the_model_is_found(
    cache: Path, publish: Publish, where: str
) -> None:
    ident = identity(model_name=f"hidden_{where}", runtime=ORT_HOST.runtime,
                     runtime_version=ORT_HOST.runtime_version, target=ORT_HOST.target,
                     platform=ORT_HOST.platform, precision=PrecisionMode.FP32)
    entry = publish(ident, payload=_model_hiding_external_data(where, "../../../etc/passwd"))
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "climbs out", ORT_HOST)


def _wire(field: int, payload: bytes) -> bytes:
    def varint(n: int) -> bytes:
        out = bytearray()
        while True:
            out.append((n & 0x7F) | (0x80 if n > 0x7F else 0))
            n >>= 7
            if not n:
                return bytes(out)

    return varint(field << 3 | 2) + varint(len(payload)) + payload


def test_graphs_nested_deeper_than_the_walker_follows_are_refused(
    cache: Path, publish: Publish
) -> None:
    """If-in-If-in-If... 40 levels (120 messages): refused rather than passed unchecked."""
    graph = _wire(5, _wire(13, _wire(1, b"location") + _wire(2, b"/etc/passwd")))
    for _ in range(40):
        graph = _wire(1, _wire(5, _wire(6, graph)))  # node.attribute.g
    ident = identity(model_name="deep", runtime=ORT_HOST.runtime,
                     runtime_version=ORT_HOST.runtime_version, target=ORT_HOST.target,
                     platform=ORT_HOST.platform, precision=PrecisionMode.FP32)
    entry = publish(ident, payload=_wire(7, graph))
    refused(DefaultEngineGate(cache_root=cache), entry.engine_path, "nest too deeply", ORT_HOST)
    shallow = _wire(7, _wire(1, _wire(5, _wire(6, _wire(5, _wire(
        13, _wire(1, b"location") + _wire(2, b"/etc/passwd")))))))
    assert list(gate_module._external_locations(shallow)) == ["/etc/passwd"]


def _onnx_locations(data: bytes) -> list[str] | None:
    """External-data locations as onnx itself enumerates them, or None if it cannot parse."""
    import onnx
    from onnx.external_data_helper import _get_all_tensors

    model = onnx.ModelProto()
    try:
        model.ParseFromString(data)
    except Exception:
        return None
    found = []
    for tensor in _get_all_tensors(model):
        found += [e.value for e in tensor.external_data if e.key == "location"]
    return found


@given(st.data())
def test_wire_walker_finds_what_onnx_finds_on_mutated_models(data: st.DataObject) -> None:
    """The walker never crashes, and wherever protobuf accepts the bytes it finds every
    location onnx's own tensor enumeration finds."""
    where = data.draw(st.sampled_from(["subgraph", "attribute", "function", "plain"]))
    base = bytearray(
        _onnx_with_external("w.bin") if where == "plain"
        else _model_hiding_external_data(where, "../x.bin")
    )
    for _ in range(data.draw(st.integers(0, 3))):
        i = data.draw(st.integers(0, len(base) - 1))
        base[i] = data.draw(st.integers(0, 255))
    if data.draw(st.booleans()):
        del base[data.draw(st.integers(0, len(base) - 1)):]
    blob = bytes(base)
    try:
        walked = list(gate_module._external_locations(blob))
    except gate_module._NotProtobuf:
        walked = None
    expected = _onnx_locations(blob)
    if expected is not None:
        assert walked is not None, "protobuf parsed what the walker refused"
        assert set(expected) <= set(walked)


def test_onnx_runtime_never_opens_an_engine_whose_external_data_escapes(
    cache: Path, publish: Publish, monkeypatch: pytest.MonkeyPatch
) -> None:
    from trt_provision.runtimes import onnxruntime as ort_module
    from trt_provision.runtimes.onnxruntime import OnnxRuntimeRuntime
    from trt_provision.types import HostCapabilities

    entry = _publish_onnx(publish, "../../../../../../etc/hostname")
    runtime = OnnxRuntimeRuntime(
        host=HostCapabilities(ort_version=ORT_HOST.runtime_version, cpu_isa=("avx2",)),
        gate=DefaultEngineGate(cache_root=cache),
    )
    monkeypatch.setattr(runtime, "runtime_target", lambda config: ORT_HOST)
    sessions: list[Any] = []

    class Recorder:
        def __getattr__(self, name: str) -> Any:
            sessions.append(name)
            raise AssertionError(f"onnxruntime.{name} used")

    monkeypatch.setattr(ort_module, "_ort", lambda: Recorder())
    with pytest.raises(EngineGateError, match="climbs out"):
        runtime.deserialize_engine(entry)
    assert sessions == []


def test_external_data_is_checked_for_a_download_hashed_while_written(
    cache: Path, publish: Publish
) -> None:
    """A fetched engine skips the second hash (``known_sha256``), not this check."""
    entry = _publish_onnx(publish, "/etc/hostname")
    with pytest.raises(EngineGateError, match="absolute path"):
        DefaultEngineGate(cache_root=cache).validate(
            entry.engine_path, ORT_HOST, known_sha256=entry.sha256
        )
    plain = publish(identity(model_name="plain", runtime=ORT_HOST.runtime,
                             runtime_version=ORT_HOST.runtime_version, target=ORT_HOST.target,
                             platform=ORT_HOST.platform, precision=PrecisionMode.FP32),
                    payload=b"not even protobuf, and no external data")
    DefaultEngineGate(cache_root=cache).validate(
        plain.engine_path, ORT_HOST, known_sha256=plain.sha256
    )


def test_run_reads_its_measurements_sidecar_through_the_same_checks(
    cache: Path, publish: Publish, tmp_path: Path
) -> None:
    from trt_provision.errors import StoreError
    from trt_provision.measure.runner import read_perf_sidecar

    entry = publish()
    perf = entry.engine_path.with_name(entry.engine_path.name + ".perf.json")
    assert read_perf_sidecar(entry.engine_path) is None
    perf.write_text(json.dumps({"format": 1, "engine": entry.engine_path.name,
                                "sha256": entry.sha256, "runs": []}))
    os.chmod(perf, 0o666)
    with pytest.raises(StoreError, match="writable by group or others"):
        read_perf_sidecar(entry.engine_path)
    perf.unlink()
    perf.write_bytes(b"[" * 100 + b"]" * 100)
    with pytest.raises(StoreError, match="nested deeper"):
        read_perf_sidecar(entry.engine_path)
    perf.unlink()
    perf.symlink_to("/dev/zero")
    with pytest.raises(StoreError, match="symlink"):
        read_perf_sidecar(entry.engine_path)
