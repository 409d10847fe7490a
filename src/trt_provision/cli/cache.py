"""``trt-provision cache ls|gc|clear``: look at and tidy the local engine cache."""

from __future__ import annotations

import argparse
import datetime
from pathlib import Path
from typing import Any

from trt_provision.cli._common import (
    add_settings_args,
    print_json,
    require_dir,
    settings_from_args,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "cache",
        help="list, garbage-collect or clear the local engine cache",
        description="Inspect and tidy the local engine cache. The compiler never deletes.",
    )
    actions = parser.add_subparsers(dest="cache_command", required=True, metavar="ACTION")

    ls = actions.add_parser("ls", help="list cached engines (identity, size, last use)")
    add_settings_args(ls)
    ls.add_argument("--json", action="store_true", help="print JSON on stdout")
    ls.add_argument(
        "--wide", action="store_true",
        help="also show hash, platform, runtime and the full engine filename",
    )
    ls.set_defaults(func=run_ls)

    gc = actions.add_parser(
        "gc",
        help="remove engines superseded for this host (dry run unless --apply)",
        description=(
            "Plan (and with --apply, perform) removal of engines built for another "
            "runtime, runtime version, GPU target or JetPack than this host's, engines of "
            "older hashes of models MANIFEST still lists, orphan sidecars and temp files "
            "of interrupted runs."
        ),
    )
    gc.add_argument("manifest", type=Path, nargs="?", help="TOML manifest (optional)")
    add_settings_args(gc)
    mode = gc.add_mutually_exclusive_group()
    mode.add_argument("--dry-run", action="store_true", help="only print the plan (default)")
    mode.add_argument("--apply", action="store_true", help="delete what the plan lists")
    gc.add_argument("--json", action="store_true", help="print JSON on stdout")
    gc.set_defaults(func=run_gc)

    clear = actions.add_parser("clear", help="remove every cached engine (needs --yes)")
    add_settings_args(clear)
    clear.add_argument("--yes", action="store_true", help="really delete every engine")
    clear.add_argument("--json", action="store_true", help="print JSON on stdout")
    clear.set_defaults(func=run_clear)


def _human(n: int) -> str:
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def _when(stamp: float) -> str:
    if stamp <= 0:
        return "-"
    return datetime.datetime.fromtimestamp(stamp).strftime("%Y-%m-%d %H:%M")


def _check_cache_dir(args: argparse.Namespace, cache_dir: Path) -> None:
    """A ``--cache-dir`` the user typed must be a directory (a typo is not an empty cache);
    the default cache may not exist yet, but a file in its place is an error."""
    if getattr(args, "cache_dir", None) is not None:
        require_dir(Path(cache_dir), "--cache-dir")
    elif Path(cache_dir).exists() and not Path(cache_dir).is_dir():
        require_dir(Path(cache_dir), "cache directory")


def run_ls(args: argparse.Namespace) -> int:
    from trt_provision.stores.maintenance import list_engines

    settings = settings_from_args(args)
    _check_cache_dir(args, settings.cache_dir)
    engines = list_engines(settings.cache_dir)
    if args.json:
        print_json(
            {
                "cache_dir": str(settings.cache_dir),
                "engines": [e.to_dict() for e in engines],
                "total_bytes": sum(e.size_bytes for e in engines),
            }
        )
        return 0
    _print_ls(settings.cache_dir, engines, wide=args.wide)
    return 0


def _print_ls(cache_dir: Path, engines: list[Any], *, wide: bool) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    # The default view fits 80 columns; --wide adds what tells engines of one model apart
    # and never folds the filename (the output is as wide as it needs to be).
    console = Console(width=max(Console().width, 400)) if wide else Console()
    console.print(f"engine cache {escape(str(cache_dir))}", highlight=False)
    table = Table(box=None, pad_edge=False, header_style="bold")
    columns = ["model", "precision", "target", "size", "last used", "state"]
    if wide:
        columns[3:3] = ["hash", "platform", "runtime"]
        columns.append("file")
    for column in columns:
        table.add_column(column, justify="right" if column == "size" else "left",
                         no_wrap=column in ("file", "last used", "size"), overflow="fold")
    for e in engines:
        p = e.parsed
        state = "incomplete" if not e.complete else ("signed" if e.signed else "ok")
        row = [p.model_name, p.precision, p.target, _human(e.size_bytes), _when(e.last_used),
               state]
        if wide:
            row[3:3] = [p.model_hash, p.platform, f"{p.runtime}-{p.runtime_version}"]
            row.append(e.path.name)
        table.add_row(*(escape(str(c)) for c in row))
    console.print(table)
    console.print(
        f"{len(engines)} engine(s), {_human(sum(e.size_bytes for e in engines))}", highlight=False
    )


def host_targets_and_models(
    args: argparse.Namespace,
) -> tuple[Any, list[Any], dict[str, str]]:
    """Settings, the host's expected runtime targets and the manifest's model hashes."""
    from trt_provision.compose import wire
    from trt_provision.config import load_manifest
    from trt_provision.errors import ModelError
    from trt_provision.identity import model_sha256
    from trt_provision.types import BuildConfig

    manifest = load_manifest(args.manifest) if args.manifest is not None else None
    settings = settings_from_args(args, manifest.settings if manifest else None)
    wired = wire(settings, use_remote=False)
    configs = [b.build_config for b in manifest.backbones] if manifest else [BuildConfig()]
    targets = list({wired.runtime.runtime_target(c) for c in configs})
    models: dict[str, str] = {}
    for backbone in manifest.backbones if manifest else ():
        try:
            models[backbone.name] = model_sha256(backbone.model_path)
        except ModelError:
            continue  # a model file that is gone says nothing about which hash is current
    return settings, targets, models


def run_gc(args: argparse.Namespace) -> int:
    from trt_provision.stores.maintenance import apply_gc, plan_gc

    settings, targets, models = host_targets_and_models(args)
    _check_cache_dir(args, settings.cache_dir)
    plan = plan_gc(settings.cache_dir, host_targets=targets, current_models=models)
    freed = apply_gc(plan) if args.apply else 0
    if args.json:
        data = plan.to_dict()
        data.update(applied=bool(args.apply), freed_bytes=freed)
        data["host_targets"] = [t.__dict__ for t in targets]
        print_json(data)
        return 0
    verb = "removed" if args.apply else "would remove"
    for item in plan.items:
        print(f"{verb}: {item.path}  ({_human(item.size_bytes)}; {item.reason})")
    print(
        f"{verb} {len(plan.items)} item(s), {_human(plan.total_bytes)} "
        f"({plan.total_bytes} bytes) in {settings.cache_dir}"
        + ("" if args.apply or not plan.items else "; run with --apply to delete")
    )
    return 0


def run_clear(args: argparse.Namespace) -> int:
    from trt_provision.errors import UsageError
    from trt_provision.stores.maintenance import clear_cache, list_engines

    settings = settings_from_args(args)
    _check_cache_dir(args, settings.cache_dir)
    if not args.yes:
        engines = list_engines(settings.cache_dir)
        raise UsageError(
            f"cache clear deletes {len(engines)} engine(s) in {settings.cache_dir}; "
            "pass --yes to confirm"
        )
    plan = clear_cache(settings.cache_dir)
    if args.json:
        print_json({**plan.to_dict(), "freed_bytes": plan.total_bytes})
    else:
        print(f"cleared {settings.cache_dir}: {_human(plan.total_bytes)} freed")
    return 0
