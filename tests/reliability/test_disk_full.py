"""Disk full: an injected ENOSPC during engine staging, sidecar write, metadata write or
their fsyncs leaves the previous engine and sidecars intact, removes every temp file and
raises a typed error; the next run succeeds."""

from __future__ import annotations

import errno
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from fakes.fake_runtime import FakeRuntime
from reliability._support import DEMO_MODELS, demo_request, snapshot, wire_ort
from trt_provision.cli.main import main as cli_main
from trt_provision.compiler import EngineCompiler
from trt_provision.errors import EngineBuildError, StoreError
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import (
    BackboneSpec,
    BuildArtifact,
    BuildConfig,
    CompileOutcome,
    EngineCompileRequest,
    HostCapabilities,
)

pytestmark = pytest.mark.tier1


def _fd_name(fd: int) -> str:
    try:
        return os.readlink(f"/proc/self/fd/{fd}")
    except OSError:
        return ""


def _enospc() -> OSError:
    return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


def _fail_on(monkeypatch: pytest.MonkeyPatch, func: str, matches: Callable[[str], bool]) -> list[str]:
    """Make ``os.<func>`` raise ENOSPC for descriptors whose file name matches."""
    real = getattr(os, func)
    hits: list[str] = []

    def faulty(fd: int, *args: Any) -> Any:
        name = _fd_name(fd)
        if matches(name):
            hits.append(name)
            raise _enospc()
        return real(fd, *args)

    monkeypatch.setattr(os, func, faulty)
    return hits


def _temp_files(cache: Path) -> list[Path]:
    return [p for p in cache.rglob("*") if p.name.startswith(".tmp-")]


def _is_sha_temp(name: str) -> bool:
    return ".tmp-" in name and name.endswith(".engine.sha256")


def _is_json_temp(name: str) -> bool:
    return ".tmp-" in name and name.endswith(".engine.json")


def _is_staged_engine(name: str) -> bool:
    return ".tmp-" in name and name.endswith(".engine")


FAULTS: dict[str, tuple[str, Callable[[str], bool]]] = {
    "sha256_sidecar_write": ("write", _is_sha_temp),
    "metadata_sidecar_write": ("write", _is_json_temp),
    "sha256_sidecar_fsync": ("fsync", _is_sha_temp),
    "metadata_sidecar_fsync": ("fsync", _is_json_temp),
    "staged_engine_fsync": ("fsync", _is_staged_engine),
}


@pytest.mark.parametrize("fault", sorted(FAULTS))
def test_enospc_during_publish_keeps_previous_entry(
    fault: str, cache_copy: Path, host: HostCapabilities, monkeypatch: pytest.MonkeyPatch
) -> None:
    before = snapshot(cache_copy)
    func, matches = FAULTS[fault]
    with monkeypatch.context() as m:
        hits = _fail_on(m, func, matches)
        with pytest.raises(StoreError) as info:
            wire_ort(cache_copy, host).compiler.compile_engines_for_corpus(
                demo_request(force_rebuild=True, fail_fast=True)
            )
    assert hits, "the fault was never injected"
    assert info.value.context.get("errno") == errno.ENOSPC
    assert "no space left on device" in str(info.value)
    after = snapshot(cache_copy)
    assert {k: v for k, v in after.items() if not k.startswith(".locks")} == {
        k: v for k, v in before.items() if not k.startswith(".locks")
    }
    assert _temp_files(cache_copy) == []
    # Once space is back, the cache is reusable as it was and a rebuild works.
    summary = wire_ort(cache_copy, host).compiler.compile_engines_for_corpus(demo_request())
    assert summary.reused == len(DEMO_MODELS)
    summary = wire_ort(cache_copy, host).compiler.compile_engines_for_corpus(
        demo_request(force_rebuild=True)
    )
    assert summary.built == len(DEMO_MODELS) and _temp_files(cache_copy) == []


class _WritingRuntime(FakeRuntime):
    """Writes the staged engine with os.write in small blocks and, like a real runtime,
    translates the OSError of a full disk into EngineBuildError."""

    def compile_engine(
        self, model_path: Path, build_config: BuildConfig, staged_path: Path
    ) -> BuildArtifact:
        self.calls.append(("compile_engine", Path(model_path).name))
        payload = Path(model_path).read_bytes() + str(len(self.calls)).encode()
        try:
            fd = os.open(staged_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            try:
                for i in range(0, len(payload), 1024):
                    os.write(fd, payload[i : i + 1024])
            finally:
                os.close(fd)
        except OSError as exc:
            raise EngineBuildError(f"cannot write engine: {exc.strerror}", errno=exc.errno) from exc
        return BuildArtifact(staged_path, 0.01, {})


def test_enospc_while_staging_engine_keeps_previous_entry(
    cache_dir: Path, demo_models: dict[str, Path], demo_configs: dict[str, BuildConfig],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiler = EngineCompiler(
        runtime=_WritingRuntime(),
        store=LocalEngineStore(cache_dir),
        gate=DefaultEngineGate(cache_root=cache_dir),
        host=HostCapabilities(sm="sm90"),
    )
    request = EngineCompileRequest(
        tuple(BackboneSpec(n, p, demo_configs[n]) for n, p in demo_models.items())
    )
    first = compiler.compile_engines_for_corpus(request)
    assert first.built == 3
    before = snapshot(cache_dir)
    written: list[int] = []
    real_write = os.write

    def fill_up(fd: int, data: Any) -> int:
        if _is_staged_engine(_fd_name(fd)):
            written.append(len(data))
            if len(written) > 2:  # a partial engine is already on disk
                raise _enospc()
        return real_write(fd, data)

    with monkeypatch.context() as m:
        m.setattr(os, "write", fill_up)
        with pytest.raises(EngineBuildError):
            compiler.compile_engines_for_corpus(
                EngineCompileRequest(request.backbones, force_rebuild=True, fail_fast=True)
            )
    assert len(written) > 2
    after = snapshot(cache_dir)
    assert {k: v for k, v in after.items() if not k.startswith(".locks")} == {
        k: v for k, v in before.items() if not k.startswith(".locks")
    }
    assert _temp_files(cache_dir) == []
    again = compiler.compile_engines_for_corpus(request)
    assert {r.outcome for r in again.results} == {CompileOutcome.REUSED}


def test_cli_reports_disk_full_as_user_error(
    cache_copy: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from reliability._support import DEMO_MANIFEST

    before = snapshot(cache_copy)
    with monkeypatch.context() as m:
        hits = _fail_on(m, "write", _is_json_temp)
        code = cli_main(
            ["-q", "provision", str(DEMO_MANIFEST), "--cache-dir", str(cache_copy),
             "--force-rebuild", "--no-remote", "--json"]
        )
    assert hits
    assert code == 1
    err = capsys.readouterr().err
    assert "StoreError" in err and "no space left on device" in err and "Traceback" not in err
    after = snapshot(cache_copy)
    assert {k: v for k, v in after.items() if not k.startswith(".locks")} == {
        k: v for k, v in before.items() if not k.startswith(".locks")
    }
    assert _temp_files(cache_copy) == []


class _FullDiskOrt:
    """Stand-in for the ``onnxruntime`` module whose InferenceSession, asked to save the
    optimized model, writes part of it and fails the way ONNX Runtime 1.x does on a full
    disk (measured on a 4 KiB tmpfs: ``InvalidProtobuf`` "Protobuf serialization failed",
    the partial file left behind)."""

    def __init__(self, real: Any) -> None:
        self._real = real

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def InferenceSession(self, path: str, sess_options: Any = None, **kw: Any) -> Any:
        target = getattr(sess_options, "optimized_model_filepath", "")
        if target:
            Path(target).write_bytes(b"\x08\x07" * 100)  # a partial protobuf
            raise RuntimeError(
                "[ONNXRuntimeError] : 7 : INVALID_PROTOBUF : Protobuf serialization failed."
            )
        return self._real.InferenceSession(path, sess_options=sess_options, **kw)


@pytest.mark.parametrize("disk_full", [True, False])
def test_onnx_runtime_failing_to_save_on_a_full_disk_is_reported_as_enospc(
    cache_copy: Path, host: HostCapabilities, monkeypatch: pytest.MonkeyPatch, disk_full: bool
) -> None:
    """Injected: the stand-in above plus a filesystem that refuses to allocate (ENOSPC from
    posix_fallocate). The real thing on a small tmpfs is in test_local_attacks.py."""
    import onnxruntime

    from trt_provision.runtimes import onnxruntime as ort_module

    before = snapshot(cache_copy)
    with monkeypatch.context() as m:
        m.setattr(ort_module, "_ort", lambda: _FullDiskOrt(onnxruntime))
        if disk_full:
            def no_room(fd: int, offset: int, length: int) -> None:
                raise _enospc()

            m.setattr(os, "posix_fallocate", no_room)
        with pytest.raises(EngineBuildError) as info:
            wire_ort(cache_copy, host).compiler.compile_engines_for_corpus(
                demo_request(force_rebuild=True, fail_fast=True)
            )
    if disk_full:
        assert "no space left on device" in str(info.value)
        assert info.value.context["errno"] == errno.ENOSPC
    else:  # a save failure with room to spare keeps ONNX Runtime's own words
        assert "Protobuf serialization failed" in str(info.value)
        assert "no space left" not in str(info.value)
    after = snapshot(cache_copy)
    assert {k: v for k, v in after.items() if not k.startswith(".locks")} == {
        k: v for k, v in before.items() if not k.startswith(".locks")
    }
    assert _temp_files(cache_copy) == []
