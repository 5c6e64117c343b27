"""The counter-based RNG behind compiled stochastic quantizers, and those quantizers' statistics."""

from __future__ import annotations

import pytest
import torch

from qcompile.runtime.ops.decompositions import _int_quantize, _luq_quantize
from qcompile.runtime.reference.random_bits import _hash_uniform_int64, draw_seed, hash_uniform


def test_uniform_on_unit_interval_with_flat_histogram():
    u = hash_uniform(torch.empty(2**20), torch.tensor(12345))
    assert u.dtype == torch.float32 and 0 <= u.min() and u.max() < 1
    counts = torch.histc(u, bins=64, min=0, max=1)
    expected = u.numel() / 64
    chi2 = (((counts - expected) ** 2) / expected).sum().item()
    assert chi2 < 63 + 6 * (2 * 63) ** 0.5  # mean 63, sd ~11: six sigma
    assert abs(u.mean().item() - 0.5) < 6 * (1 / 12 / u.numel()) ** 0.5
    lag1 = torch.corrcoef(torch.stack([u[:-1], u[1:]]))[0, 1].abs().item()
    assert lag1 < 6 / u.numel() ** 0.5


def test_streams_for_different_seeds_are_uncorrelated():
    a = hash_uniform(torch.empty(2**18), 1)
    b = hash_uniform(torch.empty(2**18), 2)
    assert not torch.equal(a, b)
    assert torch.corrcoef(torch.stack([a, b]))[0, 1].abs().item() < 6 / a.numel() ** 0.5


def test_same_bits_eager_and_compiled_and_int64_form():
    like = torch.empty(37, 11)
    seed = torch.tensor(2**31 + 7)
    eager = hash_uniform(like, seed)
    compiled = torch.compile(hash_uniform)(like, seed)
    assert torch.equal(eager, compiled)
    assert torch.equal(eager, _hash_uniform_int64(like, seed))


def test_seeds_follow_torch_manual_seed():
    torch.manual_seed(3)
    a = [draw_seed().item() for _ in range(3)]
    torch.manual_seed(3)
    b = [draw_seed().item() for _ in range(3)]
    assert a == b and len(set(a)) == 3


@pytest.mark.parametrize("reduce_dims", [[], [1], [0]])
def test_compiled_luq_is_unbiased_and_on_grid(reduce_dims):
    """The Inductor path (decomposition + hash noise) keeps LUQ's properties."""
    torch.manual_seed(0)
    g = torch.randn(16, 64) * torch.logspace(-3, 0, 64)
    fn = torch.compile(lambda t: _luq_quantize(t, 4, reduce_dims, 0, ""))
    draws = torch.stack([fn(g) for _ in range(400)])
    amax = g.abs().amax(dim=reduce_dims, keepdim=True) if reduce_dims else g.abs().amax()
    alpha = amax / 64
    k = torch.log2(draws.abs() / alpha)[draws != 0]
    assert torch.allclose(k, k.round(), atol=1e-4) and k.min() >= 0 and k.max() <= 6
    # Each element takes one of two levels lo < |g| < hi; test the mean against the exact
    # two-point variance, on elements whose rounding probability is in [0.05, 0.95].
    x = g.abs() / alpha
    lo = torch.where(x < 1, torch.zeros_like(x), torch.exp2(torch.floor(torch.log2(x.clamp_min(1)))))
    hi = torch.where(x < 1, torch.ones_like(x), 2 * lo)
    p = (x - lo) / (hi - lo)
    var = (alpha * (hi - x)) * (alpha * (x - lo))
    keep = (p > 0.05) & (p < 0.95)
    z = (draws.mean(0) - g)[keep] / (var[keep] / 400).sqrt()
    assert keep.sum() > 200
    assert z.abs().max() < 5.5
    assert z.mean().abs() < 6 / keep.sum().item() ** 0.5  # no systematic drift


def test_compiled_int_stochastic_rounding_is_unbiased():
    torch.manual_seed(0)
    x = torch.rand(32, 64) * 7
    fn = torch.compile(lambda t: _int_quantize(t, 4, "max", "signed", [], True, ""))
    draws = torch.stack([fn(x) for _ in range(400)])
    se = draws.std(0) / 400**0.5
    z = (draws.mean(0) - x) / se.clamp_min(1e-12)
    assert z[se > 0].abs().max() < 5.5
    assert not torch.equal(draws[0], draws[1])
