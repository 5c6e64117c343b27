"""FX helpers every phase's passes share: values, sizes, new nodes, the joint graph's two regions,
and which targets are GEMMs. One definition each, so passes cannot disagree on them."""

from __future__ import annotations

import contextlib
import math
import operator
from collections.abc import Collection
from typing import Any

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensor

aten = torch.ops.aten
qops = torch.ops.qcompile

# GEMM-class calls a forward computes (what backward may replay, what the plan reads)...
FORWARD_GEMM_TARGETS = frozenset({
    aten.mm.default, aten.bmm.default, aten.addmm.default, aten.baddbmm.default, aten.matmul.default,
    aten.convolution.default, qops.qmatmul.default, qops.qconv.default, qops.qmatmul_rq.default,
})  # fmt: skip
# ... and every GEMM-class call of a forward or backward ATen graph (backward adds the fused
# convolution gradient).
GEMM_TARGETS = FORWARD_GEMM_TARGETS | {aten.convolution_backward.default}


def node_value(n: Any) -> Any:
    """A node's fake value (``meta["val"]``), or ``n`` itself for a non-node argument."""
    return n.meta.get("val") if isinstance(n, fx.Node) else n


def size_hint(s: int | torch.SymInt) -> int | None:
    """A size as an int: symbolic sizes at the value the graph was compiled for, None if unknown.
    Never ``int()`` a SymInt here: that would specialise the graph to this size."""
    if isinstance(s, int):
        return s
    hint = getattr(getattr(s, "node", None), "hint", None)
    return int(hint) if hint is not None else None


def hinted_numel(val: Any) -> int | None:
    """Elements of a tensor value, symbolic sizes at their hints; None for a non-tensor or an
    unknown size (sizes are only compared and summed for reports, never used to specialise)."""
    if not isinstance(val, torch.Tensor):
        return None
    sizes = [size_hint(s) for s in val.shape]
    return None if any(s is None for s in sizes) else math.prod(sizes)  # type: ignore[arg-type]


def fake_mode_of(values: list[Any]) -> Any:
    """The fake mode of the first fake tensor among ``values`` (None outside tracing)."""
    for v in values:
        if isinstance(v, FakeTensor):
            return v.fake_mode
    return None


def new_node(
    graph: fx.Graph,
    target: Any,
    args: tuple,
    like: fx.Node,
    recompute: Any = None,
    kwargs: dict | None = None,
) -> fx.Node:
    """A call node whose ``meta["val"]`` comes from running ``target`` on the args' fake values,
    with ``like``'s provenance (stack trace, module stack) so the plan and errors point at the
    user's code."""
    kwargs = kwargs or {}
    node = graph.call_function(target, args, kwargs)
    fake_args = fx.map_arg(args, node_value)
    mode = fake_mode_of(torch.utils._pytree.tree_leaves(fake_args))
    with mode if mode is not None else contextlib.nullcontext():
        if target is operator.getitem:
            node.meta["val"] = fake_args[0][fake_args[1]]
        else:
            node.meta["val"] = target(*fake_args, **kwargs)
    for key in ("stack_trace", "nn_module_stack", "seq_nr", "original_aten"):
        if key in like.meta:
            node.meta.setdefault(key, like.meta[key])
    if recompute is not None:
        node.meta["recompute"] = recompute
    return node


def joint_regions(graph: fx.Graph) -> tuple[set[fx.Node], set[fx.Node]]:
    """The two halves of AOTAutograd's joint graph: (backward nodes: everything depending on a
    tangent, forward nodes: every ancestor of an output that does not depend on a tangent)."""
    backward: set[fx.Node] = set()
    for node in graph.nodes:
        if (node.op == "placeholder" and "tangents" in str(node.target)) or any(
            a in backward for a in node.all_input_nodes
        ):
            backward.add(node)
    output = next(n for n in reversed(graph.nodes) if n.op == "output")
    stack = [a for a in output.all_input_nodes if a not in backward]
    forward: set[fx.Node] = set()
    while stack:
        n = stack.pop()
        if n in forward:
            continue
        forward.add(n)
        stack.extend(n.all_input_nodes)
    return backward, forward


def is_smp_draws(node: fx.Node, quantizers: Collection[Any]) -> bool:
    """SMP's ``torch.stack(draws).mean(0)`` as AOTAutograd lowers it, ``cat(draws) → view →
    mean``: ``node`` is that ``cat``, of outputs of ``quantizers`` that share one tag (last
    argument). Any other ``cat`` may join quantized and unquantized tensors."""
    if node.op != "call_function" or node.target is not aten.cat.default:
        return False
    parts = node.args[0] if node.args and isinstance(node.args[0], (list, tuple)) else []
    return (
        len(parts) > 1
        and all(isinstance(p, fx.Node) and p.op == "call_function" and p.target in quantizers for p in parts)
        and len({p.args[-1] for p in parts}) == 1
    )
