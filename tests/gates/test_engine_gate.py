"""Every refusal of the default engine gate, on real engines published to a temp cache."""

from __future__ import annotations

import json
import os
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
    entry.sha256_path.write_text(f"{'0' * 64}  {entry.engine_path.name}\n")
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
    refused(gate, wanted, "metadata sidecar is for another file")
    # Also with the sidecars edited to name the new file: the identity still tells.
    data = json.loads(wanted.with_name(wanted.name + ".json").read_text())
    data["engine"] = wanted.name
    wanted.with_name(wanted.name + ".json").write_text(json.dumps(data))
    wanted.with_name(wanted.name + ".sha256").write_text(f"{data['sha256']}  {wanted.name}\n")
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
