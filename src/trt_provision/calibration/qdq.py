"""Q/DQ ONNX from precomputed activation ranges (ONNX Runtime strategy, strongly-typed TRT).

The same ranges feed two consumers with different Q/DQ needs, so each gets its own option
set (:func:`qdq_option_set`):

* ``tensorrt`` - symmetric INT8 activations and weights (zero point 0, as TensorRT requires),
  one Q/DQ pair per consumer and Relu/Clip kept explicit, so TensorRT can fuse each consumer
  on its own and sees the graph it was calibrated on.
* ``onnxruntime-cpu`` - uint8 asymmetric activations with int8 per-channel weights (U8S8, the
  fast path of ONNX Runtime's CPU kernels), shared Q/DQ pairs and removable activations
  dropped, so the CPU QDQ fusions (QLinearConv, QLinearAdd, QLinearPool...) apply. Before
  quantizing, the graph gets the CPU rewrites of :func:`~.graph.optimize_for_ort_cpu`
  (hard-swish chains fused into ``HardSwish``, constant Mul/Add folded into convolutions):
  every float op left between two quantized ones costs a DequantizeLinear/QuantizeLinear
  pair, so fewer float ops is what makes the int8 graph faster than the float one.

Both quantize only the op types that gain from INT8 (Conv, ConvTranspose, Gemm, MatMul) and
the data-movement / elementwise ops between them; normalization layers that were not folded
(a BatchNormalization after an Add, say) stay float. Weights are per-channel on the output
channel axis of their op (Conv: 0, ConvTranspose: 1, Gemm/MatMul: the output column), and
every per-channel DequantizeLinear is checked against its weight before the model is used.
Pinned layers and excluded op types are passed as ``nodes_to_exclude``; for ``mixed`` they
are then converted to FP16 (or left FP32 where FP16 would overflow).

The ranges are handed to ``quantize_static`` through its calibration-cache file, so ONNX
Runtime does not run a second calibration of its own.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from trt_provision.calibration.graph import (
    PinnedNode,
    load_model,
    optimize_for_ort_cpu,
    save_model,
    tensor_types,
)
from trt_provision.calibration.ranges import TensorRanges
from trt_provision.errors import EngineBuildError

__all__ = [
    "CONSUMERS",
    "WEIGHTED_OPS",
    "Consumer",
    "QdqOptionSet",
    "QdqResult",
    "check_tensorrt_qdq",
    "count_quantized",
    "qdq_option_set",
    "quantize_qdq",
    "weighted_nodes",
]

logger = logging.getLogger(__name__)

Consumer = Literal["onnxruntime-cpu", "tensorrt"]
CONSUMERS: tuple[str, ...] = ("onnxruntime-cpu", "tensorrt")

# Ops whose INT8 kernels are the point of quantizing.
WEIGHTED_OPS: tuple[str, ...] = ("Conv", "ConvTranspose", "Gemm", "MatMul")
# Between weighted ops: kept in INT8 so the data stays quantized from one to the next.
_ORT_CPU_OPS: tuple[str, ...] = (
    *WEIGHTED_OPS, "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat", "Resize",
    "Relu", "Clip", "Reshape", "Flatten", "Transpose", "Squeeze", "Unsqueeze",
)
# TensorRT: inputs of weighted layers, residual adds and pooling (its explicit-quantization
# placement); everything else TensorRT fuses or runs in the precision it chooses.
_TENSORRT_OPS: tuple[str, ...] = (
    *WEIGHTED_OPS, "Add", "MaxPool", "AveragePool", "GlobalAveragePool", "Concat",
)

# The ONNX Runtime CPU consumer's graph rewrites (graph.optimize_for_ort_cpu), in order.
_ORT_CPU_REWRITES: tuple[str, ...] = (
    "conv_affine_folded", "hardswish_fused", "affine_into_next_conv",
)


@dataclass(frozen=True)
class QdqOptionSet:
    """The Q/DQ choices for one consumer of the graph (recorded in the metadata)."""

    consumer: str
    activations: str  # "uint8-asymmetric" | "int8-symmetric"
    weights: str
    op_types: tuple[str, ...]
    dedicated_qdq_pair: bool
    keep_removable_activations: bool
    graph_rewrites: tuple[str, ...] = ()  # see graph.optimize_for_ort_cpu

    def __post_init__(self) -> None:
        if self.consumer not in CONSUMERS:
            raise ValueError(f"Q/DQ consumer must be one of {CONSUMERS}, got {self.consumer!r}")

    @property
    def activation_symmetric(self) -> bool:
        return self.activations.endswith("-symmetric")

    def extra_options(self) -> dict[str, Any]:
        return {
            "ActivationSymmetric": self.activation_symmetric,
            "WeightSymmetric": True,
            "DedicatedQDQPair": self.dedicated_qdq_pair,
            "QDQKeepRemovableActivations": self.keep_removable_activations,
            # TensorRT's IDequantizeLayer takes INT8/FP8/INT4 only (NvInfer.h; onnx-tensorrt
            # #850): an INT32 bias DequantizeLinear fails every TensorRT Q/DQ build.
            "QuantizeBias": self.consumer != "tensorrt",
            # TensorRT places Q/DQ on the inputs of weighted ops and fuses their outputs
            # itself; a Q/DQ on a Conv/Gemm output forces an INT8 output it would not choose
            # (TensorRT docs, Explicit Quantization, "Q/DQ Layer-Placement Recommendations").
            "OpTypesToExcludeOutputQuantization":
                list(WEIGHTED_OPS) if self.consumer == "tensorrt" else [],
        }

    def to_metadata(self) -> dict[str, Any]:
        return {
            "consumer": self.consumer,
            "activations": self.activations,
            "weights": self.weights,
            "op_types": list(self.op_types),
            "dedicated_qdq_pair": self.dedicated_qdq_pair,
            "keep_removable_activations": self.keep_removable_activations,
            "graph_rewrites": list(self.graph_rewrites),
        }


def qdq_option_set(consumer: str) -> QdqOptionSet:
    """The option set for ``consumer`` ("onnxruntime-cpu" or "tensorrt")."""
    if consumer == "tensorrt":
        return QdqOptionSet(
            consumer=consumer, activations="int8-symmetric",
            weights="int8-symmetric-per-channel", op_types=_TENSORRT_OPS,
            dedicated_qdq_pair=True, keep_removable_activations=True,
        )
    return QdqOptionSet(
        consumer=consumer, activations="uint8-asymmetric",
        weights="int8-symmetric-per-channel", op_types=_ORT_CPU_OPS,
        dedicated_qdq_pair=False, keep_removable_activations=False,
        graph_rewrites=_ORT_CPU_REWRITES,
    )


def weighted_nodes(model_path: Path) -> tuple[str, ...]:
    """Names of the weighted (Conv/Gemm/MatMul...) nodes, in graph order."""
    model = load_model(model_path)
    return tuple(n.name for n in model.graph.node if n.op_type in WEIGHTED_OPS)


def _fix_single_channel_axes(model: Any) -> int:
    """A one-channel per-channel DequantizeLinear on a rank-1 tensor (the bias of a
    one-channel Conv) gets ``axis = 1`` from the quantizer, out of range for rank 1; with
    one scale the only valid axis is 0. Returns how many nodes were fixed."""
    from onnx import helper

    inits = {t.name: t for t in model.graph.initializer}
    fixed = 0
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 2:
            continue
        value, scale = inits.get(node.input[0]), inits.get(node.input[1])
        if value is None or scale is None or len(scale.dims) != 1 or scale.dims[0] != 1:
            continue
        axis = next((a for a in node.attribute if a.name == "axis"), None)
        rank = len(value.dims)
        if not -rank <= (axis.i if axis is not None else 1) < rank:  # ONNX default axis 1
            if axis is not None:
                node.attribute.remove(axis)
            node.attribute.append(helper.make_attribute("axis", 0))
            fixed += 1
    return fixed


def _walk_graphs(graph: Any, depth: int = 0) -> Iterator[tuple[Any, int]]:
    """A graph and every If/Loop/Scan body inside it, with the nesting depth."""
    yield graph, depth
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == 5:  # GRAPH
                yield from _walk_graphs(attr.g, depth + 1)
            elif attr.type == 10:  # GRAPHS
                for g in attr.graphs:
                    yield from _walk_graphs(g, depth + 1)


def count_quantized(model: Any) -> tuple[int, int, int]:
    """(nodes consuming a dequantized tensor, of them inside subgraphs, subgraph nodes).

    Counts the compute that is actually quantized, at every nesting level: a graph whose
    only DequantizeLinear nodes feed nothing, or whose compute sits inside an ``If``, has
    zero quantized nodes whatever its Q/DQ count.
    """
    quantized = in_sub = sub_nodes = 0
    for graph, depth in _walk_graphs(model.graph):
        dq_out = {o for n in graph.node if n.op_type == "DequantizeLinear" for o in n.output}
        for node in graph.node:
            if depth:
                sub_nodes += 1
            if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
                continue
            if any(i in dq_out for i in node.input):
                quantized += 1
                in_sub += 1 if depth else 0
    return quantized, in_sub, sub_nodes


def check_tensorrt_qdq(model: Any, path: Path) -> None:
    """Refuse, before any build, a TensorRT-bound graph TensorRT would reject: every
    DequantizeLinear input must be INT8 with zero point 0 (symmetric), as TensorRT's
    IDequantizeLayer / IQuantizeLayer require (NvInfer.h; onnx-tensorrt's QDQ importer)."""
    from onnx import TensorProto, numpy_helper

    types = tensor_types(model)
    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type not in ("DequantizeLinear", "QuantizeLinear"):
            continue
        quantized = node.input[0] if node.op_type == "DequantizeLinear" else node.output[0]
        dtype = inits[quantized].data_type if quantized in inits else types.get(quantized)
        if node.op_type == "DequantizeLinear" and dtype is not None and dtype != TensorProto.INT8:
            raise EngineBuildError(
                f"TensorRT-bound Q/DQ graph has a DequantizeLinear with a "
                f"{TensorProto.DataType.Name(dtype)} input; TensorRT takes INT8 only",
                model=str(path), node=node.name)
        if len(node.input) > 2 and node.input[2] in inits:
            zero = numpy_helper.to_array(inits[node.input[2]])
            if zero.size and bool((zero != 0).any()):
                raise EngineBuildError(
                    "TensorRT-bound Q/DQ graph has a non-zero zero point (TensorRT "
                    "quantization is symmetric)", model=str(path), node=node.name)


def _check_per_channel_axes(model: Any, path: Path) -> None:
    """Every per-channel DequantizeLinear has one scale per slice of its weight's axis."""
    from onnx import numpy_helper

    inits = {t.name: t for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type != "DequantizeLinear" or len(node.input) < 2:
            continue
        weight, scale = inits.get(node.input[0]), inits.get(node.input[1])
        if weight is None or scale is None or len(scale.dims) != 1:
            continue
        size = int(numpy_helper.to_array(scale).size)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1)
        rank = len(weight.dims)
        if not -rank <= axis < rank or weight.dims[axis] != size:
            raise EngineBuildError(
                f"per-channel quantization of {node.input[0]!r} has a wrong axis {axis} "
                f"(weight shape {list(weight.dims)}, {size} scales)",
                model=str(path), node=node.name,
            )


@dataclass(frozen=True)
class QdqResult:
    model_path: Path
    quantized_nodes: int
    excluded: tuple[PinnedNode, ...]
    pinned_precision: Mapping[str, str]  # node -> "fp16" | "fp32 (<reason>)"
    unranged: tuple[str, ...] = ()  # nodes left float because a tensor had no range
    options: QdqOptionSet | None = None
    kept_float: tuple[str, ...] = ()  # left float by the accuracy fallback
    float_path: Path | None = None  # the float graph that was quantized (after rewrites)
    rewrites: Mapping[str, int] = dataclasses.field(default_factory=dict)
    quantized_ops: int = 0  # nodes (outside Q/DQ) that consume a dequantized tensor
    quantized_in_subgraphs: int = 0
    subgraph_nodes: int = 0  # nodes inside If/Loop/Scan bodies


class _DropMessage(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self._prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self._prefix)


@contextlib.contextmanager
def _quiet_quantizer() -> Iterator[None]:
    """Silence ONNX Runtime's advice to run its own pre-processing (ours already ran)."""
    root = logging.getLogger()
    flt = _DropMessage("Please consider")
    root.addFilter(flt)
    try:
        yield
    finally:
        root.removeFilter(flt)


def _nodes_without_ranges(
    model_path: Path, ranges: TensorRanges, skip: set[str]
) -> tuple[str, ...]:
    """Nodes touching a float activation with no range (e.g. a partial legacy TRT cache).

    The quantizer refuses such nodes outright; leaving them in float is the safe choice.
    """
    model = load_model(model_path)
    types = tensor_types(model)
    inits = {t.name for t in model.graph.initializer}
    float_types = (1, 10)  # FLOAT, FLOAT16
    missing: list[str] = []
    for node in model.graph.node:
        if node.name in skip:
            continue
        tensors = [n for n in [*node.input, *node.output] if n and n not in inits]
        if any(types.get(n) in float_types and n not in ranges.ranges for n in tensors):
            missing.append(node.name)
    if missing:
        logger.warning(
            "%d nodes have no activation range and stay unquantized", len(missing),
            extra={"event": "calibration.qdq.unranged", "nodes": missing[:20]},
        )
    return tuple(missing)


def quantize_qdq(
    model_path: Path,
    ranges: TensorRanges,
    out_path: Path,
    *,
    excluded: Sequence[PinnedNode] = (),
    pinned_fp16: bool = False,
    workdir: Path,
    consumer: str = "onnxruntime-cpu",
    keep_float: Sequence[str] = (),
    weighted_only: bool = False,
    float_op_types: Sequence[str] = (),
) -> QdqResult:
    """Write a Q/DQ model of the (preprocessed) ``model_path`` to ``out_path``.

    ``keep_float`` names further nodes left unquantized, ``float_op_types`` op types left
    float and ``weighted_only`` restricts quantization to the weighted ops (all three used
    by the accuracy fallback).
    """
    import numpy as np
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.calibrate import (
        CalibrationMethod,
        TensorsData,
        save_tensors_data,
    )

    workdir.mkdir(parents=True, exist_ok=True)
    tensors = TensorsData(
        CalibrationMethod.MinMax,
        {name: (np.array(lo, dtype=np.float32), np.array(hi, dtype=np.float32))
         for name, (lo, hi) in ranges.ranges.items()},
    )
    ranges_file = workdir / "ranges.ort.json"
    save_tensors_data(tensors, ranges_file)
    options = qdq_option_set(consumer)
    if weighted_only:
        options = dataclasses.replace(options, op_types=WEIGHTED_OPS)
    elif float_op_types:
        options = dataclasses.replace(
            options, op_types=tuple(o for o in options.op_types if o not in float_op_types))
    excluded_names = [p.node for p in excluded]
    rewrites: dict[str, int] = {}
    if options.graph_rewrites:
        rewritten = workdir / "rewritten.onnx"
        rewrites = optimize_for_ort_cpu(model_path, rewritten)
        model_path = rewritten
    unranged = _nodes_without_ranges(model_path, ranges, set(excluded_names))
    int8_path = out_path if not pinned_fp16 else workdir / "qdq_int8.onnx"
    try:
        with _quiet_quantizer():
            quantize_static(
                str(model_path),
                str(int8_path),
                calibration_data_reader=None,
                quant_format=QuantFormat.QDQ,
                per_channel=True,
                reduce_range=False,
                activation_type=(QuantType.QInt8 if options.activation_symmetric
                                 else QuantType.QUInt8),
                weight_type=QuantType.QInt8,
                op_types_to_quantize=list(options.op_types),
                nodes_to_exclude=[*excluded_names, *unranged, *keep_float],
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(ranges_file),
                extra_options=options.extra_options(),
            )
    except Exception as exc:  # ORT raises ValueError, RuntimeError, onnx errors...
        raise EngineBuildError(
            f"Q/DQ quantization failed: {type(exc).__name__}: {exc}", model=str(model_path)
        ) from exc
    model = load_model(int8_path)
    if _fix_single_channel_axes(model):
        save_model(model, int8_path)
    _check_per_channel_axes(model, model_path)
    if consumer == "tensorrt":
        check_tensorrt_qdq(model, model_path)
    quantized = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
    quantized_ops, in_sub, sub_nodes = count_quantized(model)
    precision: dict[str, str] = {p.node: "fp32" for p in excluded}
    if pinned_fp16 and excluded:
        from trt_provision.calibration.fp16 import convert_to_fp16

        model, conversion = convert_to_fp16(model, only_nodes=excluded_names)
        for name in excluded_names:
            reason = conversion.reason_for(name)
            if name in conversion.converted:
                precision[name] = "fp16"
            else:
                precision[name] = f"fp32 ({reason})" if reason else "fp32"
        save_model(model, out_path)
    elif pinned_fp16:
        save_model(model, out_path)
    logger.info(
        "wrote Q/DQ model",
        extra={"event": "calibration.qdq.write", "path": str(out_path),
               "dequantize_nodes": quantized, "excluded": len(excluded)},
    )
    return QdqResult(out_path, quantized, tuple(excluded), precision, unranged, options,
                     tuple(keep_float), model_path, rewrites, quantized_ops, in_sub, sub_nodes)

