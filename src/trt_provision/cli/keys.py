"""``trt-provision keys generate|sign|verify``: Ed25519 keys and engine signatures."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trt_provision.cli._common import print_json, require_paths

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "keys",
        help="generate signing keys, sign and verify engines",
        description=(
            "Ed25519 signatures over an engine's metadata sidecar (which carries the "
            "engine's sha256), stored beside it as <engine>.sig."
        ),
    )
    actions = parser.add_subparsers(dest="keys_command", required=True, metavar="ACTION")

    gen = actions.add_parser("generate", help="write a new key pair (private key mode 0600)")
    gen.add_argument("private_key", type=Path, help="private key file to create")
    gen.add_argument(
        "--public-key", type=Path, help="public key file (default: PRIVATE_KEY.pub)"
    )
    gen.add_argument("--force", action="store_true", help="overwrite existing key files")
    gen.set_defaults(func=run_generate)

    sign = actions.add_parser("sign", help="sign engines (writes <engine>.sig)")
    sign.add_argument("engines", type=Path, nargs="+", help="engine files")
    sign.add_argument("--key", type=Path, required=True, help="Ed25519 private key (PEM)")
    sign.set_defaults(func=run_sign)

    verify = actions.add_parser("verify", help="verify engine signatures (exit 1 if any fails)")
    verify.add_argument("engines", type=Path, nargs="+", help="engine files")
    verify.add_argument(
        "--public-key", type=Path, action="append", required=True,
        help="Ed25519 public key (PEM); repeat to accept several",
    )
    verify.add_argument("--json", action="store_true", help="print JSON on stdout")
    verify.set_defaults(func=run_verify)


def run_generate(args: argparse.Namespace) -> int:
    from trt_provision.errors import UsageError
    from trt_provision.trust import generate_keypair

    public = args.public_key or Path(f"{args.private_key}.pub")
    if public.resolve() == args.private_key.resolve():
        raise UsageError("--public-key must differ from PRIVATE_KEY")
    for path in (args.private_key, public):
        if path.is_dir():  # --force must never be the answer to a directory
            raise UsageError(f"key file is a directory: {path}; name a file to write")
        if path.exists() and not args.force:
            raise UsageError(f"key file already exists: {path} (use --force to replace it)")
    public_path, key = generate_keypair(args.private_key, args.public_key, overwrite=args.force)
    print(f"private key: {args.private_key} (keep it secret)")
    print(f"public key:  {public_path} (key id {key.key_id})")
    return 0


def run_sign(args: argparse.Namespace) -> int:
    from trt_provision.errors import ManifestError, UsageError
    from trt_provision.trust import sign_engine

    require_paths((args.key, "--key"), *((e, "ENGINE") for e in args.engines))
    _check_engine_paths(args.engines)

    for engine in args.engines:
        try:
            signed = sign_engine(engine, args.key)
        except ManifestError as exc:
            # The key file is the user's flag, not a manifest: name it as typed.
            if exc.context.get("path") == str(args.key):
                raise UsageError(f"--key: {exc.message}: {args.key}") from exc
            raise
        print(f"signed {signed}")
    return 0


def run_verify(args: argparse.Namespace) -> int:
    from trt_provision.errors import EngineGateError, ManifestError, UsageError
    from trt_provision.trust import load_public_key, verify_engine

    require_paths(*((p, "PUBLIC_KEY (--public-key)") for p in args.public_key))
    _check_engine_paths(args.engines)
    keys = []
    for path in args.public_key:
        try:
            keys.append(load_public_key(path))
        except ManifestError as exc:  # the flag's file, not a manifest
            raise UsageError(f"--public-key: {exc.message}: {path}") from exc
    rows: list[dict[str, Any]] = []
    for engine in args.engines:
        try:
            key_id = verify_engine(engine, keys)
            _check_engine_bytes(engine)
            rows.append({"engine": str(engine), "ok": True, "key_id": key_id})
        except EngineGateError as exc:
            rows.append({"engine": str(engine), "ok": False, "reason": str(exc)})
    if args.json:
        print_json({"results": rows})
    else:
        for row in rows:
            detail = f"key {row['key_id']}" if row["ok"] else row["reason"]
            print(f"{'OK ' if row['ok'] else 'BAD'}  {row['engine']}  ({detail})")
    return 0 if all(r["ok"] for r in rows) else 1


def _check_engine_paths(engines: list[Path]) -> None:
    """An empty ENGINE ("" reads as ".") or a directory names no engine file."""
    from trt_provision.errors import UsageError

    for engine in engines:
        if not engine.name or engine.is_dir():
            raise UsageError(
                f"ENGINE: expected an engine file, got a directory or an empty path: '{engine}'"
            )


def _check_engine_bytes(engine: Path) -> None:
    """The signature covers the metadata, which carries the engine's sha256: a valid
    signature vouches for the engine only when the engine's bytes hash to that value."""
    from trt_provision.errors import EngineGateError
    from trt_provision.integrity import read_metadata, sha256_file

    expected = read_metadata(engine)["sha256"]
    try:
        actual, _ = sha256_file(engine)
    except OSError as exc:
        raise EngineGateError(f"engine unreadable: {exc.strerror}", path=str(engine)) from exc
    if actual != expected:
        raise EngineGateError(
            "engine bytes do not match the signed metadata's sha256",
            path=str(engine), expected=expected, found=actual,
        )
