"""The report as one self-contained HTML page: no script, no external resource (a
Content-Security-Policy says so to the browser too), inline SVG charts, responsive and
printable. Every value from a sidecar is escaped here (``_e``), whatever collect.py let in.
"""

from __future__ import annotations

import html
import math
from collections.abc import Iterable, Sequence
from dataclasses import replace

from trt_provision.report.collect import (
    CELL_STATES,
    AutoCandidate,
    EngineRow,
    Report,
)

__all__ = ["render_html"]

DASH = "—"

_CSS = """
:root{--ok:#1a7f37;--bad:#cf222e;--stale:#9a6700;--miss:#6e7781;--fg:#1f2328;--mut:#59636e;
--line:#d1d9e0;--bg:#fff;--card:#f6f8fa}
*{box-sizing:border-box}
body{font:15px/1.45 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:var(--fg);
background:var(--bg);margin:0;padding:12px;max-width:1200px;margin-inline:auto}
h1{font-size:1.35em;margin:.2em 0}h2{font-size:1.15em;margin:1.2em 0 .4em;
border-bottom:1px solid var(--line)}h3{font-size:1em;margin:.2em 0}
.meta{color:var(--mut);font-size:.9em;overflow-wrap:anywhere}
.scroll{overflow-x:auto;-webkit-overflow-scrolling:touch}
table{border-collapse:collapse;font-size:.9em}
.card table{min-width:440px}
.card th,.card td{overflow-wrap:normal}.card td.why{min-width:14em}
th,td{border:1px solid var(--line);padding:4px 6px;text-align:left;vertical-align:top}
th{background:var(--card)}
td.num{text-align:right;font-variant-numeric:tabular-nums}
.st{font-weight:600;white-space:nowrap}
.verified{color:var(--ok)}.bad{color:var(--bad)}.stale{color:var(--stale)}
.missing{color:var(--miss)}
td.verified{background:#dafbe1}td.bad{background:#ffebe9}td.stale{background:#fff8c5}
td.missing{background:#f6f8fa}
.cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(320px,1fr));gap:10px}
.card{border:1px solid var(--line);border-radius:6px;padding:8px;background:var(--bg);min-width:0;
break-inside:avoid;overflow-wrap:anywhere}
.card dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 8px;margin:.4em 0}
.card dt{color:var(--mut)}.card dd{margin:0}
.file{font-family:ui-monospace,monospace;font-size:.8em;color:var(--mut)}
.charts{display:grid;grid-template-columns:repeat(auto-fill,minmax(300px,1fr));gap:10px}
figure{margin:0;border:1px solid var(--line);border-radius:6px;padding:6px;break-inside:avoid;
min-width:0}
figcaption{font-size:.9em;color:var(--mut)}
svg{width:100%;height:auto;display:block}
svg text{font:11px system-ui,sans-serif;fill:#1f2328}
.legend span{margin-right:10px;white-space:nowrap}
ul.notes{color:var(--mut);font-size:.9em}
@media (max-width:600px){body{padding:6px;font-size:14px}
.cards,.charts{grid-template-columns:minmax(0,1fr)}}
@media print{body{max-width:none;padding:0;font-size:10pt}.scroll{overflow:visible}
td.verified,td.bad,td.stale,td.missing{-webkit-print-color-adjust:exact;print-color-adjust:exact}
h2{break-after:avoid}a{color:inherit;text-decoration:none}}
"""

_STATE_WORDS = {
    "verified": "✔ verified",
    "bad": "✖ bad",
    "stale": "◐ stale",
    "missing": "○ missing",
}


def _e(value: object) -> str:
    """Escaped text of any value; None is a dash."""
    if value is None:
        return DASH
    return html.escape(str(value), quote=True)


def _f(value: float | None, digits: int = 3, suffix: str = "") -> str:
    if value is None or not math.isfinite(value):
        return DASH
    return _e(f"{value:.{digits}g}{suffix}")


def _size(n: int | None) -> str:
    if n is None:
        return DASH
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


def render_html(report: Report) -> str:
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        '<meta name="viewport" content="width=device-width, initial-scale=1">',
        # Nothing may load or run, even if a sidecar string slipped through unescaped.
        "<meta http-equiv=\"Content-Security-Policy\" content=\"default-src 'none'; "
        "style-src 'unsafe-inline'; img-src data:\">",
        f"<title>trt-provision report: {_e(_basename(report.manifest))}</title>",
        f"<style>{_CSS}</style></head><body>",
        f"<h1>Engine report: {_e(_basename(report.manifest))}</h1>",
        _header(report),
        _summary(report),
        "<h2 id=\"coverage\">Coverage</h2>",
        _matrix(report),
        "<h2 id=\"charts\">Charts</h2>",
        '<div class="charts">',
        *_latency_charts(report.engines),
        _auto_chart(report.engines),
        "</div>",
        "<h2 id=\"engines\">Engines</h2>",
        '<div class="cards">',
        *(_card(row) for row in report.engines),
        "</div>" if report.engines else "</div><p>No engine of these models in the cache.</p>",
    ]
    if report.notes:
        parts.append("<h2>Notes</h2><ul class=\"notes\">")
        parts.extend(f"<li>{_e(n)}</li>" for n in report.notes)
        parts.append("</ul>")
    parts.append("</body></html>\n")
    return "\n".join(parts)


def _basename(path: str) -> str:
    return path.rsplit("/", 1)[-1]


def _header(report: Report) -> str:
    hosts = ", ".join(t.label for t in report.host_targets) or DASH
    keys = ", ".join(report.key_ids) or "none"
    remote = "checked" if report.remote_checked else "not checked (--remote to ask)"
    return (
        '<p class="meta">'
        f"manifest {_e(report.manifest)}<br>cache {_e(report.cache_dir)}<br>"
        f"this host: {_e(hosts)}<br>trust policy {_e(report.trust_policy)}, keys {_e(keys)}; "
        f"remote store {_e(remote)}<br>generated {_e(report.generated_at)}, "
        f"schema {report.schema_version}</p>"
    )


def _summary(report: Report) -> str:
    counts = {s: sum(1 for c in report.cells if c.state == s) for s in CELL_STATES}
    items = " · ".join(
        f'<span class="st {s}">{_e(_STATE_WORDS[s])}</span> {counts[s]}' for s in CELL_STATES
    )
    return f"<p>{len(report.models)} model(s) × {len(report.targets)} target(s): {items}</p>"


def _matrix(report: Report) -> str:
    if not report.targets:
        return "<p>No target known: the cache holds no engine of these models.</p>"
    head = "".join(f"<th scope=\"col\">{_e(t.label)}</th>" for t in report.targets)
    rows = []
    for model in report.models:
        cells = []
        for target in report.targets:
            cell = report.cell(model.name, target)
            remote = ""
            if cell.on_remote is not None:
                remote = "<br><small>remote: " + ("has it" if cell.on_remote else "absent") + \
                    "</small>"
            title = "; ".join(cell.engines)
            cells.append(
                f'<td class="{_e(cell.state)}" title="{_e(title)}">'
                f'<span class="st {_e(cell.state)}">{_e(_STATE_WORDS[cell.state])}</span>'
                f"{remote}</td>"
            )
        label = f"{_e(model.name)}<br><small>{_e(model.precision)}</small>"
        rows.append(f"<tr><th scope=\"row\">{label}</th>{''.join(cells)}</tr>")
    return (
        '<div class="scroll"><table><thead><tr><th>model</th>'
        f"{head}</tr></thead><tbody>{''.join(rows)}</tbody></table></div>"
        '<p class="meta">verified: the current engine\'s sha256 and signature hold; '
        "stale: only superseded engines (older model hash, other precision or options); "
        "bad: sha256 or signature fails; missing: nothing for this target.</p>"
    )


def _card(row: EngineRow) -> str:
    acc = row.accuracy
    if acc is not None:
        splits = ", ".join(f"{k} {v}" for k, v in acc.splits) or DASH
        gate = ", ".join(f"{k} {v}" for k, v in acc.gate) or DASH
        accuracy = (
            f"<dt>accuracy</dt><dd>{_e(acc.verdict)} on {_e(acc.data)}; samples "
            f"{_e(acc.samples)}, bound {_f(acc.bound, 4)}, threshold {_f(acc.threshold, 4)}"
            f"</dd><dt>worst cosine</dt><dd>{_f(acc.worst_cosine, 6)}"
            f"{'' if acc.top1_agreement is None else ', top-1 ' + _f(acc.top1_agreement, 4)}"
            f"</dd><dt>gate</dt><dd>{_e(gate)}</dd><dt>splits (rows)</dt><dd>{_e(splits)}</dd>"
        )
    else:
        accuracy = "<dt>accuracy</dt><dd>— (not judged)</dd>"
    precision = _e(row.precision)
    if row.chosen_precision:
        precision += f" → {_e(row.chosen_precision)}"
        if row.speedup is not None:
            precision += f", {_f(row.speedup)}× fp32"
    lat = row.latency
    latency = DASH if lat is None else (
        f"p50 {_f(lat.p50_ms, 4, ' ms')}, p99 {_f(lat.p99_ms, 4, ' ms')}"
        f" <small>({_e(lat.measured_at)})</small>"
    )
    sig = row.signature
    signature = _e(sig.state) + (f", key {_e(sig.key_id)}" if sig.key_id else "") + (
        f" <small>({_e(sig.detail)})</small>" if sig.detail else "")
    provenance = ", ".join(
        f"{k} {_e(v)}" for k, v in (("builder", row.builder), ("path", row.trt_path),
                                    ("timing cache", row.timing_cache)) if v
    ) or DASH
    problems = "".join(f"<li>{_e(p)}</li>" for p in row.problems)
    remote = DASH if row.on_remote is None else ("has it" if row.on_remote else "absent")
    return (
        f'<div class="card"><h3>{_e(row.model)} <span class="st {_e(row.state)}">'
        f"{_e(_STATE_WORDS.get(row.state, row.state))}</span></h3>"
        f'<div class="file">{_e(row.filename)}</div>'
        + (f'<ul class="bad">{problems}</ul>' if problems else "")
        + "<dl>"
        f"<dt>target</dt><dd>{_e(row.target.label)}</dd>"
        f"<dt>role</dt><dd>{_e(row.role)}</dd>"
        f"<dt>precision</dt><dd>{precision}</dd>"
        f"{accuracy}"
        f"<dt>latency</dt><dd>{latency}</dd>"
        f"<dt>size</dt><dd>{_e(_size(row.size_bytes))}</dd>"
        f"<dt>built</dt><dd>{_e(row.built_at)}"
        f"{'' if row.age_days is None else f' ({row.age_days:g} days ago)'}</dd>"
        f"<dt>signature</dt><dd>{signature}</dd>"
        f"<dt>provenance</dt><dd>{provenance}</dd>"
        f"<dt>remote</dt><dd>{_e(remote)}</dd>"
        "</dl>"
        + _auto_table(row.auto)
        + "</div>"
    )


def _auto_table(rows: Sequence[AutoCandidate]) -> str:
    if not rows:
        return ""
    body = "".join(
        f"<tr><td>{_e(c.precision)}</td><td>{_e(c.verdict)}</td>"
        f'<td class="num">{_f(c.speedup)}</td><td class="num">{_f(c.median_ms, 4)}</td>'
        f'<td class="num">{_f(c.worst_cosine, 6)}</td><td class="why">{_e(c.why)}</td></tr>'
        for c in rows
    )
    return (
        '<div class="scroll"><table><caption>auto: every candidate</caption><thead><tr>'
        "<th>precision</th><th>verdict</th><th>× fp32</th><th>median ms</th>"
        f"<th>worst cosine</th><th>why</th></tr></thead><tbody>{body}</tbody></table></div>"
    )


# ------------------------------------------------------------------ charts

_PRECISION_COLOURS = {"fp32": "#0969da", "fp16": "#8250df", "int8": "#bf3989",
                      "mixed": "#bc4c00", "auto": "#1a7f37"}


def _latency_charts(rows: Iterable[EngineRow]) -> list[str]:
    """Per model: one bar per engine with a measured p50 (a tick at p99)."""
    by_model: dict[str, list[EngineRow]] = {}
    for row in rows:
        if row.latency is not None and row.latency.p50_ms is not None:
            by_model.setdefault(row.model, []).append(row)
    out = []
    for model, engines in by_model.items():
        engines.sort(key=lambda r: (r.target, r.precision))
        p50s = [r.latency.p50_ms for r in engines if r.latency and r.latency.p50_ms]
        p99s = [r.latency.p99_ms for r in engines if r.latency and r.latency.p99_ms]
        # One p99 outlier (a busy host) must not flatten every bar: the scale stops at 3×
        # the slowest p50 and a p99 beyond it is drawn at the edge.
        top = min(max(p50s + p99s), 3 * max(p50s)) or 1.0
        bar_h, gap, left, width = 16, 8, 110, 190
        height = len(engines) * (bar_h + gap) + 24
        svg = [f'<svg viewBox="0 0 {left + width + 60} {height}" role="img" '
               f'aria-label="latency of {_e(model)} by precision">']
        for i, r in enumerate(engines):
            assert r.latency is not None and r.latency.p50_ms is not None
            y = 4 + i * (bar_h + gap)
            w = max(1.0, width * r.latency.p50_ms / top)
            label = r.precision if not r.chosen_precision else f"auto→{r.chosen_precision}"
            colour = _PRECISION_COLOURS.get(r.precision, "#57606a")
            svg.append(f'<text x="{left - 4}" y="{y + 12}" text-anchor="end">{_e(label)} '
                       f"{_e(r.target.target)}</text>")
            svg.append(f'<rect x="{left}" y="{y}" width="{w:.1f}" height="{bar_h}" '
                       f'fill="{colour}"><title>{_e(r.filename)}</title></rect>')
            if r.latency.p99_ms is not None:
                x99 = left + width * min(1.0, r.latency.p99_ms / top)
                svg.append(f'<line x1="{x99:.1f}" x2="{x99:.1f}" y1="{y - 2}" '
                           f'y2="{y + bar_h + 2}" stroke="#1f2328" stroke-width="2"/>')
            svg.append(f'<text x="{left + w + 4:.1f}" y="{y + 12}">'
                       f"{_f(r.latency.p50_ms, 3)} ms</text>")
        svg.append(f'<text x="{left}" y="{height - 4}">p50 bar, p99 tick; ms</text></svg>')
        out.append(f"<figure>{''.join(svg)}<figcaption>{_e(model)}: latency by precision "
                   "(from <code>run</code>)</figcaption></figure>")
    if not out:
        out.append("<figure><figcaption>Latency: no engine has been measured yet "
                   "(<code>trt-provision run MANIFEST</code> records it).</figcaption></figure>")
    return out


_VERDICT_MARKS = {"chosen": "#1a7f37", "refused": "#cf222e", "slower": "#6e7781"}


def _auto_chart(rows: Iterable[EngineRow]) -> str:
    """Accuracy (worst cosine) against speed-up over fp32 for every auto candidate."""
    # fp32 is the reference every candidate is compared with: its cosine is 1 by definition.
    points = [(r.model, c if c.worst_cosine is not None or c.precision != "fp32"
               else replace(c, worst_cosine=1.0))
              for r in rows for c in r.auto]
    points = [(m, c) for m, c in points if c.speedup is not None and c.worst_cosine is not None]
    if not points:
        return ("<figure><figcaption>Accuracy vs speed-up: no <code>auto</code> candidate "
                "with both a speed-up and an accuracy in the cache.</figcaption></figure>")
    w, h, left, bottom = 360, 220, 46, 30
    xs = [c.speedup for _, c in points if c.speedup is not None]
    ys = [c.worst_cosine for _, c in points if c.worst_cosine is not None]
    x_max = max(2.0, max(xs) * 1.1)
    y_min = min(0.99, min(ys))
    y_min = max(-1.0, y_min - (1.0 - y_min) * 0.1)

    def px(x: float) -> float:
        return left + (w - left - 10) * max(0.0, x) / x_max

    def py(y: float) -> float:
        return 20 + (h - bottom - 20) * (1.0 - (y - y_min) / ((1.0 - y_min) or 1.0))

    svg = [f'<svg viewBox="0 0 {w} {h}" role="img" aria-label="accuracy against speed-up">',
           f'<line x1="{left}" y1="{h - bottom}" x2="{w - 10}" y2="{h - bottom}" '
           'stroke="#59636e"/>',
           f'<line x1="{left}" y1="20" x2="{left}" y2="{h - bottom}" stroke="#59636e"/>',
           f'<line x1="{px(1.0):.1f}" y1="20" x2="{px(1.0):.1f}" y2="{h - bottom}" '
           'stroke="#d1d9e0" stroke-dasharray="3 3"/>',
           f'<text x="{px(1.0):.1f}" y="{h - bottom + 14}" text-anchor="middle">1</text>',
           f'<text x="{(w + left) / 2:.0f}" y="{h - 4}" text-anchor="middle">'
           "speed-up over fp32 (×)</text>",
           f'<text x="4" y="{py(1.0) + 4:.1f}">1</text>',
           f'<text x="4" y="{py(y_min) + 4:.1f}">{_f(y_min, 4)}</text>',
           f'<text x="{px(x_max):.1f}" y="{h - bottom + 14}" text-anchor="end">'
           f"{_f(x_max, 3)}</text>",
           f'<text x="12" y="{(h - bottom) / 2:.0f}" transform="rotate(-90 12 '
           f'{(h - bottom) / 2:.0f})" text-anchor="middle">worst cosine</text>']
    for model, c in points:
        assert c.speedup is not None and c.worst_cosine is not None
        x, y = px(c.speedup), py(c.worst_cosine)
        colour = _VERDICT_MARKS.get(c.verdict, "#0969da")
        tip = f"<title>{_e(model)} {_e(c.precision)}: {_e(c.verdict)}</title>"
        if c.verdict == "refused":
            svg.append(f'<path d="M{x - 4:.1f} {y - 4:.1f}l8 8m0 -8l-8 8" stroke="{colour}" '
                       f'stroke-width="2">{tip}</path>')
        elif c.verdict == "chosen":
            svg.append(f'<circle cx="{x:.1f}" cy="{y:.1f}" r="5" fill="{colour}">{tip}</circle>')
        else:
            svg.append(f'<rect x="{x - 4:.1f}" y="{y - 4:.1f}" width="8" height="8" '
                       f'fill="none" stroke="{colour}" stroke-width="2">{tip}</rect>')
        svg.append(f'<text x="{x + 6:.1f}" y="{y - 4:.1f}">{_e(model)} {_e(c.precision)}</text>')
    svg.append("</svg>")
    legend = ('<div class="legend"><span style="color:#1a7f37">● chosen</span>'
              '<span style="color:#cf222e">✖ refused</span>'
              '<span style="color:#6e7781">□ slower or other</span></div>')
    return (f"<figure>{''.join(svg)}{legend}<figcaption>auto candidates: accuracy vs "
            "speed-up</figcaption></figure>")
