"""Let a lowered graph run eagerly: an ``aten.view`` that cannot view becomes a reshape.

AOTAutograd traces on the quantizer ops' fake tensors, which are contiguous, so a ``view`` may
follow a quantizer. Once `inline_quantizers` has replaced an op by its reference decomposition,
that value can be a permuted view (a block format quantized along a non-last axis moves that
axis last and back). Inductor plans its own layouts and never minds; an eager run of the graph
(`qcompile.plan(model, example_inputs)` and `qcompile.export`, which skip Inductor) fails with
"view size is not compatible". Every ``view`` node is routed through `view_or_reshape`: the
same ``view`` wherever it works (so eager runs stay bit-identical to what they were: rewriting
every view as ``aten.reshape`` changed the gradients of a checkpointed HF BERT), a copy where it
cannot. The partitioned graphs are functional (no mutation through a view), so the values are
those the compiled graph computes. Adding ``.contiguous()`` to the decompositions instead would
change the graphs Inductor compiles (it gave NaN on an AVX2 CPU).

`run_eagerly` applies the rewrite only to a graph whose run failed that way: a graph that runs
is left exactly as it is. (Recompiling a graph used to be a hazard here: `inline_quantizers` ran
Inductor's ``replace_random_passes`` after its last recompile, so the code eager runs executed
was older than the graph, and a recompile switched a gradient-checkpointed HF BERT's draws.
The seeding is now its own pass, `inductor_random.seed_random_draws`, run only where Inductor
compiles, so a lowered graph's code is its graph.)
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import fx

aten = torch.ops.aten


def view_or_reshape(x: torch.Tensor, shape: list[int]) -> torch.Tensor:
    """``aten.view(x, shape)``, or ``aten.reshape`` when ``x``'s strides do not allow a view."""
    try:
        return aten.view.default(x, shape)
    except RuntimeError:
        return aten.reshape.default(x, shape)


def views_to_reshapes(gm: fx.GraphModule) -> fx.GraphModule:
    """In place: every ``aten.view.default`` node calls `view_or_reshape`. Returns ``gm``."""
    changed = False
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target is aten.view.default:
            node.target = view_or_reshape
            changed = True
    if changed:
        gm.recompile()
    return gm


def run_eagerly(gm: fx.GraphModule) -> Callable[..., Any]:
    """``gm.forward``; if a run fails on a ``view`` of a non-viewable value, the graph's views go
    through `view_or_reshape` (`views_to_reshapes`) and the call runs again. The graphs are
    functional, so a failed run leaves nothing behind but random draws already taken."""

    def run(*args: Any) -> Any:
        try:
            return gm.forward(*args)
        except RuntimeError as exc:
            if "view size is not compatible" not in str(exc):
                raise
            return views_to_reshapes(gm).forward(*args)

    return run
