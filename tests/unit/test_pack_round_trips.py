"""`cancel_pack_round_trips`: a mask packed and unpacked inside one graph is read directly, on a
hand-built graph and in a compiled MLP whose backward recomputes its last ReLU mask."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
from torch import fx

from qcompile.passes import cancel_pack_round_trips

OPS = torch.ops.qcompile
ATEN = torch.ops.aten


def _graph(packed_is_input: bool) -> fx.GraphModule:
    g = fx.Graph()
    x = g.placeholder("x")
    x.meta["val"] = torch.empty(4, 200)
    if packed_is_input:  # a mask the forward saved: nothing to cancel
        packed = g.placeholder("packed")
    else:
        mask = g.call_function(ATEN.gt.Scalar, (x, 0.0))
        mask.meta["val"] = torch.empty(4, 200, dtype=torch.bool)
        packed = g.call_function(OPS.pack_bits.default, (mask,))
    bits = g.call_function(OPS.unpack_bits.default, (packed, 200))
    g.output(g.call_function(ATEN.where.ScalarOther, (bits, x, 0.0)))
    return fx.GraphModule(torch.nn.Module(), g)


def test_round_trip_in_one_graph_is_cancelled_and_computes_the_same():
    gm = _graph(packed_is_input=False)
    x = torch.randn(4, 200, generator=torch.Generator().manual_seed(0))
    before = gm(x)
    assert cancel_pack_round_trips(gm) == 1
    targets = {n.target for n in gm.graph.nodes}
    assert OPS.pack_bits.default not in targets and OPS.unpack_bits.default not in targets
    assert torch.equal(gm(x), before) and torch.equal(before, torch.where(x > 0, x, 0.0))


def test_a_saved_packed_mask_is_left_alone():
    gm = _graph(packed_is_input=True)
    assert cancel_pack_round_trips(gm) == 0
    assert OPS.unpack_bits.default in {n.target for n in gm.graph.nodes}


def test_compiled_mlp_cancels_its_recomputed_mask_with_unchanged_gradients(monkeypatch):
    """The last hidden ReLU's input is saved for the FP32 head anyway, so the partitioner
    recomputes its mask in backward: the pass cancels that pack/unpack, bit for bit."""
    pipeline = pytest.importorskip("qcompile.passes.pipeline")
    counts: list[int] = []

    def spy(gm):
        counts.append(cancel_pack_round_trips(gm))
        return counts[-1]

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 96), nn.ReLU(), nn.Linear(96, 96), nn.ReLU(), nn.Linear(96, 10))
    x = torch.randn(16, 64)
    grads = []
    for cancel in (spy, lambda gm: 0):
        monkeypatch.setattr(pipeline, "cancel_pack_round_trips", cancel)
        torch._dynamo.reset()
        m = copy.deepcopy(model)
        torch.manual_seed(1)
        torch.compile(m, backend="fqt", options={"kernels": "reference"})(x).square().mean().backward()
        grads.append([p.grad for p in m.parameters()])
    assert sum(counts) >= 1
    assert all(torch.equal(a, b) for a, b in zip(*grads, strict=True))
