"""Small ONNX graph rewrites shared by the Q/DQ and FP16 paths.

* Constant nodes become initializers (quantizers and converters only see initializers as
  weights), keeping tensor names so calibration ranges still apply.
* BatchNormalization after a Conv is folded into the Conv (TensorRT fuses it anyway; folding
  first keeps a huge running variance out of FP16 and gives the quantizer final weights).
* Pinned-layer matching: node names containing a pinned keyword (case-insensitive).
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.errors import ModelError

__all__ = [
    "PinnedNode",
    "constants_to_initializers",
    "fold_batchnorm",
    "load_model",
    "match_pinned_nodes",
    "preprocess_model",
    "save_model",
    "tensor_types",
]

logger = logging.getLogger(__name__)

MIN_OPSET = 13


@dataclass(frozen=True)
class PinnedNode:
    """A node kept out of reduced precision, and why."""

    node: str
    op_type: str
    keyword: str  # the matched keyword, or "op:<type>" for an excluded op type

    def to_dict(self) -> dict[str, str]:
        return {"node": self.node, "op_type": self.op_type, "keyword": self.keyword}


def load_model(path: Path) -> Any:
    import onnx

    try:
        return onnx.load(str(path))
    except Exception as exc:  # DecodeError, OSError, ValueError...
        raise ModelError(
            f"cannot load ONNX model: {type(exc).__name__}: {exc}", path=str(path)
        ) from exc


def save_model(model: Any, path: Path) -> Path:
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    # Large models need external data; keep it next to the file under a fixed name.
    large = model.ByteSize() > (1 << 31) - (1 << 26)
    onnx.save(model, str(path), save_as_external_data=large,
              location=path.name + ".data" if large else None)
    return path


def match_pinned_nodes(
    model: Any, keywords: Sequence[str], excluded_op_types: Sequence[str] = ()
) -> tuple[PinnedNode, ...]:
    """Nodes whose name contains a pinned keyword, or whose op type is excluded."""
    lowered = [k.lower() for k in keywords]
    excluded = set(excluded_op_types)
    found: list[PinnedNode] = []
    for node in model.graph.node:
        name = node.name.lower()
        hit = next((k for k in lowered if k in name), None)
        if hit is not None:
            found.append(PinnedNode(node.name, node.op_type, hit))
        elif node.op_type in excluded:
            found.append(PinnedNode(node.name, node.op_type, f"op:{node.op_type}"))
    return tuple(found)


def ensure_node_names(model: Any) -> None:
    """Give unnamed nodes stable names: exclusion lists and evidence are by node name."""
    used = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            candidate = f"{node.op_type}_{i}"
            while candidate in used:
                candidate += "_"
            node.name = candidate
            used.add(candidate)


def _replace_nodes(graph: Any, nodes: Sequence[Any]) -> None:
    import onnx

    copies = []
    for node in nodes:  # copy first: clearing the field would detach the originals
        clone = onnx.NodeProto()
        clone.CopyFrom(node)
        copies.append(clone)
    graph.ClearField("node")
    graph.node.extend(copies)


def tensor_types(model: Any) -> dict[str, int]:
    """ONNX element type of every tensor whose type is known (inputs, value_info, inits)."""
    types: dict[str, int] = {}
    for vi in [*model.graph.input, *model.graph.output, *model.graph.value_info]:
        if vi.type.HasField("tensor_type") and vi.type.tensor_type.elem_type:
            types[vi.name] = vi.type.tensor_type.elem_type
    for t in model.graph.initializer:
        types[t.name] = t.data_type
    return types


def constants_to_initializers(model: Any) -> int:
    """Move top-level Constant nodes with a tensor value into initializers; returns count."""
    from onnx import helper, numpy_helper

    keep = []
    moved = 0
    for node in model.graph.node:
        if node.op_type != "Constant" or len(node.attribute) != 1:
            keep.append(node)
            continue
        attr = node.attribute[0]
        tensor = None
        if attr.name == "value":
            tensor = attr.t
        elif attr.name in ("value_float", "value_floats", "value_int", "value_ints"):
            import numpy as np

            value = helper.get_attribute_value(attr)
            dtype = np.float32 if "float" in attr.name else np.int64
            tensor = numpy_helper.from_array(np.asarray(value, dtype=dtype))
        if tensor is None:
            keep.append(node)
            continue
        tensor.name = node.output[0]
        model.graph.initializer.append(tensor)
        moved += 1
    if moved:
        _replace_nodes(model.graph, keep)
    return moved


def fold_batchnorm(model: Any) -> int:
    """Fold Conv -> BatchNormalization pairs with constant parameters; returns count."""
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    consumers: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            consumers[name] = consumers.get(name, 0) + 1
    graph_outputs = {o.name for o in model.graph.output}
    producer = {out: node for node in model.graph.node for out in node.output}
    removed: set[int] = set()
    folded = 0
    for index, bn in enumerate(model.graph.node):
        if bn.op_type != "BatchNormalization" or len(bn.output) != 1:
            continue
        conv = producer.get(bn.input[0])
        if (
            conv is None or conv.op_type != "Conv" or consumers.get(bn.input[0], 0) != 1
            or bn.input[0] in graph_outputs
            or not all(name in inits for name in bn.input[1:5])
            or conv.input[1] not in inits
            or (len(conv.input) > 2 and conv.input[2] and conv.input[2] not in inits)
            or consumers.get(conv.input[1], 0) != 1
        ):
            continue
        eps = next((a.f for a in bn.attribute if a.name == "epsilon"), 1e-5)
        scale, bias, mean, var = (
            numpy_helper.to_array(inits[n]).astype(np.float64) for n in bn.input[1:5]
        )
        weight_t = inits[conv.input[1]]
        weight = numpy_helper.to_array(weight_t)
        if weight.dtype != np.float32:
            continue
        factor = scale / np.sqrt(var + eps)
        new_w = weight.astype(np.float64) * factor.reshape(-1, *([1] * (weight.ndim - 1)))
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        old_b = (
            numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
            if has_bias else np.zeros_like(mean)
        )
        new_b = ((old_b - mean) * factor + bias).astype(np.float32)
        weight_t.CopyFrom(numpy_helper.from_array(new_w.astype(np.float32), weight_t.name))
        if has_bias and consumers.get(conv.input[2], 0) == 1:
            inits[conv.input[2]].CopyFrom(numpy_helper.from_array(new_b, conv.input[2]))
        else:  # no bias yet, or one shared with another node: this conv gets its own
            bias_name = f"{bn.output[0]}_folded_bias"
            model.graph.initializer.append(numpy_helper.from_array(new_b, bias_name))
            while len(conv.input) < 3:
                conv.input.append("")
            conv.input[2] = bias_name
        # The conv now produces the BN's output name, so downstream names (and ranges) hold.
        conv.output[0] = bn.output[0]
        removed.add(index)
        folded += 1
    if folded:
        bn_params = {
            name for i in removed for name in model.graph.node[i].input[1:5]
        }
        _replace_nodes(model.graph, [n for i, n in enumerate(model.graph.node)
                                     if i not in removed])
        used = {name for n in model.graph.node for name in n.input}
        used |= {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
        unused = [t for t in model.graph.initializer if t.name in bn_params - used]
        for t in unused:
            model.graph.initializer.remove(t)
    return folded


def preprocess_model(src: Path, dst: Path) -> dict[str, int]:
    """Constants to initializers, Conv+BN folding, node names, shape inference."""
    import onnx

    model = load_model(src)
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if 0 < opset < MIN_OPSET:
        # Per-channel Q/DQ (the axis attribute) and FP16 BatchNorm need opset 13.
        from onnx import version_converter

        try:
            model = version_converter.convert_version(model, MIN_OPSET)
        except Exception as exc:  # the converter raises plain RuntimeError / ConvertError
            raise ModelError(
                f"cannot convert the model from opset {opset} to {MIN_OPSET}: {exc}",
                path=str(src),
            ) from exc
    moved = constants_to_initializers(model)
    folded = fold_batchnorm(model)
    ensure_node_names(model)
    del model.graph.value_info[:]
    try:
        model = onnx.shape_inference.infer_shapes(model)
    except Exception as exc:  # onnx raises InferenceError / ValidationError
        raise ModelError(
            f"shape inference failed: {type(exc).__name__}: {exc}", path=str(src)
        ) from exc
    save_model(model, dst)
    logger.debug(
        "model preprocessed",
        extra={"event": "calibration.preprocess", "constants": moved, "bn_folded": folded},
    )
    return {"constants_to_initializers": moved, "batchnorm_folded": folded}
