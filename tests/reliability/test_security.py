"""Security review as tests: path traversal in user-provided names, file permissions of
engines and keys, host code only with an explicit setting, no secrets in logs or errors."""

from __future__ import annotations

import json
import logging
import os
import socket
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reliability._support import (
    DEMO_MANIFEST,
    demo_request,
    engine_of,
    sidecars,
    wire_ort,
)
from trt_provision.config import Settings, load_manifest
from trt_provision.errors import EngineGateError, InvalidNameError, ManifestError
from trt_provision.identity import parse_engine_filename
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import (
    BuildConfig,
    CompileOutcome,
    EngineIdentity,
    HostCapabilities,
    PrecisionMode,
)

pytestmark = pytest.mark.tier1

UNSAFE_NAMES = ["..", "../evil", "a/b", "a\\b", "/abs", ".hidden", "-flag", "x" * 65, "",
                "a\x00b", "a..b", "é"]


# ----------------------------------------------------------------- path traversal


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_manifest_refuses_unsafe_model_names(tmp_path: Path, name: str) -> None:
    text = DEMO_MANIFEST.read_text().replace('name = "two_inputs"', f"name = {json.dumps(name)}")
    path = tmp_path / "m.toml"
    path.write_text(text)
    (tmp_path / "models").symlink_to(DEMO_MANIFEST.parent / "models")
    with pytest.raises(ManifestError):
        load_manifest(path)


@pytest.mark.parametrize("name", UNSAFE_NAMES)
def test_identity_refuses_unsafe_model_names(name: str) -> None:
    with pytest.raises((InvalidNameError, ValueError)):
        EngineIdentity(name, "ab" * 32, PrecisionMode.FP32, "ortcpu", "1.0", "cpu-avx2",
                       "host", "0123456789ab")


@pytest.mark.parametrize("name", [f"{n}.0123456789abcdef.fp32.cpu-avx2.host.ortcpu-1_0.0123456789ab.engine"
                                  for n in ["..", "../evil", "a/b", ".x"]])
def test_engine_filename_parser_refuses_traversal(name: str) -> None:
    with pytest.raises(InvalidNameError):
        parse_engine_filename(name)


@settings(max_examples=200, deadline=None, database=None)
@given(st.text(alphabet="abcXYZ019_-./\\", min_size=1, max_size=70))
def test_every_accepted_identity_stays_inside_the_cache(name: str) -> None:
    root = Path("/nonexistent-root/cache")
    try:
        identity = EngineIdentity(name, "ab" * 32, PrecisionMode.FP32, "ortcpu", "1.0",
                                  "cpu-avx2", "host", "0123456789ab")
    except (InvalidNameError, ValueError):
        return
    store = LocalEngineStore(root)
    resolved = Path(os.path.normpath(store.path_for(identity)))
    assert root in resolved.parents and resolved.parent.parent == root
    from trt_provision.stores.s3 import S3EngineStore, S3Settings

    key = S3EngineStore(S3Settings(bucket="b", prefix="p")).key_for(identity)
    assert key.startswith("p/engines/") and ".." not in key.split("/") and "//" not in key


def test_gate_refuses_unsafe_model_name_in_metadata_with_a_gate_error(
    cache_copy: Path, host: HostCapabilities
) -> None:
    """Forged metadata naming an unsafe model must be a gate refusal (so the compiler
    rebuilds), not an InvalidNameError that aborts provisioning."""
    engine = engine_of(cache_copy, "dynamic_mlp")
    meta = sidecars(engine)[1]
    data = json.loads(meta.read_text())
    data["identity"]["model_name"] = "../evil"
    meta.write_text(json.dumps(data))
    wired = wire_ort(cache_copy, host)
    with pytest.raises(EngineGateError):
        wired.gate.validate(engine, wired.runtime.runtime_target(BuildConfig()))


def test_provision_rebuilds_engine_whose_metadata_names_an_unsafe_model(
    cache_copy: Path, host: HostCapabilities
) -> None:
    engine = engine_of(cache_copy, "dynamic_mlp")
    meta = sidecars(engine)[1]
    data = json.loads(meta.read_text())
    data["identity"]["model_name"] = "../evil"
    meta.write_text(json.dumps(data))
    summary = wire_ort(cache_copy, host).compiler.compile_engines_for_corpus(demo_request())
    outcomes = {r.name: r.outcome for r in summary.results}
    assert outcomes["dynamic_mlp"] is CompileOutcome.BUILT


# ----------------------------------------------------------------- permissions


@pytest.fixture
def open_umask() -> Iterator[None]:
    old = os.umask(0)
    try:
        yield
    finally:
        os.umask(old)


def _group_or_other_writable(path: Path) -> bool:
    return bool(stat.S_IMODE(path.stat().st_mode) & 0o022)


def test_sidecars_are_not_group_or_world_writable_even_with_umask_0(
    tmp_path: Path, host: HostCapabilities, open_umask: None
) -> None:
    cache = tmp_path / "cache"
    wire_ort(cache, host).compiler.compile_engines_for_corpus(demo_request())
    for model in ("demo_cnn", "two_inputs", "dynamic_mlp"):
        for sidecar in sidecars(engine_of(cache, model)):
            assert not _group_or_other_writable(sidecar), oct(sidecar.stat().st_mode)


def test_engines_are_0644_or_stricter_even_with_umask_0(
    tmp_path: Path, host: HostCapabilities, open_umask: None
) -> None:
    cache = tmp_path / "cache"
    wire_ort(cache, host).compiler.compile_engines_for_corpus(demo_request())
    for model in ("demo_cnn", "two_inputs", "dynamic_mlp"):
        engine = engine_of(cache, model)
        assert not _group_or_other_writable(engine), oct(engine.stat().st_mode)


def test_engines_are_0644_or_stricter_with_the_usual_umask(
    tmp_path: Path, host: HostCapabilities
) -> None:
    old = os.umask(0o022)
    try:
        cache = tmp_path / "cache"
        wire_ort(cache, host).compiler.compile_engines_for_corpus(demo_request())
    finally:
        os.umask(old)
    for model in ("demo_cnn", "two_inputs", "dynamic_mlp"):
        assert not _group_or_other_writable(engine_of(cache, model))


def test_private_key_is_0600_even_with_umask_0(tmp_path: Path, open_umask: None) -> None:
    from trt_provision.trust import generate_keypair

    public_path, _ = generate_keypair(tmp_path / "keys" / "signing.pem")
    private = tmp_path / "keys" / "signing.pem"
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert not _group_or_other_writable(public_path)


# ----------------------------------------------------------------- host code


def test_host_code_needs_an_explicit_setting(tmp_path: Path, host: HostCapabilities) -> None:
    assert wire_ort(tmp_path / "a", host).gate.allow_host_code is False  # type: ignore[attr-defined]
    from trt_provision.compose import wire

    allowed = wire(Settings(cache_dir=tmp_path / "b", runtime="onnxruntime",
                            allow_engine_host_code=True), host=host, use_remote=False)
    assert allowed.gate.allow_host_code is True  # type: ignore[attr-defined]


# ----------------------------------------------------------------- secrets


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


SECRET = "S3cr3t-DoNotLog-9f8e7d6c5b4a"
ACCESS = "AKIA-RELIABILITY-TEST"


def test_no_secret_in_logs_or_errors_of_a_failing_remote_fetch(
    cache_copy: Path, host: HostCapabilities, caplog: pytest.LogCaptureFixture
) -> None:
    pytest.importorskip("boto3")
    from trt_provision.stores.s3 import S3EngineStore, S3Settings

    s3 = S3Settings(bucket="engines", endpoint=f"http://127.0.0.1:{_closed_port()}",
                    access_key=ACCESS, secret_key=SECRET, connect_timeout_s=0.5,
                    read_timeout_s=0.5, max_attempts=1)
    remote = S3EngineStore(s3)
    wired = wire_ort(cache_copy, host)
    engine = engine_of(cache_copy, "dynamic_mlp")
    entry = wired.gate.validate(engine, wired.runtime.runtime_target(BuildConfig()))
    texts = [repr(s3), repr(remote), str(s3.describe())]
    with caplog.at_level(logging.DEBUG):
        fetched = remote.fetch(entry.identity, LocalEngineStore(tmp := cache_copy / "other"),
                               wired.gate, wired.runtime.runtime_target(BuildConfig()))
        try:
            remote.upload(entry)
        except Exception as exc:  # a raised error must not carry it either
            texts.append(f"{exc!r} {exc}")
    assert fetched is None
    assert not tmp.exists() or not any(tmp.rglob("*.engine"))
    texts.append(caplog.text)
    texts.extend(json.dumps(r.__dict__, default=str) for r in caplog.records)
    assert caplog.records, "the failing fetch logged nothing"
    for text in texts:
        assert SECRET not in text


# ------------------------------------------------------------------ file.py:fn calibration


def _loader_manifest(tmp_path: Path) -> tuple[Path, Path]:
    """An INT8 manifest whose calibration data comes from a Python loader that leaves a
    marker file when it runs."""
    import textwrap

    from reliability._support import ROOT

    marker = tmp_path / "loader-ran"
    (tmp_path / "loader.py").write_text(textwrap.dedent(f"""
        from pathlib import Path
        import numpy as np

        def load():
            Path({str(marker)!r}).write_text("executed")
            return dict(np.load({str(ROOT / "examples" / "calibration" / "demo_cnn.npz")!r}))
    """))
    manifest = tmp_path / "loader.toml"
    manifest.write_text(textwrap.dedent(f"""
        [settings]
        runtime = "onnxruntime"
        cache_dir = "cache"

        [[models]]
        name = "demo_cnn"
        path = {str(ROOT / "examples" / "models" / "demo_cnn.onnx")!r}
        precision = "int8"
        calibration = {{ data = "loader.py:load" }}
        [[models.profiles]]
        input = "image"
        min = [1, 3, 32, 32]
        opt = [4, 3, 32, 32]
        max = [8, 3, 32, 32]
    """))
    return manifest, marker


def test_dry_run_never_executes_a_python_calibration_loader(tmp_path: Path) -> None:
    import json
    import subprocess
    import sys

    manifest, marker = _loader_manifest(tmp_path)
    dry = subprocess.run(
        [sys.executable, "-m", "trt_provision", "provision", str(manifest), "--dry-run",
         "--no-remote", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert dry.returncode == 0, dry.stderr
    assert not marker.exists()
    assert [r["outcome"] for r in json.loads(dry.stdout)["results"]] == ["planned"]
    assert "not executing the calibration loader of demo_cnn" in dry.stderr
    # Control: a real run does execute it (the test can tell the two apart).
    real = subprocess.run(
        [sys.executable, "-m", "trt_provision", "provision", str(manifest), "--no-remote",
         "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert real.returncode == 0, real.stderr
    assert marker.read_text() == "executed"
    marker.unlink()
    # Later dry runs still do not, even with the engine in the cache.
    again = subprocess.run(
        [sys.executable, "-m", "trt_provision", "provision", str(manifest), "--dry-run",
         "--no-remote", "--json"],
        capture_output=True, text=True, timeout=600,
    )
    assert again.returncode == 0 and not marker.exists()
