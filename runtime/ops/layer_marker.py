"""An identity op that names the layer of a high-precision GEMM operand in the graph.

Quantizer ops carry their layer in their ``tag``; operands left in high precision carry it
through this op, so the plan reader can attribute every GEMM of the backward graph to a layer.
It is stripped (`qcompile.passes.post_aot.layer_markers`) before Inductor sees the graph.
"""

from __future__ import annotations

import torch


@torch.library.custom_op("qcompile::mark_layer", mutates_args=())
def mark_layer(x: torch.Tensor, tag: str) -> torch.Tensor:
    return x.clone()


@mark_layer.register_fake
def _mark_layer_fake(x, tag):
    return torch.empty_like(x)


mark_layer.register_autograd(lambda ctx, grad: (grad, None))
