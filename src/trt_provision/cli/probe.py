"""``trt-provision probe``: what this host can run (GPU, JetPack, TensorRT, ORT, CPU)."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from trt_provision.cli._common import (
    add_settings_args,
    print_json,
    runtime_problems,
    settings_from_args,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "probe",
        help="show the host's capabilities and thermal state",
        description="Probe GPU, JetPack, TensorRT, ONNX Runtime and CPU ISA without building.",
    )
    add_settings_args(parser)
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trt_provision.compose import choose_runtime_label, wire
    from trt_provision.errors import MissingDependencyError

    settings = settings_from_args(args)
    # A runtime that cannot load here is a finding, not a failure: say what is missing and
    # probe the rest of the host with ONNX Runtime.
    problems = runtime_problems(settings)
    usable = dataclasses.replace(settings, runtime="onnxruntime") if problems else settings
    try:
        wired = wire(usable, use_remote=False)
    except MissingDependencyError as exc:
        problems.append(exc.message)
        usable = dataclasses.replace(settings, runtime="onnxruntime")
        wired = wire(usable, use_remote=False)
    data: dict[str, Any] = {
        "host": wired.host.to_dict(),
        "runtime": choose_runtime_label(settings, wired.host),
        "runtime_usable": not problems,
        "runtime_problems": problems,
        "runtime_target": None
        if problems
        else vars(wired.runtime.runtime_target(_default_config())),
        "thermal": wired.runtime.thermal_state().to_dict(),
        "memory_budget": _budget(wired.budget),
        "cache_dir": str(settings.cache_dir),
    }
    if problems:
        from trt_provision._lazy import install_line

        data["fix"] = install_line("tensorrt", wired.host.cuda_driver_version)
    if args.json:
        print_json(data)
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title="trt-provision probe", show_header=False)
    for key, value in data["host"].items():
        if key == "cpu_isa":
            value = f"{len(value)} flags"
        table.add_row(key, str(value))
    table.add_row("runtime", data["runtime"] + ("" if not problems else " (cannot load here)"))
    for problem in problems:
        table.add_row("missing", escape(problem))
    if problems:
        table.add_row("fix", escape(data["fix"]))
    table.add_row("engine target", str(data["runtime_target"]))
    table.add_row("thermal", str(data["thermal"]))
    table.add_row("memory budget", str(data["memory_budget"]))
    table.add_row("cache_dir", data["cache_dir"])
    Console().print(table)
    return 0


def _default_config() -> Any:
    from trt_provision.types import BuildConfig

    return BuildConfig()


def _budget(budget: Any) -> Any:
    snapshot = getattr(budget, "snapshot", None)
    return snapshot().to_dict() if callable(snapshot) else None
