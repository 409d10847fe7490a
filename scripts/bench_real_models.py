"""Real pretrained models (from PyPI wheels) at fp32 / fp16 / int8 / auto on the ONNX Runtime
strategy: task metric on fresh generated data and latency relative to FP32.

Each precision is provisioned through the CLI (as tests/realmodels does), loaded through the
strategy, and timed at the model's opt profile: 5 warm-up calls, then interleaved rounds
(per round and engine an untimed call, then a timed one), median per engine. "right" applies the
1 % rule (within 1 % of FP32 on the task metric, on fresh data); a refused engine (exit 1) has no
latency. "evidence" is what the gate's verdict rested on: test samples and the Wilson lower bound
(calibration 16 batches, ``evaluation_data`` 146 samples, from their own seeds).

Run: python scripts/bench_real_models.py [--rounds 60] [--models ocr_rec,magika] [--no-doc]
``--smoke``: Silero VAD at fp32 only, 2 rounds, nothing written (the test suite runs it);
exit 75 when the model's wheel cannot be fetched (offline).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(ROOT / "tests"))
from _bench_doc import machine_line, update_section  # noqa: E402

from realmodels import tasks  # noqa: E402

PRECISIONS = ("fp32", "fp16", "int8", "auto")
EXIT_UNAVAILABLE = 75  # EX_TEMPFAIL: a model wheel could not be fetched


def time_runners(runners: dict[str, Any], feed: dict[str, Any], rounds: int) -> dict[str, float]:
    for run in runners.values():
        for _ in range(5):
            run(feed)
    samples: dict[str, list[float]] = {k: [] for k in runners}
    for _ in range(rounds):
        for name, run in runners.items():
            run(feed)  # untimed: the previous engine's thread pool may still be spinning
            t0 = time.perf_counter()
            run(feed)
            samples[name].append(time.perf_counter() - t0)
    return {k: statistics.median(v) for k, v in samples.items()}


def bench(task: tasks.Task, root: Path, rounds: int, notes: list[str],
          precisions: tuple[str, ...] = PRECISIONS) -> list[str]:
    root.mkdir(parents=True, exist_ok=True)
    cal = tasks.write_calibration(task, root / f"{task.name}.npz")
    held_out = tasks.write_evidence(task, root / f"{task.name}.evidence.npz")
    ref = tasks.session_runner(task.model_path())
    runs = {p: tasks.provision(task, p, root / "work", root / "cache",
                               calibration=None if p == "fp32" else cal,
                               evidence=None if p == "fp32" else held_out)
            for p in precisions}
    feed = task.make_batches(777, 1)[0]  # at the opt profile (fixed shapes)
    live = {p: r.runner for p, r in runs.items() if r.runner is not None}
    medians = time_runners(live, feed, rounds)  # type: ignore[arg-type]
    fp32 = medians["fp32"]
    lines = []
    for p, run in runs.items():
        evidence = "-" if p == "fp32" else tasks.evidence_line(run).replace("|", "/")
        if run.runner is None:
            lines.append(f"| {task.name} | {p} | refused (exit {run.exit_code}) | - | - | - "
                         f"| {evidence} |")
            continue
        metric = task.score(ref, run.runner)
        right = "yes" if metric >= task.threshold else "**no**"
        warned = " (warned)" if run.warned else ""
        label = p
        if p == "auto" and run.metadata is not None:
            decision = run.metadata["auto"]
            label = f"auto → {decision['chosen']}"
            verdicts = ", ".join(
                f"{r['precision']} {r['verdict']}"
                + (f" ({r['why']})" if r["verdict"] == "refused" else "")
                + (f" {r['vs_fp32']:.2f}x" if r.get("vs_fp32") else "")
                for r in decision["table"]
            )
            skipped = ", ".join(f"{k}: {v}" for k, v in decision["skipped"].items())
            notes.append(f"- {task.name}: {verdicts}; not candidates - {skipped}")
        lines.append(
            f"| {task.name} | {label} | {medians[p] * 1e3:.3f} ms | {fp32 / medians[p]:.2f}x "
            f"| {metric:.3f} | {right}{warned} | {evidence} |"
        )
    return lines


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rounds", type=int, default=60)
    parser.add_argument("--models", help="comma-separated task names (default: all)")
    parser.add_argument("--no-doc", action="store_true")
    parser.add_argument("--smoke", action="store_true", help="Silero VAD, fp32, print only")
    args = parser.parse_args()
    precisions = PRECISIONS
    if args.smoke:
        args.rounds, args.models, args.no_doc, precisions = 2, "silero_vad", True, ("fp32",)
    chosen = [tasks.TASKS_BY_NAME[n] for n in args.models.split(",")] if args.models \
        else list(tasks.TASKS)
    rows: list[str] = []
    notes: list[str] = []
    with tempfile.TemporaryDirectory() as tmp:
        for task in chosen:
            print(f"{task.name}...", file=sys.stderr, flush=True)
            try:
                rows += bench(task, Path(tmp) / task.name, args.rounds, notes, precisions)
            except tasks.Unavailable as exc:
                print(f"unavailable: {exc}", file=sys.stderr)
                return EXIT_UNAVAILABLE
    metrics = "; ".join(f"{t.name}: {t.metric}" for t in chosen)
    body = "\n".join([
        "## Real models: fp32 / fp16 / int8 / auto on the ONNX Runtime strategy",
        "",
        f"Measured on: {machine_line()}. Models from pinned PyPI wheels (RapidOCR PP-OCRv4 "
        "detection and recognition, PP-OCR direction classifier, RapidOCR 1.2.3's PP-OCRv3 "
        "detection and recognition, Silero VAD, Magika); data generated with numpy (glyph "
        "lines, synthetic audio, synthetic files), calibration (16 batches), the gate's "
        "evidence (`evaluation_data`, 146 samples) and the fresh test data from disjoint "
        "seeds; default gate. Speed-up is FP32 median / engine median at the opt profile, "
        f"{args.rounds} interleaved rounds.",
        "",
        f"Metrics against FP32 on fresh data - {metrics}; right = within 1 % of FP32 "
        f"(>= {tasks.ONE_PERCENT}).",
        "",
        "| model | precision | median | speed-up vs fp32 | task metric | right | evidence |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "`auto → fp32` runs a byte copy of the FP32 engine: its distance from 1.00x is the "
        "timing noise of the machine at the time (shared cores). The decisions `auto` "
        "recorded (its own timing, at the opt profile):",
        "",
        *notes,
        "",
        "Rerun: `python scripts/bench_real_models.py`.",
    ])
    print(body)
    if not args.no_doc:
        update_section("real-models", body)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
