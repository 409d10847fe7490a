"""``settings.build`` through the compiler with the fake remote, and its config parsing."""

from __future__ import annotations

from pathlib import Path

import pytest

from fakes.fake_remote import FakeRemote
from fakes.fake_runtime import FakeRuntime
from trt_provision.compiler import EngineCompiler
from trt_provision.config import Settings, load_manifest
from trt_provision.errors import ManifestError
from trt_provision.gates.engine_gate import DefaultEngineGate
from trt_provision.stores.local import LocalEngineStore
from trt_provision.types import (
    CompileOutcome,
    EngineCompileRequest,
    HostCapabilities,
)

pytestmark = pytest.mark.tier1

DEMO = Path(__file__).resolve().parents[2] / "examples" / "demo.toml"


def _compiler(cache: Path, runtime: FakeRuntime, remote: FakeRemote | None) -> EngineCompiler:
    return EngineCompiler(runtime=runtime, store=LocalEngineStore(cache),
                          gate=DefaultEngineGate(cache_root=cache),
                          host=HostCapabilities(sm="sm90"), remote=remote)


def _request(**kw: object) -> EngineCompileRequest:
    return EngineCompileRequest(backbones=load_manifest(DEMO).backbones, **kw)  # type: ignore[arg-type]


def _by_name(summary: object) -> dict[str, tuple[CompileOutcome, tuple[str, ...]]]:
    return {r.name: (r.outcome, r.notes) for r in summary.results}  # type: ignore[attr-defined]


def test_dry_run_says_fetch_or_build_from_what_the_remote_has(tmp_path: Path) -> None:
    remote = FakeRemote()
    _compiler(tmp_path / "builder", FakeRuntime(), remote).compile_engines_for_corpus(_request())
    first = sorted(remote.objects)[0]
    del remote.objects[first]
    remote.fetches = 0
    runtime = FakeRuntime()
    device = _compiler(tmp_path / "device", runtime, remote)
    plan = _by_name(device.compile_engines_for_corpus(_request(dry_run=True)))
    missing = first.split(".")[0]
    for name, (outcome, notes) in plan.items():
        assert outcome is CompileOutcome.PLANNED
        if name == missing:
            assert notes == ("would be built: no engine in cache; the remote store does not "
                             "have it",)
        else:
            assert notes == ("would be fetched: the remote store has it",)
    never = _by_name(device.compile_engines_for_corpus(_request(dry_run=True, build="never")))
    assert never[missing][0] is CompileOutcome.MISSING
    assert runtime.count("compile_engine") == 0 and remote.fetches == 0
    # A remote that cannot answer leaves the plan as it was, with no claim about it.
    remote.down = True
    down = _by_name(device.compile_engines_for_corpus(_request(dry_run=True)))
    assert {n for _, (_, n) in down.items()} == {("would be built: no engine in cache",)}


def test_never_fetches_and_reports_missing_with_the_target(tmp_path: Path) -> None:
    remote = FakeRemote()
    _compiler(tmp_path / "builder", FakeRuntime(), remote).compile_engines_for_corpus(_request())
    gone = sorted(remote.objects)[0]
    del remote.objects[gone]
    runtime = FakeRuntime()
    summary = _compiler(tmp_path / "device", runtime, remote).compile_engines_for_corpus(
        _request(build="never"))
    assert (summary.fetched, summary.missing, summary.built) == (2, 1, 0)
    assert runtime.count("compile_engine") == 0
    result = next(r for r in summary.results if r.outcome is CompileOutcome.MISSING)
    assert result.identity is not None and result.identity.filename == gone
    assert result.identity.target in (result.error or "") and gone in (result.error or "")
    assert not result.outcome.ok and summary.to_dict()["missing"] == 1
    # Without a remote store everything is missing, and said so.
    alone = _compiler(tmp_path / "alone", FakeRuntime(), None).compile_engines_for_corpus(
        _request(build="never"))
    assert alone.missing == 3
    assert all("no remote store in use" in (r.error or "") for r in alone.results)


def test_always_builds_instead_of_fetching_and_keeps_the_remote_copy(tmp_path: Path) -> None:
    remote = FakeRemote()
    _compiler(tmp_path / "a", FakeRuntime(), remote).compile_engines_for_corpus(_request())
    before = {k: dict(v) for k, v in remote.objects.items()}
    remote.fetches = 0
    runtime = FakeRuntime()
    summary = _compiler(tmp_path / "b", runtime, remote).compile_engines_for_corpus(
        _request(build="always"))
    assert (summary.built, summary.fetched) == (3, 0) and remote.fetches == 0
    assert remote.objects == before  # the conditional put left the published ones alone
    again = _compiler(tmp_path / "b", runtime, remote).compile_engines_for_corpus(
        _request(build="always"))
    assert again.reused == 3


def test_build_setting_is_validated(tmp_path: Path) -> None:
    text = DEMO.read_text().replace("[defaults]", '[settings]\nbuild = "sometimes"\n\n[defaults]')
    bad = tmp_path / "bad.toml"
    bad.write_text(text.replace('path = "models/', f'path = "{DEMO.parent}/models/'))
    with pytest.raises(ManifestError) as exc:
        load_manifest(bad)
    assert exc.value.context["key"] == "settings.build" and "never" in exc.value.context[
        "expected"]
    good = tmp_path / "good.toml"
    good.write_text(text.replace('"sometimes"', '"never"').replace(
        'path = "models/', f'path = "{DEMO.parent}/models/'))
    assert load_manifest(good).settings.build == "never"
    assert load_manifest(DEMO).settings.build == "fallback"
    with pytest.raises(ValueError, match="build must be one of"):
        Settings(build="maybe")
    with pytest.raises(ValueError, match="build must be one of"):
        EngineCompileRequest(backbones=(), build="maybe")
