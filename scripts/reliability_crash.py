"""Crash consistency: kill -9 `provision` at random moments, then check the cache.

Each trial starts `python -m trt_provision provision examples/demo.toml` (sometimes with
--force-rebuild, sometimes through scripts/reliability_slow_io.py so that the kill lands in
the staging / publish / sidecar window more often), sends SIGKILL after a random delay,
then:

1. audits the cache independently: no engine may pass the gate while its bytes differ from
   its sidecars' digest or do not parse as a whole ONNX model ("accepted with wrong bytes");
2. runs `provision` again: it must exit 0 with every model REUSED or BUILT;
3. runs `verify`: it must exit 0, with one verified engine per model.

Run: python scripts/reliability_crash.py [--trials 200] [--workers 2] [--seed N] [--json]
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
    DEMO_MANIFEST,
    DEMO_MODELS,
    ROOT,
    audit_cache,
    child_env,
    cli_command,
    provision_json,
    run_cli,
)

SLOW_IO = ROOT / "scripts" / "reliability_slow_io.py"
MODES = ("plain", "plain-force", "slow-io", "slow-io-force")


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
    child = subprocess.Popen(
        _command(mode), env=child_env(cache_dir), cwd=ROOT,
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    try:
        child.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        child.send_signal(signal.SIGKILL)
        child.wait()
    killed = child.returncode == -signal.SIGKILL
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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--trials", type=int, default=200)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.trials, args.workers, args.seed)
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
