"""What an ONNX model offers to the outside: its inputs and outputs, opsets, size, external data.

``inspect MODEL.onnx`` prints it, and ``run`` takes input names and dtypes from it when an
engine's metadata does not list them. Only the model's structure is read (no weights): the
file is parsed with ``load_external_data=False``.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from trt_provision.errors import ModelError

__all__ = ["ModelInfo", "TensorInfo", "describe_model", "numpy_dtype_name"]

Dim = int | str | None  # static size, symbolic name, or an unnamed dynamic dimension


@dataclass(frozen=True)
class TensorInfo:
    name: str
    dtype: str  # numpy dtype name ("float32", "int64", "bool"), else the ONNX type name
    shape: tuple[Dim, ...] | None  # None: the model does not declare a shape (rank unknown)

    @property
    def dynamic_dims(self) -> tuple[int, ...]:
        """Indices of the dimensions a profile has to give sizes for."""
        if self.shape is None:
            return ()
        return tuple(i for i, d in enumerate(self.shape) if not isinstance(d, int))

    @property
    def needs_profile(self) -> bool:
        return self.shape is None or bool(self.dynamic_dims)

    def shape_text(self) -> str:
        if self.shape is None:
            return "unknown rank"
        return "[" + ", ".join("?" if d is None else str(d) for d in self.shape) + "]"

    def to_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "dtype": self.dtype,
            "shape": None if self.shape is None else list(self.shape),
            "dynamic_dims": list(self.dynamic_dims),
        }


@dataclass(frozen=True)
class ExternalData:
    location: str
    present: bool
    size_bytes: int | None

    def to_dict(self) -> dict[str, Any]:
        return {"location": self.location, "present": self.present, "size_bytes": self.size_bytes}


@dataclass(frozen=True)
class ModelInfo:
    path: Path
    size_bytes: int
    ir_version: int
    producer: str
    opsets: dict[str, int]  # domain ("" is the default ONNX domain) -> version
    node_count: int  # nodes of the main graph
    subgraph_node_count: int  # nodes inside If/Loop/Scan bodies
    initializer_count: int
    inputs: tuple[TensorInfo, ...]
    outputs: tuple[TensorInfo, ...]
    external_data: tuple[ExternalData, ...]

    @property
    def profile_inputs(self) -> tuple[TensorInfo, ...]:
        """Inputs an optimization profile must name (min/opt/max) before TensorRT builds."""
        return tuple(t for t in self.inputs if t.needs_profile)

    @property
    def shared_symbols(self) -> dict[str, list[str]]:
        """Symbolic dimension names used by more than one input: their sizes must agree."""
        users: dict[str, list[str]] = {}
        for tensor in self.inputs:
            for dim in tensor.shape or ():
                if isinstance(dim, str) and tensor.name not in users.setdefault(dim, []):
                    users[dim].append(tensor.name)
        return {sym: names for sym, names in users.items() if len(names) > 1}

    def to_dict(self) -> dict[str, Any]:
        return {
            "model": str(self.path),
            "size_bytes": self.size_bytes,
            "ir_version": self.ir_version,
            "producer": self.producer,
            "opsets": dict(self.opsets),
            "node_count": self.node_count,
            "subgraph_node_count": self.subgraph_node_count,
            "initializer_count": self.initializer_count,
            "inputs": [t.to_dict() for t in self.inputs],
            "outputs": [t.to_dict() for t in self.outputs],
            "external_data": [e.to_dict() for e in self.external_data],
            "profile_required": [t.name for t in self.profile_inputs],
            "shared_dynamic_dims": self.shared_symbols,
        }


def numpy_dtype_name(elem_type: int) -> str:
    """numpy name of an ONNX element type; the ONNX name for types numpy lacks (bfloat16...)."""
    from onnx import TensorProto, helper

    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type).name)
    except (KeyError, ValueError, TypeError):
        try:
            return str(TensorProto.DataType.Name(elem_type)).lower()
        except ValueError:
            return f"onnx-type-{elem_type}"


def _tensor_info(value: Any) -> TensorInfo:
    if not value.type.HasField("tensor_type"):
        return TensorInfo(value.name, value.type.WhichOneof("value") or "unknown", None)
    ttype = value.type.tensor_type
    if not ttype.HasField("shape"):
        return TensorInfo(value.name, numpy_dtype_name(ttype.elem_type), None)
    dims: list[Dim] = []
    for dim in ttype.shape.dim:
        if dim.HasField("dim_value") and dim.dim_value > 0:
            dims.append(int(dim.dim_value))
        elif dim.HasField("dim_param") and dim.dim_param:
            dims.append(str(dim.dim_param))
        else:
            dims.append(None)
    return TensorInfo(value.name, numpy_dtype_name(ttype.elem_type), tuple(dims))


def _subgraphs(graph: Any) -> Iterator[Any]:
    for node in graph.node:
        for attr in node.attribute:
            if attr.HasField("g"):
                yield attr.g
                yield from _subgraphs(attr.g)
            for sub in attr.graphs:
                yield sub
                yield from _subgraphs(sub)


def _external_locations(graphs: list[Any]) -> list[str]:
    from onnx import TensorProto

    found: set[str] = set()
    for graph in graphs:
        tensors = list(graph.initializer)
        for node in graph.node:
            for attr in node.attribute:
                if attr.HasField("t"):
                    tensors.append(attr.t)
                tensors.extend(attr.tensors)
        for tensor in tensors:
            if tensor.data_location == TensorProto.EXTERNAL:
                found.update(kv.value for kv in tensor.external_data if kv.key == "location")
    return sorted(found)


def _external_data(model_path: Path, location: str) -> ExternalData:
    # realpath, not Path.resolve: a symlink loop must not raise RuntimeError (it is left
    # unresolved, and its stat fails below).
    base = Path(os.path.realpath(model_path.parent))
    target = Path(os.path.realpath(model_path.parent / location))
    if base not in target.parents:
        # Never look outside the model's directory on the model's say-so.
        return ExternalData(location, False, None)
    try:
        st = target.stat()
    except OSError:
        return ExternalData(location, False, None)
    regular = stat.S_ISREG(st.st_mode)
    return ExternalData(location, regular, st.st_size if regular else None)


def describe_model(model_path: Path) -> ModelInfo:
    """Parse an ONNX model's structure; ModelError when the file is not an ONNX model."""
    model_path = Path(model_path)
    where = str(model_path)
    try:
        st = os.stat(model_path)
    except FileNotFoundError as exc:
        raise ModelError("ONNX model not found", path=where) from exc
    except OSError as exc:
        raise ModelError(f"cannot read ONNX model: {exc.strerror}", path=where) from exc
    if not stat.S_ISREG(st.st_mode):  # a FIFO or device would never end
        raise ModelError("ONNX model is not a regular file", path=where)
    import onnx  # declared dependency, imported here to keep `import trt_provision` light

    try:
        proto = onnx.load(where, load_external_data=False)
    except Exception as exc:  # DecodeError, OSError, ValueError...
        raise ModelError(
            f"not an ONNX model (cannot parse: {type(exc).__name__})", path=where
        ) from exc
    # Protobuf parses many short byte strings as an empty message: demand what every
    # exported model has, so a stray text or archive is refused instead of "a model".
    if proto.ir_version <= 0 or not proto.HasField("graph") or not proto.opset_import:
        raise ModelError(
            "not an ONNX model (no IR version, graph or opset import)", path=where
        )
    graph = proto.graph
    if not graph.output:
        raise ModelError("ONNX model has no graph outputs", path=where)
    initializers = {t.name for t in graph.initializer}
    subgraphs = list(_subgraphs(graph))
    return ModelInfo(
        path=model_path,
        size_bytes=st.st_size,
        ir_version=int(proto.ir_version),
        producer=" ".join(p for p in (proto.producer_name, proto.producer_version) if p),
        opsets={str(o.domain): int(o.version) for o in proto.opset_import},
        node_count=len(graph.node),
        subgraph_node_count=sum(len(g.node) for g in subgraphs),
        initializer_count=len(initializers),
        inputs=tuple(_tensor_info(v) for v in graph.input if v.name not in initializers),
        outputs=tuple(_tensor_info(v) for v in graph.output),
        external_data=tuple(
            _external_data(model_path, loc) for loc in _external_locations([graph, *subgraphs])
        ),
    )
