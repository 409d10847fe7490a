"""Cache listing, gc planning/applying and clear (no server needed)."""

from __future__ import annotations

import hashlib
import os
import time
from pathlib import Path

import pytest

from trt_provision._fs import TEMP_PREFIX
from trt_provision.stores.local import LocalEngineStore
from trt_provision.stores.maintenance import apply_gc, clear_cache, list_engines, plan_gc
from trt_provision.types import EngineCacheEntry, EngineIdentity, PrecisionMode, RuntimeTarget

pytestmark = pytest.mark.tier0

HOST = RuntimeTarget(runtime="trt", runtime_version="10.3.0", target="sm87", platform="jp6.2")


def _sha(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


def _publish(
    store: LocalEngineStore,
    model: str = "det",
    model_hash: str = _sha("det-v2"),
    target: RuntimeTarget = HOST,
    size: int = 1000,
) -> EngineCacheEntry:
    identity = EngineIdentity(
        model_name=model,
        model_sha256=model_hash,
        precision=PrecisionMode.FP16,
        runtime=target.runtime,
        runtime_version=target.runtime_version,
        target=target.target,
        platform=target.platform,
        options_digest="0123456789ab",
    )
    staged = store.staging_path(identity)
    staged.write_bytes(b"x" * size)
    return store.publish(identity, staged, {})


@pytest.fixture
def store(tmp_path: Path) -> LocalEngineStore:
    s = LocalEngineStore(tmp_path / "cache")
    s.ensure_writable()
    return s


def test_ls_parses_identity_fields(store: LocalEngineStore) -> None:
    entry = _publish(store, size=5000)
    (store.root / "det" / "notes.txt").write_text("not ours")
    (entry.engine_path.with_name("random.engine")).write_bytes(b"?")
    listed = list_engines(store.root)
    assert [e.path for e in listed] == [entry.engine_path]
    item = listed[0]
    assert (item.parsed.model_name, item.parsed.target, item.parsed.platform) == (
        "det", "sm87", "jp6.2"
    )
    assert item.parsed.runtime_version == "10.3.0"
    assert item.size_bytes > 5000 and item.complete and not item.signed
    assert item.last_used > 0
    assert item.to_dict()["precision"] == "fp16"


def test_gc_plan_keeps_current_and_removes_superseded(store: LocalEngineStore) -> None:
    keep = _publish(store)
    compatible = _publish(store, target=RuntimeTarget("trt", "10.3.0", "sm80+", "jp6.2"))
    old_hash = _publish(store, model_hash=_sha("det-v1"))
    other_trt = _publish(store, target=RuntimeTarget("trt", "10.1.0", "sm87", "jp6.0"))
    other_sm = _publish(store, target=RuntimeTarget("trt", "10.3.0", "sm86", "jp6.2"))
    unlisted = _publish(store, model="legacy", model_hash=_sha("legacy"))
    gone = "det." + "0" * 16 + ".fp16.sm87.jp6_2.trt-10_3_0.0123456789ab.engine"
    orphan = keep.engine_path.with_name(gone + ".json")
    orphan.write_text("{}")
    dead_temp = store.root / "det" / f"{TEMP_PREFIX}999999999-1-{gone}"
    dead_temp.write_bytes(b"partial")
    live_temp = store.root / "det" / f"{TEMP_PREFIX}{os.getpid()}-1-{gone}"
    live_temp.write_bytes(b"in progress")

    plan = plan_gc(store.root, host_targets=[HOST], current_models={"det": _sha("det-v2")})
    paths = {i.path: i.reason for i in plan.items}
    assert old_hash.engine_path in paths and "older hash" in paths[old_hash.engine_path]
    assert other_trt.engine_path in paths and "10.1.0" in paths[other_trt.engine_path]
    assert other_sm.engine_path in paths
    assert orphan in paths and dead_temp in paths
    for kept in (keep, compatible, unlisted):
        assert kept.engine_path not in paths
    assert live_temp not in paths
    assert plan.total_bytes == sum(i.size_bytes for i in plan.items) > 4000

    # Dry run removed nothing; apply removes exactly the plan.
    assert other_trt.engine_path.exists()
    freed = apply_gc(plan)
    assert freed == plan.total_bytes
    assert not other_trt.engine_path.exists() and not other_trt.metadata_path.exists()
    assert not orphan.exists() and not dead_temp.exists() and live_temp.exists()
    assert {e.path for e in list_engines(store.root)} == {
        keep.engine_path, compatible.engine_path, unlisted.engine_path
    }
    again = plan_gc(store.root, host_targets=[HOST], current_models={"det": _sha("det-v2")})
    assert again.items == ()


def test_gc_without_host_targets_only_uses_model_hashes(store: LocalEngineStore) -> None:
    _publish(store, target=RuntimeTarget("trt", "9.0.0", "sm75", "dgpu"))
    assert plan_gc(store.root).items == ()


def test_a_live_writers_temp_is_kept_however_old(store: LocalEngineStore) -> None:
    """A long build (hours on a Jetson) must not lose its staging file to a gc."""
    temp = store.root / "det"
    temp.mkdir(exist_ok=True)
    path = temp / f"{TEMP_PREFIX}{os.getpid()}-1-z.engine"
    path.write_bytes(b"old")
    old = time.time() - 10 * 3600
    os.utime(path, (old, old))
    assert path not in {i.path for i in plan_gc(store.root).items}
    assert path not in store.clean_temp_files() and path.exists()


def test_clear_never_deletes_what_is_not_ours(tmp_path: Path) -> None:
    """A mistaken --cache-dir pointing at real data must not be wiped."""
    from trt_provision.stores.maintenance import clear_cache

    root = tmp_path / "project"
    (root / "src" / "pkg").mkdir(parents=True)
    (root / "src" / "pkg" / "mod.py").write_text("x = 1\n")
    (root / "docs").mkdir()
    (root / "docs" / "notes.txt").write_text("notes")
    (root / "docs" / "a.engine").write_text("not ours: the name does not parse")
    store = LocalEngineStore(root)
    engine = _publish(store).engine_path
    plan = clear_cache(root)
    assert not engine.exists() and not engine.with_name(engine.name + ".sha256").exists()
    assert (root / "src" / "pkg" / "mod.py").read_text() == "x = 1\n"
    assert (root / "docs" / "notes.txt").exists() and (root / "docs" / "a.engine").exists()
    assert all(p.name.startswith(engine.name) for item in plan.items for p in item.files)


def test_clear_removes_engines_but_not_calibration_or_running_temps(
    store: LocalEngineStore,
) -> None:
    entry = _publish(store)
    calibration = store.root / ".calibration" / "c.cache"
    calibration.parent.mkdir()
    calibration.write_bytes(b"cal")
    live_temp = store.root / "det" / f"{TEMP_PREFIX}{os.getpid()}-1-y.engine"
    live_temp.write_bytes(b"in progress")
    plan = clear_cache(store.root)
    assert plan.total_bytes > 1000
    assert not entry.engine_path.exists()
    assert list_engines(store.root) == []
    assert calibration.exists() and live_temp.exists()


def test_missing_root_is_empty(tmp_path: Path) -> None:
    assert list_engines(tmp_path / "nope") == []
    assert plan_gc(tmp_path / "nope").items == ()
    assert clear_cache(tmp_path / "nope").items == ()


def test_work_dirs_of_dead_writers_go_at_once_live_ones_stay(store: LocalEngineStore) -> None:
    import subprocess
    import sys

    model_dir = store.root / "det"
    model_dir.mkdir(exist_ok=True)
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True).stdout.strip()
    dead_dir = model_dir / f"{TEMP_PREFIX}{dead}-ort-abc_1234"
    dead_dir.mkdir()
    live_dir = model_dir / f"{TEMP_PREFIX}{os.getpid()}-ort-def_5678"
    live_dir.mkdir()
    paths = {item.path for item in plan_gc(store.root).items}
    assert dead_dir in paths and live_dir not in paths


# ------------------------------------------------------------------ only what is provably ours


def _users_directory(root: Path) -> dict[str, bytes]:
    """A user's directory mistaken for the cache (``--cache-dir ~``)."""
    (root / ".tmp-editor-backup" / "deep").mkdir(parents=True)
    (root / ".tmp-editor-backup" / "deep" / "notes.md").write_text("keep")
    (root / ".tmp-draft.txt").write_text("draft")
    projects = root / "projects"
    (projects / ".tmp-editor-backup").mkdir(parents=True)
    (projects / ".tmp-editor-backup" / "x.py").write_text("x = 1\n")
    (projects / ".tmp-draft.txt").write_text("draft")
    (projects / "app.engine.json").write_text("{}")
    (projects / "app.engine.sha256").write_text("0" * 64 + "  app.engine\n")
    (projects / ".tmp-999999999-deadbeef-readme.txt").write_text("ours-looking, but not")
    (projects / ".tmp-999999999-xyz").mkdir()
    (projects / ".tmp-999999999-xyz" / "data").write_text("a directory we never made")
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def _files(root: Path) -> dict[str, bytes]:
    return {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}


def test_gc_clear_and_temp_cleaning_leave_a_users_directory_alone(tmp_path: Path) -> None:
    root = tmp_path / "home"
    root.mkdir()
    before = _users_directory(root)
    assert plan_gc(root, host_targets=[HOST], current_models={"projects": _sha("x")}).items == ()
    assert LocalEngineStore(root).clean_temp_files() == []
    clear_cache(root)
    assert _files(root) == before


def test_sidecars_go_only_when_their_owner_parses_as_an_engine_of_that_model(
    store: LocalEngineStore,
) -> None:
    entry = _publish(store)
    name = entry.engine_path.name
    other_model = name.replace("det.", "cls.", 1)
    orphan_perf = entry.engine_path.with_name(name.replace(".0123456789ab.", ".0123456789ac.")
                                              + ".perf.json")
    orphan_perf.write_text("{}")
    foreign = entry.engine_path.with_name(other_model + ".json")  # names another model
    foreign.write_text("{}")
    plan = plan_gc(store.root)
    assert {i.path for i in plan.items} == {orphan_perf}
    perf = entry.engine_path.with_name(name + ".perf.json")
    perf.write_text("{}")
    gone = plan_gc(store.root, current_models={"det": _sha("det-v3")})
    (item,) = [i for i in gone.items if i.path == entry.engine_path]
    assert perf in item.files  # measurements go with their engine
    clear_cache(store.root)
    assert foreign.exists() and not perf.exists() and not orphan_perf.exists()


def test_temp_names_parse_only_when_they_are_ours() -> None:
    from trt_provision._fs import parse_temp_name, temp_path_for

    mine = parse_temp_name(temp_path_for(Path("/c/m/x.engine")).name)
    assert mine is not None and mine.pid == os.getpid() and mine.final == "x.engine"
    work = parse_temp_name(".tmp-123-ort-ab_c9xyz")
    assert work is not None and work.is_workdir and work.pid == 123
    for name in (".tmp-draft.txt", ".tmp-editor-backup", ".tmp-0-ab-x", ".tmp-12-ort-",
                 ".tmp-12-xyz", ".tmp--1-ab-x", ".tmp-12-ab-", "tmp-12-ab-x", ".tmp-12-ORT-abc"):
        assert parse_temp_name(name) is None, name


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to give a directory to another uid")
def test_a_work_dir_of_another_user_is_never_removed(store: LocalEngineStore) -> None:
    model_dir = store.root / "det"
    model_dir.mkdir(exist_ok=True)
    theirs = model_dir / f"{TEMP_PREFIX}999999999-ort-abcd1234"
    theirs.mkdir()
    os.chown(theirs, 54321, 54321)
    assert theirs not in {i.path for i in plan_gc(store.root).items}
    assert store.clean_temp_files() == [] and theirs.exists()


def test_apply_never_deletes_outside_the_cache_or_through_a_symlink(
    store: LocalEngineStore, tmp_path: Path
) -> None:
    from trt_provision.stores.maintenance import GcItem, GcPlan

    outside = tmp_path / "outside"
    outside.mkdir()
    victim = outside / "det.engine"
    victim.write_text("x")
    (store.root / "link").symlink_to(outside, target_is_directory=True)
    user_dir = store.root / "det"
    user_dir.mkdir(exist_ok=True)
    (user_dir / "sub").mkdir()
    (user_dir / "sub" / "f").write_text("x")
    forged = GcPlan(root=store.root, items=(
        GcItem(victim, "forged", (victim,), 1),
        GcItem(store.root / "link" / "det.engine", "forged", (store.root / "link" / "det.engine",), 1),
        GcItem(user_dir / "sub", "forged", (user_dir / "sub",), 1),
    ))
    apply_gc(forged)
    assert victim.exists() and (user_dir / "sub" / "f").exists()


def test_gc_refuses_a_cache_others_can_write(store: LocalEngineStore) -> None:
    from trt_provision.errors import StoreError

    _publish(store)
    os.chmod(store.root, 0o777)
    with pytest.raises(StoreError, match="writable by group or others"):
        plan_gc(store.root)
    with pytest.raises(StoreError, match="writable by group or others"):
        clear_cache(store.root)
