"""Inference export: the weights of a model trained with fqt, stored as their 4-bit codes.

An inference graph (AOTAutograd's graph for a ``torch.no_grad()`` eval forward) quantizes each
weight on every call, from the float32 weight: ``int_quantize(W)``. For deployment the weight is
fixed, so its round-to-nearest quantizer can run once, at export: `fold_weight_quantizers`
replaces each such call by a new graph input ``Ŵ`` that the ONNX writer stores as

    Ŵ = DequantizeLinear(W_codes: INT4/UINT4 initializer, two codes per byte; scale 1) / top · clip

with ``top`` the top code (7 or 15) and ``clip`` the clip value (per tensor, or per output
channel, broadcast). That is the training forward's own arithmetic (``codes / top · clip``), so
``Ŵ`` is bit for bit the weight training used, and a quantizer downstream never rounds the other
way; a toolchain folds it into DequantizeLinear's usual single scale ``clip / top``. The float32
weight is then unused and not written. Activations keep their quantizers (INT4 Q/DQ computed from the data,
as in training); weights whose quantizer is stochastic, above 4 bits or learned, or picks its sign
per group, keep theirs too, and the manifest says which were folded.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from qcompile.runtime.reference.codes import int_codes

_INT_QUANTIZE = torch.ops.qcompile.int_quantize.default


@dataclass
class FoldedWeight:
    """One weight stored as codes: the graph input that replaces its quantizer, and what to write."""

    parameter: str  # the parameter's name (``fc1.weight``)
    placeholder: str  # the FX graph input now holding Ŵ
    codes: torch.Tensor  # int8 tensor of the codes, the weight's shape
    clip: torch.Tensor  # float32 clip value(s), broadcastable against the weight
    top: torch.Tensor  # float32 top code(s), the same shape as ``clip``
    signed: bool  # INT4 (−7..7) or UINT4 (0..15)

    def stored_bytes(self) -> int:
        return (self.codes.numel() + 1) // 2 + (self.clip.numel() + self.top.numel()) * 4

    def manifest(self) -> dict:
        return {
            "parameter": self.parameter,
            "format": "int4" if self.signed else "uint4",
            "shape": list(self.codes.shape),
            "scale_shape": list(self.clip.shape),
            "stored_bytes": self.stored_bytes(),
            "fp32_bytes": self.codes.numel() * 4,
        }


def fold_weight_quantizers(
    gm: fx.GraphModule, parameters: dict[str, tuple[str, torch.Tensor]]
) -> list[FoldedWeight]:
    """In place on an inference graph: replace each deterministic ≤4-bit ``int_quantize`` of a
    parameter input (``parameters``: placeholder name → (parameter name, tensor)) by a new
    placeholder holding ``Ŵ``. Returns what the writer stores for each new placeholder."""
    folded: list[FoldedWeight] = []
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not _INT_QUANTIZE:
            continue
        source, bits, scaling, signed, dims, stochastic, _ = node.args
        if not isinstance(source, fx.Node) or source.name not in parameters or stochastic or bits > 4:
            continue
        name, weight = parameters[source.name]
        codes, clip, top = int_codes(weight.detach(), bits, scaling, signed, dims)
        top = top.contiguous()
        tops = top.unique()
        if len(tops) != 1:  # a sign chosen per group (``signed="auto"``): no one 4-bit type
            continue
        is_signed = int(tops.item()) == 2 ** (bits - 1) - 1
        last = list(gm.graph.find_nodes(op="placeholder"))[-1]
        with gm.graph.inserting_after(last):
            holder = gm.graph.placeholder(f"{source.name}_quantized")
        holder.meta["val"] = node.meta["val"]
        node.replace_all_uses_with(holder)
        gm.graph.erase_node(node)
        folded.append(FoldedWeight(name, holder.name, codes, clip.float(), top.float(), is_signed))
    gm.graph.lint()
    gm.recompile()
    return folded


def int4_proto(name: str, codes: torch.Tensor, signed: bool):
    """An ONNX INT4 / UINT4 initializer of ``codes``, two per byte (first element in the low
    nibble, as the ONNX spec stores 4-bit tensors)."""
    from onnx import TensorProto, helper

    flat = codes.reshape(-1).to(torch.int16) & 0xF
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_zeros(1)])
    packed = (flat[0::2] | (flat[1::2] << 4)).to(torch.uint8)
    kind = TensorProto.INT4 if signed else TensorProto.UINT4
    return helper.make_tensor(name, kind, list(codes.shape), packed.numpy().tobytes(), raw=True)
