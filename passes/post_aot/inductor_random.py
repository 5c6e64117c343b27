"""Seed the inlined quantizers' random draws the way Inductor does (the pass right before it).

Inductor replaces ``aten.rand``-family draws by its seeded random ops (one ``inductor_seeds``
block per graph, ``inductor_random`` per draw, Philox in the generated code) in a joint-graph
pass. That pass has already run when `inline_quantizers` brings the stochastic quantizers'
draws in, so this pass runs Inductor's ``replace_random_passes`` again, on the graph Inductor is
about to compile, and recompiles the graph's Python code so that code and graph agree.

It runs only where Inductor compiles (`passes.pipeline.POST_AOT_INDUCTOR`). A graph run eagerly
(`qcompile.plan(model, example_inputs)`, `graphs_only`) keeps its ``aten.rand`` draws: eagerly,
``inductor_random`` ignores its seed and draws from the global generator after the graph's seed
block, so the values would depend on how Dynamo split the model (a gradient-checkpointed HF
BERT, split before its head, drew other values than the same model in one graph). Eager
``aten.rand`` draws depend only on the order of the draws. Before this pass existed the same
replacement ran inside `inline_quantizers` after its last recompile, so eager runs executed code
older than the graph (the aten draws) by accident, and any later recompile changed them.
"""

from __future__ import annotations

import contextlib

from torch import fx
from torch._subclasses.fake_tensor import FakeTensor


def seed_random_draws(gm: fx.GraphModule) -> fx.GraphModule:
    """In place; returns ``gm``: random draws as Inductor's seeded ops, code recompiled."""
    from torch._inductor.fx_passes.replace_random import replace_random_passes
    from torch._inductor.virtualized import V

    fake_mode = next(
        (n.meta["val"].fake_mode for n in gm.graph.nodes if isinstance(n.meta.get("val"), FakeTensor)), None
    )
    with V.set_fake_mode(fake_mode) if fake_mode is not None else contextlib.nullcontext():
        changed = replace_random_passes(gm)
    if changed:
        gm.recompile()
    return gm
