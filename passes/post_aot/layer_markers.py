"""Remove ``qcompile::mark_layer`` identity nodes once the plan has read the graph."""

from __future__ import annotations

import torch
from torch import fx


def strip_layer_markers(gm: fx.GraphModule) -> fx.GraphModule:
    """In place: every marker's users read the marker's input instead. Returns ``gm``."""
    changed = False
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target is torch.ops.qcompile.mark_layer.default:
            node.replace_all_uses_with(node.args[0])
            gm.graph.erase_node(node)
            changed = True
    if changed:
        gm.graph.lint()
        gm.recompile()
    return gm
