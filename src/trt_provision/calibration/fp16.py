"""FP16 graph conversion that keeps the model right, not merely loadable.

* Graph inputs and outputs keep their types (Casts are inserted at the boundary).
* Sensitive ops, pinned layers and nodes with subgraphs stay FP32.
* A node stays FP32 when one of its float weights, or (when observed on data) one of its
  float activations, lies beyond the FP16 range: converting it would produce inf.
  ``graph.fold_batchnorm`` runs first, so a Conv+BN with a huge running variance becomes a
  Conv with ordinary weights; a BN that cannot be folded is kept FP32 by the weight check.

Tensors produced by an FP16 node are renamed ``<name>__fp16``; an FP32 consumer or a graph
output gets a Cast back to the original name, so names seen outside never change.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.calibration.data import Batch
from trt_provision.calibration.graph import tensor_types
from trt_provision.errors import EngineBuildError
from trt_provision.types import FP16_KEPT_FP32_OPS

__all__ = [
    "DEFAULT_BLOCKED_OPS",
    "FP16_MAX",
    "BlockedNode",
    "Fp16Conversion",
    "convert_to_fp16",
    "observe_activation_extremes",
]

logger = logging.getLogger(__name__)

FP16_MAX = 65504.0
# Headroom: an activation at 90% of the FP16 limit on calibration data may exceed it in use.
FP16_SAFE_FRACTION = 0.9

# Ops whose FP16 results are unreliable (accumulations, exponentials, index maths) or that
# have no FP16 kernels (ONNX-ML); kept in FP32. The list lives in types so the TensorRT
# strategy records a pinned node of these types as kept FP32 too.
DEFAULT_BLOCKED_OPS: frozenset[str] = FP16_KEPT_FP32_OPS

# Inputs that must stay float32 whatever the node's compute type (by op, input index).
_FP32_ONLY_INPUTS: dict[str, frozenset[int]] = {
    "Resize": frozenset({1, 2}),
    "Upsample": frozenset({1}),
}

_FLOAT = 1  # onnx.TensorProto.FLOAT
_FLOAT16 = 10  # onnx.TensorProto.FLOAT16


@dataclass(frozen=True)
class BlockedNode:
    node: str
    op_type: str
    reason: str

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op_type": self.op_type, "reason": self.reason}


@dataclass(frozen=True)
class Fp16Conversion:
    converted: tuple[str, ...]
    blocked: tuple[BlockedNode, ...]
    casts_inserted: int

    def reason_for(self, node: str) -> str | None:
        return next((b.reason for b in self.blocked if b.node == node), None)


def observe_activation_extremes(
    model_path: Path, batches: Iterable[Batch]
) -> dict[str, tuple[float, float]]:
    """Min and max of every float tensor of the model (graph outputs included) on data."""
    import numpy as np
    import onnx
    import onnxruntime as ort

    model = onnx.load(str(model_path))
    model = onnx.shape_inference.infer_shapes(model)
    existing = {o.name for o in model.graph.output}
    inits = {t.name for t in model.graph.initializer}
    for vi in model.graph.value_info:
        if vi.type.tensor_type.elem_type == _FLOAT and vi.name not in existing | inits:
            model.graph.output.append(vi)
            existing.add(vi.name)
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 4  # fatal only: errors are raised and reported once, as ours
    try:
        session = ort.InferenceSession(
            model.SerializeToString(), options, providers=["CPUExecutionProvider"]
        )
    except Exception as exc:  # ORT raises its own Fail / InvalidGraph types
        raise EngineBuildError(
            f"cannot run the model to observe activations: {exc}", model=str(model_path)
        ) from exc
    names = [o.name for o in session.get_outputs()]
    extremes: dict[str, tuple[float, float]] = {}
    for batch in batches:
        for name, value in zip(names, session.run(None, dict(batch)), strict=True):
            array = np.asarray(value)
            if array.dtype.kind != "f" or array.size == 0:
                continue
            with np.errstate(invalid="ignore"):
                lo, hi = float(np.nanmin(array)), float(np.nanmax(array))
            old = extremes.get(name)
            extremes[name] = (lo, hi) if old is None else (min(old[0], lo), max(old[1], hi))
    return extremes


def convert_to_fp16(
    model: Any,
    *,
    block_nodes: Mapping[str, str] | None = None,
    only_nodes: Sequence[str] | None = None,
    block_op_types: Iterable[str] = DEFAULT_BLOCKED_OPS,
    activation_extremes: Mapping[str, tuple[float, float]] | None = None,
) -> tuple[Any, Fp16Conversion]:
    """Convert ``model`` (an onnx ModelProto, already preprocessed) to FP16 in place.

    ``block_nodes`` maps node name -> reason for nodes that must stay FP32 (pinned layers);
    ``only_nodes`` restricts conversion to those node names (mixed precision).
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    model = onnx.shape_inference.infer_shapes(model)
    graph = model.graph
    types = tensor_types(model)
    inits = {t.name: t for t in graph.initializer}
    blocked_ops = set(block_op_types)
    block_nodes = dict(block_nodes or {})
    allowed = set(only_nodes) if only_nodes is not None else None
    extremes = activation_extremes or {}
    limit = FP16_MAX * FP16_SAFE_FRACTION

    def float_inputs(node: Any) -> list[int]:
        skip = _FP32_ONLY_INPUTS.get(node.op_type, frozenset())
        return [i for i, n in enumerate(node.input)
                if n and i not in skip and types.get(n) == _FLOAT]

    def float_outputs(node: Any) -> list[int]:
        return [i for i, n in enumerate(node.output) if n and types.get(n) == _FLOAT]

    blocked: list[BlockedNode] = []
    fp16_nodes: set[int] = set()
    for index, node in enumerate(graph.node):
        if allowed is not None and node.name not in allowed:
            continue
        reason: str | None = None
        if node.name in block_nodes:
            reason = block_nodes[node.name]
        elif node.op_type in blocked_ops or node.domain not in ("", "ai.onnx"):
            reason = f"op {node.domain + '.' if node.domain else ''}{node.op_type} kept fp32"
        elif any(a.type in (5, 10) for a in node.attribute):  # GRAPH / GRAPHS
            reason = "node has a subgraph"
        elif any(n and n not in types for n in [*node.input, *node.output]):
            reason = "tensor type unknown"
        else:
            ins, outs = float_inputs(node), float_outputs(node)
            if not ins and not outs:
                continue  # nothing float: not a conversion candidate
            for i in ins:
                name = node.input[i]
                if name in inits:
                    values = numpy_helper.to_array(inits[name])
                    if values.size and float(np.max(np.abs(values))) > FP16_MAX:
                        reason = f"weight {name} beyond fp16 range"
                        break
                elif name in extremes and max(map(abs, extremes[name])) > limit:
                    reason = f"activation {name} beyond fp16 range"
                    break
            for i in outs if reason is None else ():
                name = node.output[i]
                if name in extremes and max(map(abs, extremes[name])) > limit:
                    reason = f"activation {name} beyond fp16 range"
                    break
        if reason is not None:
            blocked.append(BlockedNode(node.name, node.op_type, reason))
            continue
        fp16_nodes.add(index)

    # Who consumes each tensor, and at which precision.
    consumers: dict[str, list[tuple[int, int]]] = {}
    for index, node in enumerate(graph.node):
        for pos, name in enumerate(node.input):
            if name:
                consumers.setdefault(name, []).append((index, pos))
    graph_outputs = {o.name for o in graph.output}

    new_nodes: list[Any] = []
    casts = 0
    to_fp16: dict[str, str] = {}  # fp32 tensor -> its fp16 twin
    converted_inits: set[str] = set()
    renamed_outputs: dict[str, str] = {}  # fp16-produced tensor -> "<name>__fp16"
    for index in sorted(fp16_nodes):
        for pos in float_outputs(graph.node[index]):
            name = graph.node[index].output[pos]
            renamed_outputs[name] = f"{name}__fp16"

    def fp16_source(name: str) -> str:
        nonlocal casts
        if name in renamed_outputs:
            return renamed_outputs[name]
        if name in to_fp16:
            return to_fp16[name]
        if name in inits:
            users = consumers.get(name, [])
            only_fp16 = all(
                u in fp16_nodes and p in float_inputs(graph.node[u]) for u, p in users
            ) and name not in graph_outputs
            array = numpy_helper.to_array(inits[name]).astype(np.float16)
            if only_fp16:
                inits[name].CopyFrom(numpy_helper.from_array(array, name))
                converted_inits.add(name)
                to_fp16[name] = name
            else:
                twin = f"{name}__fp16"
                graph.initializer.append(numpy_helper.from_array(array, twin))
                to_fp16[name] = twin
            return to_fp16[name]
        twin = f"{name}__to_fp16"
        new_nodes.append(helper.make_node("Cast", [name], [twin], name=f"{twin}_cast",
                                          to=_FLOAT16))
        casts += 1
        to_fp16[name] = twin
        return twin

    rebuilt: list[Any] = []
    for index, node in enumerate(graph.node):
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        if index in fp16_nodes:
            for pos in float_inputs(node):
                clone.input[pos] = fp16_source(node.input[pos])
            for pos in float_outputs(node):
                clone.output[pos] = renamed_outputs[node.output[pos]]
        rebuilt.extend(new_nodes)
        new_nodes.clear()
        rebuilt.append(clone)
        if index in fp16_nodes:
            for pos in float_outputs(node):
                original = node.output[pos]
                fp32_users = [
                    u for u, p in consumers.get(original, [])
                    if u not in fp16_nodes or p not in float_inputs(graph.node[u])
                ]
                if fp32_users or original in graph_outputs:
                    rebuilt.append(helper.make_node(
                        "Cast", [renamed_outputs[original]], [original],
                        name=f"{original}__to_fp32_cast", to=_FLOAT,
                    ))
                    casts += 1
    # An fp32 consumer of an fp16-produced tensor keeps reading the original name, which
    # the Cast back to fp32 above now produces.
    fp16_names = [graph.node[i].name for i in sorted(fp16_nodes)]
    graph.ClearField("node")
    graph.node.extend(rebuilt)
    del graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
        onnx.checker.check_model(model)
    except Exception as exc:  # our rewrite produced an invalid graph: report, don't ship
        raise EngineBuildError(f"fp16 conversion produced an invalid graph: {exc}") from exc
    converted = tuple(fp16_names)
    result = Fp16Conversion(converted=converted, blocked=tuple(blocked), casts_inserted=casts)
    logger.info(
        "fp16 conversion: %d nodes converted, %d kept fp32",
        len(result.converted), len(result.blocked),
        extra={"event": "calibration.fp16.convert", "converted": len(result.converted),
               "blocked": len(result.blocked), "casts": casts},
    )
    return model, result
