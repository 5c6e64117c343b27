"""`seed_random_draws`: the inlined quantizers' ``aten.rand`` draws become Inductor's seeded random
ops only where Inductor compiles, and a graph's Python code always matches its graph."""

from __future__ import annotations

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensorMode

from qcompile.passes.post_aot.inductor_random import seed_random_draws

ATEN = torch.ops.aten


def _graph_with_draws() -> fx.GraphModule:
    """``(x + rand) * rand``: two ``aten.rand`` draws, as the inlined stochastic quantizers leave
    them (Inductor's decompositions turn ``rand_like`` into ``rand``), with fake values."""
    g = fx.Graph()
    x = g.placeholder("x")
    cpu = {"dtype": torch.float32, "device": torch.device("cpu")}
    u = g.call_function(ATEN.rand.default, ([4, 6],), cpu)
    v = g.call_function(ATEN.rand.default, ([4, 6],), cpu)
    y = g.call_function(ATEN.add.Tensor, (x, u))
    g.output(g.call_function(ATEN.mul.Tensor, (y, v)))
    with FakeTensorMode():
        for n in g.nodes:
            if n.op != "output":
                n.meta["val"] = torch.empty(4, 6)
    return fx.GraphModule(torch.nn.Module(), g)


def _targets(gm: fx.GraphModule) -> set:
    return {n.target for n in gm.graph.nodes if n.op == "call_function"}


def test_draws_become_inductor_seeded_ops_and_the_code_follows_the_graph():
    gm = _graph_with_draws()
    assert seed_random_draws(gm) is gm
    targets = _targets(gm)
    assert ATEN.rand.default not in targets
    prims = torch.ops.prims
    assert prims.inductor_seeds.default in targets and prims.inductor_random.default in targets
    # The code the module runs is the graph's (a stale code object would still draw aten.rand).
    assert gm.code == gm.graph.python_code("self").src
    assert "inductor_random" in gm.code and "aten.rand" not in gm.code
    out = gm(torch.ones(4, 6))  # eagerly, the seeded ops still draw uniforms: (1 + u)·v in [0, 2)
    assert out.shape == (4, 6) and ((out >= 0) & (out < 2)).all() and out.std() > 0


def test_a_graph_without_draws_keeps_its_code():
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(ATEN.relu.default, (x,)))
    gm = fx.GraphModule(torch.nn.Module(), g)
    code = gm.code
    assert seed_random_draws(gm).code == code
