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
    saved_copy_name,
    settings_from_args,
    verify_saved_copy,
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


@contextmanager
def _staged_copy(copy: Path, name: str, sha256: str, metadata: bytes) -> Iterator[Path]:
    """A ``--saveEngine`` copy proven by its sidecars, under its cached name in a private
    directory (a hard link where the file system allows, else a copy), with sidecars that
    name it: the engine gate then checks it exactly as it checks a cached engine."""
    import os
    import shutil
    import tempfile

    from trt_provision.integrity import sha256_sidecar_bytes

    folder = None
    for parent in (copy.absolute().parent, None):  # beside it: a hard link, no copy
        try:
            folder = Path(tempfile.mkdtemp(prefix=".trt-provision-run-", dir=parent))
            break
        except OSError:
            continue
    if folder is None:  # pragma: no cover - the system temp directory is writable
        raise OSError("no writable temporary directory")
    try:
        staged = folder / name
        try:
            os.link(copy, staged)
        except OSError:
            shutil.copyfile(copy, staged)
        # Exactly the .json bytes verify_saved_copy checked: nothing read again after it.
        staged.with_name(name + ".json").write_bytes(metadata)
        signature = copy.with_name(copy.name + ".sig")
        if signature.is_file():
            from trt_provision.integrity import read_cache_file

            staged.with_name(name + ".sig").write_bytes(
                read_cache_file(signature, 64 << 10, what="signature", check_owner=False))
        staged.with_name(name + ".sha256").write_bytes(sha256_sidecar_bytes(sha256, name, metadata))
        yield staged
    finally:
        shutil.rmtree(folder, ignore_errors=True)


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
    from trt_provision.errors import UsageError
    from trt_provision.identity import ENGINE_SUFFIX

    target: Path = args.target
    copy_of = None if _is_manifest(target) else saved_copy_name(target)
    if copy_of is not None:
        return _run_saved_copy(args, target, copy_of)
    if not _is_manifest(target) and not target.name.endswith(ENGINE_SUFFIX):
        raise UsageError(
            f"ENGINE|MANIFEST: run takes an engine (*{ENGINE_SUFFIX}) or a manifest (*.toml), "
            f"got {target}; for an ONNX model, provision or compile it first"
        )
    if _is_manifest(target) and args.model is not None:
        raise UsageError("--model: applies to one ENGINE, not to a manifest")
    require_paths((target, "ENGINE|MANIFEST"), (args.inputs, "--inputs"), (args.model, "--model"))
    options = _options(args)
    return _run_jobs(args, target, options)


def _options(args: argparse.Namespace) -> Any:
    from trt_provision.measure.runner import RunOptions

    return RunOptions(
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


def _run_saved_copy(args: argparse.Namespace, copy: Path, name: str) -> int:
    """``run FILE`` on a ``compile --saveEngine=FILE`` copy (trtexec's --loadEngine habit):
    proven by its sidecars, run like the cached engine, measurements recorded beside FILE."""
    require_paths((args.inputs, "--inputs"), (args.model, "--model"))
    _metadata, sha256, raw = verify_saved_copy(copy, name)
    with _staged_copy(copy, name, sha256, raw) as staged:
        return _run_jobs(args, staged, _options(args), copy=(copy, sha256))


def _run_jobs(
    args: argparse.Namespace, target: Path, options: Any, *,
    copy: tuple[Path, str] | None = None,
) -> int:
    """Run the engine (or the manifest's engines) and print the report. ``copy``: the
    --saveEngine file (and its sha256) that the staged ``target`` stands for: reported,
    and its measurements recorded, under its own name."""
    from trt_provision.compose import wire
    from trt_provision.errors import StoreError, TrtProvisionError, UsageError
    from trt_provision.measure.runner import entry_for_engine_file, record_perf, run_engine

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
        if args.cache_dir is None or copy is not None:
            # The user named this file: its own directory is the root the gate confines
            # symlinks to (an engine copied out of the cache, e.g. by --saveEngine, runs too).
            settings = dataclasses.replace(settings, cache_dir=target.absolute().parent)
        wired = wire(settings, use_remote=False)
        entry = entry_for_engine_file(target)
        jobs.append((entry.identity.model_name, entry))
        options_for = {entry.identity.model_name: (
            options if copy is None else dataclasses.replace(options, record=False))}

    show_bar = (not args.json and sys.stderr.isatty()
                and args.warmup + args.iterations >= _PROGRESS_MIN_ITERATIONS)
    results: list[dict[str, Any]] = []
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
            if copy is not None and options.record:
                try:
                    report.recorded = record_perf(copy[0], copy[1], report.measurement())
                except StoreError as exc:  # a read-only directory is still runnable
                    report.record_error = str(exc)
            result = report.to_dict()
            if copy is not None:
                result["engine"], result["copy_of"] = str(copy[0]), job.engine_path.name
            results.append(result)
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
            f"elements, max abs error {_num(out.get('max_abs_error'))}"
            + (f" ({out['note']})" if out.get("note") else "")
        )
    prefix = f"{len(failed)} of {total} engines failed; " if total > 1 else ""
    return f"{prefix}{first['model']}: {reason}"


def _mib(value: Any) -> str:
    return "-" if not isinstance(value, int) else f"{value / (1 << 20):.1f} MiB"


def _num(value: Any) -> str:
    if value is None:  # not computed: no finite pair to compare (see the note)
        return "n/a"
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
