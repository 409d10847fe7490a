"""``trt-provision export triton OUT_DIR MANIFEST``: a Triton model repository from the
cache: verified engines copied under ``<model>/1/`` and a ``config.pbtxt`` per model."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from trt_provision.cli._common import (
    add_settings_args,
    print_json,
    require_dir,
    require_paths,
    settings_from_args,
)

__all__ = ["register"]


def register(sub: Any) -> None:
    parser: argparse.ArgumentParser = sub.add_parser(
        "export", help="export cached engines (a Triton model repository)",
        description="Export a manifest's cached engines into another tool's layout.",
    )
    kinds = parser.add_subparsers(dest="export_kind", required=True, metavar="KIND")
    triton = kinds.add_parser(
        "triton",
        help="write a Triton model repository (config.pbtxt + engines) for MANIFEST",
        description=(
            "Write OUT_DIR/<model>/config.pbtxt and OUT_DIR/<model>/1/ for every model of "
            "MANIFEST from the engines in the cache (pull them first for other devices): "
            "TensorRT plans mapped per GPU compute capability (cc_model_filenames; no "
            "fallback plan), or the ONNX Runtime engine as model.onnx. Each engine passes "
            "the engine gate and is hashed again while it is copied."
        ),
    )
    triton.add_argument("out_dir", type=Path, help="model repository directory")
    triton.add_argument("manifest", type=Path, help="TOML manifest listing the models")
    add_settings_args(triton)
    triton.add_argument("--runtime-version", metavar="VERSION",
                        help="TensorRT version of the plans to export (when several are cached)")
    triton.add_argument("--force", action="store_true",
                        help="replace model directories that already exist in OUT_DIR")
    triton.add_argument("--json", action="store_true", help="print JSON on stdout")
    triton.set_defaults(func=run_triton)


def run_triton(args: argparse.Namespace) -> int:
    from trt_provision.compose import build_gate, wire
    from trt_provision.config import load_manifest
    from trt_provision.errors import ModelError, UsageError
    from trt_provision.export.triton import export_triton
    from trt_provision.identity import model_sha256

    require_paths((args.manifest, "MANIFEST"))
    if args.out_dir.exists() and not args.out_dir.is_dir():
        raise UsageError(f"OUT_DIR: not a directory: {args.out_dir}")
    manifest = load_manifest(args.manifest)
    settings = settings_from_args(args, manifest.settings)
    require_dir(Path(settings.cache_dir), "--cache-dir" if args.cache_dir else "cache directory")
    hashes: dict[str, str] = {}
    for backbone in manifest.backbones:
        try:
            hashes[backbone.name] = model_sha256(backbone.model_path)
        except ModelError as exc:
            raise UsageError(f"{backbone.name}: {exc.message}: {backbone.model_path}") from exc
    wired = wire(settings, use_remote=False)
    host = wired.runtime.runtime_target(manifest.backbones[0].build_config)
    from trt_provision.cli.report import expected_identity

    expected = {b.name: ident.filename for b in manifest.backbones
                if (ident := expected_identity(wired, b)) is not None}
    exported = export_triton(
        args.out_dir, manifest.backbones, cache_dir=settings.cache_dir,
        gate=build_gate(settings), host=host, model_hashes=hashes,
        runtime_version=args.runtime_version, replace=args.force, expected=expected,
    )
    if args.json:
        print_json({"repository": str(args.out_dir), "models": [m.to_dict() for m in exported]})
        return 0
    for model in exported:
        mapping = ", ".join(f"{cc}: {name}" for cc, name in model.cc_model_filenames)
        print(f"{model.name}: {model.platform}, max_batch_size {model.max_batch_size}, "
              f"{', '.join(model.files)}" + (f" ({mapping})" if mapping else ""))
        for why in model.skipped:
            print(f"  skipped {why}")
    print(f"wrote {len(exported)} model(s) to {args.out_dir}")
    return 0
