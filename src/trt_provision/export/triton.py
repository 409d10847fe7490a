"""Export a manifest's cached engines as a Triton Inference Server model repository.

For each model::

    OUT_DIR/<model>/config.pbtxt
    OUT_DIR/<model>/1/model.sm87.plan      (TensorRT: one plan per GPU compute capability)
    OUT_DIR/<model>/1/model.onnx           (ONNX Runtime engines: the optimized ONNX graph)

A TensorRT plan runs only on the compute capability it was built for, so the config maps
each one explicitly (``cc_model_filenames { key: "8.7" value: "model.sm87.plan" }``) and no
``model.plan`` is written: a GPU that no plan was built for fails to load the model instead
of falling back to a plan for another GPU. A hardware-compatible plan (``sm80+``) is mapped
to every known compute capability from its own up that has no plan of its own.

Each engine passes the engine gate first (sidecars, sha256, signature under the trust
policy) and is hashed again while it is copied; a model is written into a temp directory
and renamed into place whole, so a failed export leaves no half model behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.errors import EngineGateError, StoreError
from trt_provision.identity import HASH_CHARS, ParsedEngineName
from trt_provision.seams import EngineGate
from trt_provision.stores.maintenance import list_engines
from trt_provision.types import BackboneSpec, RuntimeTarget

__all__ = [
    "ExportedModel",
    "TensorSpec",
    "export_triton",
    "model_config_text",
    "triton_dtype",
]

log = logging.getLogger(__name__)

VERSION_DIR = "1"
# Compute capabilities a hardware-compatible (Ampere and later) plan is listed for.
KNOWN_CCS = ("8.0", "8.6", "8.7", "8.9", "9.0", "10.0", "10.3", "11.0", "12.0", "12.1")

_DTYPES = {
    "float32": "TYPE_FP32", "float": "TYPE_FP32", "float16": "TYPE_FP16",
    "bfloat16": "TYPE_BF16", "float64": "TYPE_FP64", "double": "TYPE_FP64",
    "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32", "int64": "TYPE_INT64",
    "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "bool": "TYPE_BOOL", "string": "TYPE_STRING",
}


def triton_dtype(name: str) -> str:
    """Triton's ``DataType`` of a numpy or ONNX type name (``float32``, ``tensor(float)``)."""
    key = name.removeprefix("tensor(").removesuffix(")").lower()
    try:
        return _DTYPES[key]
    except KeyError:
        raise StoreError("tensor type has no Triton data type", found=name[:60]) from None


@dataclass(frozen=True)
class TensorSpec:
    name: str
    dtype: str  # Triton DataType, e.g. TYPE_FP32
    dims: tuple[int, ...]  # -1 for a dynamic dimension


@dataclass(frozen=True)
class ExportedModel:
    name: str
    platform: str
    max_batch_size: int
    files: tuple[str, ...]  # in the version directory
    cc_model_filenames: tuple[tuple[str, str], ...]
    skipped: tuple[str, ...]  # engines left out, with why

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "platform": self.platform,
                "max_batch_size": self.max_batch_size, "files": list(self.files),
                "cc_model_filenames": dict(self.cc_model_filenames),
                "skipped": list(self.skipped)}


# ------------------------------------------------------------------ config.pbtxt


def _pb_string(text: str) -> str:
    """A protobuf text-format string literal (any byte escaped that could end or bend it)."""
    out = []
    for byte in text.encode("utf-8"):
        char = chr(byte)
        if char in "\"\\'":
            out.append("\\" + char)
        elif 0x20 <= byte < 0x7F:
            out.append(char)
        else:
            out.append(f"\\{byte:03o}")
    return '"' + "".join(out) + '"'


def _tensor_block(kind: str, tensors: Sequence[TensorSpec]) -> list[str]:
    lines = [f"{kind} ["]
    for i, t in enumerate(tensors):
        dims = ", ".join(str(d) for d in t.dims)
        lines += [
            "  {",
            f"    name: {_pb_string(t.name)}",
            f"    data_type: {t.dtype}",
            f"    dims: [ {dims} ]",
            "  }" + ("," if i < len(tensors) - 1 else ""),
        ]
    lines.append("]")
    return lines


def model_config_text(
    name: str,
    platform: str,
    max_batch_size: int,
    inputs: Sequence[TensorSpec],
    outputs: Sequence[TensorSpec],
    cc_model_filenames: Sequence[tuple[str, str]] = (),
    default_model_filename: str | None = None,
) -> str:
    lines = [
        "# Written by trt-provision export triton.",
        f"name: {_pb_string(name)}",
        f"platform: {_pb_string(platform)}",
        f"max_batch_size: {max_batch_size}",
        *_tensor_block("input", inputs),
        *_tensor_block("output", outputs),
    ]
    if default_model_filename is not None:
        lines.append(f"default_model_filename: {_pb_string(default_model_filename)}")
    for cc, filename in cc_model_filenames:
        lines.append(f"cc_model_filenames {{ key: {_pb_string(cc)} value: "
                     f"{_pb_string(filename)} }}")
    return "\n".join(lines) + "\n"


# ------------------------------------------------------------------ shapes and batching


def _io_from_metadata(metadata: Mapping[str, Any]) -> tuple[list[Any], list[Any]] | None:
    io = metadata.get("io")
    if not isinstance(io, Mapping):
        return None
    found: list[list[Any]] = []
    for kind in ("inputs", "outputs"):
        items = io.get(kind)
        if not isinstance(items, list) or not items:
            return None
        tensors = []
        for item in items:
            if not (isinstance(item, Mapping) and isinstance(item.get("name"), str)
                    and isinstance(item.get("type"), str)
                    and isinstance(item.get("shape"), list)):
                return None
            tensors.append((item["name"], item["type"], list(item["shape"])))
        found.append(tensors)
    return found[0], found[1]


def _io_from_model(model_path: Path) -> tuple[list[Any], list[Any]]:
    from trt_provision.model_info import describe_model

    info = describe_model(model_path)
    for tensor in (*info.inputs, *info.outputs):
        if tensor.shape is None:
            raise StoreError("model tensor has no declared shape; Triton needs its rank",
                             tensor=tensor.name, model=str(model_path))
    return ([(t.name, t.dtype, list(t.shape or ())) for t in info.inputs],
            [(t.name, t.dtype, list(t.shape or ())) for t in info.outputs])


def _dims(shape: Sequence[Any]) -> tuple[int, ...]:
    return tuple(d if isinstance(d, int) and not isinstance(d, bool) and d > 0 else -1
                 for d in shape)


def batching(
    inputs: Sequence[Any], outputs: Sequence[Any], profiles: Mapping[str, tuple[int, ...]],
) -> int:
    """``max_batch_size`` for Triton: N when every input and output has a dynamic first
    dimension and every input's profile runs it from 1 to the same N; else 0 (Triton then
    passes the full shape, batch dimension included, with -1 for dynamic dimensions)."""
    tensors = [*inputs, *outputs]
    if not tensors or any(not shape or _dims(shape[:1]) != (-1,) for _, _, shape in tensors):
        return 0
    batch: set[int] = set()
    for name, _, _ in inputs:
        mins = profiles.get(name + ":min")
        maxs = profiles.get(name + ":max")
        if not mins or not maxs or mins[0] != 1:
            return 0
        batch.add(maxs[0])
    return batch.pop() if len(batch) == 1 else 0


def _profile_map(backbone: BackboneSpec) -> dict[str, tuple[int, ...]]:
    out: dict[str, tuple[int, ...]] = {}
    for p in backbone.build_config.profiles:
        out[p.input_name + ":min"] = tuple(p.min_shape)
        out[p.input_name + ":max"] = tuple(p.max_shape)
    return out


# ------------------------------------------------------------------ choosing engines


def _cc_of(target: str) -> str | None:
    """``sm87`` → ``8.7``, ``sm120`` → ``12.0`` (None for anything that is not a GPU)."""
    digits = target[2:].removesuffix("+").removesuffix("cc")
    if not target.startswith("sm") or not digits.isdigit() or len(digits) < 2:
        return None
    return f"{int(digits[:-1])}.{digits[-1]}"


def _cc_tuple(cc: str) -> tuple[int, int]:
    major, minor = cc.split(".")
    return int(major), int(minor)


@dataclass(frozen=True)
class _Candidate:
    path: Path
    parsed: ParsedEngineName


def _pick(
    model: str, engines: list[_Candidate], runtime_version: str | None, host: RuntimeTarget,
    expected: str | None = None,
) -> tuple[str, list[_Candidate], list[str]]:
    """(platform, engines to export, skipped with why) for one model."""
    skipped: list[str] = []
    trt = [e for e in engines if e.parsed.runtime == "trt"]
    if runtime_version is not None:
        for e in trt:
            if e.parsed.runtime_version != runtime_version:
                skipped.append(f"{e.path.name}: TensorRT {e.parsed.runtime_version}, not "
                               f"{runtime_version}")
        trt = [e for e in trt if e.parsed.runtime_version == runtime_version]
    if trt:
        versions = sorted({e.parsed.runtime_version for e in trt})
        if len(versions) > 1:
            raise StoreError(
                "engines of more than one TensorRT version: a plan loads only in the "
                "TensorRT it was built with, so pick the one your Triton server runs",
                model=model, found=", ".join(versions),
                fix="pass --runtime-version " + versions[-1],
            )
        for e in trt:
            if "-dla" in e.parsed.target:
                skipped.append(f"{e.path.name}: a DLA plan (Triton selects plans by compute "
                               "capability only)")
        # One plan per target: the newest build (others were built with other options).
        newest: dict[str, _Candidate] = {}
        for e in sorted(trt, key=lambda e: e.path.stat().st_mtime):
            if "-dla" not in e.parsed.target:
                newest[e.parsed.target] = e
        chosen = list(newest.values())
        skipped += [f"{e.path.name}: a newer plan for {e.parsed.target} is exported"
                    for e in trt if "-dla" not in e.parsed.target and e not in chosen]
        if chosen:
            return "tensorrt_plan", chosen, skipped
    ort = [e for e in engines if e.parsed.runtime.startswith("ort")]
    if not ort:
        raise StoreError("no exportable engine of this model in the cache", model=model,
                         fix="provision (or pull) it first")
    # An ONNX Runtime engine is an optimized graph for one CPU or GPU: the one this host
    # would provision, else this host's newest, else the only target's newest.
    exact = [e for e in ort if e.path.name == expected]
    mine = exact or [e for e in ort if (e.parsed.runtime, e.parsed.target) == (host.runtime,
                                                                               host.target)]
    if not mine and len({(e.parsed.runtime, e.parsed.target) for e in ort}) > 1:
        raise StoreError(
            "ONNX Runtime engines for several targets and none for this host's",
            model=model, found=", ".join(sorted({e.parsed.target for e in ort})),
        )
    chosen = sorted(mine or ort, key=lambda e: e.path.stat().st_mtime)[-1:]
    skipped += [f"{e.path.name}: another ONNX Runtime engine of this model"
                for e in ort if e not in chosen]
    return "onnxruntime_onnx", chosen, skipped


def _copy_verified(src: Path, dest: Path, expected: str) -> None:
    """Copy ``src`` to ``dest`` hashing the bytes as they go; StoreError on a mismatch."""
    digest = hashlib.sha256()
    with open(src, "rb") as fin, open(dest, "xb") as fout:
        while chunk := fin.read(1 << 20):
            digest.update(chunk)
            fout.write(chunk)
        fout.flush()
        os.fsync(fout.fileno())
    if digest.hexdigest() != expected:
        raise StoreError("engine changed while it was exported: sha256 mismatch",
                         path=str(src), expected=expected, found=digest.hexdigest())


def export_triton(
    out_dir: Path,
    backbones: Sequence[BackboneSpec],
    *,
    cache_dir: Path,
    gate: EngineGate,
    host: RuntimeTarget,
    model_hashes: Mapping[str, str],
    runtime_version: str | None = None,
    replace: bool = False,
    expected: Mapping[str, str] | None = None,
) -> list[ExportedModel]:
    """Write one Triton model directory per backbone; see the module docstring.
    ``expected``: model name → the engine filename this host would provision."""
    out_dir = Path(out_dir)
    by_model: dict[str, list[_Candidate]] = {}
    for cached in list_engines(Path(cache_dir)):
        p = cached.parsed
        digest = model_hashes.get(p.model_name)
        if digest is None or p.model_hash != digest[:HASH_CHARS]:
            continue
        by_model.setdefault(p.model_name, []).append(_Candidate(cached.path, p))
    plans = []
    for backbone in backbones:
        precision = backbone.build_config.precision.value
        mine = [e for e in by_model.get(backbone.name, []) if e.parsed.precision == precision]
        platform, chosen, skipped = _pick(backbone.name, mine, runtime_version, host,
                                          (expected or {}).get(backbone.name))
        final = out_dir / backbone.name
        if os.path.lexists(final) and not replace:
            raise StoreError("model directory already exists in the repository",
                             path=str(final), fix="pass --force to replace it")
        plans.append((backbone, platform, chosen, skipped, final))
    out_dir.mkdir(parents=True, exist_ok=True)
    return [_write_model(out_dir, *plan, gate=gate) for plan in plans]


def _write_model(
    out_dir: Path, backbone: BackboneSpec, platform: str, chosen: list[_Candidate],
    skipped: list[str], final: Path, *, gate: EngineGate,
) -> ExportedModel:
    work = Path(tempfile.mkdtemp(prefix=f".tmp-{backbone.name}-", dir=out_dir))
    try:
        version = work / VERSION_DIR
        version.mkdir()
        files: list[str] = []
        ccs: dict[str, str] = {}
        compatible: list[tuple[str, str]] = []  # (from cc, file) of sm80+ plans
        io: tuple[list[Any], list[Any]] | None = None
        for engine in chosen:
            p = engine.parsed
            try:
                entry = gate.validate(engine.path, RuntimeTarget(
                    p.runtime, p.runtime_version, p.target, p.platform))
            except EngineGateError as exc:
                raise StoreError(f"engine not exported: {exc.message}",
                                 path=str(engine.path)) from exc
            metadata = entry.extras.get("metadata") or {}
            io = io or _io_from_metadata(metadata)
            if platform == "onnxruntime_onnx":
                filename = "model.onnx"
            else:
                filename = f"model.{p.target.removesuffix('+').removesuffix('cc')}.plan"
                cc = _cc_of(p.target)
                if cc is None:
                    skipped.append(f"{engine.path.name}: target {p.target} is not a GPU")
                    continue
                if p.target.endswith("+"):
                    compatible.append((cc, filename))
                else:
                    ccs[cc] = filename
            _copy_verified(engine.path, version / filename, entry.sha256)
            files.append(filename)
        for low, filename in compatible:
            for cc in KNOWN_CCS:
                if _cc_tuple(cc) >= _cc_tuple(low):
                    ccs.setdefault(cc, filename)
        if io is None:
            io = _io_from_model(backbone.model_path)
        inputs, outputs = io
        max_batch = batching(inputs, outputs, _profile_map(backbone))

        def specs(tensors: list[Any]) -> list[TensorSpec]:
            return [TensorSpec(name, triton_dtype(dtype),
                               _dims(shape[1:] if max_batch else shape))
                    for name, dtype, shape in tensors]

        cc_items = tuple(sorted(ccs.items(), key=lambda kv: _cc_tuple(kv[0])))
        text = model_config_text(
            backbone.name, platform, max_batch, specs(inputs), specs(outputs), cc_items,
        )
        (work / "config.pbtxt").write_text(text, encoding="ascii")
        if os.path.lexists(final):
            shutil.rmtree(final)
        os.replace(work, final)
    except BaseException:
        with contextlib.suppress(OSError):
            shutil.rmtree(work)
        raise
    log.info("exported %s (%s, %d file(s)) to %s", backbone.name, platform, len(files), final,
             extra={"event": "export.triton.model", "model": backbone.name})
    return ExportedModel(backbone.name, platform, max_batch, tuple(files), cc_items,
                         tuple(skipped))
