"""Let a lowered graph run eagerly: ``aten.view`` becomes ``aten.reshape``.

AOTAutograd traces on the quantizer ops' fake tensors, which are contiguous, so a ``view`` may
follow a quantizer. Once `inline_quantizers` has replaced an op by its reference decomposition,
that value can be a permuted view (a block format quantized along a non-last axis moves that
axis last and back). Inductor plans its own layouts and never minds; an eager run of the graph
(`qcompile.plan(model, example_inputs)` and `qcompile.export`, which skip Inductor) fails with
"view size is not compatible". ``reshape`` is ``view`` wherever ``view`` works and a copy
elsewhere; the partitioned graphs are functional (no mutation through a view), so the values are
the same. Adding ``.contiguous()`` to the decompositions instead would change the graphs Inductor
compiles.
"""

from __future__ import annotations

import torch
from torch import fx

aten = torch.ops.aten


def views_to_reshapes(gm: fx.GraphModule) -> fx.GraphModule:
    """In place: every ``aten.view.default`` node calls ``aten.reshape.default``. Returns ``gm``."""
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is aten.view.default:
            node.target = aten.reshape.default
            changed = True
    if changed:
        gm.recompile()
    return gm
