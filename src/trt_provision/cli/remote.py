"""``trt-provision push|pull MANIFEST``: pre-stage a fleet's shared store from a build box,
or fill a device's cache from it, without building anything."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trt_provision.cli._common import (
    add_settings_args,
    print_json,
    require_paths,
    require_runtime,
    settings_from_args,
)

__all__ = ["register", "remote_for"]


def register(sub: Any) -> None:
    push: argparse.ArgumentParser = sub.add_parser(
        "push",
        help="upload this host's cached engines of a manifest to the remote store",
        description=(
            "Upload every engine of MANIFEST found valid in the local cache to the remote "
            "store (conditional put: objects already there are never overwritten)."
        ),
    )
    push.add_argument("manifest", type=Path, help="TOML manifest listing the models")
    add_settings_args(push)
    push.add_argument(
        "--sign-key",
        type=Path,
        metavar="PRIVATE_KEY",
        help="sign unsigned engines with this Ed25519 key before uploading",
    )
    push.add_argument("--json", action="store_true", help="print JSON on stdout")
    push.set_defaults(func=run_push)

    pull: argparse.ArgumentParser = sub.add_parser(
        "pull",
        help="download a manifest's engines for this host from the remote store",
        description=(
            "Fetch, verify (sha256, signature per trust policy) and publish locally every "
            "engine of MANIFEST that is missing from the local cache. Builds nothing."
        ),
    )
    pull.add_argument("manifest", type=Path, help="TOML manifest listing the models")
    add_settings_args(pull)
    pull.add_argument("--json", action="store_true", help="print JSON on stdout")
    pull.set_defaults(func=run_pull)


def trust_for(settings: Any) -> Any:
    """The trust hook for remote pulls (``auto``: require once a public key is configured)."""
    from trt_provision.compose import build_trust

    return build_trust(settings, remote=True)


def remote_for(settings: Any, wired: Any) -> Any:
    """The wired remote store, else one built from the manifest's ``[remote]`` table."""
    from trt_provision.errors import ManifestError
    from trt_provision.stores.s3 import remote_store_from_settings

    remote = getattr(wired, "remote", None)
    if remote is None:
        remote = remote_store_from_settings(settings.remote, trust=trust_for(settings))
    if remote is None:
        raise ManifestError(
            "no remote store configured",
            key="remote.bucket",
            expected="a [remote] table in the manifest or ARTIFACTS_BUCKET",
        )
    return remote


def _wire(args: argparse.Namespace) -> tuple[Any, Any, Any]:
    from trt_provision.compose import wire
    from trt_provision.config import load_manifest

    require_paths((args.manifest, "MANIFEST"), (getattr(args, "sign_key", None), "--sign-key"))
    manifest = load_manifest(args.manifest)
    settings = settings_from_args(args, manifest.settings)
    require_runtime(settings)
    wired = wire(settings, use_remote=True)
    return manifest, wired, remote_for(settings, wired)


def _report(args: argparse.Namespace, rows: list[dict[str, Any]], verb: str) -> None:
    if args.json:
        print_json({"command": verb, "results": rows})
        return
    for row in rows:
        print(f"{row['status']:<16} {row['model']:<24} {row['engine']}")


def run_push(args: argparse.Namespace) -> int:
    from trt_provision.errors import EngineGateError
    from trt_provision.trust import sign_engine, signature_path

    manifest, wired, remote = _wire(args)
    rows: list[dict[str, Any]] = []
    failed = 0
    for backbone in manifest.backbones:
        identity, target, _ = wired.compiler.identity_for(backbone)
        path = wired.store.path_for(identity)
        row = {"model": backbone.name, "engine": identity.filename}
        try:
            entry = wired.gate.validate(path, target)
        except EngineGateError as exc:
            row.update(status="missing-locally", reason=str(exc))
            failed += 1
            rows.append(row)
            continue
        if args.sign_key is not None and not signature_path(path).exists():
            sign_engine(path, args.sign_key)
        if remote.upload(entry):
            row["status"] = "uploaded"
        elif remote.exists(identity):
            row["status"] = "already-present"
        else:
            row["status"] = "not-uploaded"
            failed += 1
        rows.append(row)
    _report(args, rows, "push")
    return 1 if failed else 0


def run_pull(args: argparse.Namespace) -> int:
    from trt_provision.errors import EngineGateError

    manifest, wired, remote = _wire(args)
    wired.store.ensure_writable()
    rows: list[dict[str, Any]] = []
    failed = 0
    for backbone in manifest.backbones:
        identity, target, _ = wired.compiler.identity_for(backbone)
        path = wired.store.path_for(identity)
        row = {"model": backbone.name, "engine": identity.filename}
        with wired.store.lock(identity):
            try:
                wired.gate.validate(path, target)
                row["status"] = "present"
            except EngineGateError:
                fetched = remote.fetch(identity, wired.store, wired.gate, target)
                if fetched is not None:
                    row["status"] = "fetched"
                else:
                    row["status"] = "not-available"
                    failed += 1
        rows.append(row)
    _report(args, rows, "pull")
    return 1 if failed else 0
