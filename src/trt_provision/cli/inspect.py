"""``trt-provision inspect ENGINE|MODEL.onnx``.

An engine: identity parsed from the name, metadata sidecar (I/O, profiles, timings), integrity
and the recorded measurements. An ONNX model: inputs/outputs with dtypes and dynamic dims,
opsets, node count, external data and what a profile for it must name.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trt_provision.cli._common import print_json, saved_copy_name

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "inspect",
        help="show an engine's identity, metadata and measurements, or an ONNX model's I/O",
        description=(
            "ENGINE (*.engine): parse its filename and show its metadata, I/O, integrity "
            "status and recorded measurements. MODEL (*.onnx): show inputs and outputs with "
            "dtypes and dynamic dimensions, opsets, node count, external data and which "
            "inputs an optimization profile must name."
        ),
    )
    parser.add_argument("engine", type=Path, metavar="ENGINE|MODEL", help="engine or ONNX file")
    parser.add_argument("--json", action="store_true", help="print JSON on stdout")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from trt_provision.identity import ENGINE_SUFFIX

    # A compile --saveEngine copy (any name: model.engine, model.plan) is inspected as the
    # engine its metadata sidecar describes; its .sha256 sidecar proves the bytes.
    copy_of = saved_copy_name(args.engine)
    if copy_of is not None or args.engine.name.endswith(ENGINE_SUFFIX):
        return _run_engine(args, copy_of)
    return _run_model(args)


# ---------------------------------------------------------------- ONNX model


def _dims_text(shape: list[Any] | None) -> str:
    if shape is None:
        return "unknown rank"
    return "[" + ", ".join("?" if d is None else str(d) for d in shape) + "]"


def _run_model(args: argparse.Namespace) -> int:
    from trt_provision.model_info import describe_model

    info = describe_model(args.engine)
    data = info.to_dict()
    if args.json:
        print_json(data)
        return 0
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    console = Console()

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    opsets = ", ".join(f"{domain or 'ai.onnx'} {ver}" for domain, ver in info.opsets.items())
    say(f"{info.path.name}: ONNX IR {info.ir_version}, opset {opsets}, {info.node_count} nodes"
        + (f" (+{info.subgraph_node_count} in subgraphs)" if info.subgraph_node_count else "")
        + f", {info.initializer_count} initializers, {info.size_bytes} bytes"
        + (f", producer {info.producer}" if info.producer else ""))
    for title, tensors in (("inputs", info.inputs), ("outputs", info.outputs)):
        table = Table(title=title, title_justify="left")
        for column in ("name", "dtype", "shape", "dynamic"):
            table.add_column(column, overflow="fold")
        for t in tensors:
            dynamic = ", ".join(
                str(t.shape[i]) if t.shape and t.shape[i] is not None else f"dim {i}"
                for i in t.dynamic_dims
            ) if t.shape is not None else "rank unknown"
            table.add_row(*(escape(c) for c in (t.name, t.dtype, t.shape_text(), dynamic or "-")))
        console.print(table)
    if info.external_data:
        for ext in info.external_data:
            state = f"{ext.size_bytes} bytes" if ext.present else "MISSING"
            say(f"external data: {ext.location} ({state})")
    else:
        say("external data: none")
    needing = info.profile_inputs
    if not needing:
        say("profile: not needed (every input is static)")
    else:
        say("a profile must give min/opt/max for: "
            + "; ".join(f"{t.name} {t.shape_text()}" for t in needing))
        for symbol, names in info.shared_symbols.items():
            say(f"  {symbol!r} is shared by {', '.join(names)}: give them the same sizes")
    return 0


# ---------------------------------------------------------------- engine


def _run_engine(args: argparse.Namespace, copy_of: str | None = None) -> int:
    from trt_provision.errors import EngineGateError, StoreError
    from trt_provision.identity import parse_engine_filename
    from trt_provision.integrity import (
        MAX_METADATA_BYTES,
        parse_metadata_bytes,
        parse_sha256_sidecar,
        read_cache_file,
        sha256_file,
    )
    from trt_provision.measure.runner import read_perf_sidecar

    engine: Path = args.engine
    parsed = parse_engine_filename(copy_of or engine.name)
    data: dict[str, Any] = {"engine": str(engine), "identity": parsed.to_dict()}
    if copy_of is not None:
        data["copy_of"] = copy_of
    raw: bytes | None = None
    try:
        sidecar = engine.with_name(engine.name + ".json")
        raw = read_cache_file(sidecar, MAX_METADATA_BYTES, what="metadata sidecar")
        data["metadata"] = parse_metadata_bytes(raw, sidecar, copy_of or engine.name)
    except EngineGateError as exc:
        data["metadata_error"] = str(exc)
    try:
        # The .sha256 must cover the .json too, as the engine gate requires.
        claimed = parse_sha256_sidecar(engine.with_name(engine.name + ".sha256"), engine.name,
                                       metadata=raw)
        if not engine.is_file():  # a FIFO or device named like an engine would never end
            raise EngineGateError("engine is not a regular file", path=str(engine))
        actual, size = sha256_file(engine)
        data["sha256"] = {"claimed": claimed, "actual": actual, "ok": claimed == actual}
        described = data.get("metadata", {}).get("sha256")
        if copy_of is not None and described != claimed:
            data["sha256"].update(ok=False, error="the .json and .sha256 sidecars describe "
                                  "different engines")
        data["size_bytes"] = size
    except EngineGateError as exc:
        data["sha256"] = {"ok": False, "error": str(exc)}
    except OSError as exc:
        data["sha256"] = {"ok": False, "error": f"cannot read engine: {exc.strerror}"}
    try:
        perf = read_perf_sidecar(engine)
    except StoreError as exc:
        data["measurements_error"] = str(exc)
    else:
        if perf is not None:
            current = perf["sha256"] == data["sha256"].get("actual")
            data["measurements"] = {"runs": perf["runs"], "for_these_bytes": current}
    # Exit 1 when the engine does not verify, so scripts can rely on the status.
    status = 0 if data["sha256"].get("ok") and "metadata_error" not in data else 1
    if args.json:
        print_json(data)
        return status
    _print_engine(engine, parsed.to_dict(), data)
    return status


def _io_rows(meta: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    io = meta.get("io")
    rows: list[tuple[str, str, str, str]] = []
    if not isinstance(io, dict):
        return rows
    for kind in ("inputs", "outputs"):
        items = io.get(kind)
        for item in items if isinstance(items, list) else []:
            if isinstance(item, dict):
                shape = item.get("shape")
                rows.append((kind[:-1], str(item.get("name")), str(item.get("type")),
                             _dims_text(shape) if isinstance(shape, list) else "?"))
    return rows


def _io_rows_from_source_model(meta: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    """TensorRT metadata lists no I/O: read it from the source model, if it is the one."""
    import os
    import stat

    from trt_provision.errors import ModelError
    from trt_provision.identity import model_sha256
    from trt_provision.model_info import describe_model

    model = meta.get("model")
    recorded = model.get("path") if isinstance(model, dict) else model
    identity = meta.get("identity")
    if not isinstance(recorded, str) or not isinstance(identity, dict):
        return []
    path = Path(recorded)
    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            return []
        if model_sha256(path) != identity.get("model_sha256"):
            return []  # another model now lives there: its I/O would mislead
        info = describe_model(path)
    except (OSError, ModelError):
        return []
    return [(kind[:-1], t.name, t.dtype, t.shape_text())
            for kind, tensors in (("inputs", info.inputs), ("outputs", info.outputs))
            for t in tensors]


def _print_engine(engine: Path, identity: dict[str, Any], data: dict[str, Any]) -> None:
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    table = Table(title=escape(engine.name), show_header=False)
    table.add_column("field", overflow="fold")
    table.add_column("value", overflow="fold")
    if "copy_of" in data:
        table.add_row("copy of", escape(data["copy_of"]))
    for key, value in identity.items():
        table.add_row(key, escape(str(value)))
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
            table.add_row(key, escape(str(meta[key])))
    if "metadata_error" in data:
        table.add_row("metadata", escape(data["metadata_error"]))
    console = Console()
    console.print(table)

    def say(text: str) -> None:
        console.print(text, highlight=False, markup=False)

    rows = _io_rows(meta)
    title = "I/O"
    if not rows and meta:
        rows = _io_rows_from_source_model(meta)
        title = "I/O (from the source model)"
    if rows:
        io = Table(title=title, title_justify="left")
        for column in ("", "name", "type", "shape"):
            io.add_column(column, overflow="fold")
        for row in rows:
            io.add_row(*(escape(c) for c in row))
        console.print(io)
    elif meta:
        say("I/O: not recorded in the metadata and the source model is not here")
    build = meta.get("build_config")
    profiles = build.get("profiles") if isinstance(build, dict) else None
    for p in profiles if isinstance(profiles, list) else []:
        if isinstance(p, dict):
            say(f"profile {p.get('input')}: min {p.get('min')} opt {p.get('opt')} "
                f"max {p.get('max')}"
                + (" (defaulted: the input had no profile)" if p.get("defaulted") else ""))
    if "measurements_error" in data:
        say(f"measurements: {data['measurements_error']}")
    elif "measurements" in data:
        runs = data["measurements"]["runs"]
        last: dict[str, Any] = runs[-1] if runs else {}
        lat = last.get("latency_ms")
        lat = lat if isinstance(lat, dict) else {}
        throughput = last.get("throughput")
        qps = throughput.get("qps") if isinstance(throughput, dict) else None
        stale = "" if data["measurements"]["for_these_bytes"] else " (for other engine bytes)"
        say(f"measured {last.get('measured_at', '?')}{stale}: p50 {lat.get('p50')} ms, "
            f"p90 {lat.get('p90')} ms, p99 {lat.get('p99')} ms, {qps} qps "
            f"({len(runs)} run(s) recorded)")
    else:
        say("measurements: none (trt-provision run ENGINE records them)")
