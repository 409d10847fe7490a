"""Crash consistency: kill -9 `provision` at random moments, then check the cache.

Three corpora (``--corpus``): ``fp32`` (examples/demo.toml: build, publish, sidecar write),
``precision`` (examples/precision.toml: calibration, Q/DQ conversion, calibration-cache
write, build, publish) and ``download`` (a second device fetching the demo engines from a
SeaweedFS store that a first device filled; needs the ``weed`` binary).

fp32: each trial starts `python -m trt_provision provision examples/demo.toml` (sometimes with
--force-rebuild, sometimes through scripts/reliability_slow_io.py so that the kill lands in
the staging / publish / sidecar window more often), sends SIGKILL after a random delay,
then:

1. audits the cache independently: no engine may pass the gate while its bytes differ from
   its sidecars' digest or do not parse as a whole ONNX model ("accepted with wrong bytes");
2. runs `provision` again: it must exit 0 with every model REUSED or BUILT;
3. runs `verify`: it must exit 0, with one verified engine per model.

precision: each trial first either keeps the cache, drops some calibration caches (a miss)
or switches between precision.toml and a variant with other calibration algorithms (the
cache is stale and replaced), then kills a run (mostly --force-rebuild, mostly through the
slow-I/O wrapper with the calibration cache written in flushed pieces) and checks:

1. the engine audit above, and every calibration cache left behind either carries a
   matching ``.sha256`` commit mark, a parsable header and a matching ``.dataset_sha256``
   ("complete"), or has no commit mark ("incomplete"); a commit mark over other bytes is a
   failure;
2. `provision` again: exit 0, every model REUSED or BUILT; an engine built with
   ``calibration_cache_reused`` must name the key of a cache that was complete after the
   kill (no half calibration cache trusted); every calibration cache is complete afterwards;
3. `verify` exit 0; a further run REUSES every engine; a further --force-rebuild run
   reports the calibration cache reused (``calibration.cache_status`` "hit") for every
   calibrated model whose cache was complete.

download: see ``run_download``.

Run: python scripts/reliability_crash.py [--corpus fp32|precision|download] [--trials 200]
         [--workers 2] [--seed N] [--json]
"""

from __future__ import annotations

import argparse
import json
import random
import signal
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_common import (
    CALIBRATED_MODELS,
    DEMO_MANIFEST,
    DEMO_MODELS,
    PRECISION_MANIFEST,
    ROOT,
    audit_cache,
    audit_calibration,
    child_env,
    cli_command,
    engine_metadata,
    provision_json,
    run_cli,
)

SLOW_IO = ROOT / "scripts" / "reliability_slow_io.py"
MODES = ("plain", "plain-force", "slow-io", "slow-io-force")


def kill_after(command: list[str], env: dict[str, str], delay: float) -> bool:
    """Start ``command`` and kill -9 it after ``delay`` seconds; True if the kill landed."""
    child = subprocess.Popen(command, env=env, cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL)
    try:
        child.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait()
    return child.returncode == -signal.SIGKILL

def _command(mode: str) -> list[str]:
    args = ["provision", str(DEMO_MANIFEST), "--json", "--no-remote"]
    if mode.endswith("force"):
        args.append("--force-rebuild")
    if mode.startswith("slow-io"):
        return [sys.executable, str(SLOW_IO), "--delay-ms", "15", "--", *args]
    return cli_command(*args)


def one_trial(cache_dir: Path, rng: random.Random) -> dict[str, Any]:
    # A plain run takes about 0.3 s on a warm machine, a slowed rebuild about 0.8 s: the
    # delays span start-up, planning, build, publish and exit.
    mode = rng.choices(MODES, weights=(2, 3, 1, 4))[0]
    delay = rng.uniform(0.02, 0.9 if mode.startswith("slow-io") else 0.4)
    killed = kill_after(_command(mode), child_env(cache_dir), delay)
    failures: list[str] = []
    after_kill = audit_cache(cache_dir)
    if after_kill.accepted_wrong_bytes:
        failures.append(f"accepted with wrong bytes after kill: {after_kill.accepted_wrong_bytes}")
    code, data, err = provision_json(cache_dir)
    if code != 0 or data is None:
        failures.append(f"recovery provision exit {code}: {err.strip()[-300:]}")
    else:
        outcomes = sorted(r["outcome"] for r in data["results"])
        if len(outcomes) != len(DEMO_MODELS) or not set(outcomes) <= {"reused", "built"}:
            failures.append(f"recovery outcomes {outcomes}")
    verify = run_cli(cache_dir, "verify", "--json")
    if verify.returncode != 0:
        failures.append(f"verify exit {verify.returncode}: {verify.stdout.strip()[-300:]}")
    final = audit_cache(cache_dir)
    if final.accepted_wrong_bytes or len(final.accepted) != len(DEMO_MODELS):
        failures.append(f"final audit: accepted={final.accepted} wrong={final.accepted_wrong_bytes}")
    return {
        "mode": mode,
        "delay_s": round(delay, 3),
        "killed": killed,
        "refused_after_kill": len(after_kill.refused),
        "temp_files_after_kill": len(after_kill.temp_files),
        "failures": failures,
    }


def _worker(trials: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="trt-provision-crash-") as tmp:
        cache = Path(tmp) / "cache"
        return [one_trial(cache, rng) for _ in range(trials)]


def run(trials: int, workers: int = 2, seed: int | None = None) -> dict[str, Any]:
    seed = int(time.time()) if seed is None else seed
    started = time.perf_counter()
    shares = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [r for part in pool.map(_worker, shares, [seed + i for i in range(workers)])
                   for r in part]
    failed = [r for r in results if r["failures"]]
    return {
        "test": "crash consistency",
        "seed": seed,
        "trials": len(results),
        "killed_mid_run": sum(r["killed"] for r in results),
        "by_mode": {m: sum(r["mode"] == m for r in results) for m in MODES},
        "kills_leaving_refused_entries": sum(r["refused_after_kill"] > 0 for r in results),
        "kills_leaving_temp_files": sum(r["temp_files_after_kill"] > 0 for r in results),
        "failed_trials": len(failed),
        "failures": [dict(r) for r in failed],
        "seconds": round(time.perf_counter() - started, 1),
    }


PRECISION_MODES = ("plain-force", "slow-io", "slow-io-force")
PREPARATIONS = ("keep", "drop-calibration", "switch-manifest", "drop-all")


def _variant_manifest(directory: Path) -> Path:
    """precision.toml with another calibration algorithm (another key, same cache file name)
    and absolute data paths, so a switch makes the calibration caches stale."""
    base = PRECISION_MANIFEST.parent
    text = PRECISION_MANIFEST.read_text()
    text = text.replace('path = "models/', f'path = "{base}/models/')
    text = text.replace('data = "calibration/', f'data = "{base}/calibration/')
    # auto's entropy cache gets another key (other bins): a switch makes it stale; the
    # min-max and percentile caches of auto are not touched by the variant.
    text = text.replace('algorithm = "auto"', 'algorithm = "entropy", num_bins = 1024')
    path = directory / "precision-variant.toml"
    path.write_text(text)
    return path


def _precision_command(manifest: Path, mode: str) -> list[str]:
    args = ["provision", str(manifest), "--json", "--no-remote"]
    if mode.endswith("force"):
        args.append("--force-rebuild")
    if mode.startswith("slow-io"):
        return [sys.executable, str(SLOW_IO), "--delay-ms", "15", "--chunked-file-writes", "4",
                "--", *args]
    return cli_command(*args)


def _provision(cache_dir: Path, manifest: Path, *extra: str) -> tuple[int, dict[str, Any] | None, str]:
    proc = run_cli(cache_dir, "provision", str(manifest), "--json", "--no-remote", *extra)
    try:
        data = json.loads(proc.stdout) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        data = None
    return proc.returncode, data, proc.stderr


def _calibration_of(result: dict[str, Any]) -> list[dict[str, Any]] | None:
    """The governed caches a build used: one per calibration algorithm (``auto`` uses
    three), each with its own file and key."""
    meta = engine_metadata(result["engine"])
    calibration = meta.get("calibration")
    if not calibration:
        return None
    caches = calibration.get("caches") or {calibration.get("algorithm", ""): calibration}
    return [{
        "reused": bool(c.get("cache_reused")),
        "status": c.get("cache_status"),
        "key": c.get("key"),
        "blob": Path(c["cache_path"]).name,
    } for c in caches.values()]


def _drop_calibration(cache_dir: Path, rng: random.Random, *, engines: bool = False) -> None:
    """Remove the calibration caches (and with ``engines`` the engines) of 1 or 2 models."""
    for model in rng.sample(CALIBRATED_MODELS, rng.randint(1, len(CALIBRATED_MODELS))):
        doomed = list((cache_dir / ".calibration").glob(f"{model}.*.calib*"))
        if engines:
            doomed += (cache_dir / model).glob(f"{model}.*.engine*")
        for path in doomed:
            if not path.name.endswith(".lock") and path.is_file():
                path.unlink()


def one_precision_trial(
    cache_dir: Path, manifests: tuple[Path, Path], state: dict[str, int], rng: random.Random
) -> dict[str, Any]:
    # drop-all makes the recovery run build engines while a calibration cache that the
    # killed run completed is on disk, i.e. the path where a half cache could be trusted.
    preparation = rng.choices(PREPARATIONS, weights=(1, 3, 3, 3))[0]
    if preparation == "switch-manifest":
        state["manifest"] = 1 - state["manifest"]
    elif preparation.startswith("drop"):
        _drop_calibration(cache_dir, rng, engines=preparation == "drop-all")
    manifest = manifests[state["manifest"]]
    mode = rng.choices(PRECISION_MODES, weights=(2, 1, 5))[0]
    # A slowed rebuild that calibrates both models takes about 2 s, a plain one about 1 s.
    delay = rng.uniform(0.05, 2.4 if mode.startswith("slow-io") else 1.2)
    temps_before = set(audit_calibration(cache_dir).temp_files)
    killed = kill_after(_precision_command(manifest, mode), child_env(cache_dir), delay)
    failures: list[str] = []
    after_kill = audit_cache(cache_dir)
    if after_kill.accepted_wrong_bytes:
        failures.append(f"accepted with wrong bytes after kill: {after_kill.accepted_wrong_bytes}")
    calib_after_kill = audit_calibration(cache_dir)
    if calib_after_kill.inconsistent:
        failures.append(f"calibration cache with a commit mark over other bytes after kill: "
                        f"{calib_after_kill.inconsistent}")
    reused_in_recovery = 0
    code, data, err = _provision(cache_dir, manifest)
    if code != 0 or data is None:
        failures.append(f"recovery provision exit {code}: {err.strip()[-300:]}")
    else:
        outcomes = sorted(r["outcome"] for r in data["results"])
        if len(outcomes) != len(DEMO_MODELS) or not set(outcomes) <= {"reused", "built"}:
            failures.append(f"recovery outcomes {outcomes}")
        for result in data["results"]:
            caches = _calibration_of(result)
            if result["outcome"] != "built" or caches is None:
                continue
            reused = [c for c in caches if c["reused"]]
            reused_in_recovery += bool(reused)
            for calibration in reused:
                if calib_after_kill.complete.get(calibration["blob"]) != calibration["key"]:
                    failures.append(f"{result['name']}: calibration cache trusted that was not "
                                    f"complete with key {calibration['key']} after the kill")
    checks = {"recalibrated": 0}
    failures += _check_precision_cache(cache_dir, manifest, checks)
    return {
        "mode": mode,
        "preparation": preparation,
        "delay_s": round(delay, 3),
        "killed": killed,
        "refused_after_kill": len(after_kill.refused),
        "temp_files_after_kill": len(after_kill.temp_files),
        "calibration_incomplete_after_kill": len(calib_after_kill.incomplete),
        "calibration_temp_files_after_kill": len(set(calib_after_kill.temp_files) - temps_before),
        "calibration_reused_in_recovery": reused_in_recovery,
        "forced_rebuild_recalibrated": checks["recalibrated"],
        "calibration_temp_files_at_end": len(audit_calibration(cache_dir).temp_files),
        "failures": failures,
    }


def _check_precision_cache(cache_dir: Path, manifest: Path, state: dict[str, int]) -> list[str]:
    """verify clean; a further run reuses everything; a forced rebuild reuses every
    complete calibration cache, after which all of them are complete and current."""
    failures: list[str] = []
    verify = run_cli(cache_dir, "verify", "--json")
    if verify.returncode != 0:
        failures.append(f"verify exit {verify.returncode}: {verify.stdout.strip()[-300:]}")
    final = audit_cache(cache_dir)
    if final.accepted_wrong_bytes:
        failures.append(f"final audit: wrong={final.accepted_wrong_bytes}")
    calib = audit_calibration(cache_dir)
    if calib.inconsistent:
        failures.append(f"calibration cache inconsistent after recovery: {calib.inconsistent}")
    code, data, err = _provision(cache_dir, manifest)
    if code != 0 or data is None:
        return [*failures, f"further provision exit {code}: {err.strip()[-300:]}"]
    outcomes = sorted(r["outcome"] for r in data["results"])
    if outcomes != ["reused"] * len(DEMO_MODELS):
        failures.append(f"further run outcomes {outcomes}")
    accepted = set(final.accepted)
    for result in data["results"]:
        if result["filename"] not in accepted:
            failures.append(f"{result['filename']} reused but not accepted by the audit")
    code, data, err = _provision(cache_dir, manifest, "--force-rebuild")
    if code != 0 or data is None:
        return [*failures, f"forced rebuild exit {code}: {err.strip()[-300:]}"]
    calibrated = 0
    used: dict[str, str] = {}
    for result in data["results"]:
        caches = _calibration_of(result)
        if caches is None:
            continue
        calibrated += 1
        for calibration in caches:
            used[calibration["blob"]] = calibration["key"]
            cached_key = calib.complete.get(calibration["blob"])
            if cached_key == calibration["key"]:
                if not (calibration["reused"] and calibration["status"] == "hit"):
                    failures.append(f"{result['name']}: complete calibration cache not reused "
                                    f"({calibration['status']})")
            elif calibration["reused"]:
                # Missing, incomplete or of the other manifest (stale): never reused.
                failures.append(f"{result['name']}: calibration cache reused although it was "
                                f"{'stale' if cached_key else 'absent or incomplete'}")
            else:
                state["recalibrated"] += 1
    if calibrated != len(CALIBRATED_MODELS):
        failures.append(f"forced rebuild calibrated {calibrated} models")
    after = audit_calibration(cache_dir)
    # Every cache the build used is complete and current (caches of algorithms the other
    # manifest uses stay on disk untouched: switching algorithm replaces nothing).
    if after.incomplete or after.inconsistent or any(
            after.complete.get(blob) != key for blob, key in used.items()):
        failures.append(f"calibration caches after forced rebuild: {after}")
    return failures


def _precision_worker(trials: int, seed: int) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="trt-provision-crash-int8-") as tmp:
        cache = Path(tmp) / "cache"
        manifests = (PRECISION_MANIFEST, _variant_manifest(Path(tmp)))
        state = {"manifest": 0}
        return [one_precision_trial(cache, manifests, state, rng) for _ in range(trials)]


def run_precision(trials: int, workers: int = 2, seed: int | None = None) -> dict[str, Any]:
    seed = int(time.time()) if seed is None else seed
    started = time.perf_counter()
    shares = [trials // workers + (1 if i < trials % workers else 0) for i in range(workers)]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        results = [r for part in pool.map(_precision_worker, shares,
                                          [seed + i for i in range(workers)])
                   for r in part]
    failed = [r for r in results if r["failures"]]
    return {
        "test": "crash consistency (precision corpus, calibration caches)",
        "seed": seed,
        "trials": len(results),
        "killed_mid_run": sum(r["killed"] for r in results),
        "by_mode": {m: sum(r["mode"] == m for r in results) for m in PRECISION_MODES},
        "by_preparation": {p: sum(r["preparation"] == p for r in results) for p in PREPARATIONS},
        "kills_leaving_refused_entries": sum(r["refused_after_kill"] > 0 for r in results),
        "kills_leaving_temp_files": sum(r["temp_files_after_kill"] > 0 for r in results),
        "kills_leaving_incomplete_calibration_cache": sum(
            r["calibration_incomplete_after_kill"] > 0 for r in results),
        "kills_leaving_calibration_temp_files": sum(
            r["calibration_temp_files_after_kill"] > 0 for r in results),
        "recoveries_reusing_a_calibration_cache": sum(
            r["calibration_reused_in_recovery"] > 0 for r in results),
        "forced_rebuilds_reusing_every_calibration_cache": sum(
            r["forced_rebuild_recalibrated"] == 0 for r in results),
        # Calibration temp files (.<blob>.<random>.tmp) are not removed by later runs:
        # the most seen in one cache directory.
        "calibration_temp_files_accumulated": max(
            (r["calibration_temp_files_at_end"] for r in results), default=0),
        "failed_trials": len(failed),
        "failures": [dict(r) for r in failed],
        "seconds": round(time.perf_counter() - started, 1),
    }


DOWNLOAD_BUCKET = "crash"


def _remote_manifest(directory: Path, endpoint: str) -> Path:
    models = DEMO_MANIFEST.parent / "models"
    text = DEMO_MANIFEST.read_text().replace('path = "models/', f'path = "{models}/')
    text = (f'[remote]\nendpoint = "{endpoint}"\nbucket = "{DOWNLOAD_BUCKET}"\n'
            f'prefix = "crash"\n\n' + text)
    path = directory / "remote.toml"
    path.write_text(text)
    return path


def _remote_env(cache_dir: Path, credentials: dict[str, str]) -> dict[str, str]:
    return {**child_env(cache_dir), **credentials}


def _remote_provision(
    cache_dir: Path, manifest: Path, credentials: dict[str, str]
) -> tuple[int, dict[str, Any] | None, str]:
    proc = subprocess.run(
        cli_command("provision", str(manifest), "--json"), env=_remote_env(cache_dir, credentials),
        cwd=ROOT, capture_output=True, text=True, timeout=120, check=False,
    )
    try:
        data = json.loads(proc.stdout) if proc.returncode == 0 else None
    except json.JSONDecodeError:
        data = None
    return proc.returncode, data, proc.stderr


def _drop_engines(cache_dir: Path, rng: random.Random) -> list[str]:
    dropped = rng.sample(DEMO_MODELS, rng.choices((1, 2, 3), weights=(1, 1, 3))[0])
    for model in dropped:
        directory = cache_dir / model
        for path in directory.glob("*.engine*") if directory.is_dir() else ():
            if not path.name.startswith(".tmp-"):
                path.unlink()
    return dropped


def one_download_trial(
    cache_dir: Path, manifest: Path, credentials: dict[str, str], expected: dict[str, str],
    sizes: dict[str, int], rng: random.Random,
) -> dict[str, Any]:
    dropped = _drop_engines(cache_dir, rng) if cache_dir.is_dir() else list(DEMO_MODELS)
    slow = rng.random() < 0.8
    command = cli_command("provision", str(manifest), "--json")
    if slow:
        # Every os.write writes at most 1 KiB after a 10 ms pause: fetching the three demo
        # engines (7, 4 and 39 KB) then takes about half a second after start-up.
        command = [sys.executable, str(SLOW_IO), "--delay-ms", "10", "--max-write-bytes", "1024",
                   "--", *command[3:]]
    delay = rng.uniform(0.3, 2.2 if slow else 1.5)
    killed = kill_after(command, _remote_env(cache_dir, credentials), delay)
    failures: list[str] = []
    after_kill = audit_cache(cache_dir)
    if after_kill.accepted_wrong_bytes:
        failures.append(f"accepted with wrong bytes after kill: {after_kill.accepted_wrong_bytes}")
    fetched_before_kill = sum(
        name.split(".", 1)[0] in dropped for name in after_kill.accepted)
    # A staged engine shorter than the store's: the kill landed inside the write loop.
    partial = [p for p in map(Path, after_kill.temp_files)
               if p.name.endswith(".engine") and p.is_file()
               and p.stat().st_size < sizes[p.parent.name]]
    code, data, err = _remote_provision(cache_dir, manifest, credentials)
    outcomes: list[str] = []
    if code != 0 or data is None:
        failures.append(f"recovery provision exit {code}: {err.strip()[-300:]}")
    else:
        outcomes = sorted(r["outcome"] for r in data["results"])
        if len(outcomes) != len(DEMO_MODELS) or not set(outcomes) <= {"reused", "fetched"}:
            failures.append(f"recovery outcomes {outcomes}")
        for result in data["results"]:
            if result["sha256"] != expected[result["name"]]:
                failures.append(f"{result['name']}: recovered engine differs from the store's")
    leftover = audit_cache(cache_dir).temp_files
    gc = run_cli(cache_dir, "cache", "gc", "--apply", "--json")
    if gc.returncode != 0:
        failures.append(f"cache gc exit {gc.returncode}: {gc.stderr.strip()[-300:]}")
    verify = run_cli(cache_dir, "verify", "--json")
    if verify.returncode != 0:
        failures.append(f"verify exit {verify.returncode}: {verify.stdout.strip()[-300:]}")
    final = audit_cache(cache_dir)
    if final.accepted_wrong_bytes or len(final.accepted) != len(DEMO_MODELS):
        failures.append(f"final audit: accepted={final.accepted} wrong={final.accepted_wrong_bytes}")
    if final.temp_files:
        failures.append(f"temp files left after gc: {final.temp_files}")
    return {
        "slow": slow,
        "dropped": len(dropped),
        "delay_s": round(delay, 3),
        "killed": killed,
        "fetched_before_kill": fetched_before_kill,
        "refused_after_kill": len(after_kill.refused),
        "temp_files_after_kill": len(after_kill.temp_files),
        "partial_downloads_after_kill": len(partial),
        "temp_files_after_recovery": len(leftover),
        "recovery_fetched": outcomes.count("fetched"),
        "failures": failures,
    }


def _download_worker(
    trials: int, seed: int, manifest: Path, credentials: dict[str, str],
    expected: dict[str, str], sizes: dict[str, int],
) -> list[dict[str, Any]]:
    rng = random.Random(seed)
    with tempfile.TemporaryDirectory(prefix="trt-provision-crash-fetch-") as tmp:
        cache = Path(tmp) / "device-b"
        return [one_download_trial(cache, manifest, credentials, expected, sizes, rng)
                for _ in range(trials)]


def run_download(trials: int, workers: int = 2, seed: int | None = None) -> dict[str, Any]:
    """kill -9 a second device while it fetches the demo engines from a SeaweedFS store.

    A first device builds and uploads the 3 engines. Each trial removes some engines from
    the second device's cache, starts its `provision` (mostly with every os.write capped to
    1 KiB and slowed, so the fetch's write loop spans the kill window), kills it, then:
    1. audits the cache (no engine accepted with wrong bytes);
    2. provisions again: exit 0, every model FETCHED or REUSED, with the store's bytes;
    3. `cache gc --apply` removes the temp files the kill left; `verify` exit 0, no temp
       file left, one verified engine per model.
    """
    sys.path.insert(0, str(ROOT / "tests"))
    from stores.weed_server import ACCESS_KEY, SECRET_KEY, ensure_bucket, start_weed

    seed = int(time.time()) if seed is None else seed
    started = time.perf_counter()
    credentials = {"ARTIFACTS_ACCESS_KEY": ACCESS_KEY, "ARTIFACTS_SECRET_KEY": SECRET_KEY}
    with tempfile.TemporaryDirectory(prefix="trt-provision-crash-store-") as tmp:
        server = start_weed(Path(tmp) / "weed")
        try:
            ensure_bucket(server.client(), DOWNLOAD_BUCKET)
            manifest = _remote_manifest(Path(tmp), server.endpoint)
            code, data, err = _remote_provision(Path(tmp) / "device-a", manifest, credentials)
            if code != 0 or data is None or data["built"] != len(DEMO_MODELS):
                raise RuntimeError(f"first device could not fill the store: {err[-500:]}")
            expected = {r["name"]: r["sha256"] for r in data["results"]}
            sizes = {r["name"]: Path(r["engine"]).stat().st_size for r in data["results"]}
            shares = [trials // workers + (1 if i < trials % workers else 0)
                      for i in range(workers)]
            with ThreadPoolExecutor(max_workers=workers) as pool:
                parts = pool.map(
                    _download_worker, shares, [seed + i for i in range(workers)],
                    [manifest] * workers, [credentials] * workers, [expected] * workers,
                    [sizes] * workers,
                )
                results = [r for part in parts for r in part]
        finally:
            server.stop()
    failed = [r for r in results if r["failures"]]
    return {
        "test": "crash consistency (client killed mid-download)",
        "seed": seed,
        "trials": len(results),
        "killed_mid_run": sum(r["killed"] for r in results),
        "slowed": sum(r["slow"] for r in results),
        "kills_after_a_partial_fetch": sum(
            r["killed"] and 0 < r["fetched_before_kill"] < r["dropped"] for r in results),
        "kills_before_any_fetch": sum(
            r["killed"] and r["fetched_before_kill"] == 0 for r in results),
        "kills_inside_the_write_loop": sum(r["partial_downloads_after_kill"] > 0
                                           for r in results),
        "kills_leaving_refused_entries": sum(r["refused_after_kill"] > 0 for r in results),
        "kills_leaving_temp_files": sum(r["temp_files_after_kill"] > 0 for r in results),
        "temp_files_left_after_recovery_run": sum(r["temp_files_after_recovery"] for r in results),
        "recoveries_fetching": sum(r["recovery_fetched"] > 0 for r in results),
        "failed_trials": len(failed),
        "failures": [dict(r) for r in failed],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--corpus", choices=("fp32", "precision", "download"), default="fp32")
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    runner = {"fp32": run, "precision": run_precision, "download": run_download}[args.corpus]
    report = runner(args.trials, args.workers, args.seed)
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        print(f"{report['trials']} trials ({report['killed_mid_run']} killed mid-run), "
              f"{report['failed_trials']} failed, seed {report['seed']}, {report['seconds']} s")
        for failure in report["failures"]:
            print("FAIL", failure, file=sys.stderr)
    return 1 if report["failed_trials"] else 0


if __name__ == "__main__":
    sys.exit(main())
