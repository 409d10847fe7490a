"""The report as JSON (described in ``_docs/report.md``, JSON Schema in
``_docs/report.schema.json``; ``schema_version`` changes whenever a field changes meaning or
goes away)."""

from __future__ import annotations

import json
from typing import Any

from trt_provision.report.collect import Report

__all__ = ["render_json", "to_json"]


def to_json(report: Report) -> dict[str, Any]:
    return report.to_dict()


def render_json(report: Report) -> str:
    # ensure_ascii: control characters and odd code points from sidecars travel escaped.
    return json.dumps(to_json(report), indent=2, sort_keys=True, ensure_ascii=True) + "\n"
