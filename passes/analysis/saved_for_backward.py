"""Read the tensors a compiled forward saves for backward, and what FP32 would hold instead.

The saved tensors are the backward graph's inputs other than the tangents (AOTAutograd names
them after the forward nodes that produced them). Each is classified by what the backward does
with it, so the plan reports what really is held between forward and backward:

=================  ==========================================  ===========================
kind               what                                        FP32 equivalent
=================  ==========================================  ===========================
packed             4-bit codes of X̂ / Ŵ, two per byte           the same elements as float32
                                                               (nothing if quantized from a
                                                               parameter or graph input: FP32
                                                               saves that tensor itself)
scale              clip / top code of packed codes, or of a     nothing
                   ``Ŵ`` backward requantizes from ``W``
bits               a boolean mask, eight per byte               the same elements as bool
quantized          X̂ / Ŵ kept unpacked (``pack_saved=False``)    as for packed
input              a graph input or parameter (held anyway)     its own bytes
other              anything else                                floats as float32, else own
recomputed         a forward tensor backward recomputes from    as other (0 bytes held)
                   codes (`recompute_from_codes`)
=================  ==========================================  ===========================
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import fx

from qcompile.passes.analysis.subgraphs import higher_order_call
from qcompile.passes.fx_utils import hinted_numel, size_hint
from qcompile.passes.graph_meta import RECOMPUTE_META, TARGET_META
from qcompile.runtime.quant_tag import QuantTag

qops = torch.ops.qcompile


@dataclass
class SavedTensor:
    name: str
    kind: str
    shape: list[int]
    dtype: str
    bytes: int
    fp32_bytes: int
    site: str | None = None  # site key (``g0s3``) when it belongs to one GEMM site
    role: str | None = None  # ``activation`` / ``weight`` for packed and quantized operands

    def to_json(self) -> dict:
        return dict(self.__dict__)


def _site(tag: str) -> tuple[str | None, str | None]:
    """(GEMM key, role) of a quantizer's tag; (None, None) for a string that is not a tag."""
    if not QuantTag.is_tag(tag):
        return None, None
    t = QuantTag.parse(tag)
    return t.key, t.role


def _recomputed(node: fx.Node) -> SavedTensor:
    """A tensor the forward would have saved and backward recomputes instead: no bytes held,
    and as much "FP32 would save" as the tensor itself (floats at float32)."""
    val = node.meta["val"]
    numel = hinted_numel(val) or 0
    fp32 = numel * 4 if val.is_floating_point() else numel * val.element_size()
    return SavedTensor(
        node.meta[RECOMPUTE_META], "recomputed", [(size_hint(s) or 0) for s in val.shape],
        str(val.dtype).removeprefix("torch."), 0, fp32,
    )  # fmt: skip


def _readers(node: fx.Node, gm: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]]:
    """(user, the value it reads ``node`` as) pairs, looking through higher-order op calls (a
    nested compile region's backward receives saved tensors as operands): the users of the body
    input that ``node`` becomes."""
    out: list[tuple[fx.Node, fx.Node]] = []
    for user in node.users:
        call = higher_order_call(user, gm)
        pairs = call.body_inputs(call.bodies[0]) if call is not None and len(call.bodies) == 1 else None
        if pairs is None:
            out.append((user, node))
            continue
        for holder, operand in pairs:
            if operand is node:
                out.extend(_readers(holder, call.bodies[0]))
    return out


def read_saved_tensors(
    backward: fx.GraphModule,
    forward_roles: dict[str, tuple],
    from_inputs: set[tuple[str, str]] = frozenset(),
    input_aliases: set[str] = frozenset(),
) -> list[SavedTensor]:
    """One `SavedTensor` per tensor input of ``backward`` that is not a tangent.

    ``forward_roles`` maps forward node names to (site key, role, spec) for quantizer outputs
    (`read_quantized_graph.forward_tensor_roles`); a saved tensor found there is an X̂ / Ŵ kept
    unpacked. ``from_inputs``: (site key, role) of quantizers whose input is a forward graph input
    (`read_quantized_graph.quantized_graph_inputs`). ``input_aliases``: forward nodes that are a
    graph input handed back by a higher-order op (`subgraphs.input_aliases`), held anyway."""
    out: list[SavedTensor] = []
    for node in backward.graph.nodes:
        if node.meta.get(TARGET_META):
            out.append(_recomputed(node))
        if node.op != "placeholder" or str(node.target).startswith("tangents"):
            continue
        val = node.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        numel = hinted_numel(val) or 0
        nbytes = numel * val.element_size()
        kind, fp32, site, role = "other", nbytes, None, None
        for user, seen in [] if node.name in input_aliases else _readers(node, backward):
            if user.target is qops.int_dequantize_packed.default:
                site, role = _site(user.args[-1])
                if user.args[0] is seen:
                    kind, fp32 = (
                        "packed",
                        0 if (site, role) in from_inputs else (hinted_numel(user.meta["val"]) or 0) * 4,
                    )
                else:
                    kind, fp32 = "scale", 0
                break
            if user.target is qops.int_requantize.default and user.args[0] is not seen:
                site, role = _site(user.args[-1])
                kind, fp32 = "scale", 0
                break
            if user.target is qops.unpack_bits.default:
                kind, fp32 = "bits", (hinted_numel(user.meta["val"]) or 0)
                break
        else:
            if str(node.target).startswith("primals") or node.name in input_aliases:
                kind = "input"
            elif node.name in forward_roles:
                kind = "quantized"
                site, role = forward_roles[node.name][0], forward_roles[node.name][1]
                fp32 = 0 if (site, role) in from_inputs else numel * 4
            elif val.is_floating_point():
                fp32 = numel * 4
        out.append(
            SavedTensor(
                node.name, kind, [(size_hint(s) or 0) for s in val.shape], str(val.dtype).removeprefix("torch."),
                nbytes, fp32, site, role,
            )
        )  # fmt: skip
    return out
