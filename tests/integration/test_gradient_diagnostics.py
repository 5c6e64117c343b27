"""`qcompile.gradient_diagnostics`: grid occupancy, bias and variance of gradient quantizers on real dY."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import qcompile
from qcompile.report.gradient_report import quantizer_stats
from qcompile.runtime.reference.int_quant import int_clip
from qcompile.testing.models import SmallResNet, mlp


def _gradient(seed: int = 0) -> torch.Tensor:
    """A heavy-tailed, gradient-like tensor (log-normal magnitudes, random signs), never all zeros."""
    g = torch.Generator().manual_seed(seed)
    mag = torch.exp(2.0 * torch.randn(16, 32, generator=g))
    sign = torch.where(torch.rand(16, 32, generator=g) < 0.5, -1.0, 1.0)
    return mag * sign * 1e-3


def test_luq_underflow_counts_values_below_the_first_level_and_nothing_clips():
    torch.manual_seed(0)
    g = torch.full((4, 8), 3.0)
    g[0, 0] = 64.0  # per-tensor LUQ4: alpha = 64 / 2^6 = 1, levels 1..64
    g[1, :3] = torch.tensor([0.5, -0.25, 0.9])  # three values under alpha
    g[2, 0] = 0.0  # an exact zero is not counted
    stats, log2x, levels, clip = quantizer_stats(g, "luq4", -1, draws=64)
    assert stats.underflow == pytest.approx(3 / 31)
    assert stats.clipped == 0.0 and clip is None
    assert levels == [1, 2, 4, 8, 16, 32, 64]
    assert log2x.max().item() == pytest.approx(6.0)
    # underflowed values are flushed to zero with probability 1 - x: (0.5 + 0.75 + 0.1) / 31 expected
    assert stats.zeroed == pytest.approx(1.35 / 31, abs=0.02)


def test_luq_is_unbiased_and_smp2_halves_its_variance():
    torch.manual_seed(0)
    g = _gradient()
    one, *_ = quantizer_stats(g, "luq4", -1, draws=96)
    two, *_ = quantizer_stats(g, "luq4-smp2", -1, draws=96)
    assert one.variance > 0.01
    assert one.bias <= 3 * one.bias_floor  # no bias distinguishable from the estimate's noise
    assert 0.35 < two.variance / one.variance < 0.7
    assert one.mse == pytest.approx(one.variance + one.bias**2, rel=0.1, abs=one.bias_floor**2 * 3)


def test_nearest_rounding_int4_is_deterministic_biased_and_sawb_clips_outliers():
    torch.manual_seed(0)
    g = _gradient(1)
    rdn, *_ = quantizer_stats(g, "int4-max", -1, draws=8)
    assert rdn.variance == pytest.approx(0.0, abs=1e-12) and rdn.bias_floor == pytest.approx(0.0, abs=1e-6)
    expected = (qcompile.quantize(g, "int4-max") - g).norm() / g.norm()
    assert rdn.bias == pytest.approx(expected.item(), rel=1e-4)
    sawb, *_ = quantizer_stats(g, "int4", -1, draws=4)
    clip = int_clip(g, "sawb", [0, 1])
    assert clip.item() < g.abs().max().item()
    assert sawb.clipped == pytest.approx((g.abs() > clip).float().mean().item())
    assert sawb.clipped > 0


def test_high_precision_spec_is_refused():
    with pytest.raises(ValueError, match="high precision"):
        quantizer_stats(_gradient(), "fp32", -1)


@pytest.mark.slow
def test_diagnostics_of_a_compiled_model_read_its_plan_and_leave_it_untouched(tmp_path):
    torch.manual_seed(0)
    model = mlp(width=32, depth=3, inputs=16, classes=4)
    cmodel = torch.compile(model, backend="fqt", options={"policy": "luq-int4"})
    x, y = torch.randn(16, 16), torch.randint(0, 4, (16,))
    F.cross_entropy(cmodel(x), y).backward()
    grads_before = [p.grad.clone() for p in model.parameters()]
    weights_before = [p.detach().clone() for p in model.parameters()]

    png = tmp_path / "grads.png"
    report = qcompile.gradient_diagnostics(cmodel, (x, y), F.cross_entropy, out_png=png, draws=16)

    assert report.policy == "luq-int4"
    assert [g.layer for g in report.layers] == ["0", "2", "4"]  # forward order
    assert report.stats("2", "grad_dgrad").in_plan.startswith("luq4")  # the middle layer ran LUQ
    assert report.stats("4", "grad_wgrad").in_plan == "fp32"  # last layer kept high precision
    assert report.stats("2", "grad_dgrad").spec == "luq4-sample"
    assert report.stats("2", "grad_wgrad").spec == "luq4-channel"
    # head dY of a mean cross-entropy is (softmax - onehot) / N: check the captured gradient is the real one
    logits = model(x)
    dlogits = (logits.softmax(1) - F.one_hot(y, 4)) / len(y)
    head = report.layers[-1]
    assert head.amax == pytest.approx(dlogits.abs().max().item(), rel=1e-5)
    assert head.rms == pytest.approx(dlogits.pow(2).mean().sqrt().item(), rel=1e-5)
    for p, g0, w0 in zip(model.parameters(), grads_before, weights_before, strict=True):
        assert torch.equal(p.grad, g0) and torch.equal(p.detach(), w0)
    assert png.stat().st_size > 5000
    assert "rel. variance" in str(report)
    assert report.to_dict()["layers"][0]["quantizers"][0]["draws"] == 16


def test_diagnostics_on_an_eager_conv_net_with_a_named_policy():
    torch.manual_seed(0)
    model = SmallResNet(width=8)
    x, y = torch.randn(4, 3, 8, 8), torch.randint(0, 10, (4,))
    report = qcompile.gradient_diagnostics(model, (x, y), F.cross_entropy, policy="luq", draws=8)
    assert report.policy == "luq"
    conv = report.stats("block1.conv1", "grad_dgrad")
    assert conv.spec == "luq4-tensor" and conv.in_plan == "(no plan)"
    layer = next(g for g in report.layers if g.layer == "block1.conv1")
    assert layer.shape == [4, 8, 8, 8] and layer.op == "conv2d"
    assert 0.0 < conv.underflow < 1.0 and conv.clipped == 0.0
    assert all(math.isfinite(q.variance) for g in report.layers for q in g.quantizers)
    assert model.stem.weight.grad is None  # the eager copy took the backward, not the user's model
    fp32 = qcompile.gradient_diagnostics(model, (x, y), F.cross_entropy, policy="fp32", draws=2)
    assert all(not g.quantizers for g in fp32.layers)
    with pytest.raises(ValueError, match="nothing to plot"):
        qcompile.gradient_diagnostics(model, (x, y), F.cross_entropy, policy="fp32", out_png="/dev/null")
