"""The subgraphs a compiled graph carries: the bodies of its higher-order op calls.

After AOTAutograd, ``torch.cond`` branches and nested compile regions (``invoke_subgraph``) stay
as calls of their own forward/backward GraphModules, held as attributes of the graph. Their GEMMs
are the model's GEMMs: the plan reads them and their quantizers are inlined like the top level's.
"""

from __future__ import annotations

import operator

import torch
from torch import fx


def subgraph_modules(gm: fx.GraphModule) -> list[fx.GraphModule]:
    """Every GraphModule held (at any depth) by ``gm``, each once, ``gm`` itself excluded."""
    out: list[fx.GraphModule] = []
    seen = {id(gm)}
    for _, module in gm.named_modules(remove_duplicate=True):
        if isinstance(module, fx.GraphModule) and id(module) not in seen:
            seen.add(id(module))
            out.append(module)
    return out


def input_aliases(gm: fx.GraphModule) -> set[str]:
    """Names of ``gm``'s nodes that are a graph input handed back by a higher-order op call (a
    nested compile region's forward returns the weights it was given, for its backward): saved
    for backward, they hold no memory of their own, as a saved parameter holds none."""
    out: set[str] = set()
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target is not operator.getitem:
            continue
        call = node.args[0]
        if not isinstance(call, fx.Node) or not isinstance(call.target, torch._ops.HigherOrderOperator):
            continue
        bodies = [i for i, a in enumerate(call.args) if isinstance(a, fx.Node) and a.op == "get_attr"]
        if len(bodies) != 1:
            continue
        body = getattr(gm, str(call.args[bodies[0]].target), None)
        if not isinstance(body, fx.GraphModule):
            continue
        operands: list[fx.Node] = []
        fx.map_arg(call.args[bodies[0] + 1 :], operands.append)
        holders = list(body.graph.find_nodes(op="placeholder"))
        results = body.graph.output_node().args[0]
        index = node.args[1]
        if len(holders) != len(operands) or not isinstance(index, int) or index >= len(results):
            continue
        returned = results[index]
        if isinstance(returned, fx.Node) and returned.op == "placeholder":
            source = operands[holders.index(returned)]
            if source.op == "placeholder" or source.name in out:
                out.add(node.name)
    return out
