"""AQ + SCQ (Gao et al., 1-bit FQT): group pruning with p ∝ range, 4-bit per-group asymmetric SR."""

from __future__ import annotations

import pytest
import torch

import qcompile
from qcompile.runtime.quantizer_state import measured_bits
from qcompile.runtime.reference.aq import (
    aq_budget,
    aq_quantize_reference,
    aq_storage_bits,
    keep_probabilities,
)
from qcompile.runtime.spec import parse_spec

aq_op = torch.ops.qcompile.aq_quantize


def test_keep_probabilities_sum_to_the_budget_and_follow_the_range():
    torch.manual_seed(0)
    ranges = torch.rand(64) ** 6  # skewed: the largest saturate at p = 1
    ranges[:3] = 0.0
    p = keep_probabilities(ranges, aq_budget(64, 4))
    assert p.sum().item() == pytest.approx(16.0, abs=1e-4)
    assert (p <= 1).all() and (p[:3] == 0).all()
    free = (p < 1) & (ranges > 0)
    ratio = p[free] / ranges[free]
    torch.testing.assert_close(ratio, ratio.mean().expand_as(ratio))  # ∝ range below the cap
    assert (p == 1).any()  # mass above 1 was redistributed


def test_tiny_inputs_keep_at_least_one_group():
    assert aq_budget(3, 4) == 1.0
    p = keep_probabilities(torch.tensor([1.0, 2.0, 1.0]), aq_budget(3, 4))
    assert p.sum().item() == pytest.approx(1.0)
    g = torch.tensor([[0.5, -0.25, 1.0]])  # one group: always kept
    for _ in range(5):
        out, kept = aq_quantize_reference(g, 4, [1])
        assert kept == 3 and out.abs().sum() > 0
    out, kept = aq_quantize_reference(torch.tensor([[2.0], [3.0]]), 4, [1])  # range-0 groups
    assert kept == 1 and out.abs().sum() > 0


def test_grid_asymmetric_per_group():
    torch.manual_seed(1)
    g = torch.randn(8, 16) * torch.arange(1, 9).view(8, 1)
    group_noise = torch.zeros(8)  # u = 0 < p: every group with p > 0 kept
    out, kept = aq_quantize_reference(g, 4, [1], "range", group_noise=group_noise)
    assert kept == g.numel()
    p = keep_probabilities((g.amax(1) - g.amin(1)), aq_budget(8, 4)).view(8, 1)
    lo, hi = g.amin(1, keepdim=True), g.amax(1, keepdim=True)
    codes = (out * p - lo) / ((hi - lo) / 15)
    torch.testing.assert_close(codes, codes.round(), atol=2e-3, rtol=0)
    assert codes.round().min() >= 0 and codes.round().max() <= 15


def test_unbiased_paper_version():
    torch.manual_seed(0)
    g = torch.randn(6, 5) * torch.tensor([0.1, 1, 3, 0.5, 2, 0.2]).view(6, 1)
    k = 3000
    draws = torch.stack([aq_quantize_reference(g, 4, [1])[0] for _ in range(k)])
    mean, se = draws.mean(0), draws.std(0) / k**0.5
    assert ((mean - g).abs() <= 5 * se + 1e-6).all(), (mean - g).abs().max()


def test_released_topk_version_is_biased():
    torch.manual_seed(0)
    g = (1 + 0.1 * torch.randn(8, 4)) * 2.0 ** torch.arange(8).view(8, 1)  # max|g| ranks the rows
    draws = torch.stack([aq_quantize_reference(g, 4, [1], "topk")[0] for _ in range(400)])
    assert (draws[:, :6] == 0).all()  # groups outside the top n/b are never kept
    torch.testing.assert_close(draws.mean(0)[6:], g[6:], atol=0.3, rtol=0.05)


def test_average_one_bit_per_element():
    torch.manual_seed(0)
    g = torch.randn(256, 64) * torch.rand(256, 1) ** 3  # ranges vary by group
    kept = sum(aq_quantize_reference(g, 4, [1])[1] for _ in range(50))
    assert 4 * kept / (50 * g.numel()) == pytest.approx(1.0, abs=0.05)


def test_edge_cases():
    assert aq_quantize_reference(torch.empty(0, 3), 4, [1])[0].shape == (0, 3)
    zeros = torch.zeros(4, 8)
    assert torch.equal(aq_quantize_reference(zeros, 4, [1])[0], zeros)
    bad = torch.randn(4, 8)
    bad[1, 2] = float("inf")
    assert torch.isinf(aq_quantize_reference(bad, 4, [1])[0]).any()  # stays visible
    for dtype in (torch.bfloat16, torch.float16):
        out, _ = aq_quantize_reference(torch.randn(8, 8).to(dtype), 4, [0])
        assert out.dtype == dtype and out.abs().sum() > 0


def test_op_seeded_and_counts_its_bits():
    g = torch.randn(64, 16)
    torch.manual_seed(5)
    a = aq_op(g, 4, [1], "range", "aqtest|grad_dgrad|k0")
    torch.manual_seed(5)
    b = aq_op(g, 4, [1], "range", "aqtest|grad_dgrad|k0")
    assert torch.equal(a, b) and not torch.equal(a, aq_op(g, 4, [1], "range", "aqtest|grad_dgrad|k0"))
    bits, elements = measured_bits("aqtest|grad_dgrad|k0")
    assert elements == 3 * g.numel()
    # One call on a fresh tag: codes of the kept rows (64 rows of 16), a float32 scale and zero
    # point per kept row, a keep bit per row -- about 2 bits per element at 16-element groups.
    out = aq_op(g, 4, [1], "range", "aqtest|grad_dgrad|k1")
    kept = int((out != 0).any(1).sum())
    spent, _ = measured_bits("aqtest|grad_dgrad|k1")
    assert spent == (kept * (16 * 4 + 64) + 64) / g.numel() == aq_storage_bits(kept, 64, 16, 4) / g.numel()
    assert spent > 1.0  # the codes alone would average 1 bit


def test_spec_strings():
    assert parse_spec("aq4-sample").pruning == "range"
    assert parse_spec("aq4-topk-channel").pruning == "topk"
    with pytest.raises(ValueError, match="AQ"):
        parse_spec("luq4-topk")


def test_public_quantize_runs_the_new_formats():
    torch.manual_seed(0)
    g = torch.randn(16, 8)
    assert qcompile.quantize(g, "aq4-sample").shape == g.shape
    clipped = qcompile.quantize(g, "lbt4", gamma=0.5)
    assert clipped.abs().max() <= 0.5 * g.abs().max() * (1 + 1e-6)


def test_ops_output_layout_matches_their_fake_kernels():
    """Inductor calls these ops as extern kernels and asserts the fake kernel's strides."""
    g = torch.randn(4, 10, 6).transpose(0, 1)  # non-contiguous, as attention's dY can be
    for op, args in (
        (aq_op, (4, [2], "range", "layout|grad_dgrad|k")),
        (torch.ops.qcompile.lbt_quantize, (4, [], "layout|grad_dgrad|k")),
    ):
        torch.library.opcheck(op, (g, *args), test_utils=("test_schema", "test_faketensor"))
        out = op(g, *args)
        with torch._subclasses.FakeTensorMode() as mode:
            fake = op(mode.from_tensor(g), *args)
        assert out.stride() == fake.stride() and out.is_contiguous()
