"""``trt-provision inspect ENGINE``: identity parsed from the name plus the metadata sidecar."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trt_provision.cli._common import print_json

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "inspect",
        help="show an engine's identity and metadata",
        description="Parse an engine's filename and show its metadata and integrity status.",
    )
    parser.add_argument("engine", type=Path, help="engine file")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trt_provision.errors import EngineGateError
    from trt_provision.identity import parse_engine_filename
    from trt_provision.integrity import parse_sha256_sidecar, read_metadata, sha256_file

    engine: Path = args.engine
    parsed = parse_engine_filename(engine.name)
    data: dict[str, Any] = {"engine": str(engine), "identity": parsed.to_dict()}
    try:
        data["metadata"] = read_metadata(engine)
    except EngineGateError as exc:
        data["metadata_error"] = str(exc)
    try:
        claimed = parse_sha256_sidecar(engine.with_name(engine.name + ".sha256"), engine.name)
        if not engine.is_file():  # a FIFO or device named like an engine would never end
            raise EngineGateError("engine is not a regular file", path=str(engine))
        actual, size = sha256_file(engine)
        data["sha256"] = {"claimed": claimed, "actual": actual, "ok": claimed == actual}
        data["size_bytes"] = size
    except EngineGateError as exc:
        data["sha256"] = {"ok": False, "error": str(exc)}
    except OSError as exc:
        data["sha256"] = {"ok": False, "error": f"cannot read engine: {exc.strerror}"}
    # Exit 1 when the engine does not verify, so scripts can rely on the status.
    status = 0 if data["sha256"].get("ok") and "metadata_error" not in data else 1
    if args.json:
        print_json(data)
        return status
    from rich.console import Console
    from rich.table import Table

    table = Table(title=engine.name, show_header=False)
    for key, value in parsed.to_dict().items():
        table.add_row(key, str(value))
    table.add_row("sha256 ok", str(data["sha256"].get("ok")))
    meta = data.get("metadata", {})
    for key in (
        "size_bytes",
        "timings",
        "tool_versions",
        "precision_evidence",
        "calibration",
        "accuracy",
    ):
        if key in meta:
            table.add_row(key, str(meta[key]))
    if "metadata_error" in data:
        table.add_row("metadata", data["metadata_error"])
    Console().print(table)
    return status
