"""Tamper matrix: every damaged or forged cache entry is refused by the engine gate, refused
before the runtime creates a session, and rebuilt (never reused) by the compiler."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from reliability._support import (
    DEMO_MODELS,
    demo_request,
    engine_of,
    sha256_hex,
    sidecars,
    wire_ort,
)
from trt_provision.errors import EngineGateError, StoreError
from trt_provision.identity import parse_engine_filename
from trt_provision.runtimes import onnxruntime as ort_runtime
from trt_provision.types import BuildConfig, CompileOutcome, HostCapabilities

pytestmark = pytest.mark.tier1

VICTIM = "dynamic_mlp"
OTHER = "two_inputs"


# ----------------------------------------------------------------- tampering helpers


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x40
    path.write_bytes(bytes(data))


def _edit_json(path: Path, edit: Callable[[dict[str, Any]], None]) -> None:
    data = json.loads(path.read_text())
    edit(data)
    path.write_text(json.dumps(data))


def _other_target(current: str) -> str:
    return "cpu-avx2" if current != "cpu-avx2" else "cpu-sse42"


def _rename_consistently(engine: Path, new_name: str, field: str, value: str) -> Path:
    """Move an engine and rewrite both sidecars so they agree with its new name."""
    sha, meta = sidecars(engine)
    new = engine.with_name(new_name)
    new_sha, new_meta = sidecars(new)
    os.replace(engine, new)
    digest = sha.read_text().split()[0]
    new_sha.write_text(f"{digest}  {new_name}\n")
    sha.unlink()
    data = json.loads(meta.read_text())
    data["engine"] = new_name
    data["identity"][field] = value
    new_meta.write_text(json.dumps(data))
    meta.unlink()
    return new


def _with_field(name: str, field: str, value: str) -> str:
    parsed = parse_engine_filename(name)
    parts = name.split(".")
    if field == "target":
        parts[3] = value
    elif field == "runtime_version":
        parts[5] = f"{parsed.runtime}-{value.replace('.', '_')}"
    return ".".join(parts)


# Each case damages the victim's entry and returns the path to present to the gate.
Case = Callable[[Path, Path], Path]


def bitflip_start(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    _flip(e, 0)
    return e


def bitflip_middle(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    _flip(e, e.stat().st_size // 2)
    return e


def bitflip_end(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    _flip(e, -1)
    return e


def truncated(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    e.write_bytes(e.read_bytes()[:-17])
    return e


def truncated_size_updated(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    e.write_bytes(e.read_bytes()[:-17])
    _edit_json(sidecars(e)[1], lambda d: d.update(size_bytes=e.stat().st_size))
    return e


def appended(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    e.write_bytes(e.read_bytes() + b"\x00tail")
    return e


def zero_byte(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    e.write_bytes(b"")
    return e


def sha_sidecar_edited(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    sha = sidecars(e)[0]
    text = sha.read_text()
    sha.write_text(("0" if text[0] != "0" else "1") + text[1:])
    return e


def both_sidecars_agree_on_wrong_digest(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    sha, meta = sidecars(e)
    wrong = "f" * 64
    sha.write_text(f"{wrong}  {e.name}\n")
    _edit_json(meta, lambda d: d.update(sha256=wrong))
    return e


def sha_sidecar_of_other_engine(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    shutil.copyfile(sidecars(engine_of(cache, OTHER))[0], sidecars(e)[0])
    return e


def json_sidecar_of_other_engine(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    shutil.copyfile(sidecars(engine_of(cache, OTHER))[1], sidecars(e)[1])
    return e


def sha_sidecar_missing(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    sidecars(e)[0].unlink()
    return e


def json_sidecar_garbage(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    sidecars(e)[1].write_bytes(b"{\xff not json")
    return e


def metadata_claims_other_target(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    target = parse_engine_filename(e.name).target
    _edit_json(sidecars(e)[1], lambda d: d["identity"].update(target=_other_target(target)))
    return e


def metadata_claims_other_runtime_version(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    _edit_json(sidecars(e)[1], lambda d: d["identity"].update(runtime_version="0.9.0"))
    return e


def metadata_claims_version_compatible(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    _edit_json(sidecars(e)[1], lambda d: d.update(version_compatible=True))
    return e


def renamed_to_other_host_target(cache: Path, outside: Path) -> Path:
    """This engine moved (sidecars rewritten consistently) to another CPU target's name."""
    e = engine_of(cache, VICTIM)
    target = _other_target(parse_engine_filename(e.name).target)
    return _rename_consistently(e, _with_field(e.name, "target", target), "target", target)


def renamed_to_other_runtime_version(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    return _rename_consistently(
        e, _with_field(e.name, "runtime_version", "0.9.0"), "runtime_version", "0.9.0"
    )


def other_host_engine_renamed_to_this_host(cache: Path, outside: Path) -> Path:
    """An engine whose sidecars say another target, renamed to this host's filename."""
    e = engine_of(cache, VICTIM)
    target = _other_target(parse_engine_filename(e.name).target)
    foreign = _rename_consistently(e, _with_field(e.name, "target", target), "target", target)
    for src, dst in zip((foreign, *sidecars(foreign)), (e, *sidecars(e)), strict=True):
        os.replace(src, dst)
    return e


def engine_bytes_swapped_between_models(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    shutil.copyfile(engine_of(cache, OTHER), e)
    return e


def engine_and_sidecars_swapped_between_models(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    o = engine_of(cache, OTHER)
    for src, dst in zip((o, *sidecars(o)), (e, *sidecars(e)), strict=True):
        shutil.copyfile(src, dst)
    return e


def engine_symlink_escapes_cache(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    copy = outside / e.name
    shutil.copyfile(e, copy)  # identical bytes: only the link's target is wrong
    e.unlink()
    e.symlink_to(copy)
    return e


def engine_symlink_to_dev_zero(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    e.unlink()
    e.symlink_to("/dev/zero")
    return e


def sha_sidecar_symlink_escapes_cache(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    sha = sidecars(e)[0]
    copy = outside / sha.name
    shutil.copyfile(sha, copy)
    sha.unlink()
    sha.symlink_to(copy)
    return e


def json_sidecar_symlink_escapes_cache(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    meta = sidecars(e)[1]
    copy = outside / meta.name
    shutil.copyfile(meta, copy)
    meta.unlink()
    meta.symlink_to(copy)
    return e


def engine_is_a_directory(cache: Path, outside: Path) -> Path:
    e = engine_of(cache, VICTIM)
    e.unlink()
    e.mkdir()
    return e


CASES: list[Case] = [
    bitflip_start,
    bitflip_middle,
    bitflip_end,
    truncated,
    truncated_size_updated,
    appended,
    zero_byte,
    sha_sidecar_edited,
    both_sidecars_agree_on_wrong_digest,
    sha_sidecar_of_other_engine,
    json_sidecar_of_other_engine,
    sha_sidecar_missing,
    json_sidecar_garbage,
    metadata_claims_other_target,
    metadata_claims_other_runtime_version,
    metadata_claims_version_compatible,
    renamed_to_other_host_target,
    renamed_to_other_runtime_version,
    other_host_engine_renamed_to_this_host,
    engine_bytes_swapped_between_models,
    engine_and_sidecars_swapped_between_models,
    engine_symlink_escapes_cache,
    engine_symlink_to_dev_zero,
    sha_sidecar_symlink_escapes_cache,
    json_sidecar_symlink_escapes_cache,
]


class _RecordingOrt:
    """Stands in for the onnxruntime module: records any attempt to create a session."""

    def __init__(self, real: Any) -> None:
        self._real = real
        self.sessions: list[str] = []

    def __getattr__(self, name: str) -> Any:
        return getattr(self._real, name)

    def InferenceSession(self, path: str, **kw: Any) -> Any:
        self.sessions.append(path)
        raise AssertionError("a session was created for a refused engine")


def test_untampered_copy_passes_and_loads(cache_copy: Path, host: HostCapabilities) -> None:
    """Control: the same checks accept an intact cache, so every refusal below is earned."""
    wired = wire_ort(cache_copy, host)
    target = wired.runtime.runtime_target(BuildConfig())
    for model in DEMO_MODELS:
        entry = wired.gate.validate(engine_of(cache_copy, model), target)
        handle = wired.runtime.deserialize_engine(entry)
        wired.runtime.release_engine(handle)
    summary = wired.compiler.compile_engines_for_corpus(demo_request())
    assert summary.reused == 3


@pytest.mark.parametrize("case", CASES, ids=[c.__name__ for c in CASES])
def test_tampered_entry_is_refused_before_load_and_rebuilt(
    case: Case,
    cache_copy: Path,
    tmp_path: Path,
    host: HostCapabilities,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    wired = wire_ort(cache_copy, host)
    target = wired.runtime.runtime_target(BuildConfig())
    good = wired.gate.validate(engine_of(cache_copy, VICTIM), target)
    presented = case(cache_copy, outside)
    outside_before = {p.name: p.read_bytes() for p in outside.iterdir()}

    # 1. the gate refuses it
    with pytest.raises(EngineGateError):
        wired.gate.validate(presented, target)

    # 2. the runtime refuses it before ONNX Runtime sees a byte
    recorder = _RecordingOrt(ort_runtime._ort())
    with monkeypatch.context() as m:
        m.setattr(ort_runtime, "_ort", lambda: recorder)
        with pytest.raises(EngineGateError):
            wired.runtime.deserialize_engine(dataclasses.replace(good, engine_path=presented))
    assert recorder.sessions == []

    # 3. provisioning rebuilds it (never reuses it) and leaves a verified cache
    summary = wire_ort(cache_copy, host).compiler.compile_engines_for_corpus(demo_request())
    outcomes = {r.name: r.outcome for r in summary.results}
    assert outcomes[VICTIM] is CompileOutcome.BUILT
    assert outcomes[OTHER] is CompileOutcome.REUSED
    rebuilt = next(r.entry for r in summary.results if r.name == VICTIM)
    assert rebuilt is not None and not rebuilt.engine_path.is_symlink()
    again = wire_ort(cache_copy, host).gate.validate(rebuilt.engine_path, target)
    assert again.sha256 == sha256_hex(rebuilt.engine_path)
    # files outside the cache were never written through a link
    assert {p.name: p.read_bytes() for p in outside.iterdir()} == outside_before


def test_directory_in_place_of_engine_is_refused_and_build_fails_typed(
    cache_copy: Path, tmp_path: Path, host: HostCapabilities
) -> None:
    """The compiler never deletes: a directory squatting on the engine name is refused by
    the gate and the rebuild stops with a StoreError (exit 1), not a reuse or a crash."""
    wired = wire_ort(cache_copy, host)
    target = wired.runtime.runtime_target(BuildConfig())
    presented = engine_is_a_directory(cache_copy, tmp_path)
    with pytest.raises(EngineGateError):
        wired.gate.validate(presented, target)
    summary = wired.compiler.compile_engines_for_corpus(demo_request())
    (failed,) = [r for r in summary.results if r.outcome is not CompileOutcome.REUSED]
    assert failed.outcome is CompileOutcome.FAILED and failed.error_type == "StoreError"
    with pytest.raises(StoreError):
        wired.compiler.compile_engines_for_corpus(demo_request(fail_fast=True))
    assert presented.is_dir()
    assert [p for p in presented.parent.iterdir() if p.name.startswith(".tmp-")] == []
