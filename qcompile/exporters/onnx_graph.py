"""Building blocks of the ONNX export: a graph builder and the FX-node translation context.

`OnnxGraphBuilder` collects nodes, initializers and functions with fresh value names;
`NodeContext` is what an op translator (`qcompile.export_onnx_ops`) sees for one FX node: its
arguments as ONNX value names (Python scalars become typed constants), its output dtype and
shape from the node's fake value, and the layer it belongs to (for error messages).
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from types import SimpleNamespace
from typing import Any

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper, numpy_helper
from torch import fx

from qcompile.exporters.errors import ExportError
from qcompile.passes import layer_name
from qcompile.runtime.quant_tag import QuantTag

TORCH_TO_ONNX = {
    torch.float32: TensorProto.FLOAT,
    torch.float64: TensorProto.DOUBLE,
    torch.float16: TensorProto.FLOAT16,
    torch.bfloat16: TensorProto.BFLOAT16,
    torch.int64: TensorProto.INT64,
    torch.int32: TensorProto.INT32,
    torch.int16: TensorProto.INT16,
    torch.int8: TensorProto.INT8,
    torch.uint8: TensorProto.UINT8,
    torch.bool: TensorProto.BOOL,
}
TORCH_TO_NUMPY = {
    torch.float32: np.float32,
    torch.float64: np.float64,
    torch.float16: np.float16,
    torch.int64: np.int64,
    torch.int32: np.int32,
    torch.int16: np.int16,
    torch.int8: np.int8,
    torch.uint8: np.uint8,
    torch.bool: np.bool_,
}


def onnx_dtype(dtype: torch.dtype) -> int:
    try:
        return TORCH_TO_ONNX[dtype]
    except KeyError:
        raise ExportError(
            f"dtype {dtype} has no ONNX equivalent here; supported: {list(TORCH_TO_ONNX)}"
        ) from None


def tensor_to_proto(name: str, t: torch.Tensor) -> onnx.TensorProto:
    t = t.detach().cpu().contiguous()
    if t.dtype == torch.bfloat16:
        return helper.make_tensor(name, TensorProto.BFLOAT16, list(t.shape), t.float().numpy().ravel())
    return numpy_helper.from_array(t.numpy(), name)


def value_info(name: str, dtype: torch.dtype, shape: Sequence[int]) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, onnx_dtype(dtype), [int(d) for d in shape])


def node_layer(node: fx.Node) -> str:
    """The layer an FX node belongs to: its module stack, else a quantizer tag nearby."""
    for key in ("nn_module_stack", "fwd_nn_module_stack"):
        if node.meta.get(key):
            return layer_name(SimpleNamespace(meta={"nn_module_stack": node.meta[key]}))  # type: ignore[arg-type]
    for a in itertools.chain([node], node.args, node.users):
        if isinstance(a, fx.Node):
            tag = next((x for x in a.args if QuantTag.is_tag(x)), None)
            if tag:
                return QuantTag.parse(tag).layer
    return "<unknown layer: the node carries no module metadata>"


class OnnxGraphBuilder:
    """Nodes, initializers, inputs, outputs and `qcompile` functions of one ONNX graph."""

    def __init__(self) -> None:
        self.nodes: list[onnx.NodeProto] = []
        self.initializers: list[onnx.TensorProto] = []
        self.inputs: list[onnx.ValueInfoProto] = []
        self.outputs: list[onnx.ValueInfoProto] = []
        self.functions: dict[str, onnx.FunctionProto] = {}
        self._names: set[str] = set()
        self._ids = itertools.count()

    def fresh(self, hint: str) -> str:
        base = "".join(ch if ch.isalnum() or ch in "._" else "_" for ch in hint) or "v"
        name = base
        while name in self._names:
            name = f"{base}_{next(self._ids)}"
        self._names.add(name)
        return name

    def reserve(self, name: str) -> str:
        if name in self._names:
            raise ExportError(f"duplicate ONNX value name {name!r}")
        self._names.add(name)
        return name

    def node(
        self, op: str, inputs: Sequence[str], outputs: int = 1, domain: str = "", hint: str = "", **attrs: Any
    ) -> Any:
        names = [self.fresh(f"{hint or op.lower()}") for _ in range(outputs)]
        self.nodes.append(
            helper.make_node(
                op, list(inputs), names, name=self.fresh(f"n_{hint or op}"), domain=domain, **attrs
            )
        )
        return names[0] if outputs == 1 else names

    def const(self, value: Any, dtype: torch.dtype, hint: str = "c") -> str:
        arr = np.asarray(value, dtype=TORCH_TO_NUMPY.get(dtype, np.float32))
        if dtype == torch.bfloat16:
            tensor = helper.make_tensor("v", TensorProto.BFLOAT16, arr.shape, arr.astype(np.float32).ravel())
        else:
            tensor = numpy_helper.from_array(arr)
        return self.node("Constant", [], hint=hint, value=tensor)

    def ints(self, values: Sequence[int], hint: str = "ints") -> str:
        return self.const(np.asarray(list(values), dtype=np.int64), torch.int64, hint)

    def initializer(self, name: str, t: torch.Tensor) -> str:
        self.reserve(name)
        self.initializers.append(tensor_to_proto(name, t))
        return name

    def add_function(self, fn: onnx.FunctionProto) -> None:
        self.functions.setdefault(fn.name, fn)


class NodeContext:
    """Translation helpers for one FX node."""

    def __init__(self, builder: OnnxGraphBuilder, env: dict[fx.Node, Any], node: fx.Node) -> None:
        self.b = builder
        self.env = env
        self.node = node

    @property
    def hint(self) -> str:
        return self.node.name

    def emit(self, op: str, inputs: Sequence[str], outputs: int = 1, **attrs: Any) -> Any:
        return self.b.node(op, inputs, outputs, hint=self.node.name, **attrs)

    def meta(self, a: Any) -> Any:
        return a.meta.get("val") if isinstance(a, fx.Node) else a

    def dtype_of(self, a: Any) -> torch.dtype:
        if isinstance(a, fx.Node):
            return self.meta(a).dtype
        if isinstance(a, bool):
            return torch.bool
        if isinstance(a, int):
            return torch.int64
        return torch.float32

    @property
    def out_val(self) -> Any:
        return self.node.meta["val"]

    @property
    def out_dtype(self) -> torch.dtype:
        v = self.out_val
        if isinstance(v, (list, tuple)):
            v = next(x for x in v if x is not None)
        return v.dtype

    @property
    def out_shape(self) -> list[int]:
        return [int(d) for d in self.out_val.shape]

    def promoted(self, *args: Any) -> torch.dtype:
        probes = [torch.empty((), dtype=self.dtype_of(a)) if isinstance(a, fx.Node) else a for a in args]
        return torch.result_type(*probes) if len(probes) == 2 else self.dtype_of(args[0])

    def val(self, a: Any, dtype: torch.dtype | None = None) -> str:
        """ONNX name of an argument, cast to ``dtype`` when given; scalars become constants."""
        if isinstance(a, fx.Node):
            name = self.env[a]
            if not isinstance(name, str):
                raise ExportError(f"{self.where()}: argument {a.name} is not a tensor value")
            have = self.dtype_of(a)
            if dtype is not None and have != dtype:
                name = self.b.node("Cast", [name], hint=f"{a.name}_cast", to=onnx_dtype(dtype))
            return name
        if isinstance(a, (int, float, bool)):
            return self.b.const(a, dtype or self.dtype_of(a), hint=f"{self.node.name}_s")
        raise ExportError(f"{self.where()}: cannot use argument {a!r} as a tensor")

    def where(self) -> str:
        return f"op {self.node.target} (node {self.node.name!r}, layer {node_layer(self.node)!r})"
