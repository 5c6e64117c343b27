"""Property tests for the uniform INT quantizer (docs/algorithms.md, "Forward quantizers").

`int_quantize_reference` and the ``qcompile::int_quantize`` custom op: grid, SAWB clip and its
fallback, max scaling, scaling groups, stochastic rounding (unbiased, seeded, noise hook), error
bounds, special values, dtypes, straight-through gradient, fake kernel and opcheck.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch._subclasses.fake_tensor import FakeTensor, FakeTensorMode

import qcompile  # noqa: F401  (registers the qcompile:: ops)
from qcompile.runtime import int_quantize_reference as iq

OP = torch.ops.qcompile.int_quantize


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _sawb_clip64(x: torch.Tensor) -> float:
    """SAWB 4-bit clip computed by hand in float64: 12.1*sqrt(E[x^2]) - 12.2*E|x|."""
    x64 = x.double()
    return 12.1 * math.sqrt(float((x64 * x64).mean())) - 12.2 * float(x64.abs().mean())


def _codes(q: torch.Tensor, scale: float) -> torch.Tensor:
    """Integer codes of a dequantized tensor; asserts they really are integers."""
    c = q.double() / scale
    assert torch.allclose(c, c.round(), rtol=0, atol=1e-4), "values are not multiples of the scale"
    return c.round().long()


# --------------------------------------------------------------------------------------- grid


def test_signed_4bit_sawb_grid_has_exactly_the_15_levels():
    x = torch.randn(10_000, generator=_gen(0))
    q = iq(x, 4, "sawb")
    clip = _sawb_clip64(x)
    assert 0 < clip < float(x.abs().max())  # Gaussian data: SAWB itself, no fallback
    codes = _codes(q, clip / 7)
    # 10k Gaussian samples with a 2.4-sigma clip populate every level; ±8 would be the 17-level bug.
    assert set(codes.unique().tolist()) == set(range(-7, 8))
    assert q.unique().numel() == 15


@pytest.mark.parametrize("bits", [2, 3, 4, 5, 8])
@pytest.mark.parametrize("stochastic", [False, True])
def test_signed_max_grid_any_width(bits, stochastic):
    x = torch.randn(4096, generator=_gen(bits)) * 3
    top = 2 ** (bits - 1) - 1
    torch.manual_seed(bits)
    q = iq(x, bits, "max", stochastic=stochastic)
    codes = _codes(q, float(x.abs().max()) / top)
    assert codes.min() >= -top and codes.max() <= top
    assert q.unique().numel() <= 2 * top + 1


@pytest.mark.parametrize("bits", [2, 4, 8])
def test_unsigned_grid(bits):
    x = torch.rand(4096, generator=_gen(bits)) * 5
    top = 2**bits - 1
    q = iq(x, bits, "max", signed="unsigned")
    codes = _codes(q, float(x.max()) / top)
    assert set(codes.unique().tolist()) == set(range(0, top + 1))  # dense data uses every level


def test_unsigned_grid_never_negative():
    x = torch.randn(1000, generator=_gen(1))
    q = iq(x, 4, "max", signed="unsigned")
    assert (q >= 0).all()
    codes = _codes(q, float(x.abs().max()) / 15)
    assert codes.min() >= 0 and codes.max() <= 15


def test_auto_sign_picks_unsigned_for_non_negative_tensor():
    x = torch.rand(4096, generator=_gen(2))
    q = iq(x, 4, "max", signed="auto")
    codes = _codes(q, float(x.max()) / 15)
    assert set(codes.unique().tolist()) == set(range(16))
    torch.testing.assert_close(q, iq(x, 4, "max", signed="unsigned"), rtol=0, atol=0)


def test_auto_sign_picks_signed_when_any_value_negative():
    x = torch.rand(4096, generator=_gen(3))
    x[17] = -0.01
    q = iq(x, 4, "max", signed="auto")
    torch.testing.assert_close(q, iq(x, 4, "max", signed="signed"), rtol=0, atol=0)
    codes = _codes(q, float(x.abs().max()) / 7)
    assert codes.min() >= -7 and codes.max() <= 7


def test_auto_sign_is_decided_per_group():
    g = _gen(4)
    x = torch.stack([torch.relu(torch.randn(2048, generator=g)), torch.randn(2048, generator=g)])
    q = iq(x, 4, "max", signed="auto", reduce_dims=[1])
    c0 = _codes(q[0], float(x[0].abs().max()) / 15)
    c1 = _codes(q[1], float(x[1].abs().max()) / 7)
    assert c0.min() == 0 and c0.max() == 15 and c0.unique().numel() > 8
    assert c1.min() < 0 and c1.abs().max() == 7 and c1.abs().max() <= 7


# ---------------------------------------------------------------------------------- SAWB clip


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_sawb_clip_matches_hand_computation(seed):
    g = _gen(seed)
    x = torch.randn(5000, generator=g) * (0.1 + seed) + 0.05 * torch.rand(5000, generator=g)
    clip = _sawb_clip64(x)
    assert 0 < clip < float(x.abs().max())
    q = iq(x, 4, "sawb")
    # The top level is the clip; everything beyond it is clamped to ±clip.
    assert math.isclose(float(q.abs().max()), clip, rel_tol=1e-5)
    beyond = x.abs() > clip * (1 + 1e-5)
    assert beyond.any()
    torch.testing.assert_close(q[beyond].double(), x[beyond].sign().double() * clip, rtol=1e-5, atol=0)
    _codes(q, clip / 7)


def test_sawb_falls_back_to_max_for_constant_tensor():
    # Constant c: SAWB = 12.1c - 12.2c = -0.1c <= 0, so clip = max|x| = c.
    for c in (0.37, -2.5, 3.0):
        x = torch.full((64,), c)
        assert _sawb_clip64(x) <= 0
        q = iq(x, 4, "sawb")
        torch.testing.assert_close(q, x, rtol=1e-6, atol=0)


def test_sawb_falls_back_to_max_when_estimate_exceeds_max():
    # One spike among zeros: rms = 0.1, E|x| = 0.01, SAWB = 1.21 - 0.122 = 1.088 > max|x| = 1.
    x = torch.zeros(100)
    x[3] = 1.0
    x[50] = 0.55
    clip = _sawb_clip64(x)
    assert clip > float(x.abs().max())
    q = iq(x, 4, "sawb")
    # With the fallback, s = 1/7: 1.0 -> 7 s = 1.0 and 0.55 -> round(3.85) s; SAWB would give 0.93.
    torch.testing.assert_close(q[3], torch.tensor(1.0), rtol=1e-6, atol=0)
    assert math.isclose(float(q[50]), 4 / 7, rel_tol=1e-6)
    assert (q[x == 0] == 0).all()


def test_sawb_falls_back_per_group():
    g = _gen(5)
    x = torch.randn(3, 2000, generator=g)
    x[1] = 0.25  # constant row: fallback to its own max
    q = iq(x, 4, "sawb", reduce_dims=[1])
    torch.testing.assert_close(q[1], x[1], rtol=1e-6, atol=0)
    for r in (0, 2):
        assert math.isclose(float(q[r].abs().max()), _sawb_clip64(x[r]), rel_tol=1e-5)


# ---------------------------------------------------------------------------------- max scaling


def _max_scaling_cases():
    g = _gen(6)
    return [torch.randn(n, generator=g) * 10.0**e for n, e in ((100, 0), (1000, -3), (257, 4))]


def test_max_scaling_preserves_max_abs_to_one_ulp():
    for x in _max_scaling_cases() + [-x for x in _max_scaling_cases()]:
        q = iq(x, 4, "max")
        m = x.abs().max()
        assert torch.isclose(q.abs().max(), m, rtol=2 * torch.finfo(torch.float32).eps, atol=0)
        i = x.abs().argmax()
        assert torch.sign(q[i]) == torch.sign(x[i])  # negative max stays negative


def test_max_scaling_preserves_max_abs_exactly():
    g = _gen(7)
    bad = []
    for _ in range(200):
        x = torch.randn(64, generator=g)
        q = iq(x, 4, "max")
        if q.abs().max() != x.abs().max():
            bad.append((float(x.abs().max()), float(q.abs().max())))
    assert not bad, f"{len(bad)}/200 tensors, e.g. max|x|={bad[0][0]!r} -> {bad[0][1]!r}"


@pytest.mark.parametrize("scaling", ["sawb", "max"])
def test_scale_equivariance_for_powers_of_two(scaling):
    x = torch.randn(2000, generator=_gen(8))
    q = iq(x, 4, scaling)
    for k in (-30, -7, 5, 30):
        c = 2.0**k
        torch.testing.assert_close(iq(x * c, 4, scaling), q * c, rtol=0, atol=0)


@pytest.mark.parametrize("k", [-70, 70])
def test_sawb_scale_equivariance_tiny_and_huge(k):
    x = torch.randn(2000, generator=_gen(9))
    c = 2.0**k
    torch.testing.assert_close(iq(x * c, 4, "sawb"), iq(x, 4, "sawb") * c, rtol=0, atol=0)


# ------------------------------------------------------------------------------ scaling groups


@pytest.mark.parametrize("scaling", ["sawb", "max"])
def test_per_sample_groups_one_scale_per_row(scaling):
    g = _gen(10)
    x = torch.randn(8, 300, generator=g) * (2.0 ** torch.arange(-4, 4)).unsqueeze(1)
    q = iq(x, 4, scaling, reduce_dims=[1])
    for i in range(8):
        torch.testing.assert_close(q[i], iq(x[i], 4, scaling), rtol=1e-5, atol=0)
        clip = float(x[i].abs().max()) if scaling == "max" else _sawb_clip64(x[i])
        _codes(q[i], clip / 7)
    # Eight groups at eight magnitudes: eight different top levels.
    assert q.abs().amax(dim=1).unique().numel() == 8
    torch.testing.assert_close(q, iq(x, 4, scaling, reduce_dims=[-1]), rtol=0, atol=0)


@pytest.mark.parametrize("scaling", ["sawb", "max"])
def test_per_channel_groups_one_scale_per_column(scaling):
    g = _gen(11)
    x = torch.randn(300, 6, generator=g) * torch.tensor([1e-3, 0.1, 1.0, 3.0, 50.0, 1e3])
    q = iq(x, 4, scaling, reduce_dims=[0])
    for j in range(6):
        torch.testing.assert_close(q[:, j], iq(x[:, j].contiguous(), 4, scaling), rtol=1e-5, atol=0)
    assert q.abs().amax(dim=0).unique().numel() == 6


def test_conv_shaped_groups():
    g = _gen(12)
    x = torch.randn(4, 3, 5, 5, generator=g) * torch.tensor([0.5, 2.0, 8.0]).view(1, 3, 1, 1)
    per_sample = iq(x, 4, "max", reduce_dims=[1, 2, 3])
    per_channel = iq(x, 4, "max", reduce_dims=[0, 2, 3])
    for n in range(4):
        torch.testing.assert_close(per_sample[n], iq(x[n], 4, "max"), rtol=0, atol=0)
    for c in range(3):
        torch.testing.assert_close(per_channel[:, c], iq(x[:, c].contiguous(), 4, "max"), rtol=0, atol=0)
    # Reducing over every dim is per-tensor.
    torch.testing.assert_close(iq(x, 4, "max", reduce_dims=[0, 1, 2, 3]), iq(x, 4, "max"), rtol=0, atol=0)


# ---------------------------------------------------------------------------- error bounds


@pytest.mark.parametrize("scaling", ["sawb", "max"])
def test_nearest_error_at_most_half_a_step_inside_clip(scaling):
    x = torch.randn(20_000, generator=_gen(13))
    clip = _sawb_clip64(x) if scaling == "sawb" else float(x.abs().max())
    s = clip / 7
    q = iq(x, 4, scaling)
    inside = x.abs() <= clip
    err = (x.double() - q.double()).abs()
    assert float(err[inside].max()) <= s / 2 * (1 + 1e-5)
    # Outside the clip the error is exactly the clipped amount.
    torch.testing.assert_close(err[~inside], x[~inside].abs().double() - clip, rtol=0, atol=1e-5 * clip)


def test_stochastic_error_less_than_one_step():
    x = torch.randn(20_000, generator=_gen(14))
    s = float(x.abs().max()) / 7
    torch.manual_seed(0)
    q = iq(x, 4, "max", stochastic=True)
    assert float((x.double() - q.double()).abs().max()) < s * (1 + 1e-5)


# ------------------------------------------------------------------------ stochastic rounding

K = 2000  # draws per element in the statistical tests


def _controlled_input(n: int, seed: int) -> torch.Tensor:
    """Max scaling with max|x| = 7 gives s = 1 exactly; every other value is k + p with the
    rounding probability p in [0.05, 0.95], so each element's mean is close to normal."""
    g = _gen(seed)
    k = torch.randint(-7, 7, (n,), generator=g).float()
    p = 0.05 + 0.9 * torch.rand(n, generator=g)
    x = k + p
    x[0] = 7.0
    x[1] = -7.0
    return x


def test_stochastic_rounding_is_unbiased_elementwise():
    x = _controlled_input(400, 15)
    torch.manual_seed(1)
    draws = iq(x.expand(K, -1).contiguous(), 4, "max", reduce_dims=[1], stochastic=True).double()
    codes = _codes(draws, 1.0)
    assert codes.min() >= -7 and codes.max() <= 7
    frac = x.double() - x.double().floor()
    # Each draw is floor(x) or floor(x)+1; variance p(1-p) s^2 with p = frac(x).
    assert ((codes == x.floor().long()) | (codes == x.floor().long() + 1)).all()
    se = (frac * (1 - frac) / K).sqrt()
    inner = slice(2, None)  # the two +-7 elements are exact (zero variance)
    z = (draws.mean(0) - x.double())[inner] / se[inner]
    assert float(z.abs().max()) < 6.0, f"max |z| = {float(z.abs().max()):.2f}"
    # Pooled over all elements: a systematic bias of even 0.01 s would give |z| > 10.
    pooled = float((draws.mean(0) - x.double())[inner].sum() / se[inner].pow(2).sum().sqrt())
    assert abs(pooled) < 5.0
    torch.testing.assert_close(draws[:, :2], x[:2].double().expand(K, 2), rtol=0, atol=0)


def test_stochastic_rounding_unbiased_for_sawb_inside_clip_and_variance_bound():
    x = torch.randn(500, generator=_gen(16))
    clip = _sawb_clip64(x)
    s = clip / 7
    torch.manual_seed(2)
    draws = iq(x.expand(K, -1).contiguous(), 4, "sawb", reduce_dims=[1], stochastic=True).double()
    inside = x.abs() <= clip
    y = x.double() / s
    p = y - y.floor()
    var = p * (1 - p) * s * s
    err = (draws.mean(0) - x.double())[inside]
    pooled = float(err.sum() / (var[inside].sum() / K).sqrt())
    signed = float((err * x[inside].sign()).sum() / (var[inside].sum() / K).sqrt())
    assert abs(pooled) < 5.0 and abs(signed) < 5.0
    # Variance bound: per element at most s^2/4 (docs/algorithms.md, SR variance <= N·D·R²/(4B²)).
    emp_var = draws.var(0)[inside]
    assert float(emp_var.sum()) <= inside.sum() * s * s / 4 * 1.05
    assert float(emp_var.max()) <= s * s / 4 * 1.3


def test_rounding_to_nearest_is_deterministic_and_biased_values_detected():
    # Guard for the statistical test above: nearest rounding of the same input is NOT unbiased.
    x = _controlled_input(400, 15)
    q = iq(x, 4, "max").double()
    frac = x.double() - x.double().floor()
    se = (frac * (1 - frac) / K).sqrt()
    z = (q - x.double())[2:] / se[2:]
    assert float(z.abs().max()) > 6.0


def test_stochastic_reproducible_under_manual_seed_and_different_without():
    x = torch.randn(5000, generator=_gen(17))
    torch.manual_seed(123)
    a = iq(x, 4, "sawb", stochastic=True)
    b = iq(x, 4, "sawb", stochastic=True)
    torch.manual_seed(123)
    a2 = iq(x, 4, "sawb", stochastic=True)
    torch.testing.assert_close(a, a2, rtol=0, atol=0)
    assert not torch.equal(a, b)
    assert (a != b).float().mean() > 0.1


def test_noise_hook_exact():
    x = _controlled_input(300, 18)
    u = torch.rand(300, generator=_gen(19))
    # Keep x + u away from integers so the float64 hand computation is unambiguous.
    frac = (x - x.floor() + u) % 1.0
    u = torch.where((frac < 0.01) | (frac > 0.99), torch.full_like(u, 0.5), u)
    q = iq(x, 4, "max", stochastic=True, noise=u)
    expected = torch.clamp(torch.floor(x.double() + u.double()), -7, 7)
    torch.testing.assert_close(q.double(), expected, rtol=0, atol=0)
    # Same noise -> bitwise the same, whatever the global RNG does.
    torch.manual_seed(0)
    q1 = iq(x, 4, "max", stochastic=True, noise=u)
    torch.manual_seed(1)
    q2 = iq(x, 4, "max", stochastic=True, noise=u)
    assert torch.equal(q1, q2) and torch.equal(q1, q)


def test_noise_hook_replaces_exactly_the_internal_draw():
    x = torch.randn(64, 32, generator=_gen(20))
    torch.manual_seed(5)
    u = torch.rand(64, 32)
    hooked = iq(x, 4, "sawb", reduce_dims=[1], stochastic=True, noise=u)
    torch.manual_seed(5)
    drawn = iq(x, 4, "sawb", reduce_dims=[1], stochastic=True)
    assert torch.equal(hooked, drawn)


def test_noise_extremes():
    x = torch.randn(1000, generator=_gen(21))
    s = float(x.abs().max()) / 7
    down = iq(x, 4, "max", stochastic=True, noise=torch.zeros_like(x))
    assert ((down.double() - x.double()) <= 1e-6 * s).all()  # u = 0 is floor: never rounds up
    up = iq(x, 4, "max", stochastic=True, noise=torch.full_like(x, 0.999999))
    assert ((up.double() - x.double()) >= -1e-5 * s).all()  # u -> 1 is ceil


# ---------------------------------------------------------------------------- special values


@pytest.mark.parametrize("signed", ["signed", "unsigned", "auto"])
@pytest.mark.parametrize("scaling", ["sawb", "max"])
@pytest.mark.parametrize("stochastic", [False, True])
def test_zeros_give_zeros(signed, scaling, stochastic):
    x = torch.zeros(4, 8)
    q = iq(x, 4, scaling, signed=signed, stochastic=stochastic)
    assert torch.equal(q, x)
    q = iq(x, 4, scaling, signed=signed, reduce_dims=[1], stochastic=stochastic)
    assert torch.equal(q, x)


def test_zero_group_beside_non_zero_groups():
    x = torch.randn(4, 50, generator=_gen(22))
    x[2] = 0.0
    for scaling in ("sawb", "max"):
        q = iq(x, 4, scaling, reduce_dims=[1])
        assert torch.isfinite(q).all()
        assert (q[2] == 0).all()
        assert (q[[0, 1, 3]].abs().amax(dim=1) > 0).all()


def test_non_zero_input_gives_non_zero_output():
    g = _gen(23)
    for scale in (1e-20, 1e-3, 1.0, 1e20):
        x = torch.randn(200, generator=g) * scale
        for scaling in ("sawb", "max"):
            q = iq(x, 4, scaling)
            assert torch.isfinite(q).all() and (q != 0).any()
    one = torch.zeros(100)
    one[7] = -3e-30
    assert iq(one, 4, "max")[7] != 0
    assert iq(one, 4, "sawb")[7] != 0


@pytest.mark.parametrize("scaling", ["sawb", "max"])
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_propagates_within_its_group(scaling, bad):
    x = torch.randn(3, 40, generator=_gen(24))
    x[1, 5] = bad
    q = iq(x, 4, scaling, reduce_dims=[1])
    assert not torch.isfinite(q[1, 5])  # the bad element never becomes a finite number
    assert not torch.isfinite(q[1]).all()
    torch.testing.assert_close(q[[0, 2]], iq(x[[0, 2]], 4, scaling, reduce_dims=[1]), rtol=0, atol=0)
    # Per tensor the whole output shows it.
    assert not torch.isfinite(iq(x, 4, scaling)).all()


@pytest.mark.parametrize("shape,dims", [((0,), []), ((0, 5), [1]), ((3, 0), [1]), ((2, 0, 4), [0, 2])])
@pytest.mark.parametrize("stochastic", [False, True])
def test_empty_tensors(shape, dims, stochastic):
    for dtype in (torch.float32, torch.bfloat16):
        x = torch.empty(shape, dtype=dtype)
        q = iq(x, 4, "sawb", reduce_dims=dims, stochastic=stochastic)
        assert q.shape == x.shape and q.dtype == dtype
        out = OP(x, 4, "sawb", "signed", dims, stochastic, "t")
        assert out.shape == x.shape and out.dtype == dtype


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
@pytest.mark.parametrize("scaling", ["sawb", "max"])
def test_low_precision_inputs_keep_dtype(dtype, scaling):
    x = (torch.randn(2000, generator=_gen(25)) * 2).to(dtype)
    q = iq(x, 4, scaling)
    assert q.dtype == dtype and torch.isfinite(q).all()
    # Computed in float32, then rounded once to the input dtype.
    assert torch.equal(q, iq(x.float(), 4, scaling).to(dtype))
    assert q.unique().numel() <= 15
    torch.manual_seed(3)
    qs = iq(x, 4, scaling, stochastic=True)
    assert qs.dtype == dtype and qs.unique().numel() <= 15
    out = OP(x, 4, scaling, "signed", [], False, "t")
    assert out.dtype == dtype and torch.equal(out, q)


# ------------------------------------------------------------------------------ custom op


@pytest.mark.parametrize("stochastic", [False, True])
def test_op_matches_reference(stochastic):
    x = torch.randn(16, 32, generator=_gen(26))
    for scaling, signed, dims in (("sawb", "signed", []), ("max", "auto", [1]), ("max", "unsigned", [0])):
        torch.manual_seed(9)
        a = OP(x, 4, scaling, signed, dims, stochastic, "layer|activation")
        torch.manual_seed(9)
        b = iq(x, 4, scaling, signed, dims, stochastic)
        assert torch.equal(a, b)


@pytest.mark.parametrize("stochastic", [False, True])
def test_op_straight_through_gradient(stochastic):
    x = torch.randn(8, 16, generator=_gen(27), requires_grad=True)
    y = OP(x, 4, "sawb", "signed", [], stochastic, "t")
    y.sum().backward()
    assert torch.equal(x.grad, torch.ones_like(x))
    x.grad = None
    up = torch.randn(8, 16, generator=_gen(28))
    y = OP(x, 4, "max", "signed", [1], stochastic, "t")
    (y * up).sum().backward()
    assert torch.equal(x.grad, up)  # gradient passes unchanged, also beyond the clip


def test_op_gradcheck_straight_through():
    x = torch.randn(5, 7, dtype=torch.float64, generator=_gen(29), requires_grad=True)
    (jac,) = torch.autograd.functional.jacobian(
        lambda t: OP(t, 4, "sawb", "signed", [], False, "t"), (x,), vectorize=False
    )
    assert torch.equal(jac.reshape(35, 35), torch.eye(35, dtype=torch.float64))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_op_fake_kernel_under_fake_tensor_mode(dtype):
    with FakeTensorMode() as mode:
        x = mode.from_tensor(torch.randn(4, 3, 5, dtype=dtype))
        y = OP(x, 4, "sawb", "auto", [1, 2], True, "t")
        z = OP(torch.empty(0, 7, dtype=dtype), 4, "max", "signed", [], False, "t")
    assert isinstance(y, FakeTensor)
    assert y.shape == (4, 3, 5) and y.dtype == dtype and y.device == torch.device("cpu")
    assert z.shape == (0, 7) and z.dtype == dtype


@pytest.mark.parametrize(
    "args",
    [
        ((6, 8), torch.float32, 4, "sawb", "signed", [], False, False),
        ((6, 8), torch.float32, 4, "max", "auto", [1], True, True),
        ((2, 3, 4), torch.float32, 8, "max", "unsigned", [0, 2], True, False),
        ((6, 8), torch.bfloat16, 4, "sawb", "signed", [0], False, True),
    ],
)
def test_opcheck(args):
    shape, dtype, bits, scaling, signed, dims, stochastic, requires_grad = args
    x = torch.randn(shape, generator=_gen(30)).to(dtype).requires_grad_(requires_grad)
    torch.library.opcheck(OP.default, (x, bits, scaling, signed, dims, stochastic, "layer|activation"))


# --------------------------------------------------------------------------- binary (1-bit FQT forward)


def test_binary_forward_is_sign_times_mean_abs_per_group():
    torch.manual_seed(0)
    w = torch.randn(6, 10)
    out = iq(w, 1, "mean", "signed", [1])
    scale = w.abs().mean(1, keepdim=True)
    torch.testing.assert_close(out, torch.where(w >= 0, 1.0, -1.0) * scale)
    assert all(len(torch.unique(row)) <= 2 for row in out)


def test_binary_forward_on_non_negative_inputs_keeps_information():
    x = torch.relu(torch.randn(64, 8))
    out = iq(x, 1, "mean", "auto", [])
    levels = torch.unique(out)
    assert len(levels) == 2 and levels[0] == 0
    assert torch.equal(out > 0, x > x.abs().mean())
    signed = iq(x, 1, "mean", "signed", [])
    assert len(torch.unique(signed)) == 1  # sign() of a ReLU output says nothing: why 'auto' exists
