"""Translate one AOTAutograd graph (forward or backward) into an ONNX model.

Graph inputs, initializers and outputs are named by the caller (`qcompile.export`); every
other value keeps its FX node's name. Buffer mutations (BatchNorm running statistics, written
with ``aten.copy_`` into a graph input) become extra outputs ``<buffer>.updated``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import onnx
import torch
from onnx import helper
from torch import fx

from qcompile.exporters import onnx_block_formats as block_formats
from qcompile.exporters import onnx_quantizers as quantizers
from qcompile.exporters.inference import int4_proto
from qcompile.exporters.onnx_graph import ExportError, NodeContext, OnnxGraphBuilder, node_layer, value_info
from qcompile.exporters.onnx_ops import HANDLERS, conv

OPSET = quantizers.OPSET
qops = torch.ops.qcompile
aten = torch.ops.aten


def _qmatmul(c: NodeContext) -> str:
    dt = c.out_dtype
    return c.emit("MatMul", [c.val(c.node.args[0], dt), c.val(c.node.args[1], dt)])


def _qconv(c: NodeContext) -> str:
    x, w, stride, padding, dilation, transposed, output_padding, groups = c.node.args[:8]
    return conv(c, x, w, None, stride, padding, dilation, transposed, output_padding, groups)


def _mark_layer(c: NodeContext) -> str:
    return c.emit("Identity", [c.val(c.node.args[0])])


HANDLERS.update({
    qops.qmatmul.default: _qmatmul,
    qops.qmatmul_rq.default: _qmatmul,
    qops.fp_quantize.default: block_formats.fp_quantize,
    qops.hadamard.default: block_formats.hadamard,
    qops.hadamard_signs.default: block_formats.hadamard_signs,
    qops.qconv.default: _qconv,
    qops.mark_layer.default: _mark_layer,
    qops.int_quantize.default: quantizers.int_quantize,
    qops.luq_quantize.default: quantizers.luq_quantize,
})  # fmt: skip


def supported_ops() -> list[str]:
    return sorted(str(t) for t in HANDLERS)


@dataclass
class GraphIO:
    """How the caller names one graph's boundary."""

    inputs: dict[str, str] = field(default_factory=dict)  # placeholder → graph input name
    initializers: dict[str, tuple[str, torch.Tensor]] = field(
        default_factory=dict
    )  # placeholder → (name, value)
    outputs: list[str | None] = field(default_factory=list)  # per FX output position; None drops it
    buffer_names: dict[str, str] = field(default_factory=dict)  # placeholder → buffer name (for copy_)
    # placeholder → a weight stored as its 4-bit codes (`export_inference.fold_weight_quantizers`)
    quantized_weights: dict[str, Any] = field(default_factory=dict)


@dataclass
class TranslatedGraph:
    model: onnx.ModelProto
    buffer_updates: dict[str, str]  # buffer name → graph output name


def translate_graph(gm: fx.GraphModule, io: GraphIO, graph_name: str, doc: str = "") -> TranslatedGraph:
    """The ONNX model of ``gm``; `ExportError` names the first op that has no translation."""
    b = OnnxGraphBuilder()
    env: dict[fx.Node, object] = {}
    updates: dict[str, str] = {}
    update_outputs: list[onnx.ValueInfoProto] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            val = node.meta.get("val")
            if node.name in io.initializers:
                name, tensor = io.initializers[node.name]
                env[node] = b.initializer(name, tensor)
            elif node.name in io.quantized_weights:  # Ŵ = DequantizeLinear(4-bit codes) / top · clip
                w = io.quantized_weights[node.name]
                codes = b.reserve(f"{w.parameter}.codes")
                b.initializers.append(int4_proto(codes, w.codes, w.signed))
                one = b.const(1.0, torch.float32)
                top = b.initializer(f"{w.parameter}.top", w.top)
                clip = b.initializer(f"{w.parameter}.clip", w.clip)
                values = b.node("DequantizeLinear", [codes, one])
                env[node] = b.node("Mul", [b.node("Div", [values, top]), clip])
            elif node.name in io.inputs:
                env[node] = b.reserve(io.inputs[node.name])
                b.inputs.append(value_info(env[node], val.dtype, val.shape))
            else:
                raise ExportError(f"graph input {node.name!r} was given neither a name nor a value")
        elif node.op == "call_function":
            if node.target == aten.copy_.default:
                dst, src = node.args[:2]
                if not (isinstance(dst, fx.Node) and dst.op == "placeholder" and dst.name in io.buffer_names):
                    raise ExportError(
                        f"in-place copy into {dst} (layer {node_layer(node)!r}) is not exportable"
                    )
                c = NodeContext(b, env, node)
                buffer = io.buffer_names[dst.name]
                out = b.reserve(f"{buffer}.updated")
                b.nodes.append(helper.make_node("Identity", [c.val(src, c.dtype_of(dst))], [out]))
                updates[buffer] = out
                update_outputs.append(value_info(out, c.dtype_of(dst), c.meta(dst).shape))
                env[node] = out
                continue
            handler = HANDLERS.get(node.target)
            if handler is None:
                raise ExportError(
                    f"cannot export op {node.target} (node {node.name!r}) of layer {node_layer(node)!r} to ONNX: "
                    f"no translation for it (qcompile.exporters.onnx_model.supported_ops() lists the "
                    f"{len(HANDLERS)} ops that have one)"
                )
            env[node] = handler(NodeContext(b, env, node))
        elif node.op == "output":
            results = node.args[0]
            results = results if isinstance(results, (list, tuple)) else [results]
            if len(results) != len(io.outputs):
                raise ExportError(f"{graph_name}: {len(results)} outputs but {len(io.outputs)} names")
            for value, name in zip(results, io.outputs, strict=True):
                if name is None or value is None:
                    continue
                out = b.reserve(name)
                b.nodes.append(helper.make_node("Identity", [env[value]], [out]))
                val = value.meta["val"]
                b.outputs.append(value_info(out, val.dtype, val.shape))
        else:
            raise ExportError(f"{graph_name}: node kind {node.op!r} ({node.name}) is not exportable")
    _fold_output_identities(b)
    used = {i for n in b.nodes for i in n.input}
    b.initializers[:] = [t for t in b.initializers if t.name in used]
    graph = helper.make_graph(
        b.nodes, graph_name, b.inputs, b.outputs + update_outputs, initializer=b.initializers
    )
    model = helper.make_model(
        graph,
        opset_imports=[helper.make_opsetid("", OPSET), helper.make_opsetid(quantizers.DOMAIN, 1)],
        functions=list(b.functions.values()),
        producer_name="qcompile",
        doc_string=doc,
    )
    model.ir_version = 10
    return TranslatedGraph(model, updates)


def _fold_output_identities(b: OnnxGraphBuilder) -> None:
    """Name a graph output's producer after the output instead of adding ``Identity`` nodes.

    Cleaner graphs, and it sidesteps onnxruntime 1.32's EliminateIdentity rewrite, which
    (measured) breaks a graph whose output Identity reads a value other nodes also read. A value
    exported under several names keeps one Identity per extra name, reading the first name.
    """
    outputs = {v.name for v in b.outputs}
    boundary = {v.name for v in b.inputs} | {t.name for t in b.initializers} | outputs
    produced = {o for n in b.nodes for o in n.output}
    rename: dict[str, str] = {}
    keep = []
    for n in b.nodes:
        src = n.input[0] if n.op_type == "Identity" and n.output[0] in outputs else None
        if src is not None and src in produced and src not in boundary and src not in rename:
            rename[src] = n.output[0]
            continue
        keep.append(n)
    for n in keep:
        for i, name in enumerate(n.input):
            n.input[i] = rename.get(name, name)
        for i, name in enumerate(n.output):
            n.output[i] = rename.get(name, name)
    b.nodes[:] = keep


def save_model(model: onnx.ModelProto, path: str, external_threshold: int = 2**31 - 2**26) -> bool:
    """Write ``model``; weights go to ``<file>.data`` beside it when the model would pass
    protobuf's 2 GB limit. Returns whether external data was used."""
    import os

    # Sum the weights rather than serialising the model: protobuf cannot serialise past 2 GB.
    weights = sum(t.ByteSize() for t in model.graph.initializer)
    external = weights + 2**20 > external_threshold
    if external:
        onnx.save_model(
            model, path, save_as_external_data=True, all_tensors_to_one_file=True,
            location=os.path.basename(path) + ".data", size_threshold=1024,
        )  # fmt: skip
    else:
        onnx.save_model(model, path)
    return external


def check_model(path: str) -> None:
    """`onnx.checker` full check (shape inference included), on the file so external data works."""
    onnx.checker.check_model(path, full_check=True)


def value_specs(values: Sequence[onnx.ValueInfoProto]) -> list[dict]:
    out = []
    for v in values:
        t = v.type.tensor_type
        out.append({
            "name": v.name,
            "dtype": onnx.helper.tensor_dtype_to_np_dtype(t.elem_type).name,
            "shape": [d.dim_value for d in t.shape.dim],
        })  # fmt: skip
    return out


def initializer_specs(model: onnx.ModelProto) -> Mapping[str, dict]:
    return {
        t.name: {"dtype": onnx.helper.tensor_dtype_to_np_dtype(t.data_type).name, "shape": list(t.dims)}
        for t in model.graph.initializer
    }
