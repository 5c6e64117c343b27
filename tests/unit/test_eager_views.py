"""`views_to_reshapes`: a lowered graph whose quantizer decomposition returns a permuted view runs
eagerly (the graphs-only compile of `qcompile.plan` / `qcompile.export`), with the same values."""

from __future__ import annotations

import pytest
import torch
from torch import fx

from qcompile.passes.post_aot.eager_views import run_eagerly, view_or_reshape, views_to_reshapes

ATEN = torch.ops.aten


def _graph() -> fx.GraphModule:
    """``x.T`` (the shape a decomposition along axis 0 leaves: a transposed view), then the
    ``view`` AOTAutograd traced on the contiguous fake (rows of 2 merged), then a GEMM."""
    g = fx.Graph()
    x = g.placeholder("x")
    w = g.placeholder("w")
    t = g.call_function(ATEN.permute.default, (x, [1, 0]))
    flat = g.call_function(ATEN.view.default, (t, [3, 8]))
    g.output(g.call_function(ATEN.mm.default, (flat, w)))
    return fx.GraphModule(torch.nn.Module(), g)


def test_a_view_of_a_permuted_value_runs_after_the_pass_with_the_same_values():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 6, generator=gen), torch.randn(8, 3, generator=gen)
    gm = _graph()
    with pytest.raises(RuntimeError, match="view size is not compatible"):
        gm(x, w)
    assert views_to_reshapes(gm) is gm
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert ATEN.view.default not in targets and view_or_reshape in targets
    torch.testing.assert_close(gm(x, w), x.T.reshape(3, 8) @ w, rtol=0, atol=0)


def test_a_view_that_works_stays_a_view():
    x = torch.randn(4, 6, generator=torch.Generator().manual_seed(0))
    out = view_or_reshape(x, [2, 12])
    assert out.data_ptr() == x.data_ptr() and out._base is x


def test_a_graph_without_views_is_left_as_it_is():
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(ATEN.relu.default, (x,)))
    gm = fx.GraphModule(torch.nn.Module(), g)
    code = gm.code
    assert views_to_reshapes(gm).code == code


def test_run_eagerly_rewrites_only_a_graph_whose_view_failed():
    gen = torch.Generator().manual_seed(0)
    x, w = torch.randn(4, 6, generator=gen), torch.randn(8, 3, generator=gen)
    gm = _graph()
    code = gm.code
    run = run_eagerly(gm)
    torch.testing.assert_close(run(x, w), x.T.reshape(3, 8) @ w, rtol=0, atol=0)
    assert gm.code != code  # rewritten after the failed view
    fine = _graph()
    fine_code = fine.code
    xt = torch.randn(6, 4, generator=gen).T  # laid out so that its transpose views as [3, 8]
    torch.testing.assert_close(run_eagerly(fine)(xt, w), xt.T.reshape(3, 8) @ w, rtol=0, atol=0)
    assert fine.code == fine_code  # a graph that ran is left as it was
