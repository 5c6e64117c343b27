"""The subgraphs a compiled graph carries: the bodies of its higher-order op calls.

After AOTAutograd, ``torch.cond`` branches and nested compile regions (``invoke_subgraph``) stay
as calls of their own forward/backward GraphModules, held as attributes of the graph. Their GEMMs
are the model's GEMMs: the plan reads them and their quantizers are inlined like the top level's.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass

import torch
from torch import fx


@dataclass
class HigherOrderCall:
    """One call of a higher-order op: its name, the bodies it carries (GraphModules held by the
    calling graph) and the operands it passes them, in order (what each body's placeholders
    receive, for the ops that pass their operands straight through)."""

    op: str
    bodies: list[fx.GraphModule]
    operands: list[fx.Node]

    def body_inputs(self, body: fx.GraphModule) -> list[tuple[fx.Node, fx.Node]] | None:
        """(body placeholder, the operand it receives) pairs; None when they do not line up."""
        holders = list(body.graph.find_nodes(op="placeholder"))
        if len(holders) != len(self.operands):
            return None
        return list(zip(holders, self.operands, strict=True))


def higher_order_call(node: fx.Node, gm: fx.GraphModule) -> HigherOrderCall | None:
    """``node`` as a `HigherOrderCall`, or None if it calls no higher-order op with a body. The
    operands are the node arguments after the last body (e.g. ``cond(pred, true, false, ops)``,
    ``invoke_subgraph(body, "name", *ops)``, ``tag_activation_checkpoint(body, *ops)``)."""
    if node.op != "call_function" or not isinstance(node.target, torch._ops.HigherOrderOperator):
        return None
    bodies: list[fx.GraphModule] = []
    last = -1
    for i, a in enumerate(node.args):
        if isinstance(a, fx.Node) and a.op == "get_attr":
            sub = _get_attr(gm, str(a.target))
            if isinstance(sub, fx.GraphModule):
                bodies.append(sub)
                last = i
    if not bodies:
        return None
    operands: list[fx.Node] = []
    fx.map_arg(node.args[last + 1 :], operands.append)
    return HigherOrderCall(node.target.__name__, bodies, operands)


def _get_attr(gm: fx.GraphModule, target: str) -> object:
    obj: object = gm
    for part in target.split("."):
        obj = getattr(obj, part, None)
    return obj


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
        call = higher_order_call(node.args[0], gm) if isinstance(node.args[0], fx.Node) else None
        pairs = call.body_inputs(call.bodies[0]) if call is not None and len(call.bodies) == 1 else None
        if pairs is None:
            continue
        results = call.bodies[0].graph.output_node().args[0]
        index = node.args[1]
        if not isinstance(index, int) or index >= len(results):
            continue
        source = dict(pairs).get(results[index])  # the body hands back one of its inputs
        if source is not None and (source.op == "placeholder" or source.name in out):
            out.add(node.name)
    return out
