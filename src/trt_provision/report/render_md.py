"""The report as markdown, for CI logs and pull-request comments: the coverage matrix and
one line per engine. Sidecar strings are made table-safe (``|``, newlines, backticks)."""

from __future__ import annotations

import math
import re

from trt_provision.report.collect import CELL_STATES, EngineRow, Report

__all__ = ["render_markdown"]

DASH = "—"
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_MARKUP = re.compile(r"([|`*_\[\]\\<>])")


def _m(value: object) -> str:
    """A value made safe for a markdown table cell (no pipes, markup or newlines)."""
    if value is None:
        return DASH
    return _MARKUP.sub(r"\\\1", _CONTROL.sub(" ", str(value)))


def _f(value: float | None, digits: int = 3) -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return f"{value:.{digits}g}"


def render_markdown(report: Report) -> str:
    lines = [
        f"## Engine report: {_m(report.manifest.rsplit('/', 1)[-1])}",
        "",
        f"cache `{_m(report.cache_dir)}` · trust {_m(report.trust_policy)} · remote "
        f"{'checked' if report.remote_checked else 'not checked'} · "
        f"{_m(report.generated_at)}",
        "",
    ]
    counts = {s: sum(1 for c in report.cells if c.state == s) for s in CELL_STATES}
    lines.append(", ".join(f"{s} {counts[s]}" for s in CELL_STATES))
    lines.append("")
    if report.targets:
        lines.append("| model | " + " | ".join(_m(t.label) for t in report.targets) + " |")
        lines.append("|---" * (len(report.targets) + 1) + "|")
        for model in report.models:
            cells = []
            for t in report.targets:
                cell = report.cell(model.name, t)
                extra = "" if cell.on_remote is None else (
                    " (remote)" if cell.on_remote else " (not on remote)")
                cells.append(cell.state + extra)
            lines.append(f"| {_m(model.name)} ({_m(model.precision)}) | "
                         + " | ".join(cells) + " |")
        lines.append("")
    if report.engines:
        lines.append("| model | precision | target | state | accuracy | samples | bound | "
                     "p50 ms | p99 ms | size | signature |")
        lines.append("|---" * 11 + "|")
        lines.extend(_engine_line(e) for e in report.engines)
        lines.append("")
    lines.extend(f"- {_m(n)}" for n in report.notes)
    return "\n".join(lines).rstrip() + "\n"


def _engine_line(e: EngineRow) -> str:
    precision = e.precision + (f" → {_m(e.chosen_precision)}" if e.chosen_precision else "")
    acc = e.accuracy
    lat = e.latency
    sig = e.signature.state + (f" {e.signature.key_id}" if e.signature.key_id else "")
    return (
        f"| {_m(e.model)} | {precision} | {_m(e.target.label)} | {e.state} ({_m(e.role)}) | "
        f"{_m(acc.verdict) if acc else DASH} | {_m(acc.samples) if acc else DASH} | "
        f"{_f(acc.bound, 4) if acc else DASH} | "
        f"{_f(lat.p50_ms, 4) if lat else DASH} | {_f(lat.p99_ms, 4) if lat else DASH} | "
        f"{_m(e.size_bytes)} | {_m(sig)} |"
    )
