"""Cancel a bit-packing round trip that the partitioner left inside one graph.

The joint pass routes every boolean tensor backward reads through ``pack_bits`` → ``unpack_bits``
so that a saved mask costs one bit per element. When AOTAutograd's partitioner then recomputes the
mask in backward (from a float tensor backward holds anyway, e.g. the input of a high-precision
last layer), both ops land in the backward graph and nothing is saved: the pair only costs a pack
and an unpack loop (measured 0.2 ms per 256×1024 mask in the MLP's backward). This pass makes the
unpack's users read the mask itself.
"""

from __future__ import annotations

import torch
from torch import fx


def cancel_pack_round_trips(gm: fx.GraphModule) -> int:
    """In place: every ``unpack_bits(pack_bits(mask), n)`` of ``gm`` whose ``n`` is the mask's last
    dimension is replaced by ``mask``; a ``pack_bits`` left without users is erased. Returns how
    many round trips were cancelled."""
    ops = torch.ops.qcompile
    cancelled = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target is not ops.unpack_bits.default:
            continue
        packed, last = node.args
        if not (isinstance(packed, fx.Node) and packed.target is ops.pack_bits.default):
            continue
        mask = packed.args[0]
        val = mask.meta.get("val") if isinstance(mask, fx.Node) else None
        if val is None or val.dtype != torch.bool or val.shape[-1] != last:
            continue
        node.replace_all_uses_with(mask)
        gm.graph.erase_node(node)
        if not packed.users:
            gm.graph.erase_node(packed)
        cancelled += 1
    if cancelled:
        gm.graph.lint()
        gm.recompile()
    return cancelled
