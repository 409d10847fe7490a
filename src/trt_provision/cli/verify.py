"""``trt-provision verify``: re-hash every engine of a cache directory, report bad ones."""

from __future__ import annotations

import argparse
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
        "verify",
        help="re-hash a cache directory and report bad entries",
        description="Check every engine's sha256 and metadata sidecars (exit 1 if any is bad).",
    )
    add_settings_args(parser)
    parser.add_argument("--json", action="store_true", help="print a JSON report on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trt_provision.compose import build_gate, build_store
    from trt_provision.errors import EngineGateError, InvalidNameError
    from trt_provision.identity import parse_engine_filename
    from trt_provision.types import RuntimeTarget

    settings = settings_from_args(args)
    # A typo in --cache-dir must not read as "0 checked, 0 bad": the cache must exist.
    require_dir(Path(settings.cache_dir), "--cache-dir" if args.cache_dir else "cache directory")
    store = build_store(settings)
    gate = build_gate(settings)
    report: list[dict[str, Any]] = []
    for path in store.iter_engines():
        try:
            parsed = parse_engine_filename(path.name)
            # Integrity only: the engine is checked against its own name, not this host.
            own = RuntimeTarget(
                parsed.runtime, parsed.runtime_version, parsed.target, parsed.platform
            )
            gate.validate(path, own)
            report.append({"engine": str(path), "ok": True})
        except (EngineGateError, InvalidNameError) as exc:
            report.append({"engine": str(path), "ok": False, "reason": str(exc)})
    bad = [r for r in report if not r["ok"]]
    if args.json:
        print_json({"cache_dir": str(settings.cache_dir), "checked": len(report), "bad": bad})
    else:
        for r in report:
            print(
                ("OK   " if r["ok"] else "BAD  ")
                + r["engine"]
                + ("" if r["ok"] else f"  ({r['reason']})")
            )
        print(f"{len(report)} engine(s) checked, {len(bad)} bad, in {settings.cache_dir}")
    return 1 if bad else 0
