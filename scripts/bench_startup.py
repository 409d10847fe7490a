"""Import and CLI start-up cost: `import trt_provision` vs a bare interpreter, and `--help`.

Targets: import <= +30 ms over a bare interpreter; `trt-provision --help` <= 150 ms and
<= 2x a bare interpreter (`python -c pass`).
Run: python scripts/bench_startup.py [--runs 30]; `--smoke` runs each command twice and
writes nothing (the test suite runs it).
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_doc import machine_line, update_section


def median_ms(argv: list[str], runs: int) -> float:
    subprocess.run(argv, check=True, capture_output=True)  # warm the file cache and pyc
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="2 runs each, print only")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.no_doc = 2, True
    py = sys.executable
    bare = median_ms([py, "-c", "pass"], args.runs)
    imported = median_ms([py, "-c", "import trt_provision"], args.runs)
    helped = median_ms([py, "-m", "trt_provision", "--help"], args.runs)
    sub_help = median_ms([py, "-m", "trt_provision", "provision", "--help"], args.runs)
    # What the `trt-provision` console script runs (pip's entry-point wrapper).
    script = "import re, sys\nfrom trt_provision.cli.main import main\nsys.exit(main())"
    console = median_ms([py, "-c", script, "--help"], args.runs)
    lines = [
        "## Start-up",
        "",
        f"Measured on: {machine_line()}; median of {args.runs} runs each.",
        "",
        "| command | median | target |",
        "|---|---|---|",
        f"| `python -c pass` | {bare:.1f} ms | |",
        f"| `python -c 'import trt_provision'` | {imported:.1f} ms (+{imported - bare:.1f} ms) | <= +30 ms |",
        f"| `python -m trt_provision --help` | {helped:.1f} ms | <= 150 ms |",
        f"| `python -m trt_provision provision --help` | {sub_help:.1f} ms | <= 150 ms |",
        f"| `trt-provision --help` (its entry-point script) | {console:.1f} ms "
        f"(**{console / bare:.2f}x** `python -c pass`) | <= 2x |",
        "",
        "Rerun: `python scripts/bench_startup.py`.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        update_section("startup", body)


if __name__ == "__main__":
    main()
