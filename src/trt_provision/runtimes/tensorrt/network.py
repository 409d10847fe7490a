"""Network population and precision: ONNX parsing, callbacks, pinned layers, evidence.

Two precision paths, chosen by what the loaded TensorRT offers (see ``_paths``):

* **weak** (TensorRT 10): FP16/INT8 builder flags; pinned layers are set to HALF with HALF
  outputs under OBEY_PRECISION_CONSTRAINTS (``strict_precision_constraints``) or
  PREFER_PRECISION_CONSTRAINTS (not strict: TensorRT may ignore a constraint it cannot meet).
* **strong** (TensorRT 10 optional, TensorRT 11 only): a STRONGLY_TYPED network; precision
  comes from the (Q/DQ- or cast-carrying) ONNX graph itself.

**Pinned** means one thing on both paths: in int8 and mixed builds a pinned layer computes
in FP16 (weak: layer precision HALF through the constraints; strong: the prepared graph has
the node in FP16 and does not quantize it); in fp16 builds it is FP16 like every other
layer. A layer is pinned when it comes from one of the model's own nodes (not a cast or
Q/DQ node a converter inserted, whatever its name) whose name contains a pinned keyword.
Either way every pinned layer gets an evidence record for the metadata sidecar.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.errors import EngineBuildError
from trt_provision.runtimes.tensorrt._paths import path_available, trt_path
from trt_provision.runtimes.tensorrt.onnx_graph import layer_node
from trt_provision.types import FP16_KEPT_FP32_OPS, BuildConfig, PrecisionMode

__all__ = [
    "LayerEvidence",
    "NetworkSource",
    "choose_precision_path",
    "network_signature",
]

log = logging.getLogger(__name__)

# Layer outputs of these types are indices or shapes: precision cannot apply to them.
_NON_FLOAT_TYPES = frozenset({"INT32", "INT64", "BOOL", "UINT8", "INT8", "INT4"})


@dataclass(frozen=True)
class NetworkSource:
    """A network built by code: ``build(network, trt)`` fills an empty network definition.

    TensorRT's Python API gives no uniform way to read weights back, so the caller states
    the digest of the weights the callback uses; it joins the structural signature.
    """

    name: str
    build: Callable[[Any, Any], None]
    weights_sha256: str = ""


@dataclass(frozen=True)
class LayerEvidence:
    """What happened to one layer matched by a pinned keyword."""

    layer: str
    keyword: str
    precision: str | None  # precision applied (or observed on the strong path)
    output_constraint: bool  # every output type constrained to the precision
    reason: str = ""
    # False for layers whose outputs are shapes or indices: precision has no meaning there.
    applicable: bool = True

    @property
    def applied(self) -> bool:
        return self.precision is not None and self.output_constraint

    def to_dict(self) -> dict[str, Any]:
        return {
            "layer": self.layer,
            "keyword": self.keyword,
            "precision": self.precision,
            "output_constraint": self.output_constraint,
            "applied": self.applied,
            "applicable": self.applicable,
            "reason": self.reason,
        }


def choose_precision_path(
    trt: Any, build_config: BuildConfig, *, implicit_int8: bool = False,
    prefer_strong: bool = False,
) -> str:
    """``"weak"`` or ``"strong"`` from the request and what this TensorRT offers.

    ``implicit_int8``: INT8 on the weak path goes through a calibrator (else through an
    explicitly quantized Q/DQ graph, which needs only the INT8 builder flag).
    ``prefer_strong``: a precision converter prepares (and judges) the FP16 or Q/DQ graph;
    unless ``strongly_typed`` says otherwise that graph is built strongly typed wherever the
    bindings have ``NetworkDefinitionCreationFlag.STRONGLY_TYPED`` (10.x included), so the
    engine computes in the types that were judged, not in what the FP16/INT8 flags let
    TensorRT pick.
    """
    weak = path_available(trt, "weak")
    strong = path_available(trt, "strong")
    needs_int8 = build_config.precision.needs_calibration
    if implicit_int8:
        weak_int8 = weak and path_available(trt, "weak_int8") and path_available(
            trt, "int8_calibrator"
        )
    else:
        weak_int8 = weak and path_available(trt, "weak_int8_flag")
    if build_config.strongly_typed is True:
        if not strong:
            raise EngineBuildError(
                "strongly typed build requested but this TensorRT has no STRONGLY_TYPED flag"
            )
        return "strong"
    if build_config.strongly_typed is False:
        if not weak or (needs_int8 and not weak_int8):
            raise EngineBuildError(
                "weakly typed build requested but this TensorRT has no weakly typed "
                "precision path (TensorRT 11 removed it); use a strongly typed model",
                precision=build_config.precision.value,
            )
        return "weak"
    if prefer_strong and strong and not (needs_int8 and implicit_int8):
        return "strong"
    if weak and (weak_int8 or not needs_int8):
        return "weak"
    if strong:
        return "strong"
    raise EngineBuildError("this TensorRT offers neither precision path")


def parse_onnx(trt: Any, network: Any, logger: Any, model_path: Path) -> None:
    """Fill ``network`` from an ONNX file; every parser error ends up in the exception."""
    parser = trt.OnnxParser(network, logger)
    try:
        ok = parser.parse_from_file(str(model_path))
    except Exception as exc:
        raise EngineBuildError(
            f"ONNX parser raised {type(exc).__name__}: {exc}", model=str(model_path)
        ) from exc
    if not ok:
        errors = []
        for i in range(parser.num_errors):
            parser_error = parser.get_error(i)
            errors.append(
                f"{parser_error.desc()} (node {parser_error.node()} "
                f"{parser_error.node_name()}:{parser_error.node_operator()})"
            )
        raise EngineBuildError(
            "TensorRT could not parse the ONNX model", model=str(model_path), errors=errors
        )


def _dims(shape: Any) -> list[int]:
    try:
        return [int(d) for d in shape]
    except TypeError:
        return []


def network_signature(network: Any, weights_sha256: str = "") -> str:
    """sha256 over inputs, layers (name, type, output types and shapes), outputs, weights."""
    doc: dict[str, Any] = {
        "inputs": [
            [tensor.name, str(tensor.dtype), _dims(tensor.shape)]
            for tensor in (network.get_input(i) for i in range(network.num_inputs))
        ],
        "outputs": [
            [tensor.name, str(tensor.dtype), _dims(tensor.shape)]
            for tensor in (network.get_output(i) for i in range(network.num_outputs))
        ],
        "layers": [],
        "weights": weights_sha256,
    }
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        outs = [layer.get_output(j) for j in range(layer.num_outputs)]
        doc["layers"].append(
            [layer.name, str(layer.type), [[str(t.dtype), _dims(t.shape)] for t in outs]]
        )
    canonical = json.dumps(doc, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def _matched_keyword(name: str, keywords: tuple[str, ...]) -> str | None:
    lowered = name.lower()
    return next((k for k in keywords if k in lowered), None)


# Type conversions, not computation: converters insert them around pinned nodes with names
# derived from those nodes, so their names say nothing about what is pinned.
_NOT_PINNABLE_OPS = frozenset({"Cast", "CastLike", "QuantizeLinear", "DequantizeLinear"})


@dataclass(frozen=True)
class ModelNodes:
    """The model's own ONNX nodes (name -> op type) and those reading dequantized tensors.

    ``nodes`` is None for a network built by code: every layer then is the model's own.
    """

    nodes: Mapping[str, str] | None = None
    quantized: frozenset[str] = frozenset()
    # Node -> why the prepared graph keeps it FP32 (the precision converter's own report).
    kept_fp32: Mapping[str, str] = dataclasses.field(default_factory=dict)

    def pinned_keyword(self, layer_name: str, keywords: tuple[str, ...]) -> str | None:
        if self.nodes is None:
            return _matched_keyword(layer_name, keywords)
        node = layer_node(layer_name, self.nodes)
        if node is None or self.nodes[node] in _NOT_PINNABLE_OPS:
            return None
        return _matched_keyword(node, keywords)

    def kept_fp32_reason(self, layer_name: str) -> str | None:
        """Why a pinned layer stays FP32: its op type is one the FP16 graph keeps FP32
        (``types.FP16_KEPT_FP32_OPS``: Exp, Log, Pow, Reduce*...), or the converter kept
        its node FP32 (values beyond the FP16 range). None when it can be FP16."""
        if self.nodes is None:
            return None
        node = layer_node(layer_name, self.nodes)
        if node is None:
            return None
        if self.nodes[node] in FP16_KEPT_FP32_OPS:
            return f"op {self.nodes[node]} kept fp32"
        return self.kept_fp32.get(node)

    def is_quantized(self, layer_name: str) -> bool:
        if self.nodes is None:
            return False
        node = layer_node(layer_name, self.nodes)
        return node is not None and node in self.quantized


def _pinning_applies(build_config: BuildConfig) -> bool:
    return build_config.precision is not PrecisionMode.FP32 and bool(
        build_config.fp16_pinned_keywords
    )


@trt_path("weak")
def apply_weak_precision(
    trt: Any, network: Any, config: Any, build_config: BuildConfig,
    own: ModelNodes | None = None,
) -> tuple[list[str], list[LayerEvidence]]:
    """Set builder flags and pin matched layers to HALF; return (flags, evidence)."""
    own = own or ModelNodes()
    flags: list[str] = []
    precision = build_config.precision
    if precision in (PrecisionMode.FP16, PrecisionMode.MIXED):
        config.set_flag(trt.BuilderFlag.FP16)
        flags.append("FP16")
    if precision.needs_calibration:
        config.set_flag(trt.BuilderFlag.INT8)
        flags.append("INT8")
        if precision is PrecisionMode.INT8:
            # Pinned layers still need an FP16 kernel to fall back on.
            config.set_flag(trt.BuilderFlag.FP16)
            flags.append("FP16")
    evidence: list[LayerEvidence] = []
    if not _pinning_applies(build_config):
        return flags, evidence
    half = trt.DataType.HALF
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        keyword = own.pinned_keyword(layer.name, build_config.fp16_pinned_keywords)
        if keyword is None:
            continue
        kept = own.kept_fp32_reason(layer.name)
        if kept is not None:
            # The strong path's FP16 graph keeps this node FP32; so does the weak path,
            # with a FLOAT constraint instead of HALF (else the FP16 flag may pick HALF).
            evidence.append(_keep_fp32(_pin_layer(layer, keyword, trt.DataType.FLOAT), kept))
            continue
        evidence.append(_pin_layer(layer, keyword, half))
    if any(e.applied for e in evidence):
        # OBEY fails the build when a constraint cannot be met; PREFER lets TensorRT fall
        # back (with a warning): what strict_precision_constraints=false asks for.
        if build_config.strict_precision_constraints:
            config.set_flag(trt.BuilderFlag.OBEY_PRECISION_CONSTRAINTS)
            flags.append("OBEY_PRECISION_CONSTRAINTS")
        else:
            config.set_flag(trt.BuilderFlag.PREFER_PRECISION_CONSTRAINTS)
            flags.append("PREFER_PRECISION_CONSTRAINTS")
    failed = [e for e in evidence if e.applicable and not e.applied]
    if failed:
        details = [f"{e.layer}: {e.reason}" for e in failed]
        if build_config.strict_precision_constraints:
            raise EngineBuildError(
                "pinned layers cannot be constrained to FP16 (strict_precision_constraints)",
                layers=details,
            )
        log.warning(
            "pinned layers left unconstrained",
            extra={"event": "trt.precision.unconstrained", "layers": details},
        )
    return flags, evidence


@trt_path("weak")
def _pin_layer(layer: Any, keyword: str, dtype: Any) -> LayerEvidence:
    out_types = [
        str(layer.get_output(j).dtype).rsplit(".", 1)[-1] for j in range(layer.num_outputs)
    ]
    non_float = [t for t in out_types if t in _NON_FLOAT_TYPES]
    if non_float:
        return LayerEvidence(
            layer.name, keyword, None, False,
            reason=f"not applicable: non-float outputs {non_float}", applicable=False,
        )
    layer.precision = dtype
    for j in range(layer.num_outputs):
        layer.set_output_type(j, dtype)
    precision_ok = bool(layer.precision_is_set) and layer.precision == dtype
    outputs_ok = all(layer.output_type_is_set(j) for j in range(layer.num_outputs))
    reason = "" if precision_ok and outputs_ok else "TensorRT did not accept the constraint"
    label = str(dtype).rsplit(".", 1)[-1]
    return LayerEvidence(
        layer.name, keyword, label if precision_ok else None, outputs_ok, reason=reason
    )


def _keep_fp32(evidence: LayerEvidence, reason: str) -> LayerEvidence:
    """A pinned layer kept FP32 on purpose: recorded with the reason, never a failure."""
    return dataclasses.replace(evidence, reason=f"kept FP32: {reason}", applicable=False)


def strong_precision_evidence(
    network: Any, build_config: BuildConfig, own: ModelNodes | None = None
) -> list[LayerEvidence]:
    """On a strongly typed network precision is the graph's: record what the layers carry.

    A pinned layer is in place when it carries FP16 and, in int8/mixed builds, its node does
    not read a dequantized tensor (it computes in FP16, not INT8).
    """
    own = own or ModelNodes()
    evidence: list[LayerEvidence] = []
    if not _pinning_applies(build_config):
        return evidence
    quantizing = build_config.precision.needs_calibration
    for i in range(network.num_layers):
        layer = network.get_layer(i)
        keyword = own.pinned_keyword(layer.name, build_config.fp16_pinned_keywords)
        if keyword is None:
            continue
        types = {
            str(layer.get_output(j).dtype).rsplit(".", 1)[-1] for j in range(layer.num_outputs)
        }
        kept = own.kept_fp32_reason(layer.name)
        if kept is not None:
            evidence.append(_keep_fp32(LayerEvidence(
                layer.name, keyword, ",".join(sorted(types)) or None, types == {"FLOAT"}),
                kept))
            continue
        applicable = not (types & _NON_FLOAT_TYPES)
        quantized = quantizing and own.is_quantized(layer.name)
        is_half = types == {"HALF"} and not quantized
        if is_half:
            reason = ""
        elif quantized:
            reason = "graph quantizes this node (its inputs are dequantized INT8)"
        else:
            reason = "graph does not carry FP16 for this layer"
        evidence.append(
            LayerEvidence(
                layer.name, keyword,
                "HALF" if types == {"HALF"} else ",".join(sorted(types)) or None,
                is_half, reason=reason, applicable=applicable,
            )
        )
    failed = [e for e in evidence if e.applicable and not e.applied]
    if failed and build_config.strict_precision_constraints:
        raise EngineBuildError(
            "strongly typed model does not carry FP16 on pinned layers "
            "(strict_precision_constraints)",
            layers=[f"{e.layer}: {e.reason}" for e in failed],
        )
    return evidence
