"""Concurrency: N processes provision the demo corpus into one cache directory at once.

Every engine must be built exactly once in total (sum of `built` over the processes equals
the number of models), every process must succeed, and `verify` must find nothing bad.

Run: python scripts/reliability_concurrency.py [--rounds 5] [--procs 8] [--json]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
from reliability_common import (
    DEMO_MANIFEST,
    DEMO_MODELS,
    audit_cache,
    child_env,
    cli_command,
    run_cli,
)


def one_round(cache_dir: Path, procs: int) -> dict[str, Any]:
    children = [
        subprocess.Popen(
            cli_command("provision", str(DEMO_MANIFEST), "--json", "--no-remote"),
            env=child_env(cache_dir),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(procs)
    ]
    codes: list[int] = []
    built = reused = 0
    errors: list[str] = []
    for child in children:
        out, err = child.communicate(timeout=300)
        codes.append(child.returncode)
        if child.returncode != 0:
            errors.append(err.strip().splitlines()[-1] if err.strip() else "no output")
            continue
        data = json.loads(out)
        built += int(data["built"])
        reused += int(data["reused"])
    verify = run_cli(cache_dir, "verify", "--json")
    audit = audit_cache(cache_dir)
    failures: list[str] = []
    if any(codes):
        failures.append(f"exit codes {codes}: {errors}")
    if built != len(DEMO_MODELS):
        failures.append(f"built {built} engines in total, expected {len(DEMO_MODELS)}")
    if verify.returncode != 0:
        failures.append(f"verify exit {verify.returncode}: {verify.stdout.strip()}")
    if audit.accepted_wrong_bytes or audit.temp_files or len(audit.accepted) != len(DEMO_MODELS):
        failures.append(f"audit: {audit}")
    return {"built": built, "reused": reused, "codes": codes, "failures": failures}


def run(rounds: int, procs: int) -> dict[str, Any]:
    started = time.perf_counter()
    results = []
    for _ in range(rounds):
        with tempfile.TemporaryDirectory(prefix="trt-provision-conc-") as tmp:
            results.append(one_round(Path(tmp) / "cache", procs))
    failed = [r for r in results if r["failures"]]
    return {
        "test": "concurrency",
        "rounds": rounds,
        "processes_per_round": procs,
        "provision_runs": rounds * procs,
        "failed_rounds": len(failed),
        "failures": [f for r in failed for f in r["failures"]],
        "seconds": round(time.perf_counter() - started, 1),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--procs", type=int, default=8)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    report = run(args.rounds, args.procs)
    print(json.dumps(report, indent=2) if args.json else
          f"{report['rounds']} rounds x {report['processes_per_round']} processes: "
          f"{report['failed_rounds']} failed rounds in {report['seconds']} s")
    for failure in report["failures"]:
        print("FAIL", failure, file=sys.stderr)
    return 1 if report["failed_rounds"] else 0


if __name__ == "__main__":
    sys.exit(main())
