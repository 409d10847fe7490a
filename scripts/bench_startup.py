"""Import and CLI start-up cost: `import trt_provision` vs a bare interpreter, and `--help`.

Targets: import <= +30 ms over a bare interpreter; `trt-provision --help` <= 150 ms and
<= 2x a bare interpreter (`python -c pass`).
Run: python scripts/bench_startup.py [--runs 30]; `--smoke` runs each command twice and
writes nothing (the test suite runs it).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _bench_doc import machine_line, update_section


def median_ms(argv: list[str], runs: int) -> tuple[float, float]:
    """(median, min) in ms. On a machine shared with other work the minimum is the better
    estimate of the command's own cost; the median says what a user waits."""
    subprocess.run(argv, check=True, capture_output=True)  # warm the file cache and pyc
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(argv, check=True, capture_output=True)
        times.append((time.perf_counter() - t0) * 1000)
    return statistics.median(times), min(times)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=30)
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="2 runs each, print only")
    args = parser.parse_args()
    if args.smoke:
        args.runs, args.no_doc = 2, True
    py = sys.executable
    # What the `trt-provision` console script runs (pip's entry-point wrapper).
    script = "import re, sys\nfrom trt_provision.cli.main import main\nsys.exit(main())"
    cases = [
        ("`python -c pass`", [py, "-c", "pass"], ""),
        ("`python -c 'import trt_provision'`", [py, "-c", "import trt_provision"], "<= +30 ms"),
        ("`python -m trt_provision --help`", [py, "-m", "trt_provision", "--help"], "<= 150 ms"),
        ("`python -m trt_provision provision --help`",
         [py, "-m", "trt_provision", "provision", "--help"], "<= 150 ms"),
        ("`trt-provision --help` (its entry-point script)", [py, "-c", script, "--help"],
         "<= 2x `python -c pass`"),
    ]
    measured = [(name, *median_ms(argv, args.runs), target) for name, argv, target in cases]
    bare_med, bare_min = measured[0][1], measured[0][2]
    load = f"{os.getloadavg()[0]:.2f}" if hasattr(os, "getloadavg") else "n/a"
    lines = [
        "## Start-up",
        "",
        f"Measured on: {machine_line()}; {args.runs} runs each, load average {load} at the end.",
        "",
        "| command | median | min | median / bare | min / bare | target |",
        "|---|---|---|---|---|---|",
        *[f"| {name} | {med:.1f} ms | {low:.1f} ms | {med / bare_med:.2f}x | "
          f"{low / bare_min:.2f}x | {target} |" for name, med, low, target in measured],
        "",
        "Rerun: `python scripts/bench_startup.py`.",
    ]
    body = "\n".join(lines)
    print(body)
    if not args.no_doc:
        update_section("startup", body)


if __name__ == "__main__":
    main()
