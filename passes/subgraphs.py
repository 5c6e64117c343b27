"""The subgraphs a compiled graph carries: the bodies of its higher-order op calls.

After AOTAutograd, ``torch.cond`` branches and nested compile regions (``invoke_subgraph``) stay
as calls of their own forward/backward GraphModules, held as attributes of the graph. Their GEMMs
are the model's GEMMs: the plan reads them and their quantizers are inlined like the top level's.
"""

from __future__ import annotations

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
