"""Property tests for LUQ, logarithmic unbiased quantization (docs/algorithms.md, "LUQ").

`luq_quantize_reference`, the ``qcompile::luq_quantize`` custom op and `qcompile.quantize(t,
"luq4...")`: magnitudes on {0} ∪ {α·2^k}, α = max|g|/64, max preserved, unbiased rounding and
underflow, scaling groups, special values, dtypes, SMP variance, seeding, noise hook, opcheck.
"""

from __future__ import annotations

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import qcompile
from qcompile.runtime import luq_quantize_reference as luq

OP = torch.ops.qcompile.luq_quantize
K = 2000  # draws per element in the statistical tests


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _exponents(q: torch.Tensor, alpha: torch.Tensor | float, levels: int = 7) -> torch.Tensor:
    """k with |q| = α·2^k for every non-zero element; asserts the grid exactly (in float64)."""
    r = q.double().abs() / torch.as_tensor(alpha, dtype=torch.float64)
    r = r.expand_as(q) if r.shape != q.shape else r
    nz = r != 0
    k = torch.log2(r[nz]).round()
    assert torch.equal(torch.exp2(k), r[nz]), "a non-zero magnitude is not alpha * 2^k"
    assert k.min() >= 0 and k.max() <= levels - 1, f"exponents {k.min()}..{k.max()}"
    return k.long()


def _luq_var(g: torch.Tensor, alpha: float) -> torch.Tensor:
    """Theoretical per-element variance of LUQ (float64): x(1-x)α² below α, (x-f)(2f-x)α² above."""
    x = g.double().abs() / alpha
    f = torch.exp2(torch.floor(torch.log2(x.clamp(min=1.0))))
    var = torch.where(x < 1, x * (1 - x), (x - f) * (2 * f - x))
    return var * alpha * alpha


# --------------------------------------------------------------------------------------- grid


@pytest.mark.parametrize("scale", [1e-30, 1e-6, 1.0, 1e6, 1e30])
def test_magnitudes_on_the_log_grid(scale):
    g = torch.randn(20_000, generator=_gen(0)) * scale
    torch.manual_seed(0)
    q = luq(g)
    alpha = float(g.abs().max()) / 64
    k = _exponents(q, alpha)
    mags = q.abs().unique()
    assert mags.numel() <= 8  # {0} ∪ 7 powers of two
    # Gaussian data over 20k samples spans the whole range: every level and zero occur.
    assert set(k.unique().tolist()) == set(range(7)) and (q == 0).any()
    # Signs never flip.
    assert ((q == 0) | (torch.sign(q) == torch.sign(g))).all()


@pytest.mark.parametrize("bits,levels", [(2, 1), (3, 3), (4, 7), (5, 15)])
def test_grid_for_other_widths(bits, levels):
    g = torch.randn(20_000, generator=_gen(bits)).pow(3)  # heavy tails to reach low levels
    torch.manual_seed(bits)
    q = luq(g, bits)
    m = float(g.abs().max())
    alpha = m / 2 ** (levels - 1)
    _exponents(q, alpha, levels)
    assert q.abs().unique().numel() <= levels + 1
    assert float(q.abs().max()) == m


def test_ratios_between_levels_are_powers_of_two():
    g = torch.randn(5000, generator=_gen(1)) * 0.01
    torch.manual_seed(1)
    mags = luq(g).abs().unique().double()
    mags = mags[mags > 0]
    ratios = mags[1:] / mags[:-1]
    assert torch.equal(ratios, torch.full_like(ratios, 2.0))  # consecutive levels, no gaps
    assert mags.numel() == 7


def test_max_is_preserved_exactly_and_never_exceeded():
    g = _gen(2)
    for trial in range(200):
        x = torch.randn(64, generator=g) * 10.0 ** (trial % 13 - 6)
        torch.manual_seed(trial)
        q = luq(x)
        i = x.abs().argmax()
        assert q[i] == x[i]  # the top level is max|g| itself, sign included
        assert q.abs().max() == x.abs().max()


def test_negative_max_uses_absolute_value():
    x = torch.rand(1000, generator=_gen(3))  # all positive ...
    x[10] = -4.0  # ... except the max-magnitude element
    torch.manual_seed(0)
    q = luq(x)
    assert q[10] == -4.0
    _exponents(q, 4.0 / 64)
    assert (q[x > 0] >= 0).all()


def test_non_zero_input_gives_non_zero_output():
    g = _gen(4)
    for scale in (1e-35, 1e-3, 1.0, 1e35):
        x = torch.randn(300, generator=g) * scale
        torch.manual_seed(0)
        q = luq(x)
        assert torch.isfinite(q).all() and (q != 0).any()
    one = torch.zeros(50)
    one[7] = -3e-30
    assert luq(one)[7] == -3e-30


# ---------------------------------------------------------------------------- unbiasedness


def _controlled_input(n: int, seed: int) -> torch.Tensor:
    """α = 1 (max|g| = 64); every other magnitude is f(1 + p) or p (underflow) with the rounding
    probability p in [0.05, 0.95], so each element's mean over K draws is close to normal."""
    g = _gen(seed)
    k = torch.randint(-1, 6, (n,), generator=g)
    p = 0.05 + 0.9 * torch.rand(n, generator=g)
    mag = torch.where(k < 0, p, torch.exp2(k.float()) * (1 + p))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x = sign * mag
    x[0] = 64.0
    x[1] = -64.0
    return x


def test_unbiased_elementwise_z_scores():
    x = _controlled_input(500, 5)
    torch.manual_seed(10)
    draws = luq(x.expand(K, -1).contiguous(), reduce_dims=[1]).double()
    _exponents(draws, 1.0)
    se = (_luq_var(x, 1.0) / K).sqrt()
    inner = slice(2, None)  # ±64 are exact (zero variance)
    diff = draws.mean(0) - x.double()
    z = diff[inner] / se[inner]
    assert float(z.abs().max()) < 6.0, f"max |z| = {float(z.abs().max()):.2f}"
    # Pooled, and pooled against the sign (catches magnitude shrinkage/growth of ~0.2%).
    pooled = float(diff[inner].sum() / se[inner].pow(2).sum().sqrt())
    shrink = float((diff * x.double().sign())[inner].sum() / se[inner].pow(2).sum().sqrt())
    assert abs(pooled) < 5.0 and abs(shrink) < 5.0
    assert torch.equal(draws[:, :2], x[:2].double().expand(K, 2))
    # Each draw is one of the two neighbouring levels.
    a = x.double().abs()
    f = torch.where(a < 1, torch.zeros_like(a), torch.exp2(torch.floor(torch.log2(a.clamp(min=1)))))
    hi = torch.where(a < 1, torch.ones_like(a), 2 * f)
    d = draws.abs()
    assert ((d == f) | (d == hi) | ((a == 64) & (d == 64))).all()


def test_unbiased_on_gaussian_gradients_and_empirical_variance():
    g = torch.randn(1000, generator=_gen(6)) * 1e-3
    alpha = float(g.abs().max()) / 64
    torch.manual_seed(11)
    draws = luq(g.expand(K, -1).contiguous(), reduce_dims=[1]).double()
    var = _luq_var(g, alpha)
    diff = draws.mean(0) - g.double()
    denom = (var.sum() / K).sqrt()
    assert abs(float(diff.sum() / denom)) < 5.0
    assert abs(float((diff * g.double().sign()).sum() / denom)) < 5.0
    # Empirical variance matches the theory (each element ≤ f²α²/4).
    ratio = float(draws.var(0).sum() / var.sum())
    assert 0.95 < ratio < 1.05


def test_biased_rounding_would_be_detected():
    # Guard for the z-score test: deterministic rounding of the same input fails it decisively.
    x = _controlled_input(500, 5).double()
    a = x.abs()
    f = torch.exp2(torch.floor(torch.log2(a.clamp(min=1))))
    nearest = torch.where(a < 1, (a >= 0.5).double(), torch.where(a >= 1.5 * f, 2 * f, f)) * x.sign()
    se = (_luq_var(x, 1.0) / K).sqrt()
    assert float(((nearest - x)[2:] / se[2:]).abs().max()) > 6.0


def test_underflow_probability():
    # α = 1: values below α become ±α with probability |g|/α, else 0.
    p = torch.tensor([0.02, 0.1, 0.25, 0.5, 0.75, 0.9, 0.98])
    x = torch.cat([torch.tensor([64.0]), p, -p])
    n = 10_000
    torch.manual_seed(12)
    draws = luq(x.expand(n, -1).contiguous(), reduce_dims=[1])
    under = draws[:, 1:]
    assert torch.isin(under.abs(), torch.tensor([0.0, 1.0])).all()
    assert ((under == 0) | (torch.sign(under) == torch.sign(x[1:]))).all()
    freq = (under != 0).double().mean(0)
    pp = torch.cat([p, p]).double()
    se = (pp * (1 - pp) / n).sqrt()
    assert float(((freq - pp) / se).abs().max()) < 6.0


def test_log_rounding_probability():
    # Between 2^(n-1)α and 2^nα: up with probability (|g| - 2^(n-1)α) / 2^(n-1)α.
    x = torch.tensor([64.0, 1.5, 3.0, 5.0, 12.0, 20.0, 40.0, 63.0])
    f = torch.tensor([1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 32.0])
    p = ((x[1:] - f) / f).double()
    n = 10_000
    torch.manual_seed(13)
    draws = luq(x.expand(n, -1).contiguous(), reduce_dims=[1])[:, 1:]
    assert ((draws == f) | (draws == 2 * f)).all()
    freq = (draws == 2 * f).double().mean(0)
    se = (p * (1 - p) / n).sqrt()
    assert float(((freq - p) / se).abs().max()) < 6.0


def test_exact_levels_are_deterministic():
    x = torch.tensor([64.0, 32.0, -16.0, 8.0, 4.0, -2.0, 1.0]) * 0.37
    torch.manual_seed(14)
    draws = luq(x.expand(500, -1).contiguous(), reduce_dims=[1])
    assert torch.equal(draws, x.expand(500, -1))


# ------------------------------------------------------------------------------ scaling groups


def test_per_sample_groups_via_reduce_dims():
    g = _gen(15)
    x = torch.randn(6, 400, generator=g) * (10.0 ** torch.arange(-3, 3)).unsqueeze(1)
    u = torch.rand(6, 400, generator=g)
    q = luq(x, reduce_dims=[1], noise=u)
    for i in range(6):
        assert torch.equal(q[i], luq(x[i], noise=u[i]))
        _exponents(q[i], float(x[i].abs().max()) / 64)
        assert q[i].abs().max() == x[i].abs().max()
    assert torch.equal(q, luq(x, reduce_dims=[-1], noise=u))


def test_per_channel_groups_via_reduce_dims():
    g = _gen(16)
    x = torch.randn(400, 5, generator=g) * torch.tensor([1e-4, 1e-2, 1.0, 1e2, 1e4])
    u = torch.rand(400, 5, generator=g)
    q = luq(x, reduce_dims=[0], noise=u)
    for j in range(5):
        assert torch.equal(q[:, j], luq(x[:, j].contiguous(), noise=u[:, j].contiguous()))
        assert q[:, j].abs().max() == x[:, j].abs().max()
    # Per tensor, the small channels would mostly underflow; per channel they keep their levels.
    torch.manual_seed(0)
    per_tensor = luq(x)
    assert (per_tensor[:, 0] != 0).sum() < 10 and (q[:, 0] != 0).sum() > 300


@pytest.mark.parametrize("granularity,dims", [("per-sample", [1, 2, 3]), ("per-channel", [0, 2, 3])])
def test_quantize_api_granularity_matches_reduce_dims(granularity, dims):
    x = torch.randn(4, 3, 5, 5, generator=_gen(17)) * torch.tensor([0.01, 1.0, 100.0]).view(1, 3, 1, 1)
    torch.manual_seed(18)
    a = qcompile.quantize(x, "luq4", granularity=granularity, channel_dim=1)
    torch.manual_seed(18)
    b = luq(x, 4, dims)
    assert torch.equal(a, b)
    groups = x.abs().amax(dim=dims, keepdim=True)
    _exponents(a, groups / 64)
    assert torch.equal(a.abs().amax(dim=dims, keepdim=True), groups)


def test_quantize_api_per_sample_on_2d():
    x = torch.randn(8, 100, generator=_gen(19)) * (2.0 ** torch.arange(0, 16, 2)).unsqueeze(1)
    torch.manual_seed(20)
    a = qcompile.quantize(x, "luq4", granularity="per-sample")
    torch.manual_seed(20)
    assert torch.equal(a, luq(x, 4, [1]))
    assert torch.equal(a.abs().amax(dim=1), x.abs().amax(dim=1))
    torch.manual_seed(21)
    c = qcompile.quantize(x, "luq4", granularity="per-channel")
    torch.manual_seed(21)
    assert torch.equal(c, luq(x, 4, [0]))
    torch.manual_seed(22)
    assert torch.equal(qcompile.quantize(x, "luq4"), (torch.manual_seed(22), luq(x))[1])


# ---------------------------------------------------------------------------- special values


def test_all_zero_gives_zeros():
    for shape, dims in (((16,), []), ((4, 8), [1]), ((4, 8), [0])):
        x = torch.zeros(shape)
        q = luq(x, reduce_dims=dims)
        assert torch.equal(q, x) and not q.isnan().any()
        assert torch.equal(OP(x, 4, dims, 0, "t"), x)
    assert torch.equal(luq(torch.zeros(5, dtype=torch.bfloat16)), torch.zeros(5, dtype=torch.bfloat16))


def test_zero_group_beside_non_zero_groups():
    x = torch.randn(4, 50, generator=_gen(23))
    x[2] = 0.0
    x[:, 7] = 0.0
    torch.manual_seed(24)
    q = luq(x, reduce_dims=[1])
    assert torch.isfinite(q).all()
    assert (q[2] == 0).all() and (q[:, 7] == 0).all()
    assert torch.equal(q[[0, 1, 3]].abs().amax(dim=1), x[[0, 1, 3]].abs().amax(dim=1))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_propagates_within_its_group(bad):
    g = _gen(25)
    x = torch.randn(3, 40, generator=g)
    u = torch.rand(3, 40, generator=g)
    x[1, 5] = bad
    q = luq(x, reduce_dims=[1], noise=u)
    assert not torch.isfinite(q[1, 5])
    assert not torch.isfinite(q[1]).all()
    assert torch.equal(q[[0, 2]], luq(x[[0, 2]], reduce_dims=[1], noise=u[[0, 2]]))
    torch.manual_seed(0)
    assert not torch.isfinite(luq(x)).all()
    assert not torch.isfinite(qcompile.quantize(x, "luq4")).all()


@pytest.mark.parametrize("shape,dims", [((0,), []), ((0, 5), [1]), ((3, 0), [0]), ((2, 0, 4), [1])])
def test_empty_tensors(shape, dims):
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.empty(shape, dtype=dtype)
        q = luq(x, reduce_dims=dims)
        assert q.shape == x.shape and q.dtype == dtype
        out = OP(x, 4, dims, 0, "t")
        assert out.shape == x.shape and out.dtype == dtype
        assert qcompile.quantize(x, "luq4-smp2").shape == x.shape


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_low_precision_inputs(dtype):
    x = (torch.randn(5000, generator=_gen(26)) * 0.5).to(dtype)
    torch.manual_seed(27)
    q = luq(x)
    assert q.dtype == dtype and torch.isfinite(q).all()
    _exponents(q, float(x.abs().max()) / 64)  # α·2^k is exact in the input dtype
    assert q.abs().max() == x.abs().max()
    torch.manual_seed(27)
    assert torch.equal(q, luq(x.float()).to(dtype))
    torch.manual_seed(27)
    assert torch.equal(OP(x, 4, [], 0, "t"), q)


# ------------------------------------------------------------------------------------- SMP


def _mse(spec: str, g: torch.Tensor, draws: int, seed: int) -> float:
    torch.manual_seed(seed)
    q = qcompile.quantize(g.expand(draws, -1).contiguous(), spec, granularity="per-sample")
    return float((q.double() - g.double()).pow(2).mean())


def test_smp2_halves_the_variance():
    g = torch.randn(2000, generator=_gen(28))
    one = _mse("luq4", g, 200, 29)
    two = _mse("luq4-smp2", g, 200, 30)
    four = _mse("luq4-smp4", g, 200, 31)
    assert 0.45 < two / one < 0.55, two / one
    assert 0.2 < four / one < 0.3, four / one


def test_smp2_is_unbiased_and_averages_independent_draws():
    x = _controlled_input(300, 32)
    torch.manual_seed(33)
    q = qcompile.quantize(x.expand(K, -1).contiguous(), "luq4-smp2", granularity="per-sample").double()
    se = (_luq_var(x, 1.0) / (2 * K)).sqrt()
    z = (q.mean(0) - x.double())[2:] / se[2:]
    assert float(z.abs().max()) < 6.0
    # An average of two draws takes midpoints between levels too (not a single draw repeated).
    mags = q[:, 2:].abs()
    a = x[2:].double().abs()
    f = torch.exp2(torch.floor(torch.log2(a.clamp(min=1))))
    assert ((mags == 1.5 * f) & (a >= 1)).any()


# --------------------------------------------------------------------- seeding and noise hook


def test_reproducible_under_manual_seed_and_different_without():
    x = torch.randn(5000, generator=_gen(34))
    torch.manual_seed(7)
    a = luq(x)
    b = luq(x)
    torch.manual_seed(7)
    assert torch.equal(a, luq(x))
    assert not torch.equal(a, b) and (a != b).double().mean() > 0.1
    torch.manual_seed(7)
    c = qcompile.quantize(x, "luq4")
    torch.manual_seed(7)
    assert torch.equal(c, qcompile.quantize(x, "luq4"))


def test_noise_hook_exact():
    # α = 1. Underflow: ±1 iff u < |g|. Log rounding in [f, 2f]: 2f iff u < (|g| - f)/f.
    x = torch.tensor([64.0, 0.3, 0.3, -0.3, 3.0, 3.0, -3.0, 40.0, 40.0, 1.0, 2.0, 64.0, 0.0])
    u = torch.tensor([0.5, 0.29, 0.31, 0.1, 0.49, 0.51, 0.0, 0.24, 0.26, 0.999, 0.0, 0.999, 0.0])
    expected = torch.tensor([64.0, 1.0, 0.0, -1.0, 4.0, 2.0, -4.0, 64.0, 32.0, 1.0, 2.0, 64.0, 0.0])
    q = luq(x, noise=u)
    assert torch.equal(q, expected)
    torch.manual_seed(0)
    q1 = luq(x * 1e-3, noise=u)
    torch.manual_seed(1)
    q2 = luq(x * 1e-3, noise=u)
    assert torch.equal(q1, q2)
    # Powers of two commute with the quantizer exactly.
    for k in (-60, -10, 10, 60):
        assert torch.equal(luq(x * 2.0**k, noise=u), expected * 2.0**k)


def test_noise_hook_replaces_exactly_the_internal_draw():
    x = torch.randn(64, 32, generator=_gen(35))
    torch.manual_seed(5)
    u = torch.rand(64, 32)
    hooked = luq(x, reduce_dims=[0], noise=u)
    torch.manual_seed(5)
    assert torch.equal(hooked, luq(x, reduce_dims=[0]))


# ------------------------------------------------------------------------------ custom op


def test_op_matches_reference_under_seed():
    x = torch.randn(16, 32, generator=_gen(36))
    for dims in ([], [1], [0]):
        torch.manual_seed(9)
        a = OP(x, 4, dims, 0, "layer|grad_output")
        torch.manual_seed(9)
        assert torch.equal(a, luq(x, 4, dims))
    torch.manual_seed(9)
    a = OP(x, 4, [], 0, "t")
    b = OP(x, 4, [], 1, "t")
    assert not torch.equal(a, b)  # fresh bits every call


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_fake_kernel_under_fake_tensor_mode(dtype):
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(4, 3, 5, dtype=dtype))
        y = OP(x, 4, [1, 2], 1, "t")
        z = OP(torch.empty(0, 7, dtype=dtype), 4, [], 0, "t")
    assert isinstance(y, FakeTensor)
    assert y.shape == (4, 3, 5) and y.dtype == dtype and y.device == torch.device("cpu")
    assert z.shape == (0, 7) and z.dtype == dtype


@pytest.mark.parametrize(
    "shape,dtype,bits,dims,sample",
    [
        ((6, 8), torch.float32, 4, [], 0),
        ((6, 8), torch.float32, 4, [1], 1),
        ((2, 3, 4), torch.float32, 3, [0, 2], 0),
        ((6, 8), torch.bfloat16, 4, [0], 0),
    ],
)
def test_opcheck(shape, dtype, bits, dims, sample):
    x = torch.randn(shape, generator=_gen(37)).to(dtype)
    torch.library.opcheck(OP.default, (x, bits, dims, sample, "layer|grad_output"))
