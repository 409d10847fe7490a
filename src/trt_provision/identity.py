"""Engine identity: model content hash, build-option digest and the filename schema.

Filename (fields joined by ``.``; versions written with ``_`` instead of ``.``)::

    <model>.<hash16>.<precision>.<target>.<platform>.<runtime>-<version>.<digest12>.engine
    resnet_router.3f9a1c2b4d5e6f70.int8.sm87.jp6_2.trt-10_3_0.a1b2c3d4e5f6.engine
    demo_cnn.0123456789abcdef.fp32.cpu-avx2.host.ortcpu-1_31_1.0a1b2c3d4e5f.engine

``target`` is ``smNN`` (engine tied to one compute capability), ``smNN+`` (TensorRT
AMPERE_PLUS hardware compatibility: any sm >= NN), ``smNNcc`` (SAME_COMPUTE_CAPABILITY) or
``cpu-<isa>`` for CPU strategies; a TensorRT engine built for a Jetson DLA core names it:
``sm87-dla0`` (DLA engines are never hardware-compatible, so ``-dlaN`` follows a plain
``smNN``). ``platform`` is ``jp<version>``, ``dgpu`` or ``host``.

Runtime versions are normalised once, by :func:`normalize_runtime_version` (``RuntimeTarget``
calls it), into ``<release>[+<local>]``: lowercase, the release part
``[0-9][0-9a-z]*(.[0-9a-z]+)*`` and an optional local tag ``[0-9a-z]+(.[0-9a-z]+)*`` after a
single ``+`` (PEP 440 local separators ``-`` and ``_`` become ``.``). A wheel such as
ONNX Runtime ``1.19.0+cpu`` therefore keeps its build flavour in the identity and is written
``ortcpu-1_19_0+cpu``; because a normalised version holds no ``_``, the filename maps back to
exactly the same version (``parse_engine_filename(engine_filename(i))`` round-trips). A version
that cannot be normalised raises :class:`~trt_provision.errors.InvalidNameError`.

The field checks and ``engine_filename`` live in :mod:`trt_provision.naming` (below
``types.py``, whose DTOs validate with them); this module re-exports them.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from trt_provision.errors import InvalidNameError, ManifestError, ModelError
from trt_provision.naming import (
    DIGEST_CHARS,
    ENGINE_SUFFIX,
    HASH_CHARS,
    MAX_MODEL_NAME,
    MAX_VERSION_CHARS,
    engine_filename,
    normalize_runtime_version,
    validate_identity_fields,
    validate_model_name,
)

if TYPE_CHECKING:
    from trt_provision.types import BuildConfig, EngineIdentity, RuntimeTarget

__all__ = [
    "DIGEST_CHARS",
    "ENGINE_SUFFIX",
    "HASH_CHARS",
    "MAX_MODEL_NAME",
    "MAX_VERSION_CHARS",
    "REFUSAL_SUFFIX",
    "ParsedEngineName",
    "build_option_digest",
    "compute_identity",
    "engine_filename",
    "judged_on_data",
    "metric_file_sha256",
    "model_sha256",
    "normalize_runtime_version",
    "parse_engine_filename",
    "validate_identity_fields",
    "validate_model_name",
]

# ``<engine filename>.refused.json``: the refusal of the engine this identity names, kept so
# the next run with the same inputs answers at once (never an engine sidecar: no engine).
REFUSAL_SUFFIX = ".refused.json"

_FILENAME_RE = re.compile(
    r"(?P<model>[A-Za-z0-9][A-Za-z0-9_-]{0,63})"
    r"\.(?P<hash>[0-9a-f]{16})"
    r"\.(?P<precision>fp32|fp16|int8|mixed|auto)"
    r"\.(?P<target>sm[0-9]{2,3}(?:(?:\+|cc)|-dla[0-9]{1,2})?|cpu-[a-z0-9]+)"
    r"\.(?P<platform>jp[0-9]+(?:_[0-9]+)*|dgpu|host)"
    r"\.(?P<runtime>[a-z][a-z0-9]*)"
    r"-(?P<version>[0-9][0-9a-z]*(?:_[0-9a-z]+)*(?:\+[0-9a-z]+(?:_[0-9a-z]+)*)?)"
    r"\.(?P<digest>[0-9a-f]{12})"
    r"\.engine"
)


@dataclass(frozen=True)
class ParsedEngineName:
    """The fields an engine filename carries (the model hash is its 16-char prefix)."""

    model_name: str
    model_hash: str
    precision: str
    target: str
    platform: str
    runtime: str
    runtime_version: str
    options_digest: str

    @property
    def jetpack(self) -> str | None:
        return self.platform[2:] if self.platform.startswith("jp") else None

    @classmethod
    def of(cls, identity: EngineIdentity) -> ParsedEngineName:
        return cls(
            model_name=identity.model_name,
            model_hash=identity.model_sha256[:HASH_CHARS],
            precision=identity.precision.value,
            target=identity.target,
            platform=identity.platform,
            runtime=identity.runtime,
            runtime_version=identity.runtime_version,
            options_digest=identity.options_digest,
        )

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def parse_engine_filename(filename: str) -> ParsedEngineName:
    """Parse an engine filename back into its fields; raise InvalidNameError if malformed."""
    match = _FILENAME_RE.fullmatch(filename)
    if match is None or ".." in match.group("model"):
        raise InvalidNameError("not a trt-provision engine filename", filename=repr(filename))
    return ParsedEngineName(
        model_name=match.group("model"),
        model_hash=match.group("hash"),
        precision=match.group("precision"),
        target=match.group("target"),
        platform=match.group("platform").replace("_", "."),
        runtime=match.group("runtime"),
        runtime_version=match.group("version").replace("_", "."),
        options_digest=match.group("digest"),
    )


# ---------------------------------------------------------------- model content hash


def _tensors_with_external_data(graph: Any) -> Iterator[Any]:
    yield from graph.initializer
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("t"):
                yield attr.t
            yield from attr.tensors
            if attr.HasField("g"):
                yield from _tensors_with_external_data(attr.g)
            for sub in attr.graphs:
                yield from _tensors_with_external_data(sub)


def model_sha256(model_path: Path, *, parse: bool = True) -> str:
    """sha256 over the ONNX bytes and, in a fixed order, every external-data file it uses.

    ``parse=False`` parses the model (importing onnx, most of a cache hit's start-up) only
    where its bytes may name an external-data file: the key ``location`` occurs in them.
    Elsewhere the hash is the same, but bytes that are not ONNX at all are not refused here:
    the caller parses the model before anything is built from it.
    """
    import hashlib

    model_path = Path(model_path)
    if not model_path.is_file():
        raise ModelError("ONNX model not found", path=str(model_path))
    if not parse:
        digest = hashlib.sha256()
        if not _hash_file_finding(digest, model_path, b"location"):
            return digest.hexdigest()
    import onnx  # declared dependency; imported here to keep `import trt_provision` light

    try:
        proto = onnx.load(str(model_path), load_external_data=False)
    except Exception as exc:  # onnx raises DecodeError, OSError, ValueError...
        raise ModelError(
            f"cannot parse ONNX model: {type(exc).__name__}: {exc}", path=str(model_path)
        ) from exc
    locations: set[str] = set()
    for tensor in _tensors_with_external_data(proto.graph):
        if tensor.data_location == onnx.TensorProto.EXTERNAL:
            for kv in tensor.external_data:
                if kv.key == "location":
                    locations.add(kv.value)
    # realpath, not Path.resolve: a symlink loop must not raise RuntimeError.
    base = Path(os.path.realpath(model_path.parent))
    digest = hashlib.sha256()
    _hash_file(digest, model_path)
    for location in sorted(locations):
        ext = Path(os.path.realpath(model_path.parent / location))
        if base not in ext.parents:
            raise ModelError(
                "external data location escapes the model directory",
                path=str(model_path),
                location=location,
            )
        if not ext.is_file():
            raise ModelError(
                "external data file is missing", path=str(model_path), location=location
            )
        digest.update(b"\x00external:" + location.encode() + b"\x00")
        _hash_file(digest, ext)
    return digest.hexdigest()


def _hash_file_finding(digest: Any, path: Path, needle: bytes) -> bool:
    """Hash the file into ``digest``; whether ``needle`` occurs in its bytes."""
    found, tail = False, b""
    try:
        with open(path, "rb") as fh:
            while chunk := fh.read(1 << 20):
                digest.update(chunk)
                found = found or needle in tail + chunk
                tail = chunk[-len(needle) + 1:]
    except OSError as exc:
        raise ModelError(f"cannot read model file: {exc.strerror}", path=str(path)) from exc
    return found


def _hash_file(digest: Any, path: Path) -> None:
    from trt_provision.integrity import update_from_file

    try:
        update_from_file(digest, path)
    except OSError as exc:
        raise ModelError(f"cannot read model file: {exc.strerror}", path=str(path)) from exc


# ---------------------------------------------------------------- build options

# A metric script is a small Python file; the cap keeps hashing a wrong path bounded.
MAX_METRIC_BYTES = 4 << 20


def metric_file_sha256(spec: str) -> str:
    """sha256 of the metric script of ``file.py:function``, read (never run) for the engine
    identity, so an edited metric rebuilds. A missing or oversized file, or one that is not
    a regular file (a FIFO, a device), is a ManifestError naming it."""
    import hashlib

    file_part, sep, func_name = spec.partition(".py:")
    if not sep or not func_name:
        raise ManifestError(f"accuracy_metric must be 'file.py:function', got {spec!r}",
                            key="accuracy_metric")
    from trt_provision._fs import read_named_file

    path = Path(file_part + ".py")
    try:
        # Bounded and never blocking: a FIFO or /dev/zero named as the script is refused.
        blob = read_named_file(path, MAX_METRIC_BYTES, what="accuracy metric script",
                               error=ManifestError)
    except ManifestError as exc:
        raise ManifestError(exc.message, key="accuracy_metric", **exc.context) from exc
    return hashlib.sha256(blob).hexdigest()



def judged_on_data(config: BuildConfig) -> bool:
    """Whether the engine's identity carries its data's key (the calibration key): a
    calibrated precision, or fp16 judged on data - an fp16 engine judged on one dataset is
    not the verdict on another, nor a smoke-tested one."""
    spec = config.calibration
    return config.precision.needs_calibration or (
        config.precision.value == "fp16" and spec is not None and spec.source is not None)


def build_option_payload(
    config: BuildConfig,
    *,
    calibration_key: str | None = None,
    runtime_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The canonical dict of every option that changes the engine bytes or its acceptance.

    The accuracy thresholds enter only when set, so engines built without a gate keep the
    digest they always had.
    """
    payload: dict[str, Any] = {
        "precision": config.precision.value,
        "workspace_mib": config.workspace_mib,
        "profiles": [p.to_dict() for p in sorted(config.profiles, key=lambda p: p.input_name)],
        "hardware_compatibility": config.hardware_compatibility.value,
        "builder_optimization_level": config.builder_optimization_level,
        "plugins": sorted([p.name, p.version, p.namespace, p.required] for p in config.plugins),
        "fp16_pinned_keywords": sorted(set(config.fp16_pinned_keywords))
        if config.precision.needs_calibration or config.precision.value == "fp16"
        else [],
        "strict_precision_constraints": config.strict_precision_constraints,
        "strongly_typed": config.strongly_typed,
        "excluded_op_types": sorted(set(config.excluded_op_types)),
        "calibration_key": calibration_key,
        "runtime_options": dict(sorted((runtime_options or {}).items())),
    }
    # An engine is only valid under the accuracy gate it passed: tightening a threshold must
    # not reuse an engine accepted under the looser one.
    if config.min_cosine is not None or config.max_rel_error is not None:
        payload["accuracy_gate"] = {
            "min_cosine": config.min_cosine,
            "max_rel_error": config.max_rel_error,
        }
    # Later gate options enter only when set (earlier digests stay as they were); an engine
    # published under allow_inaccurate is never reused by a build that did not allow it.
    extra_gate: dict[str, Any] = {
        k: v for k, v in (
            ("min_top1_agreement", config.min_top1_agreement),
            ("accuracy_metric", config.accuracy_metric),
            ("allow_inaccurate", config.allow_inaccurate or None),
        ) if v is not None
    }
    if config.output_kinds:  # a kind changes how an output is judged, hence the verdict
        extra_gate["output_kinds"] = dict(config.output_kinds)
    if config.precision.needs_calibration or (
            config.precision.value == "fp16" and config.calibration is not None
            and config.calibration.source is not None):
        # Judged per sample with a confidence bound (_docs/calibration.md): an engine accepted
        # on a handful of samples under the earlier rule is not reused.
        extra_gate["evidence"] = "per-sample-wilson95/1"
    if config.accuracy_metric is not None:
        # The script's bytes, not only its name: an edited metric judges differently.
        extra_gate["accuracy_metric_sha256"] = metric_file_sha256(config.accuracy_metric)
    if extra_gate:
        payload.setdefault("accuracy_gate", {}).update(extra_gate)
    # A strategy that builds without a judged graph (TensorRT's weakly typed FP16 flag) says
    # so: such an engine claims no gate, whatever thresholds the config carries.
    if (runtime_options or {}).get("accuracy_gate") == "not run":
        payload.pop("accuracy_gate", None)
    # Like the gate, these enter only when set: engines built without them keep their digest.
    if config.tf32:
        payload["tf32"] = True  # an fp32 engine that may compute in TF32 is another engine
    if config.dla_core is not None:
        payload["dla"] = {"core": config.dla_core, "gpu_fallback": config.gpu_fallback}
    return payload


def build_option_digest(
    config: BuildConfig,
    *,
    calibration_key: str | None = None,
    runtime_options: Mapping[str, Any] | None = None,
) -> str:
    import hashlib
    import json

    payload = build_option_payload(
        config, calibration_key=calibration_key, runtime_options=runtime_options
    )
    canonical = json.dumps(payload, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()[:DIGEST_CHARS]


def compute_identity(
    *,
    model_name: str,
    model_hash: str,
    config: BuildConfig,
    target: RuntimeTarget,
    calibration_key: str | None = None,
    runtime_options: Mapping[str, Any] | None = None,
) -> EngineIdentity:
    from trt_provision.types import EngineIdentity

    return EngineIdentity(
        model_name=model_name,
        model_sha256=model_hash,
        precision=config.precision,
        runtime=target.runtime,
        runtime_version=target.runtime_version,
        target=target.target,
        platform=target.platform,
        options_digest=build_option_digest(
            config, calibration_key=calibration_key,
            runtime_options={**dict(target.build_options), **(runtime_options or {})},
        ),
    )
