"""LBT's learned-clip forward: init, grid, the clipped STE and PACT's gradient into α.grad."""

from __future__ import annotations

import math

import pytest
import torch

import qcompile
from qcompile.runtime import quantizer_state
from qcompile.runtime.ops.learned_clip_quantizer import initial_clip, learned_clip_reference

op = torch.ops.qcompile.learned_clip_quantize


def test_reference_grid_and_auto_sign():
    x = torch.linspace(-2, 2, 41)
    out = learned_clip_reference(x, 1.4, 4, "signed")
    assert out.abs().max() == pytest.approx(1.4)
    codes = out / (1.4 / 7)
    torch.testing.assert_close(codes, codes.round(), atol=1e-5, rtol=0)
    relu = learned_clip_reference(x.clamp_min(0), 1.5, 4, "auto")  # unsigned grid 0..15
    assert len(torch.unique(relu)) > 8 and relu.min() == 0


def test_initial_clip_follows_the_paper():
    torch.manual_seed(0)
    w = torch.randn(64, 64) * 0.1
    assert initial_clip(w, "weight") == pytest.approx(3 * float(w.std()))
    x = torch.randn(64, 64)
    assert initial_clip(x, "activation") == pytest.approx(3 * float(x.std()) / math.sqrt(1 - 2 / math.pi))
    assert initial_clip(torch.zeros(4), "weight") == 1.0


def test_op_initialises_then_backward_gives_clipped_ste_and_pact_gradient():
    state = quantizer_state.QuantizerState()
    quantizer_state.bind_tag("fc|weight|lc0", state, "fc/weight")
    torch.manual_seed(0)
    x = torch.randn(32, 8)
    x[0, :3] = torch.tensor([9.0, -8.0, 7.0])  # beyond any 3σ clip: PACT's gradient is not 0
    x.requires_grad_()
    out = op(x, 4, "signed", "fc|weight|lc0")
    alpha = float(state.clip("fc/weight").detach())
    assert alpha == pytest.approx(3 * float(x.detach().std()))
    assert bool(state.clip_ready("fc/weight"))
    upstream = torch.randn(32, 8)
    out.backward(upstream)
    outside = x.detach().abs() > alpha
    torch.testing.assert_close(x.grad, torch.where(outside, 0.0, upstream))
    assert outside.sum() >= 3
    expected = (upstream * torch.sign(x.detach()) * outside).sum()
    torch.testing.assert_close(state.clip("fc/weight").grad, expected)
    op(x, 4, "signed", "fc|weight|lc0")  # a second call keeps the (now learned) clip
    assert float(state.clip("fc/weight").detach()) == alpha


def test_learned_clip_only_for_forward_roles():
    with pytest.raises(qcompile.PolicyError, match="forward"):
        qcompile.Policy(grad_dgrad="int4-learned")
    with pytest.raises(ValueError, match="per-tensor"):
        qcompile.parse_spec("int4-learned-sr")
