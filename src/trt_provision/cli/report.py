"""``trt-provision report MANIFEST``: coverage, accuracy, latency and provenance of a
manifest's engines, as one HTML page (``-o``), JSON or markdown. Read-only: it never builds,
fetches, signs or deletes."""

from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path
from typing import Any

from trt_provision.cli._common import add_settings_args, require_paths, settings_from_args

__all__ = ["expected_identity", "register"]

log = logging.getLogger(__name__)


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "report",
        help="what the cache holds for a manifest: coverage, accuracy, latency, signatures",
        description=(
            "Report a manifest's engines: a coverage matrix (model × target: verified, "
            "stale, bad, missing), per engine its precision and the auto decision, accuracy "
            "verdict, latency recorded by `run`, size, age, signature and provenance. "
            "Writes one self-contained HTML file with -o, or prints JSON or markdown. "
            "Never builds or changes the cache."
        ),
    )
    parser.add_argument("manifest", type=Path, help="TOML manifest listing the models")
    add_settings_args(parser)
    parser.add_argument(
        "--remote", action="store_true",
        help="also ask the manifest's remote store which engines it has (read-only)",
    )
    parser.add_argument("-o", "--output", type=Path, metavar="FILE",
                        help="write the HTML report to FILE")
    fmt = parser.add_mutually_exclusive_group()
    fmt.add_argument("--json", action="store_true", help="print the report as JSON on stdout")
    fmt.add_argument("--markdown", action="store_true", help="print the report as markdown")
    parser.set_defaults(func=run)


def expected_identity(wired: Any, backbone: Any) -> Any:
    """The identity this host would provision for ``backbone``, or None when knowing it
    would run a manifest's Python code (a ``file.py:fn`` calibration loader) or fails."""
    from trt_provision.errors import TrtProvisionError

    spec = backbone.build_config.calibration
    source = str(spec.source) if spec is not None and spec.source is not None else ""
    if ".py" in source and spec is not None and spec.dataset_version is None:
        return None
    try:
        return wired.compiler.identity_for(backbone)[0]
    except (TrtProvisionError, OSError) as exc:
        log.info("no expected identity for %s: %s", backbone.name, exc,
                 extra={"event": "report.identity.unknown", "model": backbone.name})
        return None


def run(args: argparse.Namespace) -> int:
    from trt_provision.compose import trust_policies, wire
    from trt_provision.config import load_manifest
    from trt_provision.errors import TrtProvisionError, UsageError
    from trt_provision.identity import model_sha256
    from trt_provision.report.collect import ModelInfo, collect_report

    require_paths((args.manifest, "MANIFEST"))
    if args.output is None and not (args.json or args.markdown):
        raise UsageError("report needs -o FILE (HTML), --json or --markdown")
    if args.output is not None and args.output.is_dir():
        raise UsageError(f"-o: is a directory: {args.output}")
    manifest = load_manifest(args.manifest)
    settings = settings_from_args(args, manifest.settings)
    if getattr(args, "cache_dir", None) is not None:
        from trt_provision.cli._common import require_dir

        require_dir(settings.cache_dir, "--cache-dir")
    wired = wire(settings, use_remote=args.remote)
    remote = None
    if args.remote:
        from trt_provision.cli.remote import remote_for

        remote = remote_for(settings, wired)
    models = []
    expected: dict[str, Any] = {}
    targets = []
    for backbone in manifest.backbones:
        try:
            digest: str | None = model_sha256(backbone.model_path)
        except TrtProvisionError:
            digest = None  # a model file that is gone: its engines are shown, none current
        models.append(ModelInfo(backbone.name, backbone.build_config.precision.value, digest,
                                backbone.version_label))
        targets.append(wired.runtime.runtime_target(backbone.build_config))
        expected[backbone.name] = expected_identity(wired, backbone) if digest else None
    local_policy, _ = trust_policies(settings)
    keys = []
    if settings.public_key is not None:
        from trt_provision.trust import load_public_key

        keys.append(load_public_key(settings.public_key))
    report = collect_report(
        manifest_path=Path(args.manifest),
        models=models,
        cache_dir=settings.cache_dir,
        host_targets=list(dict.fromkeys(targets)),
        expected=expected,
        trust_policy=local_policy,
        public_keys=keys,
        remote=remote,
        now=time.time(),
    )
    if args.output is not None:
        from trt_provision._fs import atomic_write_bytes
        from trt_provision.report.render_html import render_html

        try:
            atomic_write_bytes(args.output, render_html(report).encode("utf-8"), mode=0o644)
        except OSError as exc:
            raise UsageError(f"-o: cannot write {args.output}: {exc.strerror}") from exc
        print(f"wrote {args.output}", file=sys.stderr)
    if args.json:
        from trt_provision.report.to_json import render_json

        sys.stdout.write(render_json(report))
    elif args.markdown:
        from trt_provision.report.render_md import render_markdown

        sys.stdout.write(render_markdown(report))
    return 0  # a report describes; `verify` is the command that fails on a bad engine
