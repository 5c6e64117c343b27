"""Joint-graph pass: backward GEMMs read exactly the operands the forward quantized, stored small.

The min-cut partitioner may choose to save the FP32 input of a forward quantizer and recompute
``Q(X)`` in the backward graph when that looks cheaper. For a stochastic forward quantizer that
would be wrong (backward would see other values than forward used), and for every quantizer it
is against the design: ``X̂`` and ``Ŵ`` are exactly what dgrad and wgrad consume, and the natural
thing to store packed. So this pass tags every forward quantizer ``MUST_SAVE`` before the
partitioner runs, then (with packing) stores the codes packed, and lets backward *rebuild* what
it can reproduce bit for bit rather than save it: a deterministic weight quantizer is
requantized from ``W`` and its saved clip, an FP32 activation is recomputed from saved codes
(`recompute_from_codes`). What backward reads is therefore always the forward's own quantized
values, never a fresh quantization with new random draws. Inside regions the user checkpoints
the quantizer is replayed from the region's input like everything else in it
(`replayed_by_checkpoint`).
"""

from __future__ import annotations

import torch
from torch import fx
from torch._inductor.custom_graph_pass import CustomGraphPass
from torch.utils.checkpoint import CheckpointPolicy

from qcompile.passes.joint.pack_saved import pack_boolean_masks, pack_quantized_operands
from qcompile.passes.joint.recompute import recompute_from_codes
from qcompile.passes.post_aot.rng_replays import draws_nothing
from qcompile.policy.config import RECOMPUTE_CHOICES


def replayed_by_checkpoint(node: fx.Node) -> bool:
    """A forward quantizer inside a region the user checkpoints (``torch.utils.checkpoint``;
    AOTAutograd tags its nodes with ``ac_graph_id`` and a recompute policy): backward replays it
    from the region's input, as checkpointing promises, and nothing of it is saved. Only a
    deterministic quantizer may be replayed: a stochastic one draws its seed inside the op, so a
    replay would need the generator state carried across (AOTAutograd's ``run_with_rng_state``,
    which runs the op outside Inductor); its output is saved (packed) instead."""
    if "ac_graph_id" not in node.meta or node.meta.get("recompute") not in (
        CheckpointPolicy.MUST_RECOMPUTE,
        CheckpointPolicy.PREFER_RECOMPUTE,
    ):
        return False
    if node.target is torch.ops.qcompile.learned_clip_quantize.default:
        return True
    return draws_nothing(node.target, node.args)


class SaveQuantizedOperands(CustomGraphPass):
    """Use as Inductor's ``joint_custom_post_pass``; in place on the joint forward-backward graph.

    A post pass, after Inductor's own joint-graph patterns: those rewrite some subgraphs only when
    no intermediate is read elsewhere (a scaled softmax's max), and recomputation makes the
    backward read such intermediates. Run first, it would change which rewrites happen, and so
    the forward's rounding, between packed and unpacked training.

    ``pack=True`` (the default) then stores what backward reads packed
    (`pack_quantized_operands`): 4-bit codes two per byte, boolean masks as bits. ``pack=False``
    keeps the dequantized operands and bool masks as they are (for comparison and debugging).

    ``recompute`` (with packing) lets backward rebuild instead of save: ``"pointwise"`` rebuilds
    ``Ŵ`` from ``W`` and replays elementwise chains; ``"gemm"`` (the default) also replays one GEMM
    from saved codes per tensor (`recompute_from_codes`); ``"none"`` leaves it to the partitioner.
    """

    def __init__(self, pack: bool = True, recompute: str = "gemm") -> None:
        if recompute not in RECOMPUTE_CHOICES:
            raise ValueError(f"recompute must be one of {RECOMPUTE_CHOICES}, got {recompute!r}")
        self.pack = pack
        self.recompute = recompute

    def __call__(self, graph: fx.Graph) -> None:
        for node in graph.nodes:
            if node.op == "call_function" and node.target in (
                torch.ops.qcompile.int_quantize.default,
                torch.ops.qcompile.learned_clip_quantize.default,
            ):
                if not replayed_by_checkpoint(node):
                    node.meta["recompute"] = CheckpointPolicy.MUST_SAVE
        if self.pack:
            rebuilt = pack_quantized_operands(
                graph, requantize_inputs=self.recompute != "none", skip=replayed_by_checkpoint
            )
            if self.recompute != "none":
                recompute_from_codes(graph, rebuilt, max_gemms=1 if self.recompute == "gemm" else 0)
            pack_boolean_masks(graph)
            graph.lint()

    def uuid(self) -> str:
        return f"qcompile.SaveQuantizedOperands.v3.pack={self.pack}.recompute={self.recompute}"
