"""Small ONNX graph rewrites shared by the Q/DQ and FP16 paths.

* Constant nodes become initializers (quantizers and converters only see initializers as
  weights), keeping tensor names so calibration ranges still apply.
* BatchNormalization after a Conv is folded into the Conv (TensorRT fuses it anyway; folding
  first keeps a huge running variance out of FP16 and gives the quantizer final weights).
* Pinned-layer matching: node names containing a pinned keyword (case-insensitive).
* Hard-swish fusion (ONNX Runtime CPU consumer only): the exported ``x * Clip(x + 3, 0, 6)
  / 6`` chain (and ``x * HardSigmoid(x)``) becomes one ``HardSwish`` node (opset 14), so a
  Q/DQ graph pays one float op between quantized layers instead of four.
* Conv affine folding (ONNX Runtime CPU consumer only): a Conv followed by a Mul and/or Add
  with a scalar or per-output-channel constant (PP-LCNet's "learnable affine blocks") gets
  them folded into its weights and bias, like BatchNorm; a scalar Mul/Add whose only
  consumers are unpadded Convs is folded into those Convs' weights and bias instead.
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
    "fold_affine_into_next_conv",
    "fold_batchnorm",
    "fold_conv_affine",
    "fuse_hardswish",
    "load_model",
    "match_pinned_nodes",
    "optimize_for_ort_cpu",
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


_CONVERTER_OPS = frozenset({"QuantizeLinear", "DequantizeLinear", "Cast"})


def match_pinned_nodes(
    model: Any, keywords: Sequence[str], excluded_op_types: Sequence[str] = ()
) -> tuple[PinnedNode, ...]:
    """Nodes whose name contains a pinned keyword, or whose op type is excluded."""
    lowered = [k.lower() for k in keywords]
    excluded = set(excluded_op_types)
    found: list[PinnedNode] = []
    for node in model.graph.node:
        if node.op_type in _CONVERTER_OPS:
            # Q/DQ and Cast nodes are what converters insert (named after the tensors they
            # wrap, so "router_gate_QuantizeLinear" would match "router"): never pinned.
            continue
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


def _scalar(inits: dict[str, Any], name: str) -> float | None:
    """The value of a one-element float initializer, or None."""
    from onnx import numpy_helper

    tensor = inits.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    if value.size != 1 or value.dtype.kind != "f":
        return None
    return float(value.reshape(()))


def _close(value: float | None, expected: float) -> bool:
    return value is not None and abs(value - expected) <= 1e-6 * max(1.0, abs(expected))


def _clip_bounds(node: Any, inits: dict[str, Any]) -> tuple[float | None, float | None]:
    attrs = {a.name: a.f for a in node.attribute if a.name in ("min", "max")}
    lo = attrs.get("min", _scalar(inits, node.input[1]) if len(node.input) > 1 else None)
    hi = attrs.get("max", _scalar(inits, node.input[2]) if len(node.input) > 2 else None)
    return lo, hi


def _hardswish_input(
    node: Any, producer: dict[str, Any], inits: dict[str, Any], single_use: set[str]
) -> tuple[str, list[Any]] | None:
    """If ``node`` ends a hard-swish chain: (its input x, the chain's nodes), else None.

    Matched: ``Div(Mul(x, Clip(Add(x, 3), 0, 6)), 6)`` with the Div also as ``Mul(.., 1/6)``,
    either operand order of Add and Mul, and ``Mul(x, HardSigmoid(x, 1/6, 0.5))``.
    """
    if node.op_type == "Mul" and len(node.input) == 2:  # x * HardSigmoid(x)
        for x, other in (node.input, reversed(node.input)):
            hs = producer.get(other)
            if hs is None or hs.op_type != "HardSigmoid" or hs.input[0] != x:
                continue
            attrs = {a.name: a.f for a in hs.attribute}
            if (_close(attrs.get("alpha", 0.2), 1 / 6) and _close(attrs.get("beta", 0.5), 0.5)
                    and other in single_use):
                return x, [hs, node]
    if node.op_type == "Div" and _close(_scalar(inits, node.input[1]), 6.0):
        inner = node.input[0]
    elif node.op_type == "Mul" and len(node.input) == 2:
        divisor = [i for i, name in enumerate(node.input) if _close(_scalar(inits, name), 1 / 6)]
        if not divisor:
            return None
        inner = node.input[1 - divisor[0]]
    else:
        return None
    mul = producer.get(inner)
    if mul is None or mul.op_type != "Mul" or len(mul.input) != 2 or inner not in single_use:
        return None
    for x, other in (mul.input, reversed(mul.input)):
        clip = producer.get(other)
        if clip is None or clip.op_type != "Clip" or other not in single_use:
            continue
        lo, hi = _clip_bounds(clip, inits)
        add = producer.get(clip.input[0])
        if not (_close(lo, 0.0) and _close(hi, 6.0)) or add is None or add.op_type != "Add":
            continue
        if clip.input[0] not in single_use or x not in add.input:
            continue
        three = add.input[1] if add.input[0] == x else add.input[0]
        if _close(_scalar(inits, three), 3.0):
            return x, [add, clip, mul, node]
    return None


def fuse_hardswish(model: Any) -> int:
    """Replace hard-swish chains by ``HardSwish`` nodes (opset >= 14); returns the count.

    The fused node keeps the chain's output name, so activation ranges of the unfused graph
    still apply. A model below opset 14 is converted to 14 first (only when a chain exists).
    """
    from onnx import helper

    inits = {t.name: t for t in model.graph.initializer}
    producer = {out: node for node in model.graph.node for out in node.output}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    graph_outputs = {o.name for o in model.graph.output}
    single_use = {n for n, c in uses.items() if c == 1 and n not in graph_outputs}
    # Keyed by each node's first output name (unique in a valid graph).
    chains: dict[str, str] = {}  # last node of a chain -> the chain's input x
    claimed: set[str] = set()
    for node in model.graph.node:
        found = _hardswish_input(node, producer, inits, single_use)
        if found is None or any(n.output[0] in claimed for n in found[1]):
            continue
        claimed.update(n.output[0] for n in found[1])
        chains[node.output[0]] = found[0]
    if not chains:
        return 0
    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    if opset < 14:
        from onnx import version_converter

        try:
            converted = version_converter.convert_version(model, 14)
        except Exception as exc:  # the converter raises plain RuntimeError / ConvertError
            logger.warning("hard-swish chains left unfused: opset %d -> 14 failed: %s",
                           opset, exc, extra={"event": "calibration.hardswish.skip"})
            return 0
        model.CopyFrom(converted)
        return fuse_hardswish(model)  # the converter rebuilt the nodes: match again
    keep = []
    for node in model.graph.node:
        if node.output and node.output[0] in chains:
            keep.append(helper.make_node("HardSwish", [chains[node.output[0]]],
                                         [node.output[0]], name=f"{node.name}_hardswish"))
        elif not (node.output and node.output[0] in claimed):
            keep.append(node)
    _replace_nodes(model.graph, keep)
    _drop_unused(model)
    return len(chains)


def _channel_vector(inits: dict[str, Any], name: str, channels: int, rank: int) -> Any:
    """A constant broadcastable as one value per output channel of an NC... tensor, or None."""
    import numpy as np
    from onnx import numpy_helper

    tensor = inits.get(name)
    if tensor is None:
        return None
    value = numpy_helper.to_array(tensor)
    if value.dtype != np.float32:
        return None
    if value.size == 1 and value.ndim <= rank:
        return np.full(channels, float(value.reshape(())), np.float64)
    shape = list(value.shape)
    # [C, 1, ...] or [1, C, 1, ...] against an output of rank ``rank`` (N, C, spatial...)
    if len(shape) in (rank - 1, rank) and shape[-(rank - 1)] == channels and all(
        d == 1 for i, d in enumerate(shape) if i != len(shape) - (rank - 1)
    ):
        return value.reshape(channels).astype(np.float64)
    return None


def fold_conv_affine(model: Any) -> int:
    """Fold ``Conv -> Mul(c) [-> Add(b)]`` / ``Conv -> Add(b)`` constants into the Conv.

    ``c`` and ``b`` are scalars or one value per output channel. The Conv takes over the
    output name of the last folded node, so activation ranges still apply. Returns the
    number of Conv nodes changed.
    """
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
    graph_outputs = {o.name for o in model.graph.output}
    consumer_of: dict[str, Any] = {}
    for node in model.graph.node:
        for name in node.input:
            consumer_of[name] = node
    removed: set[str] = set()  # output names of folded Mul/Add nodes
    folded = 0
    for conv in model.graph.node:
        if (conv.op_type != "Conv" or len(conv.input) < 2 or conv.input[1] not in inits
                or uses.get(conv.input[1], 0) != 1):
            continue
        weight = numpy_helper.to_array(inits[conv.input[1]])
        if weight.dtype != np.float32:
            continue
        has_bias = len(conv.input) > 2 and bool(conv.input[2])
        if has_bias and (conv.input[2] not in inits or uses.get(conv.input[2], 0) != 1):
            continue
        channels, rank = weight.shape[0], weight.ndim
        scale = np.ones(channels, np.float64)
        shift = np.zeros(channels, np.float64)
        out, chain = conv.output[0], []
        for op in ("Mul", "Add"):
            nxt = consumer_of.get(out)
            if (nxt is None or nxt.op_type != op or uses.get(out, 0) != 1
                    or out in graph_outputs or len(nxt.input) != 2):
                break
            const = nxt.input[1] if nxt.input[0] == out else nxt.input[0]
            vec = _channel_vector(inits, const, channels, rank)
            if vec is None:
                break
            if op == "Mul":
                scale, shift = scale * vec, shift * vec
            else:
                shift = shift + vec
            chain.append(nxt)
            out = nxt.output[0]
        if not chain:
            continue
        bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64) if has_bias
                else np.zeros(channels, np.float64))
        new_w = weight.astype(np.float64) * scale.reshape(-1, *([1] * (rank - 1)))
        new_b = (bias * scale + shift).astype(np.float32)
        inits[conv.input[1]].CopyFrom(
            numpy_helper.from_array(new_w.astype(np.float32), conv.input[1]))
        _set_conv_bias(model, inits, conv, new_b, f"{out}_folded_bias")
        conv.output[0] = out
        removed.update(n.output[0] for n in chain)
        folded += 1
    _drop_folded(model, removed, folded)
    return folded


def _unpadded(conv: Any) -> bool:
    for attr in conv.attribute:
        if attr.name == "pads" and any(attr.ints):
            return False
        if attr.name == "auto_pad" and attr.s not in (b"", b"NOTSET", b"VALID"):
            return False
    return True


def fold_affine_into_next_conv(model: Any) -> int:
    """Fold a scalar ``Mul(c) [-> Add(b)]`` / ``Add(b)`` into the unpadded Convs it feeds.

    ``conv(c * x + b) = conv'(x)`` with weights ``c * W`` and bias ``bias + b * sum(W[o])``,
    exact when the Conv has no padding (padding would add zeros, not ``b``). Returns the
    number of Mul/Add chains folded.
    """
    import numpy as np
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    uses: dict[str, int] = {}
    consumers: dict[str, list[Any]] = {}
    for node in model.graph.node:
        for name in node.input:
            uses[name] = uses.get(name, 0) + 1
            consumers.setdefault(name, []).append(node)
    graph_outputs = {o.name for o in model.graph.output}
    removed: set[str] = set()
    folded = 0
    for first in model.graph.node:
        if first.op_type not in ("Mul", "Add") or len(first.input) != 2:
            continue
        chain: list[Any] = []
        scale, shift = 1.0, 0.0
        step: Any = first
        x = None
        for op in ("Mul", "Add"):
            if step is None or step.op_type != op or len(step.input) != 2:
                continue
            const_i = [i for i, name in enumerate(step.input) if _scalar(inits, name) is not None]
            if len(const_i) != 1:
                break
            value = _scalar(inits, step.input[const_i[0]])
            assert value is not None
            if op == "Mul":
                scale, shift = value, 0.0
            else:
                shift += value
            if not chain:
                x = step.input[1 - const_i[0]]
            chain.append(step)
            out = step.output[0]
            nxt = consumers.get(out, [])
            step = nxt[0] if len(nxt) == 1 and out not in graph_outputs else None
        if not chain or x is None or chain[0] is not first:
            continue
        out = chain[-1].output[0]
        if any(n.output[0] in graph_outputs for n in chain) or any(
            uses.get(n.output[0], 0) != 1 for n in chain[:-1]
        ):
            continue
        convs = consumers.get(out, [])
        if not convs or out in graph_outputs or not all(
            c.op_type == "Conv" and c.input[0] == out and len(c.input) > 1
            and c.input[1] in inits and uses.get(c.input[1], 0) == 1
            and (len(c.input) < 3 or not c.input[2]
                 or (c.input[2] in inits and uses.get(c.input[2], 0) == 1))
            and numpy_helper.to_array(inits[c.input[1]]).dtype == np.float32
            and _unpadded(c)
            for c in convs
        ):
            continue
        for conv in convs:
            weight = numpy_helper.to_array(inits[conv.input[1]]).astype(np.float64)
            has_bias = len(conv.input) > 2 and bool(conv.input[2])
            bias = (numpy_helper.to_array(inits[conv.input[2]]).astype(np.float64)
                    if has_bias else np.zeros(weight.shape[0]))
            new_b = (bias + shift * weight.reshape(weight.shape[0], -1).sum(axis=1))
            inits[conv.input[1]].CopyFrom(numpy_helper.from_array(
                (weight * scale).astype(np.float32), conv.input[1]))
            _set_conv_bias(model, inits, conv, new_b.astype(np.float32),
                           f"{conv.name}_folded_input_bias")
            conv.input[0] = x
        removed.update(n.output[0] for n in chain)
        folded += 1
    _drop_folded(model, removed, folded)
    return folded


def _set_conv_bias(model: Any, inits: dict[str, Any], conv: Any, bias: Any, new_name: str) -> None:
    """Overwrite the conv's bias initializer, or add one named ``new_name`` if it has none."""
    from onnx import numpy_helper

    if len(conv.input) > 2 and conv.input[2]:
        inits[conv.input[2]].CopyFrom(numpy_helper.from_array(bias, conv.input[2]))
        return
    model.graph.initializer.append(numpy_helper.from_array(bias, new_name))
    inits[new_name] = model.graph.initializer[-1]
    while len(conv.input) < 3:
        conv.input.append("")
    conv.input[2] = new_name


def _drop_folded(model: Any, removed: set[str], folded: int) -> None:
    """Remove the Mul/Add nodes whose effect now lives in conv weights, and what they used."""
    if not folded:
        return
    _replace_nodes(model.graph, [n for n in model.graph.node
                                 if not (n.op_type in ("Mul", "Add") and n.output[0] in removed)])
    _drop_unused(model)


def _drop_unused(model: Any) -> None:
    """Remove initializers and value_info no node or graph IO refers to any more."""
    live = {name for n in model.graph.node for name in [*n.input, *n.output]}
    live |= {o.name for o in model.graph.output} | {i.name for i in model.graph.input}
    for vi in [vi for vi in model.graph.value_info if vi.name not in live]:
        model.graph.value_info.remove(vi)
    for t in [t for t in model.graph.initializer if t.name not in live]:
        model.graph.initializer.remove(t)


def optimize_for_ort_cpu(src: Path, dst: Path) -> dict[str, int]:
    """The graph rewrites of the ONNX Runtime CPU consumer; returns counts per rewrite.

    Both keep every remaining tensor name, so ranges computed on ``src`` apply to ``dst``.
    TensorRT fuses these patterns itself (pointwise fusion, scale into convolution) and its
    Q/DQ graph is left as calibrated.
    """
    model = load_model(src)
    affine = fold_conv_affine(model)
    hardswish = fuse_hardswish(model)
    into_next = fold_affine_into_next_conv(model)
    save_model(model, dst)
    return {"conv_affine_folded": affine, "hardswish_fused": hardswish,
            "affine_into_next_conv": into_next}


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
