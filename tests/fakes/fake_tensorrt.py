"""A recording fake ``tensorrt`` module, one per TensorRT version, cut to the real API.

``make_fake_tensorrt(version)`` builds a module whose public names are taken from the
recorded API surface of that version (``tests/data/trt_api/<version>.json``, generated from
the real bindings by ``scripts/trt_api_surface.py``):

* every enum of the surface, with exactly its members;
* every class of the surface; the classes the runtime uses carry a behaviour, and each
  keeps only the members the real class of that version has (a member the fake implements
  but the version lacks is dropped, so code calling it fails here as it would there);
* the module functions and constants the runtime needs.

Every call is appended to a shared :class:`Recorder` (``fake_state(trt).recorder``) and any
call can be made to fail on demand (``recorder.fail("Builder.build_serialized_network")``).

Behaviours that follow TensorRT (each cites its source where it is implemented):

* the ONNX parser reads the model file it is given: layer names and types come from the
  graph's nodes, tensor dtypes from its value infos (:func:`write_model` writes a graph from
  a :class:`FakeModelSpec`); a DequantizeLinear whose input is not INT8 fails the parse;
  an op with no importer is looked up among the registered plugin creators, else fails;
* deprecated members warn (``DeprecationWarning``) from the version that deprecated them;
* plugin creators exist only once ``init_libnvinfer_plugins`` (or ``load_library``) has
  registered them, and an engine with plugin layers deserializes only then;
* TF32 is on in a fresh builder config; OBEY_PRECISION_CONSTRAINTS fails a build that cannot
  honour a layer's precision, PREFER falls back with a warning;
* a builder or runtime created with another logger than the first one logs a warning.

Which layers lack an FP16 kernel, ignore precision setters or cannot run on the DLA is a
property of the device, not of the graph: it stays on the :class:`FakeModelSpec` by name.
"""

from __future__ import annotations

import functools
import json
import types
import warnings
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "SUPPORTED_VERSIONS",
    "ApiSurface",
    "FakeLayerSpec",
    "FakeModelSpec",
    "FakeTensorSpec",
    "FakeTrtState",
    "Recorder",
    "fake_output",
    "fake_state",
    "load_surface",
    "make_fake_tensorrt",
    "write_model",
]

SURFACE_DIR = Path(__file__).resolve().parent.parent / "data" / "trt_api"
SUPPORTED_VERSIONS: tuple[str, ...] = ("10.3.0", "10.16.1.11", "11.4.0.106")
ENGINE_MAGIC = b"FAKETRT\x00"


# --------------------------------------------------------------------------- API surface


@dataclass(frozen=True)
class ApiSurface:
    """The recorded public API of one TensorRT version."""

    version: str
    classes: Mapping[str, Mapping[str, Any]]
    enums: Mapping[str, Mapping[str, int]]
    functions: Mapping[str, Sequence[str]]
    constants: Mapping[str, str]

    @property
    def top_level(self) -> frozenset[str]:
        names = set(self.functions) | set(self.constants)
        names |= {n for n in (*self.classes, *self.enums) if "." not in n}
        return frozenset(names)

    def class_members(self, name: str) -> frozenset[str]:
        """Own and inherited members of a class (bases resolved through the surface)."""
        cls = self.classes.get(name)
        if cls is None:
            return frozenset()
        members = set(cls["members"])
        for base in cls["bases"]:
            members |= self.class_members(base)
        return frozenset(members)

    def has(self, *path: str) -> bool:
        """Whether ``trt.<path[0]>.<path[1]>...`` exists in this version."""
        if not path or path[0] not in self.top_level:
            return False
        qual = path[0]
        for member in path[1:]:
            if qual in self.enums:
                return member in self.enums[qual] and member == path[-1]
            if qual not in self.classes or member not in self.class_members(qual):
                return False
            nested = f"{qual}.{member}"
            if nested in self.classes or nested in self.enums:
                qual = nested
            elif member != path[-1]:
                return False  # a method or property: nothing further is statically known
        return True


@functools.cache
def load_surface(version: str) -> ApiSurface:
    data = json.loads((SURFACE_DIR / f"{version}.json").read_text())
    return ApiSurface(
        version=data["version"],
        classes=data["classes"],
        enums=data["enums"],
        functions=data["functions"],
        constants=data["constants"],
    )


# --------------------------------------------------------------------------- recorder


@dataclass(frozen=True)
class Call:
    name: str
    args: tuple[Any, ...]


@dataclass
class Recorder:
    """Ordered log of calls into the fakes; raises on the calls told to fail."""

    calls: list[Call] = field(default_factory=list)
    failures: dict[str, BaseException] = field(default_factory=dict)

    def record(self, name: str, *args: Any) -> None:
        self.calls.append(Call(name, args))
        exc = self.failures.get(name)
        if exc is not None:
            raise exc

    def fail(self, name: str, exc: BaseException | None = None) -> None:
        self.failures[name] = exc or RuntimeError(f"injected failure in {name}")

    @property
    def names(self) -> list[str]:
        return [c.name for c in self.calls]

    def calls_to(self, name: str) -> list[Call]:
        return [c for c in self.calls if c.name == name]

    def clear(self) -> None:
        self.calls.clear()


# --------------------------------------------------------------------------- model spec


@dataclass(frozen=True)
class FakeTensorSpec:
    name: str
    shape: tuple[int, ...]  # -1 for a dynamic dimension
    dtype: str = "FLOAT"


@dataclass(frozen=True)
class FakeLayerSpec:
    name: str
    type: str = "CONVOLUTION"
    output_dtypes: tuple[str, ...] = ("FLOAT",)
    # False: TensorRT ignores precision set on this layer (the setter does not take).
    constrainable: bool = True
    # False: no FP16 kernel exists for this layer (OBEY fails the build, PREFER falls back).
    half_kernel: bool = True
    # False: the DLA cannot run this layer (a DLA build needs GPU_FALLBACK).
    dla_capable: bool = True
    # The ONNX op this layer is written as (default: derived from ``type``).
    op_type: str = ""
    # The ONNX op's attributes / extra inputs ``write_model`` writes (dtype of its first
    # input for DequantizeLinear, e.g. "INT32", and its zero point).
    input_dtype: str = ""


@dataclass(frozen=True)
class FakeModelSpec:
    inputs: tuple[FakeTensorSpec, ...] = (FakeTensorSpec("input", (-1, 3, 8, 8)),)
    outputs: tuple[FakeTensorSpec, ...] = (FakeTensorSpec("output", (-1, 10)),)
    layers: tuple[FakeLayerSpec, ...] = (
        FakeLayerSpec("conv1"),
        FakeLayerSpec("router_gate", "MATRIX_MULTIPLY"),
        FakeLayerSpec("kan_mix", "ELEMENTWISE"),
        FakeLayerSpec("router_shape", "SHAPE", ("INT64",)),
        FakeLayerSpec("fc", "MATRIX_MULTIPLY"),
    )
    parser_errors: tuple[str, ...] = ()


@dataclass
class FakeTrtState:
    """Test-facing controls of one fake module (not part of the module's API)."""

    version: str
    surface: ApiSurface
    recorder: Recorder
    model: FakeModelSpec = field(default_factory=FakeModelSpec)
    # Creators libnvinfer_plugin provides; registered by init_libnvinfer_plugins.
    plugins: list[tuple[str, str, str]] = field(default_factory=list)
    # Plugin libraries on disk (path -> creators); registered by load_library.
    plugin_libraries: dict[str, list[tuple[str, str, str]]] = field(default_factory=dict)
    registered: set[tuple[str, str, str]] = field(default_factory=set)
    dla_cores: int = 0
    # Names of I/O tensors the parser marks as shape tensors (host memory).
    shape_tensors: frozenset[str] = frozenset()
    timing_cache_accepted: bool = True
    timing_cache_combines: bool = True
    # What each build found in its attached timing cache (None: no cache attached), so a
    # test can tell a build that loaded a cache from one that started empty.
    timing_cache_at_build: list[frozenset[str] | None] = field(default_factory=list)
    first_logger: Any = None
    warnings_logged: list[str] = field(default_factory=list)
    device_memory_bytes: int = 1 << 20
    build_returns_none: bool = False
    # (severity, text) the builder logs through its logger on every build, e.g. a Jetson
    # build that runs out of memory (open-mmlab/mmdeploy#1059: "Device memory is insufficient
    # to use tactic" warnings, then "Could not find any implementation for node ...").
    build_messages: list[tuple[str, str]] = field(default_factory=list)
    context_returns_none: bool = False
    execute_returns: bool = True
    # IExecutionContext.set_input_shape / set_tensor_address return these (False: refused).
    set_input_shape_returns: bool = True
    set_tensor_address_returns: bool = True
    # Outputs whose -1 dimensions stay -1 once input shapes are set (data-dependent shapes).
    data_dependent_outputs: frozenset[str] = frozenset()
    # What the calibrator put on the device for each batch, read back by the fake builder.
    calibration_fed: list[dict[str, Any]] = field(default_factory=list)
    cuda: Any = None  # a FakeCudaRuntime: execute writes outputs into its memory
    module: Any = None

    def new(self, cls_name: str, **kwargs: Any) -> Any:
        cls = getattr(self.module, cls_name)
        obj = cls.__new__(cls)
        obj._setup(**kwargs)
        return obj

    def enum(self, enum_name: str, member: str) -> Any:
        return getattr(getattr(self.module, enum_name), member)

    def rec(self, name: str, *args: Any) -> None:
        self.recorder.record(name, *args)

    def deprecated(self, member: str) -> None:
        """Warn like ``utils::deprecateMember`` (python/src/utils.h of NVIDIA/TensorRT:
        ``PyErr_WarnEx(PyExc_DeprecationWarning, ...)``) from the deprecating version on."""
        entry = DEPRECATED_MEMBERS.get(member)
        if entry is not None and _version_tuple(self.version) >= entry[0]:
            (major, minor), successor = entry
            warnings.warn(f"{member}: Deprecated in TensorRT {major}.{minor}. Superseded by "
                          f"{successor}.", DeprecationWarning, stacklevel=3)

    def log_warning(self, text: str) -> None:
        self.warnings_logged.append(text)

    def use_logger(self, logger: Any, who: str) -> None:
        """TensorRT keeps the first logger of the process and warns about a different one
        (NvInferRuntime.h, createInferRuntime/createInferBuilder; the core library logs
        "The logger passed into ... differs from one already provided")."""
        if self.first_logger is None:
            self.first_logger = logger
        elif logger is not self.first_logger:
            self.log_warning(f"The logger passed into {who} differs from one already provided")


# Member -> (the TensorRT version that deprecates it, what supersedes it), as the bindings
# say (NVIDIA/TensorRT v10.16 python/src/infer/pyCore.cpp: int8_calibrator get/set,
# set/get_calibration_profile "Deprecated in TensorRT 10.1. Superseded by explicit
# quantization."; python/src/infer/pyGraph.cpp: the ILayer.precision *setter*,
# precision_is_set, reset_precision, set_output_type, output_type_is_set "Deprecated in
# TensorRT 10.12. Superseded by strong typing." The precision getter and get_output_type
# are not deprecated).
DEPRECATED_MEMBERS: dict[str, tuple[tuple[int, int], str]] = {
    "IBuilderConfig.int8_calibrator": ((10, 1), "explicit quantization"),
    "IBuilderConfig.set_calibration_profile": ((10, 1), "explicit quantization"),
    "IBuilderConfig.get_calibration_profile": ((10, 1), "explicit quantization"),
    "ILayer.precision": ((10, 12), "strong typing"),
    "ILayer.precision_is_set": ((10, 12), "strong typing"),
    "ILayer.reset_precision": ((10, 12), "strong typing"),
    "ILayer.set_output_type": ((10, 12), "strong typing"),
    "ILayer.output_type_is_set": ((10, 12), "strong typing"),
}


def _version_tuple(version: str) -> tuple[int, int]:
    major, minor = [*version.split("."), "0"][:2]
    return int(major), int(minor)


def fake_state(trt: Any) -> FakeTrtState:
    state: FakeTrtState = trt._fake_state
    return state


# --------------------------------------------------------------------------- enums


class _EnumValue:
    __slots__ = ("_enum", "_name", "_value")

    def __init__(self, enum: str, name: str, value: int) -> None:
        self._enum, self._name, self._value = enum, name, value

    @property
    def name(self) -> str:
        return self._name

    @property
    def value(self) -> int:
        return self._value

    def __int__(self) -> int:
        return self._value

    def __index__(self) -> int:
        return self._value

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, _EnumValue)
            and other._enum == self._enum
            and other._value == self._value
        )

    def __hash__(self) -> int:
        return hash((self._enum, self._value))

    def __repr__(self) -> str:
        return f"<{self._enum}.{self._name}: {self._value}>"

    def __str__(self) -> str:
        return f"{self._enum}.{self._name}"


def _make_enum(qualname: str, members: Mapping[str, int]) -> type:
    short = qualname.rsplit(".", 1)[-1]
    values = {name: _EnumValue(short, name, value) for name, value in members.items()}
    ns: dict[str, Any] = dict(values)
    ns["__members__"] = dict(values)
    return type(short, (), ns)


# --------------------------------------------------------------------------- behaviours
# Implementations never call super(): their members are copied into generated classes.


class _Obj:
    _st: FakeTrtState

    def _setup(self, **kwargs: Any) -> None:
        for key, value in kwargs.items():
            setattr(self, f"_{key}", value)


class _Logger(_Obj):
    def __init__(self, min_severity: Any = None) -> None:
        self._st.rec("Logger", min_severity)
        self._min_severity = min_severity

    @property
    def min_severity(self) -> Any:
        return self._min_severity

    @min_severity.setter
    def min_severity(self, value: Any) -> None:
        self._min_severity = value

    def log(self, severity: Any, msg: str) -> None:
        self._st.rec("Logger.log", severity, msg)


class _Tensor(_Obj):
    _name: str
    _shape: tuple[int, ...]
    _dtype: Any

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def shape(self) -> tuple[int, ...]:
        return tuple(self._shape)

    @property
    def dtype(self) -> Any:
        return self._dtype

    @property
    def is_shape_tensor(self) -> bool:
        return self._name in self._st.shape_tensors


class _Layer(_Obj):
    _name: str
    _type: Any
    _outputs: list[Any]
    _constrainable: bool
    _precision: Any = None
    _output_types: dict[int, Any]

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def type(self) -> Any:
        return self._type

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> Any:
        return self._outputs[index]

    @property
    def precision(self) -> Any:  # the getter is not deprecated, only the setter
        return self._precision if self._precision is not None else self._st.enum(
            "DataType", "FLOAT"
        )

    @precision.setter
    def precision(self, value: Any) -> None:
        self._st.deprecated("ILayer.precision")
        self._st.rec("ILayer.precision", self._name, value)
        if self._constrainable:
            self._precision = value

    @property
    def precision_is_set(self) -> bool:
        self._st.deprecated("ILayer.precision_is_set")
        return self._precision is not None

    def reset_precision(self) -> None:
        self._st.deprecated("ILayer.reset_precision")
        self._precision = None

    def set_output_type(self, index: int, dtype: Any) -> None:
        self._st.deprecated("ILayer.set_output_type")
        self._st.rec("ILayer.set_output_type", self._name, index, dtype)
        if self._constrainable:
            self._output_types[index] = dtype

    def get_output_type(self, index: int) -> Any:  # not deprecated
        return self._output_types.get(index, self._outputs[index].dtype)

    def output_type_is_set(self, index: int) -> bool:
        self._st.deprecated("ILayer.output_type_is_set")
        return index in self._output_types


class _Network(_Obj):
    _flags: int
    _layers: list[Any]
    _inputs: list[Any]
    _outputs: list[Any]
    _name: str

    def _setup(self, **kwargs: Any) -> None:
        self._flags = kwargs.get("flags", 0)
        self._layers, self._inputs, self._outputs, self._name = [], [], [], "network"

    @property
    def name(self) -> str:
        return self._name

    @name.setter
    def name(self, value: str) -> None:
        self._name = value

    @property
    def num_layers(self) -> int:
        return len(self._layers)

    def get_layer(self, index: int) -> Any:
        return self._layers[index]

    @property
    def num_inputs(self) -> int:
        return len(self._inputs)

    def get_input(self, index: int) -> Any:
        return self._inputs[index]

    @property
    def num_outputs(self) -> int:
        return len(self._outputs)

    def get_output(self, index: int) -> Any:
        return self._outputs[index]

    def add_input(self, name: str, dtype: Any, shape: Sequence[int]) -> Any:
        self._st.rec("INetworkDefinition.add_input", name, dtype, tuple(shape))
        tensor = self._st.new("ITensor", name=name, shape=tuple(shape), dtype=dtype)
        self._inputs.append(tensor)
        return tensor

    def add_identity(self, input: Any) -> Any:
        self._st.rec("INetworkDefinition.add_identity", input.name)
        index = len(self._layers)
        out = self._st.new(
            "ITensor", name=f"(Unnamed Layer* {index}) [Identity]_output",
            shape=input.shape, dtype=input.dtype,
        )
        layer = self._st.new(
            "ILayer", name=f"(Unnamed Layer* {index}) [Identity]",
            type=self._st.enum("LayerType", "IDENTITY"), outputs=[out],
            constrainable=True, output_types={},
        )
        self._layers.append(layer)
        return layer

    def mark_output(self, tensor: Any) -> None:
        self._st.rec("INetworkDefinition.mark_output", tensor.name)
        self._outputs.append(tensor)


class _ParserError(_Obj):
    _text: str
    _index: int
    _node_name: str = ""
    _op: str = "FakeOp"

    def desc(self) -> str:
        return self._text

    def code(self) -> Any:
        return self._st.enum("ErrorCode", "UNSUPPORTED_NODE")

    def node(self) -> int:
        return self._index

    def node_name(self) -> str:
        return self._node_name or f"node_{self._index}"

    def node_operator(self) -> str:
        return self._op


# ONNX op -> the layer the parser adds for it (onnx/onnx-tensorrt importers.cpp).
_OP_LAYERS: dict[str, str] = {
    "Conv": "CONVOLUTION", "MatMul": "MATRIX_MULTIPLY", "Gemm": "MATRIX_MULTIPLY",
    "Add": "ELEMENTWISE", "Mul": "ELEMENTWISE", "Sub": "ELEMENTWISE", "Div": "ELEMENTWISE",
    "Relu": "ACTIVATION", "Sigmoid": "ACTIVATION", "Tanh": "ACTIVATION",
    "Softmax": "SOFTMAX", "Shape": "SHAPE", "Identity": "IDENTITY", "Cast": "CAST",
    "QuantizeLinear": "QUANTIZE", "DequantizeLinear": "DEQUANTIZE", "Reshape": "SHUFFLE",
    "Transpose": "SHUFFLE", "Gather": "GATHER", "Concat": "CONCATENATION",
    "ReduceMean": "REDUCE", "TopK": "TOPK", "Slice": "SLICE",
    "Flatten": "SHUFFLE", "Unsqueeze": "SHUFFLE", "Squeeze": "SHUFFLE",
    "GlobalAveragePool": "POOLING", "AveragePool": "POOLING", "MaxPool": "POOLING",
    "Max": "ELEMENTWISE", "Min": "ELEMENTWISE", "Pow": "ELEMENTWISE",
    "ReduceSum": "REDUCE", "ReduceMax": "REDUCE", "Clip": "ACTIVATION",
    "Exp": "UNARY", "Log": "UNARY", "Sqrt": "UNARY", "Abs": "UNARY", "Neg": "UNARY",
    "Erf": "UNARY", "Where": "SELECT", "Resize": "RESIZE", "Pad": "PADDING",
    "BatchNormalization": "SCALE", "LayerNormalization": "NORMALIZATION",
}
# Importers of the demo corpus's remaining ops (onnx/onnx-tensorrt, onnxOpImporters.cpp,
# release/10.x): GlobalAveragePool goes through globalPoolingHelper to addReduce(kAVG),
# ReduceSum to addReduce, Max to addElementWise(kMAX), Flatten and Unsqueeze to addShuffle.
_OP_LAYERS.update({
    "GlobalAveragePool": "REDUCE", "ReduceSum": "REDUCE", "Max": "ELEMENTWISE",
    "Flatten": "SHUFFLE", "Unsqueeze": "SHUFFLE",
})
_LAYER_OPS = {layer: op for op, layer in reversed(list(_OP_LAYERS.items()))}
# ONNX TensorProto element type -> TensorRT DataType name.
_ONNX_TYPES: dict[int, str] = {
    1: "FLOAT", 2: "UINT8", 3: "INT8", 6: "INT32", 7: "INT64", 9: "BOOL", 10: "HALF",
    16: "BF16", 17: "FP8", 22: "INT4",
}
_DQ_INPUTS = frozenset({"INT8", "FP8", "INT4"})


class _OnnxParser(_Obj):
    """Reads the ONNX graph it is given (onnx/onnx-tensorrt ModelImporter.cpp):

    * one layer per node, named after the node and made unique with ``_<n>``
      (ImporterContext.cpp, registerLayer / generateUniqueName); Constant nodes add none;
    * layer output dtypes from the graph's value infos (Cast: its ``to``; Shape: INT64;
      QuantizeLinear: INT8);
    * DequantizeLinear takes only INT8/FP8/INT4 inputs (NvInfer.h, addDequantize): any other
      input type is a parse error naming the node;
    * an op without an importer is looked up among the registered plugin creators (the
      parser's plugin fallback); not found, it is a parse error "No importer registered".
    """

    def __init__(self, network: Any, logger: Any) -> None:
        self._st.rec("OnnxParser", network, logger)
        self._network = network
        self._errors: list[Any] = []

    def _fail(self, text: str, index: int, node: str = "", op: str = "FakeOp") -> bool:
        self._errors.append(self._st.new("ParserError", text=text, index=index,
                                         node_name=node, op=op))
        return False

    def _parse(self, model: Any) -> bool:
        st = self._st
        self._errors = []
        for i, text in enumerate(st.model.parser_errors):  # injected by a test
            self._fail(text, i)
        if self._errors:
            return False
        graph = model.graph
        types: dict[str, str] = {}
        constants = {t.name: t for t in graph.initializer}
        for t in graph.initializer:
            types[t.name] = _ONNX_TYPES.get(t.data_type, "FLOAT")
        for info in (*graph.input, *graph.value_info, *graph.output):
            if info.type.HasField("tensor_type"):
                types[info.name] = _ONNX_TYPES.get(info.type.tensor_type.elem_type, "FLOAT")
        net = self._network
        for info in graph.input:
            if info.name in constants:
                continue
            dims = tuple(d.dim_value if d.dim_value > 0 else -1
                         for d in info.type.tensor_type.shape.dim)
            net._inputs.append(st.new("ITensor", name=info.name, shape=dims,
                                      dtype=st.enum("DataType", types[info.name])))
        registered = {name for name, _v, _ns in st.registered}
        used: dict[str, int] = {}
        for index, node in enumerate(graph.node):
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value":
                        types[node.output[0]] = _ONNX_TYPES.get(attr.t.data_type, "FLOAT")
                continue
            base = node.name or f"node_of_{node.output[0]}"
            count = used.get(base, 0)
            used[base] = count + 1
            name = base if count == 0 else f"{base}_{count}"
            layer_type = _OP_LAYERS.get(node.op_type)
            plugin = None
            if layer_type is None:
                if node.op_type not in registered:
                    return self._fail(f"No importer registered for op: {node.op_type}",
                                      index, base, node.op_type)
                layer_type, plugin = "PLUGIN_V2", node.op_type
            if node.op_type == "DequantizeLinear":
                found = types.get(node.input[0], "FLOAT")
                if found not in _DQ_INPUTS:
                    return self._fail(
                        f"Dequantize input must be INT8, FP8 or INT4, got {found}",
                        index, base, node.op_type)
            out_types = []
            for out in node.output:
                if node.op_type == "Cast":
                    to = next(a.i for a in node.attribute if a.name == "to")
                    types[out] = _ONNX_TYPES.get(to, "FLOAT")
                elif node.op_type == "Shape":
                    types[out] = "INT64"
                elif node.op_type == "QuantizeLinear":
                    types[out] = "INT8"
                out_types.append(types.setdefault(out, "FLOAT"))
            outs = [st.new("ITensor", name=o, shape=(-1,), dtype=st.enum("DataType", t))
                    for o, t in zip(node.output, out_types, strict=True)]
            spec = {layer.name: layer for layer in st.model.layers}.get(name)
            layer = st.new("ILayer", name=name, type=st.enum("LayerType", layer_type),
                           outputs=outs, constrainable=spec.constrainable if spec else True,
                           output_types={})
            layer._plugin = plugin
            net._layers.append(layer)
        for info in graph.output:
            dims = tuple(d.dim_value if d.dim_value > 0 else -1
                         for d in info.type.tensor_type.shape.dim)
            net._outputs.append(st.new("ITensor", name=info.name, shape=dims,
                                       dtype=st.enum("DataType", types[info.name])))
        return True

    def parse_from_file(self, model: str) -> bool:
        import onnx

        self._st.rec("OnnxParser.parse_from_file", model)
        try:
            proto = onnx.load(model, load_external_data=False)
        except Exception as exc:  # the parser reports an unreadable file as an error
            return self._fail(f"Failed to parse ONNX model from file: {model}: {exc}", 0)
        return self._parse(proto)

    def parse(self, model: bytes, path: str | None = None) -> bool:
        import onnx

        self._st.rec("OnnxParser.parse", len(model))
        try:
            proto = onnx.load_from_string(bytes(model))
        except Exception as exc:
            return self._fail(f"Failed to parse ONNX model: {exc}", 0)
        return self._parse(proto)

    @property
    def num_errors(self) -> int:
        return len(self._errors)

    def get_error(self, index: int) -> Any:
        return self._errors[index]

    def clear_errors(self) -> None:
        self._errors = []


_TRT_TO_ONNX = {name: code for code, name in _ONNX_TYPES.items()}


def write_model(spec: FakeModelSpec, path: Path) -> Path:
    """An ONNX graph with the spec's inputs, one node per layer (named like the layer) and
    its outputs, typed through value infos. It is what the fake parser reads; it is not
    meant to run in ONNX Runtime."""
    import onnx
    from onnx import helper

    def value(name: str, dtype: str, shape: Sequence[int]) -> Any:
        dims = [d if d >= 0 else "N" for d in shape]
        return helper.make_tensor_value_info(name, _TRT_TO_ONNX[dtype], dims)

    inputs = [value(t.name, t.dtype, t.shape) for t in spec.inputs]
    nodes: list[Any] = []
    infos: list[Any] = []
    inits: list[Any] = []
    previous = spec.inputs[0].name if spec.inputs else ""
    for layer in spec.layers:
        op = layer.op_type or _LAYER_OPS.get(layer.type, "Identity")
        outs = [f"{layer.name}_out{i}" for i in range(len(layer.output_dtypes))]
        node_inputs = [previous]
        attrs: dict[str, Any] = {}
        if op == "DequantizeLinear":
            dq_in = f"{layer.name}_q"
            dtype = layer.input_dtype or "INT8"
            inits.append(helper.make_tensor(dq_in, _TRT_TO_ONNX[dtype], [1], [1]))
            inits.append(helper.make_tensor(f"{layer.name}_s", 1, [], [0.5]))
            node_inputs = [dq_in, f"{layer.name}_s"]
        elif op == "Cast":
            attrs["to"] = _TRT_TO_ONNX[layer.output_dtypes[0]]
        nodes.append(helper.make_node(op, node_inputs, outs, name=layer.name, **attrs))
        infos += [value(o, dt, (-1,)) for o, dt in zip(outs, layer.output_dtypes, strict=True)]
        previous = outs[0]
    outputs = [value(t.name, t.dtype, t.shape) for t in spec.outputs]
    graph = helper.make_graph(nodes, "fake", inputs, outputs, initializer=inits,
                              value_info=infos)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


class _Profile(_Obj):
    def _setup(self, **kwargs: Any) -> None:
        self._shapes: dict[str, tuple[tuple[int, ...], ...]] = {}

    def set_shape(self, input: str, min: Any, opt: Any, max: Any) -> None:
        shapes = (tuple(min), tuple(opt), tuple(max))
        self._st.rec("IOptimizationProfile.set_shape", input, *shapes)
        self._shapes[input] = shapes

    def get_shape(self, input: str) -> list[tuple[int, ...]]:
        return list(self._shapes.get(input, ()))


class _HostMemory(_Obj):
    _data: bytes

    @property
    def nbytes(self) -> int:
        return len(self._data)

    @property
    def dtype(self) -> Any:
        return self._st.enum("DataType", "UINT8") if hasattr(
            self._st.module.DataType, "UINT8"
        ) else self._st.enum("DataType", "INT8")

    def __bytes__(self) -> bytes:
        return bytes(self._data)


class _TimingCache(_Obj):
    _entries: set[str]

    def serialize(self) -> Any:
        self._st.rec("ITimingCache.serialize")
        data = "\n".join(sorted(self._entries)).encode()
        return self._st.new("IHostMemory", data=data)

    def combine(self, input_cache: Any, ignore_mismatch: bool) -> bool:
        # False on a mismatched cache, leaving this one unchanged (NvInfer.h,
        # ITimingCache::combine).
        self._st.rec("ITimingCache.combine", ignore_mismatch)
        if not self._st.timing_cache_combines:
            return False
        self._entries |= input_cache._entries
        return True

    def reset(self) -> bool:
        self._entries = set()
        return True


class _BuilderConfig(_Obj):
    def _setup(self, **kwargs: Any) -> None:
        # TF32 is on in a fresh config (NvInfer.h, BuilderFlag::kTF32: "enabled by default").
        self._flags: set[str] = {"TF32"} if hasattr(self._st.module.BuilderFlag, "TF32") else set()
        self._device_type = self._st.enum("DeviceType", "GPU")
        self._dla_core = -1
        self._pools: dict[str, int] = {}
        self._profiles: list[Any] = []
        self._level = 3
        self._hwc = self._st.enum("HardwareCompatibilityLevel", "NONE")
        self._calibrator: Any = None
        self._calibration_profile: Any = None
        self._timing_cache: Any = None
        self._verbosity: Any = None

    def set_flag(self, flag: Any) -> None:
        self._st.rec("IBuilderConfig.set_flag", flag.name)
        self._flags.add(flag.name)

    def clear_flag(self, flag: Any) -> None:
        self._st.rec("IBuilderConfig.clear_flag", flag.name)
        self._flags.discard(flag.name)

    def get_flag(self, flag: Any) -> bool:
        return flag.name in self._flags

    def set_memory_pool_limit(self, pool: Any, pool_size: int) -> None:
        self._st.rec("IBuilderConfig.set_memory_pool_limit", pool.name, pool_size)
        self._pools[pool.name] = pool_size

    def get_memory_pool_limit(self, pool: Any) -> int:
        return self._pools.get(pool.name, 0)

    def add_optimization_profile(self, profile: Any) -> int:
        self._st.rec("IBuilderConfig.add_optimization_profile", dict(profile._shapes))
        self._profiles.append(profile)
        return len(self._profiles) - 1

    @property
    def num_optimization_profiles(self) -> int:
        return len(self._profiles)

    @property
    def builder_optimization_level(self) -> int:
        return self._level

    @builder_optimization_level.setter
    def builder_optimization_level(self, value: int) -> None:
        self._st.rec("IBuilderConfig.builder_optimization_level", value)
        self._level = value

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._hwc

    @hardware_compatibility_level.setter
    def hardware_compatibility_level(self, value: Any) -> None:
        self._st.rec("IBuilderConfig.hardware_compatibility_level", value.name)
        self._hwc = value

    @property
    def int8_calibrator(self) -> Any:
        self._st.deprecated("IBuilderConfig.int8_calibrator")
        return self._calibrator

    @int8_calibrator.setter
    def int8_calibrator(self, value: Any) -> None:
        self._st.deprecated("IBuilderConfig.int8_calibrator")
        self._st.rec("IBuilderConfig.int8_calibrator", value)
        self._calibrator = value

    def set_calibration_profile(self, profile: Any) -> bool:
        self._st.deprecated("IBuilderConfig.set_calibration_profile")
        self._st.rec("IBuilderConfig.set_calibration_profile", dict(profile._shapes))
        self._calibration_profile = profile
        return True

    def get_calibration_profile(self) -> Any:
        self._st.deprecated("IBuilderConfig.get_calibration_profile")
        return self._calibration_profile

    @property
    def default_device_type(self) -> Any:
        return self._device_type

    @default_device_type.setter
    def default_device_type(self, value: Any) -> None:
        self._st.rec("IBuilderConfig.default_device_type", value.name)
        self._device_type = value

    @property
    def DLA_core(self) -> int:
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, value: int) -> None:
        self._st.rec("IBuilderConfig.DLA_core", value)
        self._dla_core = int(value)

    @property
    def profiling_verbosity(self) -> Any:
        return self._verbosity

    @profiling_verbosity.setter
    def profiling_verbosity(self, value: Any) -> None:
        self._verbosity = value

    @property
    def progress_monitor(self) -> Any:
        return getattr(self, "_monitor", None)

    @progress_monitor.setter
    def progress_monitor(self, monitor: Any) -> None:
        self._st.rec("IBuilderConfig.progress_monitor", monitor)
        self._monitor = monitor

    def create_timing_cache(self, serialized_timing_cache: Any) -> Any:
        data = bytes(serialized_timing_cache)
        self._st.rec("IBuilderConfig.create_timing_cache", len(data))
        entries = {line for line in data.decode().split("\n") if line}
        return self._st.new("ITimingCache", entries=entries)

    def set_timing_cache(self, cache: Any, ignore_mismatch: bool) -> bool:
        # Returns false when the cache does not fit this device/version (NvInfer.h,
        # IBuilderConfig::setTimingCache).
        self._st.rec("IBuilderConfig.set_timing_cache", ignore_mismatch)
        if not self._st.timing_cache_accepted:
            return False
        self._timing_cache = cache
        return True

    def get_timing_cache(self) -> Any:
        return self._timing_cache


class _Builder(_Obj):
    def __init__(self, logger: Any) -> None:
        self._logger = logger
        self._st.rec("Builder", logger)
        self._st.use_logger(logger, "createInferBuilder")

    @property
    def num_DLA_cores(self) -> int:
        return self._st.dla_cores

    def create_network(self, flags: int = 0) -> Any:
        self._st.rec("Builder.create_network", flags)
        return self._st.new("INetworkDefinition", flags=flags)

    def create_builder_config(self) -> Any:
        self._st.rec("Builder.create_builder_config")
        return self._st.new("IBuilderConfig")

    def create_optimization_profile(self) -> Any:
        self._st.rec("Builder.create_optimization_profile")
        return self._st.new("IOptimizationProfile")

    @property
    def platform_has_fast_fp16(self) -> bool:
        return True

    @property
    def platform_has_fast_int8(self) -> bool:
        return True

    def get_plugin_registry(self) -> Any:
        return _registry(self._st)

    def build_serialized_network(self, network: Any, config: Any) -> Any:
        st = self._st
        st.rec("Builder.build_serialized_network", network, config)
        for severity, text in st.build_messages:
            self._logger.log(getattr(st.module.ILogger, severity), text)
        if st.build_returns_none:
            return None
        if not _drive_progress_monitor(st, config, network):
            return None
        if (_fails_profiles(st, config, network) or _fails_strong_typing(st, config, network)
                or _fails_constraints(st, config, network) or _fails_dla(st, config, network)):
            return None
        calibration = None
        if "INT8" in config._flags and config._calibrator is not None:
            calibration = _drive_calibrator(st, config, network)
        st.timing_cache_at_build.append(
            None if config._timing_cache is None else frozenset(config._timing_cache._entries))
        if config._timing_cache is not None:
            config._timing_cache._entries.add(f"{network.name}:{network.num_layers}")
        profile = config._profiles[0]._shapes if config._profiles else {}
        blob = {
            "version": st.version,
            "flags": sorted(config._flags),
            "network_flags": network._flags,
            "hwc": config._hwc.name,
            "calibration": calibration,
            "inputs": [
                [t.name, list(t.shape), t.dtype.name,
                 [list(s) for s in profile.get(t.name, ((), (), ()))]]
                for t in network._inputs
            ],
            "outputs": [[t.name, list(t.shape), t.dtype.name] for t in network._outputs],
            "layers": [
                [layer.name, layer._precision.name if layer._precision is not None else None]
                for layer in network._layers
            ],
            "plugins": sorted({layer._plugin for layer in network._layers
                               if getattr(layer, "_plugin", None)}),
            "device_type": config._device_type.name,
            "shape_io": sorted(t.name for t in network._inputs if t.is_shape_tensor),
            "dla_core": config._dla_core,
        }
        return st.new("IHostMemory", data=ENGINE_MAGIC + json.dumps(blob).encode())


def _drive_progress_monitor(st: FakeTrtState, config: Any, network: Any) -> bool:
    """Report phases to the config's IProgressMonitor like the builder does (NvInfer.h
    v10.3.0, IProgressMonitor: phaseStart with a nullptr parent for a top-level phase,
    stepComplete per step, "true to continue to the next step or false to stop the build",
    phaseFinish also when the build is cancelled). A monitor that raises cancels the build:
    the binding's trampoline returns false then (python/src/infer/pyCore.cpp v10.16,
    PyProgressMonitor::stepComplete). Returns False for a cancelled build."""
    monitor = getattr(config, "_monitor", None)
    if monitor is None:
        return True
    phases = (("Building engine", None, 2), ("Optimizing layers", "Building engine",
                                             max(network.num_layers, 1)))
    for name, parent, steps in phases:
        monitor.phase_start(name, parent, steps)
        for step in range(steps):
            try:
                go_on = bool(monitor.step_complete(name, step))
            except Exception:
                go_on = False
            if not go_on:
                monitor.phase_finish(name)
                st.log_warning(f"[E] build cancelled by the progress monitor in {name!r}")
                return False
        monitor.phase_finish(name)
    return True


def _fails_profiles(st: FakeTrtState, config: Any, network: Any) -> bool:
    """Profiles are fully validated at build time: rank equal to the input's, and a static
    network dimension equal in min, opt and max; a dynamic input needs a profile
    (NvInferRuntime.h v10.3.0, IOptimizationProfile::setDimensions conditions (1)-(3);
    NvInfer.h, IBuilderConfig::addOptimizationProfile)."""
    for tensor in network._inputs:
        dims = tuple(tensor.shape)
        shapes = [p._shapes[tensor.name] for p in config._profiles if tensor.name in p._shapes]
        if not shapes and any(d < 0 for d in dims):
            st.log_warning(f"[E] dynamic input {tensor.name} has no optimization profile")
            return True
        for triple in shapes:
            for shape in triple:
                if len(shape) != len(dims) or any(
                        d >= 0 and s != d for s, d in zip(shape, dims, strict=True)):
                    st.log_warning(f"[E] profile {shape} of {tensor.name} does not fit {dims}")
                    return True
    return False


# Precision flags TensorRT refuses on a strongly typed network.
_TYPING_FLAGS = ("FP16", "INT8", "BF16", "FP8", "INT4", "FP4")


def _fails_strong_typing(st: FakeTrtState, config: Any, network: Any) -> bool:
    """A strongly typed network takes its precision from the graph: a precision builder flag
    is an API usage error and the build returns null (trtexec drops them with "not allowed if
    graph is strongly typed": NVIDIA/TensorRT v10.3.0 samples/common/sampleOptions.cpp,
    BuildOptions::parse; the builder's own check "Parameter check failed, condition:
    !config.getFlag(BuilderFlag::kFP16)" is quoted in NVIDIA/TensorRT-RTX#2). Setting layer
    precision or output types is not allowed either (include/NvInfer.h v10.16,
    NetworkDefinitionCreationFlag::kSTRONGLY_TYPED)."""
    strong = getattr(st.module.NetworkDefinitionCreationFlag, "STRONGLY_TYPED", None)
    if strong is None or not network._flags & (1 << int(strong)):
        return False
    flags = sorted(set(_TYPING_FLAGS) & config._flags)
    pinned = [layer.name for layer in network._layers
              if layer._precision is not None or layer._output_types]
    if flags or pinned:
        st.log_warning(f"[E] Error Code 3: API Usage Error (strongly typed network with "
                       f"precision flags {flags} / layer precision on {pinned})")
        return True
    return False


def _fails_constraints(st: FakeTrtState, config: Any, network: Any) -> bool:
    """A HALF constraint on a layer without an FP16 kernel: OBEY fails the build, PREFER
    falls back to another precision with a warning (NvInfer.h, BuilderFlag::
    kOBEY_PRECISION_CONSTRAINTS / kPREFER_PRECISION_CONSTRAINTS)."""
    no_half = {layer.name for layer in st.model.layers if not layer.half_kernel}
    for layer in network._layers:
        if layer._precision is None or layer._precision.name != "HALF":
            continue
        if layer.name not in no_half:
            continue
        if "OBEY_PRECISION_CONSTRAINTS" in config._flags:
            st.log_warning(f"[E] No implementation of layer {layer.name} obeys the requested "
                           "constraints")
            return True
        st.log_warning(f"[W] Layer {layer.name}: precision constraint not met, falling back")
        layer._precision = None
    return False


def _fails_dla(st: FakeTrtState, config: Any, network: Any) -> bool:
    """Without GPU_FALLBACK a DLA build fails on a layer the DLA cannot run (NvInfer.h,
    BuilderFlag::kGPU_FALLBACK)."""
    if config._device_type.name != "DLA":
        return False
    if config._dla_core < 0 or config._dla_core >= st.dla_cores:
        st.log_warning(f"[E] DLA core {config._dla_core} is not available")
        return True
    # DLA layers need min == opt == max (NvInferRuntime.h v10.3.0, IOptimizationProfile::
    # setDimensions: "If run on DLA, minimum, optimum, and maximum dimensions must to be the
    # same"). The warning has no exception for GPU_FALLBACK: with it TensorRT would run
    # the ranged layers on the GPU, i.e. build no DLA engine, which the fake reports as a
    # failed DLA build with or without the flag.
    ranged = [name for profile in config._profiles for name, (lo, opt, hi)
              in profile._shapes.items() if not lo == opt == hi]
    if ranged:
        st.log_warning(f"[E] DLA needs static shapes; inputs with a shape range: {ranged}")
        return True
    cannot = {layer.name for layer in st.model.layers if not layer.dla_capable}
    if "GPU_FALLBACK" not in config._flags and any(
        layer.name in cannot for layer in network._layers
    ):
        st.log_warning("[E] a layer cannot run on DLA and GPU fallback is off")
        return True
    return False


def _drive_calibrator(st: FakeTrtState, config: Any, network: Any) -> dict[str, Any]:
    """Call the calibrator the way TensorRT does: cache first, else batches, then write.

    Like TensorRT, a network with dynamic shapes is calibrated at the ``opt`` shapes of the
    calibration profile (which must be set), and every pointer handed back must hold exactly
    one tensor of that shape: the fake checks the size of the device allocation and reads
    the bytes back into ``st.calibration_fed``.
    """
    calibrator = config._calibrator
    # The batch size is asked for before the cache is read (NvInfer.h,
    # IInt8Calibrator::getBatchSize is part of every calibration, cached or not).
    calibrator.get_batch_size()
    cached = calibrator.read_calibration_cache()
    if cached:
        return {"from_cache": True, "batches": 0}
    dynamic = any(d < 0 for t in network._inputs for d in t.shape)
    profile = config._calibration_profile
    if dynamic and profile is None:
        raise RuntimeError("INT8 calibration of a network with dynamic shapes needs "
                           "IBuilderConfig.set_calibration_profile")
    expected: dict[str, tuple[tuple[int, ...], Any]] = {}
    for t in network._inputs:
        shape = profile._shapes[t.name][1] if profile is not None else tuple(t.shape)
        expected[t.name] = (tuple(shape), np.dtype(_NP_TYPES[t.dtype.name]))
    names = [t.name for t in network._inputs]
    batches = 0
    while True:
        pointers = calibrator.get_batch(names)
        if pointers is None:
            break
        fed: dict[str, Any] = {}
        for name, ptr in zip(names, pointers, strict=True):
            shape, dtype = expected[name]
            nbytes = int(np.prod(shape)) * dtype.itemsize
            size = st.cuda.allocation_size(int(ptr)) if st.cuda is not None else None
            if size != nbytes:
                raise RuntimeError(
                    f"calibration batch {batches} for {name!r}: device buffer of {size} bytes, "
                    f"the calibration shape {shape} needs {nbytes}")
            if st.cuda is not None:
                raw = st.cuda.read_device(int(ptr), nbytes)
                fed[name] = np.frombuffer(raw, dtype=dtype).reshape(shape).copy()
        st.calibration_fed.append(fed)
        batches += 1
    calibrator.write_calibration_cache(b"fake-calibration-table")
    return {"from_cache": False, "batches": batches}


class _Engine(_Obj):
    _blob: dict[str, Any]

    def _io(self) -> list[tuple[str, str, list[int], str]]:
        ins = [(t[0], "INPUT", t[1], t[2]) for t in self._blob["inputs"]]
        outs = [(t[0], "OUTPUT", t[1], t[2]) for t in self._blob["outputs"]]
        return ins + outs

    def _find(self, name: str) -> tuple[str, str, list[int], str]:
        for io in self._io():
            if io[0] == name:
                return io
        raise KeyError(name)

    @property
    def num_io_tensors(self) -> int:
        return len(self._io())

    def get_tensor_name(self, index: int) -> str:
        return self._io()[index][0]

    def get_tensor_mode(self, name: str) -> Any:
        return self._st.enum("TensorIOMode", self._find(name)[1])

    def get_tensor_dtype(self, name: str) -> Any:
        return self._st.enum("DataType", self._find(name)[3])

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        return tuple(self._find(name)[2])

    def get_tensor_profile_shape(self, name: str, profile_index: int) -> list[tuple[int, ...]]:
        """An input no profile covers (a static engine) has no profile shape: getProfileShape
        returns Dims{-1, {}} (NvInferRuntime.h v10.3.0, ICudaEngine::getProfileShape), which
        the fake gives back as empty shapes; ``get_tensor_shape`` has the static shape."""
        for t in self._blob["inputs"]:
            if t[0] == name:
                return [tuple(s) for s in t[3]]
        raise KeyError(name)

    @property
    def num_optimization_profiles(self) -> int:
        return 1

    def is_shape_inference_io(self, name: str) -> bool:
        return name in self._blob.get("shape_io", [])

    @property
    def num_layers(self) -> int:
        return len(self._blob["layers"])

    @property
    def device_memory_size_v2(self) -> int:
        return self._st.device_memory_bytes

    def get_device_memory_size_for_profile_v2(self, profile_index: int) -> int:
        return self._st.device_memory_bytes

    @property
    def hardware_compatibility_level(self) -> Any:
        return self._st.enum("HardwareCompatibilityLevel", self._blob["hwc"])

    def create_execution_context(self, strategy: Any = None) -> Any:
        self._st.rec("ICudaEngine.create_execution_context")
        if self._st.context_returns_none:
            return None
        return self._st.new("IExecutionContext", engine=self, shapes={}, addresses={})


class _Context(_Obj):
    _engine: Any
    _shapes: dict[str, tuple[int, ...]]
    _addresses: dict[str, int]

    @property
    def engine(self) -> Any:
        return self._engine

    def set_input_shape(self, name: str, shape: Any) -> bool:
        self._st.rec("IExecutionContext.set_input_shape", name, tuple(shape))
        if not self._st.set_input_shape_returns:
            return False
        self._shapes[name] = tuple(shape)
        return True

    def get_tensor_shape(self, name: str) -> tuple[int, ...]:
        if name in self._shapes:
            return self._shapes[name]
        shape = list(self._engine.get_tensor_shape(name))
        if name in self._st.data_dependent_outputs:
            return tuple(shape)
        batch = next(iter(self._shapes.values()), (1,))[0]
        return tuple(batch if d == -1 else d for d in shape)

    def set_tensor_address(self, name: str, memory: int) -> bool:
        self._st.rec("IExecutionContext.set_tensor_address", name, int(memory))
        if not self._st.set_tensor_address_returns:
            return False
        self._addresses[name] = int(memory)
        return True

    def execute_async_v3(self, stream_handle: int) -> bool:
        self._st.rec("IExecutionContext.execute_async_v3", int(stream_handle))
        cuda = self._st.cuda
        if cuda is not None and self._st.execute_returns:
            inputs = {}
            for name, mode, _shape, dtype in self._engine._io():
                if mode == "INPUT":
                    shape = self.get_tensor_shape(name)
                    np_dtype = np.dtype(_NP_TYPES[dtype])
                    nbytes = _volume(shape) * np_dtype.itemsize
                    raw = cuda.read_device(self._addresses[name], nbytes)
                    inputs[name] = np.frombuffer(raw, np_dtype).reshape(shape)
            for name, mode, _shape, dtype in self._engine._io():
                if mode != "OUTPUT":
                    continue
                out = fake_output(inputs, self.get_tensor_shape(name), _NP_TYPES[dtype])
                cuda.write_device(self._addresses[name], out.tobytes())
        return self._st.execute_returns


def _volume(shape: Sequence[int]) -> int:
    n = 1
    for d in shape:
        n *= int(d)
    return n


def fake_output(inputs: Mapping[str, Any], shape: Sequence[int], dtype: Any) -> Any:
    """What the fake engine computes for one output from the input tensors on the device.

    The first input of the output's shape and dtype is copied; otherwise each sample (row
    along dim 0) is the sum of that sample over every input, broadcast to the output shape.
    A run that uploads wrong bytes, or the right bytes to the wrong place, reads back
    different values."""
    shape = tuple(int(d) for d in shape)
    for arr in inputs.values():
        if arr.shape == shape and arr.dtype == np.dtype(dtype):
            return np.array(arr, copy=True)
    rows = np.zeros((shape[0] if shape else 1,), np.float64)
    for arr in inputs.values():
        flat = np.asarray(arr, np.float64).reshape(arr.shape[0] if arr.ndim else 1, -1)
        if flat.shape[0] == rows.shape[0]:
            rows += flat.sum(axis=1)
    out = np.broadcast_to(rows.reshape((-1,) + (1,) * max(len(shape) - 1, 0)), shape)
    return np.ascontiguousarray(out.astype(dtype))


class _Runtime(_Obj):
    def __init__(self, logger: Any) -> None:
        self._st.rec("Runtime", logger)
        self._st.use_logger(logger, "createInferRuntime")
        self._host_code = False
        self._dla_core = -1

    @property
    def DLA_core(self) -> int:
        return self._dla_core

    @DLA_core.setter
    def DLA_core(self, value: int) -> None:
        # The DLA core a deserialized engine executes on; -1 until set, and setting it does
        # nothing on a device without DLA cores (NVIDIA/TensorRT v10.3.0 include/
        # NvInferRuntime.h, IRuntime::setDLACore / getDLACore). trtexec sets it before every
        # deserialize of a DLA engine (samples/common/sampleEngines.cpp, BuildEnvironment).
        self._st.rec("Runtime.DLA_core", int(value))
        if self._st.dla_cores > 0:
            self._dla_core = int(value)

    @property
    def num_DLA_cores(self) -> int:
        # IRuntime::getNbDLACores: "number of DLA hardware cores accessible or 0 if DLA is
        # unavailable" (NVIDIA/TensorRT v10.3.0 include/NvInferRuntime.h); read-only.
        self._st.rec("Runtime.num_DLA_cores")
        return self._st.dla_cores

    @property
    def engine_host_code_allowed(self) -> bool:
        return self._host_code

    @engine_host_code_allowed.setter
    def engine_host_code_allowed(self, value: bool) -> None:
        self._st.rec("Runtime.engine_host_code_allowed", value)
        self._host_code = value

    def deserialize_cuda_engine(self, serialized_engine: Any) -> Any:
        data = bytes(serialized_engine)
        self._st.rec("Runtime.deserialize_cuda_engine", len(data))
        if not data.startswith(ENGINE_MAGIC):
            return None
        blob = json.loads(data[len(ENGINE_MAGIC):])
        if blob.get("version") != self._st.version:
            # A plan deserializes only in the TensorRT version that built it (no
            # VERSION_COMPATIBLE here): TensorRT logs a serialization version mismatch and
            # returns null (NVIDIA TensorRT Developer Guide, "Version Compatibility";
            # NvInferRuntime.h v10.3.0, IRuntime::deserializeCudaEngine returns nullptr).
            self._st.log_warning(f"[E] engine plan built by TensorRT {blob.get('version')} "
                                 f"is not compatible with {self._st.version}")
            return None
        # A plugin layer deserializes only through a registered creator; TensorRT logs the
        # miss and returns null (Polygraphy's EngineFromBytes registers plugins first for
        # this reason: tools/Polygraphy/polygraphy/backend/trt/loader.py).
        registered = {name for name, _v, _ns in self._st.registered}
        missing = [p for p in blob.get("plugins", []) if p not in registered]
        if missing:
            self._st.log_warning(f"[E] getPluginCreator could not find plugin {missing[0]}")
            return None
        return self._st.new("ICudaEngine", blob=blob, runtime_dla_core=self._dla_core)


class _Creator(_Obj):
    _name: str
    _version: str
    _namespace: str

    @property
    def name(self) -> str:
        return self._name

    @property
    def plugin_version(self) -> str:
        return self._version

    @property
    def plugin_namespace(self) -> str:
        return self._namespace


class _Registry(_Obj):
    @property
    def all_creators(self) -> list[Any]:
        self._st.rec("IPluginRegistry.all_creators")
        return [
            self._st.new("IPluginCreator", name=n, version=v, namespace=ns)
            for n, v, ns in sorted(self._st.registered)
        ]

    def get_creator(self, name: str, version: str, namespace: str = "") -> Any:
        self._st.rec("IPluginRegistry.get_creator", name, version, namespace)
        if (name, version, namespace) in self._st.registered:
            return self._st.new("IPluginCreator", name=name, version=version,
                                namespace=namespace)
        return None

    def load_library(self, plugin_path: str) -> Any:
        """Registers the library's creators; None when it cannot be loaded (NvInfer.h,
        IPluginRegistry::loadLibrary returns nullptr)."""
        self._st.rec("IPluginRegistry.load_library", plugin_path)
        creators = self._st.plugin_libraries.get(str(plugin_path))
        if creators is None:
            return None
        self._st.registered.update(creators)
        return object()


class _ProgressMonitor(_Obj):
    """The binding's IProgressMonitor: constructible, its methods pure virtual (the
    trampoline in python/src/infer/pyCore.cpp calls the Python override)."""

    def __init__(self) -> None:
        pass

    def phase_start(self, phase_name: str, parent_phase: str | None, num_steps: int) -> None:
        raise RuntimeError("Tried to call pure virtual function IProgressMonitor.phase_start")

    def step_complete(self, phase_name: str, step: int) -> bool:
        raise RuntimeError("Tried to call pure virtual function IProgressMonitor.step_complete")

    def phase_finish(self, phase_name: str) -> None:
        raise RuntimeError("Tried to call pure virtual function IProgressMonitor.phase_finish")


class _Calibrator(_Obj):
    def __init__(self) -> None:
        self._st.rec("IInt8EntropyCalibrator2.__init__")


def _registry(st: FakeTrtState) -> Any:
    return st.new("IPluginRegistry")


_NP_TYPES: dict[str, Any] = {
    "FLOAT": np.float32, "HALF": np.float16, "INT8": np.int8, "INT32": np.int32,
    "INT64": np.int64, "BOOL": np.bool_, "UINT8": np.uint8,
}

_IMPLS: dict[str, type] = {
    "ILogger": _Logger,
    "Logger": _Logger,
    "Builder": _Builder,
    "IBuilderConfig": _BuilderConfig,
    "INetworkDefinition": _Network,
    "ILayer": _Layer,
    "ITensor": _Tensor,
    "OnnxParser": _OnnxParser,
    "ParserError": _ParserError,
    "IOptimizationProfile": _Profile,
    "IHostMemory": _HostMemory,
    "ITimingCache": _TimingCache,
    "Runtime": _Runtime,
    "ICudaEngine": _Engine,
    "IExecutionContext": _Context,
    "IPluginRegistry": _Registry,
    "IPluginCreator": _Creator,
    "IInt8EntropyCalibrator2": _Calibrator,
    "IProgressMonitor": _ProgressMonitor,
}


def _impl_namespace(impl: type) -> dict[str, Any]:
    ns: dict[str, Any] = {}
    for klass in reversed(impl.__mro__[:-1]):  # base first, object excluded
        ns.update({k: v for k, v in vars(klass).items() if k not in ("__dict__", "__weakref__")})
    return ns


def _no_constructor(self: Any, *args: Any, **kwargs: Any) -> None:
    raise TypeError(f"{type(self).__name__}: No constructor defined!")


def _make_class(name: str, surface: ApiSurface, state: FakeTrtState, module: Any) -> type:
    allowed = surface.class_members(name)
    impl = _IMPLS.get(name)
    ns: dict[str, Any] = {"_st": state, "__init__": _no_constructor}
    if impl is not None:
        for key, value in _impl_namespace(impl).items():
            if key.startswith("_") or key in allowed:
                ns[key] = value
        ns["_st"] = state
    for member in allowed:
        nested = f"{name}.{member}"
        if nested in surface.enums:
            ns[member] = getattr(module, f"_enum_{nested}")
    # Enum values exported onto the class (ILogger.WARNING...).
    for member in allowed:
        info = _member_info(surface, name, member)
        if info.get("kind") == "attribute" and member not in ns:
            for nested in (f"{name}.{info.get('type')}", f"ILogger.{info.get('type')}"):
                enum_cls = getattr(module, f"_enum_{nested}", None)
                if enum_cls is not None and hasattr(enum_cls, member):
                    ns[member] = getattr(enum_cls, member)
                    break
    return type(name, (), ns)


def _member_info(surface: ApiSurface, cls: str, member: str) -> Mapping[str, Any]:
    entry = surface.classes.get(cls)
    if entry is None:
        return {}
    if member in entry["members"]:
        info: Mapping[str, Any] = entry["members"][member]
        return info
    for base in entry["bases"]:
        found = _member_info(surface, base, member)
        if found:
            return found
    return {}


def make_fake_tensorrt(version: str, *, cuda: Any = None, recorder: Recorder | None = None) -> Any:
    """A fresh fake ``tensorrt`` module impersonating ``version``."""
    surface = load_surface(version)
    module = types.ModuleType("tensorrt", f"recording fake of TensorRT {version}")
    state = FakeTrtState(version=version, surface=surface, recorder=recorder or Recorder())
    state.cuda = cuda
    state.module = module
    module.__version__ = version
    module._fake_state = state  # type: ignore[attr-defined]
    for qual, members in surface.enums.items():
        enum_cls = _make_enum(qual, members)
        setattr(module, f"_enum_{qual}", enum_cls)
        if "." not in qual:
            setattr(module, qual, enum_cls)
    for name in surface.classes:
        if "." not in name:
            setattr(module, name, _make_class(name, surface, state, module))
    for const, type_name in surface.constants.items():
        if type_name == "DataType":
            member = _CONSTANT_ENUMS.get(const)
            if member and hasattr(module.DataType, member):
                setattr(module, const, getattr(module.DataType, member))
    functions: dict[str, Callable[..., Any]] = {
        "get_plugin_registry": lambda: _registry(state),
        "init_libnvinfer_plugins": lambda logger, namespace: _init_plugins(state, namespace),
        "nptype": lambda trt_type: _nptype(trt_type),
        "volume": lambda iterable: int(np.prod(list(iterable))),
    }
    for fname, fn in functions.items():
        if fname in surface.functions:
            setattr(module, fname, fn)
    return module


def _init_plugins(state: FakeTrtState, namespace: str) -> bool:
    # Registers libnvinfer_plugin's creators under ``namespace`` (NvInferPlugin.h,
    # initLibNvInferPlugins).
    state.rec("init_libnvinfer_plugins", namespace)
    state.registered.update((n, v, namespace) for n, v, _ns in state.plugins)
    return True


def _nptype(trt_type: Any) -> Any:
    """numpy has no BF16/FP8/INT4/FP4 type: ``trt.nptype`` maps seven types and raises
    TypeError for any other (NVIDIA/TensorRT v10.3.0..v11.1
    python/packaging/bindings_wheel/tensorrt/__init__.py, nptype)."""
    if trt_type.name not in _NP_TYPES:
        raise TypeError("Could not resolve TensorRT datatype to an equivalent numpy datatype.")
    return _NP_TYPES[trt_type.name]


_CONSTANT_ENUMS = {
    "float32": "FLOAT", "float16": "HALF", "int8": "INT8", "int32": "INT32", "int64": "INT64",
    "bool": "BOOL", "uint8": "UINT8", "bfloat16": "BF16", "fp8": "FP8", "int4": "INT4",
    "fp4": "FP4", "e8m0": "E8M0",
}


def public_names(module: Any) -> Iterable[str]:
    return [n for n in vars(module) if not n.startswith("_")]
