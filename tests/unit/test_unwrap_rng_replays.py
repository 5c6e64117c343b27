"""`unwrap_rng_replays` on hand-built graphs: the wrappers AOTAutograd puts around quantizers a
user's checkpoint replays come off round-to-nearest quantizers only, the graphs keep their
signatures, and the result runs to the same values."""

from __future__ import annotations

import operator

import torch
from torch import fx

from qcompile.passes import unwrap_rng_replays

RUN_AND_SAVE = torch._prims.rng_prims.run_and_save_rng_state
RUN_WITH = torch._prims.rng_prims.run_with_rng_state
INT_QUANTIZE = torch.ops.qcompile.int_quantize.default


def _forward(stochastic: bool) -> fx.GraphModule:
    g = fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(4, 8)
    call = g.call_function(
        RUN_AND_SAVE, (INT_QUANTIZE, x, 4, "sawb", "signed", [], stochastic, "fc|activation|g0s0")
    )
    state = g.call_function(operator.getitem, (call, 0))
    state.meta["val"] = torch.get_rng_state()
    value = g.call_function(operator.getitem, (call, 1))
    value.meta["val"] = torch.empty(4, 8)
    g.output((value, state))
    return fx.GraphModule(torch.nn.Module(), g)


def _backward(stochastic: bool) -> fx.GraphModule:
    g = fx.Graph()
    x, state = g.placeholder("x"), g.placeholder("rng_state_output_0")
    x.meta["val"], state.meta["val"] = torch.empty(4, 8), torch.get_rng_state()
    value = g.call_function(
        RUN_WITH, (state, INT_QUANTIZE, x, 4, "sawb", "signed", [], stochastic, "fc|activation|g0s0")
    )
    value.meta["val"] = torch.empty(4, 8)
    g.output((value,))
    return fx.GraphModule(torch.nn.Module(), g)


def test_round_to_nearest_quantizers_come_out_of_their_wrappers():
    x = torch.randn(4, 8)
    fw, bw = _forward(False), _backward(False)
    assert unwrap_rng_replays(fw) == 1 and unwrap_rng_replays(bw) == 1
    for gm in (fw, bw):
        targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
        assert INT_QUANTIZE in targets and RUN_AND_SAVE not in targets and RUN_WITH not in targets
    value, state = fw(x)
    expected = INT_QUANTIZE(x, 4, "sawb", "signed", [], False, "fc|activation|g0s0")
    assert torch.equal(value, expected) and state.numel() == 0  # the handed-over state: empty
    (replayed,) = bw(x, state)
    assert torch.equal(replayed, expected)
    assert bw.graph.find_nodes(op="placeholder")[1].meta["val"].numel() == 0


def test_stochastic_quantizers_keep_their_random_state():
    fw, bw = _forward(True), _backward(True)
    assert unwrap_rng_replays(fw) == 0 and unwrap_rng_replays(bw) == 0
    assert any(n.target is RUN_AND_SAVE for n in fw.graph.nodes)
    assert any(n.target is RUN_WITH for n in bw.graph.nodes)
