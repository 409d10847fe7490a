"""What the TensorRT path reads from an ONNX graph before handing it to the parser.

* :func:`check_dequantize_inputs`: TensorRT's ``addDequantize`` takes only INT8, FP8 or INT4
  inputs (NVIDIA/TensorRT include/NvInfer.h, ``INetworkDefinition::addDequantize``; the
  ONNX parser maps every DequantizeLinear onto it: onnx/onnx-tensorrt importers.cpp,
  ``DequantizeLinear``), and quantizes symmetrically: a non-zero zero point is refused
  (onnx-tensorrt#850, onnxruntime#14229). ONNX Runtime's ``quantize_static`` writes INT32
  bias DequantizeLinear nodes and may write asymmetric UINT8 ones, which would fail deep in
  the build; we refuse such a graph first, naming the node. Our Q/DQ graphs are INT8, so
  INT8 is the only input type accepted.
* :func:`model_nodes` / :func:`quantized_nodes`: which nodes are the model's own (the
  parser names each layer after its ONNX node, made unique with a ``_<n>`` suffix:
  onnx/onnx-tensorrt ImporterContext.cpp, ``registerLayer``), and which of them consume a
  dequantized tensor.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from trt_provision.errors import EngineBuildError

__all__ = [
    "check_dequantize_inputs",
    "dynamic_inputs",
    "layer_node",
    "model_nodes",
    "quantized_nodes",
    "reduced_precision_tensors",
]

_UNIQUE_SUFFIX = re.compile(r"_\d+$")


def _load(model_path: Path) -> Any:
    """The graph without external weights; one compile reads the same file several times,
    so the last few are kept (keyed by path, size and mtime; never mutated)."""
    try:
        st = Path(model_path).stat()
    except OSError as exc:
        raise EngineBuildError(f"cannot read the ONNX model: {exc.strerror}",
                               model=str(model_path)) from exc
    return _load_cached(str(model_path), st.st_size, st.st_mtime_ns)


@functools.lru_cache(maxsize=4)
def _load_cached(path: str, size: int, mtime_ns: int) -> Any:
    import onnx

    try:
        return onnx.load(path, load_external_data=False)
    except Exception as exc:  # DecodeError, OSError...
        raise EngineBuildError(f"cannot read the ONNX model: {type(exc).__name__}: {exc}",
                               model=path) from exc


def _constant_tensors(graph: Any) -> dict[str, Any]:
    tensors = {t.name: t for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.output:
            for attr in node.attribute:
                if attr.name == "value" and attr.HasField("t"):
                    tensors[node.output[0]] = attr.t
    return tensors


def _elem_types(
    model: Any, constants: Mapping[str, Any], q_default: int | None = None
) -> dict[str, int]:
    """Element type of every tensor; a QuantizeLinear without ``output_dtype`` or zero point
    gets ``q_default`` (ONNX says UINT8; TensorRT's importer picks INT8)."""
    import onnx

    graph = model.graph
    types: dict[str, int] = {}
    for info in (*graph.input, *graph.value_info, *graph.output):
        if info.type.HasField("tensor_type"):
            types[info.name] = info.type.tensor_type.elem_type
    for name, onnx_tensor in constants.items():
        types[name] = onnx_tensor.data_type
    for node in graph.node:
        if node.op_type != "QuantizeLinear" or not node.output:
            continue
        out_type = next((a.i for a in node.attribute if a.name == "output_dtype"), 0)
        if not out_type and len(node.input) > 2 and node.input[2] in constants:
            out_type = constants[node.input[2]].data_type
        types[node.output[0]] = out_type or q_default or onnx.TensorProto.UINT8
    return types


# DequantizeLinear inputs TensorRT takes (NvInfer.h, addDequantize): INT8, FP8, INT4.
_INT8 = 3
_TRT_DQ_INPUTS = frozenset({_INT8, 17, 18, 19, 20, 22})  # INT8, FLOAT8E4M3FN.., INT4


def check_dequantize_inputs(model_path: Path, *, ours: bool = True) -> int:
    """Refuse a graph TensorRT cannot dequantize; return the number of DQ nodes checked.

    ``ours``: a Q/DQ graph the calibration package wrote is INT8 with explicit zero points,
    and anything else in it is our bug. A user's Q/DQ model is held to what TensorRT's
    importer takes (onnx/onnx-tensorrt onnxOpImporters.cpp, 10.1-GA, ``QuantDequantLinearHelper``):
    INT8, FP8 or INT4 DequantizeLinear inputs, and a QuantizeLinear without zero point or
    ``output_dtype`` quantizes to INT8.
    """
    import onnx
    from onnx import numpy_helper

    model = _load(model_path)
    graph = model.graph
    dq_nodes = [n for n in graph.node if n.op_type == "DequantizeLinear"]
    if not dq_nodes:
        return 0
    constants = _constant_tensors(graph)
    q_default = None if ours else _INT8
    accepted = frozenset({_INT8}) if ours else _TRT_DQ_INPUTS
    types = _elem_types(model, constants, q_default)
    if any(n.input[0] not in types for n in dq_nodes):
        try:
            inferred = onnx.shape_inference.infer_shapes(model)
        except Exception:  # an unusual graph: the unknown inputs are refused below
            inferred = model
        types = _elem_types(inferred, constants, q_default)
        # Shape inference types a Q without zero point UINT8 (ONNX's default): TensorRT
        # does not, so the Q nodes' own outputs win.
        types.update(_elem_types(model, constants, q_default))
    for index, node in enumerate(graph.node):
        if node.op_type != "DequantizeLinear":
            continue
        name = node.name or f"#{index}"
        found = types.get(node.input[0])
        if found not in accepted:
            type_name = onnx.TensorProto.DataType.Name(found) if found else "unknown"
            takes = ("only INT8 in a graph we prepared" if ours else "only INT8, FP8 or INT4")
            raise EngineBuildError(
                f"DequantizeLinear node {name!r} has a {type_name} input; TensorRT dequantizes "
                f"{takes} (keep biases float in a graph meant for TensorRT)",
                model=str(model_path), node=name, input=node.input[0], dtype=type_name)
        if len(node.input) > 2 and node.input[2]:
            zero_point = constants.get(node.input[2])
            if zero_point is None:
                raise EngineBuildError(
                    f"DequantizeLinear node {name!r} has a computed zero point; TensorRT "
                    "needs a constant zero point of 0", model=str(model_path), node=name)
            values = numpy_helper.to_array(zero_point, base_dir=str(Path(model_path).parent))
            if values.size and bool((values != 0).any()):
                raise EngineBuildError(
                    f"DequantizeLinear node {name!r} has a non-zero zero point; TensorRT "
                    "quantizes symmetrically (zero point 0)", model=str(model_path), node=name)
    return len(dq_nodes)


def dynamic_inputs(model_path: Path) -> list[str]:
    """Graph inputs (not initializers) with a symbolic or unknown dimension."""
    graph = _load(model_path).graph
    initializers = {t.name for t in graph.initializer}
    names: list[str] = []
    for info in graph.input:
        if info.name in initializers or not info.type.HasField("tensor_type"):
            continue
        dims = info.type.tensor_type.shape.dim
        if any(d.dim_param or d.dim_value <= 0 for d in dims):
            names.append(info.name)
    return names


def model_nodes(model_path: Path) -> dict[str, str]:
    """Node name -> op type of every named node of the model's main graph."""
    graph = _load(model_path).graph
    return {node.name: node.op_type for node in graph.node if node.name}


def quantized_nodes(model_path: Path) -> frozenset[str]:
    """Names of the nodes that read a DequantizeLinear output (they compute quantized)."""
    graph = _load(model_path).graph
    dequantized = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
    return frozenset(
        node.name for node in graph.node
        if node.name and node.op_type not in ("QuantizeLinear", "DequantizeLinear")
        and any(i in dequantized for i in node.input)
    )


def layer_node(layer_name: str, nodes: Mapping[str, str]) -> str | None:
    """The ONNX node a parsed layer came from, by the parser's naming; None if none."""
    if layer_name in nodes:
        return layer_name
    base = _UNIQUE_SUFFIX.sub("", layer_name)
    return base if base in nodes else None


# FLOAT16, BFLOAT16, INT8, FLOAT8 (E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ), INT4 (onnx.TensorProto).
_REDUCED_TYPES = frozenset({10, 16, 3, 17, 18, 19, 20, 22})


def reduced_precision_tensors(model_path: Path) -> int:
    """How many tensors of the graph are typed below FP32 (initializers, value infos, I/O,
    Cast targets, Q/DQ nodes): a strongly typed network computes in the graph's types, so a
    graph with none builds an FP32 engine whatever the label says."""
    model = _load(model_path)
    graph = model.graph
    count = sum(1 for t in graph.initializer if t.data_type in _REDUCED_TYPES)
    count += sum(1 for info in (*graph.input, *graph.value_info, *graph.output)
                 if info.type.HasField("tensor_type")
                 and info.type.tensor_type.elem_type in _REDUCED_TYPES)
    for node in graph.node:
        casts_down = node.op_type == "Cast" and any(
            a.name == "to" and a.i in _REDUCED_TYPES for a in node.attribute)
        if casts_down or node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            count += 1
    return count
