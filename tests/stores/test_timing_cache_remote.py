"""The fleet's timing cache on a real S3 server (SeaweedFS): pushed signed by the builder of
record, fetched and verified by a device of its type. Every byte from the bucket is hostile:
a tampered, oversized, unsigned (where signatures are required), foreign-signed or renamed
cache is refused with a WARN and never written locally; the build goes on without it."""

from __future__ import annotations

import hashlib
import logging
from pathlib import Path
from typing import Any

import pytest

from stores.weed_server import ACCESS_KEY, SECRET_KEY, WeedServer
from trt_provision._fs import TEMP_PREFIX
from trt_provision.stores.s3 import S3EngineStore, S3Settings
from trt_provision.trust import SignatureTrust, TrustPolicy, generate_keypair, sign_metadata

pytestmark = [pytest.mark.s3, pytest.mark.tier1]

NAME = "trt-10.16.1.11.sm80.NVIDIA_A30.timing-cache"
KEY = f"fleet/timing/{NAME}"
CACHE = b"conv1:tactic-7 0.031ms\n" * 2000


def _store(weed: WeedServer, bucket: str, **kw: Any) -> S3EngineStore:
    settings = S3Settings(bucket=bucket, endpoint=weed.endpoint, prefix="fleet",
                          access_key=ACCESS_KEY, secret_key=SECRET_KEY,
                          connect_timeout_s=2.0, read_timeout_s=5.0, max_attempts=1)
    return S3EngineStore(settings, **kw)


def _keys(store: S3EngineStore) -> list[str]:
    listing = store.client().list_objects_v2(Bucket=store.settings.bucket, Prefix="fleet/timing/")
    return sorted(o["Key"] for o in listing.get("Contents", []))


def _put(store: S3EngineStore, key: str, data: bytes) -> None:
    store.client().put_object(Bucket=store.settings.bucket, Key=key, Body=data)


def _get(store: S3EngineStore, key: str) -> bytes:
    body: bytes = store.client().get_object(Bucket=store.settings.bucket, Key=key)["Body"].read()
    return body


def _warnings(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno >= logging.WARNING and getattr(r, "event", "") != "remote.unauthenticated"]


@pytest.fixture
def keys(tmp_path: Path) -> dict[str, Any]:
    _, fleet = generate_keypair(tmp_path / "fleet.key")
    _, other = generate_keypair(tmp_path / "other.key")
    return {"fleet": (tmp_path / "fleet.key", fleet), "other": (tmp_path / "other.key", other)}


def _signer(path: Path) -> Any:
    return lambda data: sign_metadata(data, path)


def _local(tmp_path: Path, data: bytes = CACHE) -> Path:
    path = tmp_path / "builder" / ".timing" / NAME
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    return path


def _dest(tmp_path: Path) -> Path:
    return tmp_path / "device" / ".timing" / NAME


def _no_temps(dest: Path) -> bool:
    return not dest.parent.exists() or not list(dest.parent.glob(f"{TEMP_PREFIX}*"))


def test_pushed_signed_then_fetched_verified_by_a_device_of_its_type(
    tmp_path: Path, weed: WeedServer, bucket: str, keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    trust = SignatureTrust(TrustPolicy.REQUIRE, [keys["fleet"][1]])
    builder = _store(weed, bucket, trust=trust, sign_timing_cache=_signer(keys["fleet"][0]))
    assert builder.upload_timing_cache(NAME, _local(tmp_path)) is True
    assert _keys(builder) == [KEY, KEY + ".sha256", KEY + ".sig"]
    assert _get(builder, KEY + ".sha256") == (
        f"{hashlib.sha256(CACHE).hexdigest()}  {NAME}\n".encode())

    device = _store(weed, bucket, trust=trust)
    dest = _dest(tmp_path)
    with caplog.at_level(logging.INFO):
        assert device.fetch_timing_cache(NAME, dest) is True
    assert dest.read_bytes() == CACHE and _no_temps(dest)
    [done] = [r for r in caplog.records if getattr(r, "event", "") == "remote.timing.fetched"]
    assert done.__dict__["bytes"] == len(CACHE)
    assert _warnings(caplog) == []


def test_an_unchanged_cache_is_not_sent_again_and_a_grown_one_replaces_it(
    tmp_path: Path, weed: WeedServer, bucket: str,
) -> None:
    builder = _store(weed, bucket)
    local = _local(tmp_path)
    assert builder.upload_timing_cache(NAME, local) is True
    assert builder.upload_timing_cache(NAME, local) is False  # nothing new
    local.write_bytes(CACHE + b"conv2:tactic-3 0.012ms\n")
    assert builder.upload_timing_cache(NAME, local) is True
    assert _get(builder, KEY) == local.read_bytes()
    assert _get(builder, KEY + ".sha256").startswith(
        hashlib.sha256(local.read_bytes()).hexdigest().encode())


def test_a_device_with_its_own_cache_keeps_it(
    tmp_path: Path, weed: WeedServer, bucket: str,
) -> None:
    store = _store(weed, bucket)
    assert store.upload_timing_cache(NAME, _local(tmp_path)) is True
    dest = _dest(tmp_path)
    dest.parent.mkdir(parents=True)
    dest.write_bytes(b"own")
    assert store.fetch_timing_cache(NAME, dest) is False
    assert dest.read_bytes() == b"own"


def test_absent_is_a_quiet_miss(
    tmp_path: Path, weed: WeedServer, bucket: str, caplog: pytest.LogCaptureFixture,
) -> None:
    dest = _dest(tmp_path)
    assert _store(weed, bucket).fetch_timing_cache(NAME, dest) is False
    assert not dest.exists() and _warnings(caplog) == []


def _tamper_body(store: S3EngineStore) -> None:
    _put(store, KEY, CACHE[:-1] + b"9")


def _tamper_sidecar_name(store: S3EngineStore) -> None:
    # A well-formed line for another device's file: a cache may not be swapped in by name.
    other = "trt-10.16.1.11.sm80.NVIDIA_A100.timing-cache"
    _put(store, KEY + ".sha256", f"{hashlib.sha256(CACHE).hexdigest()}  {other}\n".encode())


def _tamper_sidecar_junk(store: S3EngineStore) -> None:
    _put(store, KEY + ".sha256", b"\x00" * 4096 + b"x")


@pytest.mark.parametrize("tamper", [_tamper_body, _tamper_sidecar_name, _tamper_sidecar_junk])
def test_tampered_cache_is_refused_and_never_written(
    tmp_path: Path, weed: WeedServer, bucket: str, caplog: pytest.LogCaptureFixture,
    tamper: Any,
) -> None:
    store = _store(weed, bucket)
    assert store.upload_timing_cache(NAME, _local(tmp_path)) is True
    tamper(store)
    dest = _dest(tmp_path)
    assert store.fetch_timing_cache(NAME, dest) is False
    assert not dest.exists() and _no_temps(dest)
    [warning] = _warnings(caplog)
    assert KEY in warning


def test_oversized_cache_is_refused_without_reading_it_whole(
    tmp_path: Path, weed: WeedServer, bucket: str, caplog: pytest.LogCaptureFixture,
) -> None:
    assert _store(weed, bucket).upload_timing_cache(NAME, _local(tmp_path)) is True
    device = _store(weed, bucket, max_timing_cache_bytes=4096)
    dest = _dest(tmp_path)
    assert device.fetch_timing_cache(NAME, dest) is False
    assert not dest.exists() and _no_temps(dest)
    [warning] = _warnings(caplog)
    assert "larger than the limit" in warning


@pytest.mark.parametrize("signed_by", [None, "other"])
def test_unsigned_or_foreign_signed_cache_is_refused_where_signatures_are_required(
    tmp_path: Path, weed: WeedServer, bucket: str, keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture, signed_by: str | None,
) -> None:
    sign = _signer(keys[signed_by][0]) if signed_by else None
    assert _store(weed, bucket, sign_timing_cache=sign).upload_timing_cache(
        NAME, _local(tmp_path)) is True
    device = _store(weed, bucket, trust=SignatureTrust(TrustPolicy.REQUIRE, [keys["fleet"][1]]))
    dest = _dest(tmp_path)
    assert device.fetch_timing_cache(NAME, dest) is False
    assert not dest.exists()
    [warning] = _warnings(caplog)
    assert "refused" in warning


def test_a_host_requiring_signatures_never_pushes_an_unsigned_cache(
    tmp_path: Path, weed: WeedServer, bucket: str, keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    builder = _store(weed, bucket, trust=SignatureTrust(TrustPolicy.REQUIRE, [keys["fleet"][1]]))
    assert builder.upload_timing_cache(NAME, _local(tmp_path)) is False
    assert _keys(builder) == []
    [warning] = _warnings(caplog)
    assert "unsigned" in warning


def test_a_signed_push_replaces_an_unsigned_one_and_an_unsigned_drops_a_stale_signature(
    tmp_path: Path, weed: WeedServer, bucket: str, keys: dict[str, Any],
) -> None:
    local = _local(tmp_path)
    assert _store(weed, bucket).upload_timing_cache(NAME, local) is True
    signed = _store(weed, bucket, sign_timing_cache=_signer(keys["fleet"][0]))
    assert signed.upload_timing_cache(NAME, local) is True  # same bytes, now signed
    assert KEY + ".sig" in _keys(signed)
    local.write_bytes(CACHE + b"more\n")
    assert _store(weed, bucket).upload_timing_cache(NAME, local) is True
    assert KEY + ".sig" not in _keys(signed)


def test_a_name_that_is_not_a_timing_cache_is_refused(
    tmp_path: Path, weed: WeedServer, bucket: str, caplog: pytest.LogCaptureFixture,
) -> None:
    store = _store(weed, bucket)
    assert store.fetch_timing_cache("../engines/x.engine", _dest(tmp_path)) is False
    assert store.upload_timing_cache("../engines/x.engine", _local(tmp_path)) is False
    assert _keys(store) == [] and len(_warnings(caplog)) == 2


# ------------------------------------------------------------------ through the compiler


def _tensorrt_compiler(cache: Path, remote: S3EngineStore) -> tuple[Any, Any]:
    """An EngineCompiler on the TensorRT strategy (fake TensorRT and CUDA) of an A30."""
    from fakes.fake_cuda import FakeCudaRuntime
    from fakes.fake_tensorrt import fake_state, make_fake_tensorrt
    from trt_provision.compiler import EngineCompiler
    from trt_provision.gates.engine_gate import DefaultEngineGate
    from trt_provision.runtimes.tensorrt import TensorrtOptions, TensorrtRuntime
    from trt_provision.stores.local import LocalEngineStore
    from trt_provision.types import HostCapabilities

    cuda = FakeCudaRuntime()
    trt = make_fake_tensorrt("10.16.1.11", cuda=cuda, recorder=cuda.recorder)
    host = HostCapabilities(sm="sm80", trt_version="10.16.1.11", gpu_name="NVIDIA A30")
    gate = DefaultEngineGate(cache_root=cache)
    runtime = TensorrtRuntime(
        gate=gate, host=host, trt_module=trt, cuda_module=cuda,
        options=TensorrtOptions(optional_plugins=(), timing_cache_dir=cache / ".timing"),
    )
    compiler = EngineCompiler(runtime=runtime, store=LocalEngineStore(cache), gate=gate,
                              host=host, remote=remote)
    return compiler, fake_state(trt)


def _model(path: Path, layers: int) -> Path:
    import onnx
    from onnx import TensorProto, helper

    names = ["input", *(f"t{i}" for i in range(layers - 1)), "output"]
    nodes = [helper.make_node("Relu", [names[i]], [names[i + 1]], name=f"relu{i}")
             for i in range(layers)]
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("output", TensorProto.FLOAT, [1, 4])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _provision(compiler: Any, model: Path, name: str, build: str) -> Any:
    from trt_provision.types import BackboneSpec, BuildConfig, EngineCompileRequest

    request = EngineCompileRequest((BackboneSpec(name, model, BuildConfig()),), build=build)
    [result] = compiler.compile_engines_for_corpus(request).results
    return result


def test_fleet_of_fake_tensorrt_devices_share_a_signed_cache_and_refuse_a_tampered_one(
    tmp_path: Path, weed: WeedServer, bucket: str, keys: dict[str, Any],
    caplog: pytest.LogCaptureFixture,
) -> None:
    from trt_provision.types import CompileOutcome

    trust = SignatureTrust(TrustPolicy.REQUIRE, [keys["fleet"][1]])
    a, b = _model(tmp_path / "a.onnx", 2), _model(tmp_path / "b.onnx", 3)
    builder, _ = _tensorrt_compiler(
        tmp_path / "builder",
        _store(weed, bucket, trust=trust, sign_timing_cache=_signer(keys["fleet"][0])))
    assert _provision(builder, a, "a", "always").outcome is CompileOutcome.BUILT
    assert _keys(_store(weed, bucket)) == [KEY, KEY + ".sha256", KEY + ".sig"]

    device, trt = _tensorrt_compiler(tmp_path / "device", _store(weed, bucket, trust=trust))
    result = _provision(device, b, "b", "fallback")
    assert result.outcome is CompileOutcome.BUILT
    assert "built with the fleet's timing cache" in result.notes
    assert trt.timing_cache_at_build == [frozenset({"network:2"})]

    _put(_store(weed, bucket), KEY, b"network:2\nforged:1\n")
    caplog.clear()
    late, late_trt = _tensorrt_compiler(tmp_path / "late", _store(weed, bucket, trust=trust))
    result = _provision(late, b, "b", "fallback")
    assert result.outcome is CompileOutcome.BUILT and not result.internal
    assert late_trt.timing_cache_at_build == [frozenset()]  # built without it
    assert b"forged" not in (tmp_path / "late" / ".timing" / NAME).read_bytes()
    assert any("timing cache" in w and "sha256" in w for w in _warnings(caplog))
