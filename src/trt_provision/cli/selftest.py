"""``trt-provision selftest``: build, load, run and compare the demo corpus on TensorRT."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from trt_provision.cli._common import print_json

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "selftest",
        help="prove the TensorRT path on this host (builds, loads and checks the demo corpus)",
        description=(
            "Build the demo corpus at fp32, fp16, int8 and mixed on every typed path the "
            "installed TensorRT offers, load each engine through the gate and the memory "
            "budget, compare its outputs with ONNX Runtime FP32, and check plugins, the "
            "calibration cache and the timing cache. Without TensorRT, says what is missing."
        ),
    )
    parser.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    parser.add_argument(
        "--report-dir", type=Path, default=None,
        help="where selftest.json and selftest.md go (default: ./trt-provision-selftest)",
    )
    parser.add_argument(
        "--manifest", type=Path, default=None,
        help="models to test (default: the bundled examples/demo.toml)",
    )
    parser.add_argument(
        "--work-dir", type=Path, default=None,
        help="keep engines and caches here (default: a temporary directory, removed after)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trt_provision.errors import UsageError
    from trt_provision.measure.selftest import run_selftest

    # Checked before a run that may take minutes on a TensorRT host, not when writing.
    for path, flag in ((args.report_dir, "--report-dir"), (args.work_dir, "--work-dir")):
        if path is not None and Path(path).exists() and not Path(path).is_dir():
            raise UsageError(f"{flag}: not a directory: {path}")
        if path is not None and Path(path).is_symlink() and not Path(path).exists():
            raise UsageError(f"{flag}: is a dangling symlink, not a directory: {path}")
    report = run_selftest(
        manifest=args.manifest, report_dir=args.report_dir, work_dir=args.work_dir
    )
    if args.report_dir is None and not report.missing:
        # Where the host cannot run TensorRT only an explicitly asked-for report is written.
        report.write(Path.cwd() / "trt-provision-selftest")
    if args.json:
        print_json(report.to_dict())
    else:
        _print_table(report)
    if not report.ok:
        print(f"error: {report.summary_line()}", file=sys.stderr)
        return 1
    return 0


def _print_table(report: Any) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # Every cell is text, not markup: "pip install 'trt-provision[tensorrt-cu12]'" would
    # otherwise lose its extra to rich, which reads [tensorrt-cu12] as a style tag.
    console = Console(stderr=False)
    table = Table(title="trt-provision selftest: requirements")
    for column in ("requirement", "ok", "found", "problem / fix"):
        table.add_column(column)
    for r in report.requirements:
        table.add_row(escape(r.name), "yes" if r.ok else "NO", escape(r.found or ""),
                      escape(f"{r.problem} ({r.fix})") if not r.ok else "")
    console.print(table)
    if not report.cases:
        return
    cases = Table(title="builds against ONNX Runtime FP32")
    for column in ("model", "precision", "path", "status", "worst cosine", "detail"):
        cases.add_column(column)
    for c in report.cases:
        worst = min((o.cosine for o in c.outputs), default=None)
        cases.add_row(*(escape(str(v)) for v in (c.model, c.precision, c.typed_path, c.status)),
                      "" if worst is None else f"{worst:.6f}", escape(c.detail[:80]))
    console.print(cases)
    for check in report.checks:
        console.print(f"check {check.name}: {check.status} {check.detail}", markup=False,
                      highlight=False)
    if report.files:
        console.print(f"report: {report.files.get('markdown')}", markup=False, highlight=False)
