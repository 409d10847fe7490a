"""Q/DQ ONNX from precomputed activation ranges (ONNX Runtime strategy, strongly-typed TRT).

Symmetric INT8 activations and weights (zero point 0, as TensorRT requires), per-channel
weights, weights stored as INT8 initializers feeding DequantizeLinear. Pinned layers and
excluded op types are passed as ``nodes_to_exclude``; for ``mixed`` they are then converted
to FP16 (or left FP32 where FP16 would overflow).

The ranges are handed to ``quantize_static`` through its calibration-cache file, so ONNX
Runtime does not run a second calibration of its own.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from trt_provision.calibration.graph import PinnedNode, load_model, save_model, tensor_types
from trt_provision.calibration.ranges import TensorRanges
from trt_provision.errors import EngineBuildError

__all__ = ["QdqResult", "quantize_qdq"]

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class QdqResult:
    model_path: Path
    quantized_nodes: int
    excluded: tuple[PinnedNode, ...]
    pinned_precision: Mapping[str, str]  # node -> "fp16" | "fp32 (<reason>)"
    unranged: tuple[str, ...] = ()  # nodes left float because a tensor had no range


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
) -> QdqResult:
    """Write a Q/DQ model of the (preprocessed) ``model_path`` to ``out_path``."""
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
    excluded_names = [p.node for p in excluded]
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
                activation_type=QuantType.QInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=[*excluded_names, *unranged],
                calibrate_method=CalibrationMethod.MinMax,
                calibration_cache_path=str(ranges_file),
                extra_options={
                    "ActivationSymmetric": True,
                    "WeightSymmetric": True,
                    # TensorRT wants one Q/DQ pair per consumer to fuse each independently.
                    "DedicatedQDQPair": True,
                    # Keep Relu/Clip explicit so TensorRT sees the graph it was calibrated on.
                    "QDQKeepRemovableActivations": True,
                },
            )
    except Exception as exc:  # ORT raises ValueError, RuntimeError, onnx errors...
        raise EngineBuildError(
            f"Q/DQ quantization failed: {type(exc).__name__}: {exc}", model=str(model_path)
        ) from exc
    model = load_model(int8_path)
    quantized = sum(1 for n in model.graph.node if n.op_type == "DequantizeLinear")
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
    return QdqResult(out_path, quantized, tuple(excluded), precision, unranged)
