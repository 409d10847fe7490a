"""``trt-provision run ENGINE|MANIFEST``: load, time and check engines (trtexec --loadEngine,
polygraphy run)."""

from __future__ import annotations

import argparse
import dataclasses
import math
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from trt_provision.cli._common import (
    add_settings_args,
    print_json,
    require_paths,
    settings_from_args,
)

__all__ = ["register"]

_PROGRESS_MIN_ITERATIONS = 50  # shorter runs finish before a bar would be any use


def _count(minimum: int) -> Any:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
        if not minimum <= value <= 10_000_000:
            raise argparse.ArgumentTypeError(f"expected {minimum}..10000000, got {value}")
        return value

    return parse


def _tolerance(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a finite number >= 0, got {text!r}")
    return value


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "run",
        help="load an engine (or a manifest's cached engines), time it, compare with ONNX Runtime",
        description=(
            "Load an engine through the engine gate and the memory budget, run it on synthetic "
            "inputs at its profile's opt shapes (or on --inputs), report latency p50/p90/p99, "
            "throughput and memory, and compare its outputs with ONNX Runtime FP32 on the "
            "source model. Exit 1 when an output is beyond --atol/--rtol. The measurements "
            "are recorded beside the engine in <engine>.perf.json. With a MANIFEST, every "
            "model's cached engine for this host is run."
        ),
    )
    parser.add_argument("target", type=Path, metavar="ENGINE|MANIFEST",
                        help="an engine file, or a TOML manifest")
    parser.add_argument("--model", type=Path,
                        help="source ONNX model to compare with (default: from the metadata)")
    parser.add_argument("--inputs", type=Path, metavar="FILE.npz",
                        help="inputs by name (numpy.savez) instead of synthetic data")
    parser.add_argument("--iterations", type=_count(1), default=100,
                        help="timed iterations (default 100)")
    parser.add_argument("--warmup", type=_count(0), default=10,
                        help="untimed iterations first (default 10)")
    parser.add_argument("--atol", type=_tolerance,
                        help="absolute tolerance (default by precision: fp32 1e-3, fp16 1e-2, "
                             "int8/mixed 1e-1)")
    parser.add_argument("--rtol", type=_tolerance, help="relative tolerance (default as --atol)")
    parser.add_argument("--seed", type=_count(0), default=0, help="seed of the synthetic inputs")
    parser.add_argument("--no-compare", action="store_true",
                        help="skip the ONNX Runtime comparison")
    parser.add_argument("--no-record", action="store_true",
                        help="do not write the <engine>.perf.json measurements sidecar")
    add_settings_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.set_defaults(func=run)


def _saved_engine_origin(target: Path, args: argparse.Namespace) -> str | None:
    """The cached engine a ``compile --saveEngine=FILE`` copy came from (its FILE.json names
    it), so that ``run model.plan`` points at what can be run; None when it is not one."""
    import json

    sidecar = target.with_name(target.name + ".json")
    try:
        if not (target.is_file() and sidecar.is_file()) or sidecar.stat().st_size > 1 << 20:
            return None
        metadata = json.loads(sidecar.read_bytes())
        name, model = metadata["engine"], metadata["identity"]["model_name"]
    except (OSError, ValueError, KeyError, TypeError):
        return None
    if not isinstance(name, str) or not isinstance(model, str) or "/" in name + model:
        return None
    cached = Path(settings_from_args(args).cache_dir) / model / name
    return str(cached) if cached.is_file() else name


def _is_manifest(path: Path) -> bool:
    return path.suffix.lower() == ".toml"


@contextmanager
def _progress_bar(enabled: bool) -> Iterator[Any]:
    """A rich progress bar on stderr for a terminal; a no-op callback otherwise."""
    if not enabled:
        yield lambda label, total: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

    with Progress("{task.description}", BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                  console=Console(stderr=True), transient=True) as bar:
        def start(label: str, total: int) -> Any:
            task = bar.add_task(label, total=total)
            return lambda done, _total: bar.update(task, completed=done)

        yield start


def run(args: argparse.Namespace) -> int:
    from trt_provision.compose import wire
    from trt_provision.errors import TrtProvisionError, UsageError
    from trt_provision.identity import ENGINE_SUFFIX
    from trt_provision.measure.runner import RunOptions, entry_for_engine_file, run_engine

    target: Path = args.target
    if not _is_manifest(target) and not target.name.endswith(ENGINE_SUFFIX):
        cached = _saved_engine_origin(target, args)
        if cached:
            raise UsageError(
                f"ENGINE|MANIFEST: {target} is a --saveEngine copy; run gates an engine by its "
                f"identity name, so run the cached engine: {cached}"
            )
        raise UsageError(
            f"ENGINE|MANIFEST: run takes an engine (*{ENGINE_SUFFIX}) or a manifest (*.toml), "
            f"got {target}; for an ONNX model, provision or compile it first"
        )
    if _is_manifest(target) and args.model is not None:
        raise UsageError("--model: applies to one ENGINE, not to a manifest")
    require_paths((target, "ENGINE|MANIFEST"), (args.inputs, "--inputs"), (args.model, "--model"))
    options = RunOptions(
        iterations=args.iterations,
        warmup=args.warmup,
        inputs_file=args.inputs,
        model=args.model,
        compare=not args.no_compare,
        atol=args.atol,
        rtol=args.rtol,
        seed=args.seed,
        record=not args.no_record,
    )
    jobs: list[tuple[str, Any]] = []  # (model name, entry or the error that stops it)
    if _is_manifest(target):
        from trt_provision.config import load_manifest
        from trt_provision.types import EngineCacheEntry

        manifest = load_manifest(target)
        if not manifest.backbones:
            raise UsageError(f"ENGINE|MANIFEST: {target} lists no models")
        wired = wire(settings_from_args(args, manifest.settings), use_remote=False)
        for backbone in manifest.backbones:
            try:
                identity, _target, _hash = wired.compiler.identity_for(backbone)
                path = wired.store.path_for(identity)
                if not path.exists():
                    raise TrtProvisionError(
                        "no cached engine for this host; run `trt-provision provision` first",
                        engine=path.name,
                    )
                entry: Any = EngineCacheEntry(engine_path=path, sha256="", identity=identity)
            except TrtProvisionError as exc:
                entry = exc
            jobs.append((backbone.name, entry))
        options_for = {b.name: dataclasses.replace(options, model=b.model_path)
                       for b in manifest.backbones}
    else:
        settings = settings_from_args(args)
        if args.cache_dir is None:
            # The user named this file: its own directory is the root the gate confines
            # symlinks to (an engine copied out of the cache, e.g. by --saveEngine, runs too).
            settings = dataclasses.replace(settings, cache_dir=target.absolute().parent)
        wired = wire(settings, use_remote=False)
        entry = entry_for_engine_file(target)
        jobs.append((entry.identity.model_name, entry))
        options_for = {entry.identity.model_name: options}

    show_bar = (not args.json and sys.stderr.isatty()
                and args.warmup + args.iterations >= _PROGRESS_MIN_ITERATIONS)
    results: list[dict[str, Any]] = []
    reports: list[Any] = []
    with _progress_bar(show_bar) as start:
        for name, job in jobs:
            if isinstance(job, TrtProvisionError):
                results.append({"model": name, "error": f"{type(job).__name__}: {job}"})
                continue
            try:
                report = run_engine(
                    wired.runtime, job, options_for[name], budget=wired.budget,
                    progress=start(name, args.warmup + args.iterations),
                )
            except TrtProvisionError as exc:
                if len(jobs) == 1:
                    raise
                results.append({"model": name, "engine": str(job.engine_path),
                                "error": f"{type(exc).__name__}: {exc}"})
                continue
            reports.append(report)
            results.append(report.to_dict())
    failed = [r for r in results if "error" in r or not r.get("passed", False)]
    if args.json:
        print_json({"results": results, "ok": not failed})
    else:
        _print_table(results)
    if failed:
        print(f"error: {_failure_line(failed, len(results))}", file=sys.stderr)
        return 1
    return 0


def _failure_line(failed: list[dict[str, Any]], total: int) -> str:
    first = failed[0]
    if "error" in first:
        reason = first["error"]
    else:
        comparison = first.get("comparison") or {}
        bad = [(n, o) for n, o in comparison.get("outputs", {}).items() if not o["passed"]]
        name, out = bad[0] if bad else ("?", {})
        reason = (
            f"output {name!r} differs from ONNX Runtime FP32 beyond atol={comparison.get('atol')}"
            f" rtol={comparison.get('rtol')}: {out.get('mismatched')} of {out.get('elements')} "
            f"elements, max abs error {out.get('max_abs_error')}"
            + (f" ({out['note']})" if out.get("note") else "")
        )
    prefix = f"{len(failed)} of {total} engines failed; " if total > 1 else ""
    return f"{prefix}{first['model']}: {reason}"


def _mib(value: Any) -> str:
    return "-" if not isinstance(value, int) else f"{value / (1 << 20):.1f} MiB"


def _num(value: Any) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def _print_table(results: list[dict[str, Any]]) -> None:
    from rich.console import Console
    from rich.table import Table

    # Narrow enough for 80 columns; the per-output figures follow the table.
    table = Table(title="engine runs")
    for column in ("model", "prec", "p50 ms", "p90 ms", "p99 ms", "qps", "check"):
        table.add_column(column, justify="right" if column.endswith(("ms", "qps")) else "left")
    for r in results:
        if "error" in r:
            table.add_row(r["model"], "-", "-", "-", "-", "-", "[red]FAILED[/red]")
            continue
        lat = r["latency_ms"]
        comparison = r.get("comparison")
        if comparison is None:
            check = "-"
        else:
            check = "[green]OK[/green]" if comparison["passed"] else "[red]DIFFERS[/red]"
        table.add_row(r["model"], r["precision"], f"{lat['p50']:.3f}", f"{lat['p90']:.3f}",
                      f"{lat['p99']:.3f}", f"{r['throughput']['qps']:.1f}", check)
    console = Console()
    console.print(table)

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    for r in results:
        if "error" in r:
            say(f"{r['model']}: {r['error']}")
            continue
        shapes = ", ".join(f"{n} {v['shape']} {v['dtype']}" for n, v in r["inputs"].items())
        say(f"{r['model']}: {r['iterations']} iterations after {r['warmup']} warm-up, "
            f"{r['input_source']}: {shapes}")
        memory = r["memory"]
        device = ""
        if isinstance(memory.get("device_free_after_bytes"), int):
            device = (f", device reserved {_mib(memory.get('device_reserved_bytes'))}, free "
                      f"{_mib(memory.get('device_free_after_bytes'))}")
        say(f"  host RSS {_mib(memory.get('host_rss_bytes'))} "
            f"(peak {_mib(memory.get('host_peak_rss_bytes'))}){device}")
        comparison = r.get("comparison")
        if comparison is not None:
            say(f"  vs ONNX Runtime FP32 (atol={comparison['atol']}, "
                f"rtol={comparison['rtol']}):")
            for name, o in comparison["outputs"].items():
                say(f"    {name}: cosine {_num(o['cosine'])}, max abs {_num(o['max_abs_error'])},"
                    f" max rel {_num(o['max_rel_error'])}, {o['mismatched']}/{o['elements']} "
                    "beyond" + (f" ({o['note']})" if o.get("note") else ""))
        elif r.get("comparison_skipped"):
            say(f"  not compared: {r['comparison_skipped']}")
        if r.get("recorded"):
            say("  measurements recorded beside the engine (.perf.json)")
        elif r.get("record_error"):
            say(f"  not recorded: {r['record_error']}")
