"""``trt-provision provision MANIFEST``: the main job."""

from __future__ import annotations

import argparse
import contextlib
import logging
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from trt_provision.cli._common import (
    add_settings_args,
    print_json,
    require_paths,
    require_runtime,
    settings_from_args,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "provision",
        help="compile or reuse one engine per model of a manifest",
        description="Compile, fetch or reuse one engine per model listed in MANIFEST (TOML).",
    )
    parser.add_argument("manifest", type=Path, help="TOML manifest listing the models")
    add_settings_args(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON summary on stdout")
    parser.add_argument(
        "--dry-run", action="store_true", help="show what would be built or reused; build nothing"
    )
    parser.add_argument("--force-rebuild", action="store_true", help="ignore cached engines")
    parser.add_argument(
        "--fail-fast",
        action="store_true",
        help="stop at the first model that fails (default: provision every model, report "
        "each failure, exit 1 at the end)",
    )
    parser.add_argument(
        "--remote",
        dest="remote",
        action="store_true",
        default=True,
        help="use the remote store configured in the manifest (default)",
    )
    parser.add_argument("--no-remote", dest="remote", action="store_false", help="local only")
    parser.add_argument(
        "--max-temp",
        type=float,
        metavar="CELSIUS",
        help="refuse to start a build while the device is hotter than this",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trt_provision.compose import wire
    from trt_provision.config import load_manifest
    from trt_provision.types import EngineCompileRequest

    require_paths((args.manifest, "MANIFEST"))
    manifest = load_manifest(args.manifest)
    settings = settings_from_args(args, manifest.settings)
    require_runtime(settings)
    if args.force_rebuild and settings.build == "never":
        from trt_provision.errors import UsageError

        raise UsageError('--force-rebuild builds, and the manifest says settings.build = "never"')
    wired = wire(settings, use_remote=args.remote)
    if wired.runtime.current_runtime_label() == "onnxruntime":
        from trt_provision.cli.trtexec_flags import warn_tensorrt_only_keys

        warn_tensorrt_only_keys(manifest.build_keys)
    if not args.dry_run:
        wired.store.ensure_usable()  # a read-only cache still serves reuse
        # Temp files of killed runs are never trusted; the next run tidies them away.
        removed = wired.store.clean_temp_files()
        if removed:
            logging.getLogger(__name__).info(
                "removed %d temp file(s) left by interrupted runs",
                len(removed),
                extra={"event": "cache.temp.cleaned", "count": len(removed)},
            )
    request = EngineCompileRequest(
        backbones=manifest.backbones,
        force_rebuild=args.force_rebuild,
        dry_run=args.dry_run,
        use_remote=args.remote,
        fail_fast=args.fail_fast,
        build=settings.build,
    )
    if args.json or not sys.stderr.isatty():
        summary = wired.compiler.compile_engines_for_corpus(request)
    else:
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

        with Progress(
            TextColumn("[progress.description]{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            transient=True,
        ) as progress:
            task = progress.add_task("provisioning", total=len(request.backbones))

            def advance(result: Any) -> None:
                progress.update(
                    task, advance=1, description=f"{result.name}: {result.outcome.value}"
                )

            # A long build shows what it is doing (TensorRT's build phases) and for how long.
            with watch_build_phases(lambda text: progress.update(task, description=text)):
                summary = wired.compiler.compile_engines_for_corpus(request, progress=advance)
    code = exit_code(summary)
    if args.json:
        data = summary.to_dict()
        data["runtime"] = wired.runtime.current_runtime_label()
        data["cache_dir"] = str(settings.cache_dir)
        data["exit_code"] = code
        data["build"] = settings.build
        print_json(data)
        _final_line(summary)
        return code
    from rich.console import Console
    from rich.table import Table

    from trt_provision.types import verdict_cell

    table = Table(
        title=f"trt-provision: {args.manifest.name} ({wired.runtime.current_runtime_label()})"
    )
    widest = max((len(r.name) for r in summary.results), default=5)
    table.add_column("model", no_wrap=True, min_width=min(widest, 32))
    for column in ("outcome", "precision", "target", "runtime", "s"):
        table.add_column(column, no_wrap=True)
    # What each verdict rests on (samples, Wilson bound / bar); folds on a narrow terminal.
    table.add_column("verdict", min_width=16, overflow="fold")
    failures = []
    for r in summary.results:
        ident = r.identity
        outcome = r.outcome.value.upper()
        if r.notes and r.notes[0].startswith(("would be fetched", "would be built")):
            outcome = "FETCH" if r.notes[0].startswith("would be fetched") else "BUILD"
        if ident is None:
            table.add_row(r.name, outcome, "-", "-", "-", f"{r.total_seconds:.2f}", "-")
        else:
            table.add_row(
                r.name,
                outcome,
                _precision_cell(r),
                f"{ident.target} {ident.platform}",
                f"{ident.runtime} {ident.runtime_version}",
                f"{r.total_seconds:.2f}",
                verdict_cell(r.verdict()),
            )
        if r.error is not None:
            failures.append(r)
    # Piped output (CI logs) is not squeezed to 80 columns: the verdict column needs room.
    console = Console() if sys.stdout.isatty() else Console(width=140)
    console.print(table)
    from trt_provision.types import PrecisionMode

    for r in summary.results:  # auto: why each candidate won or lost, one line each
        if r.identity is not None and r.identity.precision is PrecisionMode.AUTO:
            for note in r.notes[1:]:
                if not note.startswith(tuple(p.value for p in PrecisionMode)):
                    continue  # not a candidate's line (e.g. why it was built)
                console.print(f"{r.name}: {note}", highlight=False, markup=False,
                              soft_wrap=True)
    for r in failures:
        console.print(
            f"{r.name}: {r.outcome.value}: "
            + (f"{r.error_type}: " if r.error_type else "") + f"{r.error}", highlight=False,
            markup=False, soft_wrap=True,
        )
    console.print(
        f"built {summary.built}, reused {summary.reused}, fetched {summary.fetched}"
        + (f", planned {summary.planned}" if summary.planned else "")
        + (f", failed {summary.failed}" if summary.failed else "")
        + (f", refused {summary.refused}" if summary.refused else "")
        + (f", missing {summary.missing}" if summary.missing else "")
        + f"; cache hit ratio {summary.cache_hit_ratio:.0%}; {summary.wall_seconds:.2f} s; "
        f"cache {settings.cache_dir}",
        highlight=False,
    )
    _final_line(summary)
    return code


class BuildPhaseHandler(logging.Handler):
    """Turns build log events into a one-line status: which model is building, which
    TensorRT build phase it is in, and the seconds since the build started."""

    _EVENTS = frozenset({"engine.build.start", "trt.build.phase.start",
                         "trt.build.phase.finish"})

    def __init__(self, show: Callable[[str], None]) -> None:
        super().__init__(level=logging.DEBUG)
        self._show = show

    def emit(self, record: logging.LogRecord) -> None:
        event = getattr(record, "event", None)
        if event not in self._EVENTS:
            return
        model = str(getattr(record, "model", "") or "")
        if event == "engine.build.start":
            self._show(f"{model}: building")
            return
        phase = str(getattr(record, "phase", "") or "")
        elapsed = getattr(record, "elapsed_s", None)
        took = f" ({float(elapsed):.0f} s)" if isinstance(elapsed, (int, float)) else ""
        state = "done" if event == "trt.build.phase.finish" else "…"
        self._show(f"{model}: building — {phase} {state}{took}")


@contextlib.contextmanager
def watch_build_phases(show: Callable[[str], None]) -> Iterator[None]:
    """Feed build events to ``show`` while the progress bar is up. The phase events are
    INFO: the package logger lets them through for this handler only, and the handlers the
    user's verbosity configured keep their level, so nothing more is printed."""
    logger = logging.getLogger("trt_provision")
    before, effective = logger.level, logger.getEffectiveLevel()
    kept = [(handler, handler.level) for handler in logger.handlers]
    for handler, level in kept:
        handler.setLevel(max(level, effective))
    phases = BuildPhaseHandler(show)
    logger.addHandler(phases)
    logger.setLevel(min(effective, logging.INFO))
    try:
        yield
    finally:
        logger.removeHandler(phases)
        logger.setLevel(before)
        for handler, level in kept:
            handler.setLevel(level)


def _precision_cell(result: Any) -> str:
    """The precision, and for ``auto`` the decision ("auto → int8, 1.90× fp32"): the same
    words as the JSON summary's first note."""
    from trt_provision.types import PrecisionMode

    precision: str = result.identity.precision.value
    if result.identity.precision is PrecisionMode.AUTO:
        decided = [n for n in result.notes if n.startswith("auto → ")]
        if decided:
            return str(decided[0])
    return precision


def exit_code(summary: Any) -> int:
    """3 when a model hit a bug of ours, 1 when any model failed or was refused, else 0."""
    if summary.internal_errors:
        return 3
    return 1 if summary.failed or summary.refused or summary.missing else 0


def _final_line(summary: Any) -> None:
    """The one stderr line a failed run ends with (the table or JSON says which and why)."""
    bad = [r for r in summary.results if r.error is not None]
    if not bad:
        return
    names = ", ".join(f"{r.name} ({r.outcome.value})" for r in bad)
    if summary.internal_errors:
        line = (f"internal error (a bug in trt-provision, please report it) while "
                f"provisioning: {names}")
    else:
        line = f"error: {len(bad)} of {len(summary.results)} model(s) not provisioned: {names}"
    print(line, file=sys.stderr)
