"""Joint-graph pass: backward GEMMs read the forward's quantized operands, never recompute them.

The min-cut partitioner may choose to save the FP32 input of a forward quantizer and recompute
``Q(X)`` in the backward graph when that looks cheaper. For a stochastic forward quantizer that
would be wrong (backward would see other values than forward used), and for every quantizer it
is against the design: ``X̂`` and ``Ŵ`` are exactly what dgrad and wgrad consume, and the natural
thing to store packed. This pass tags every forward quantizer ``MUST_SAVE`` before the
partitioner runs.
"""

from __future__ import annotations

import torch
from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.utils.checkpoint import CheckpointPolicy

from .pack_saved_tensors import pack_boolean_masks, pack_quantized_operands


class SaveQuantizedOperands(CustomGraphPass):
    """Use as Inductor's ``joint_custom_pre_pass``; in place on the joint forward-backward graph.

    ``pack=True`` (the default) then stores what backward reads packed
    (`pack_saved_tensors`): 4-bit codes two per byte, boolean masks as bits. ``pack=False``
    keeps the dequantized operands and bool masks as they are (for comparison and debugging).
    """

    def __init__(self, pack: bool = True) -> None:
        self.pack = pack

    def __call__(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            if node.op == "call_function" and node.target in (
                torch.ops.qcompile.int_quantize.default,
                torch.ops.qcompile.learned_clip_quantize.default,
            ):
                node.meta["recompute"] = CheckpointPolicy.MUST_SAVE
        if self.pack:
            pack_quantized_operands(graph)
            pack_boolean_masks(graph)
            graph.lint()

    def uuid(self) -> str:
        return f"qcompile.SaveQuantizedOperands.v2.pack={self.pack}"


save_quantized_operands = SaveQuantizedOperands()
save_quantized_operands_unpacked = SaveQuantizedOperands(pack=False)
