"""Property tests for the block-scaled format references: minifloat elements (E2M1, E4M3, E5M2),
MX / NVFP4 / FP8 ("max") block scaling, storage bits, and the blockwise random Hadamard transform.

Round-to-nearest is checked against torch's float8 casts (an independent implementation), scales
against formulas recomputed here in float64 or with torch's casts, and stochastic rounding against
its mean and support over many noise draws.
"""

from __future__ import annotations

import math

import pytest
import torch

from qcompile.runtime.reference.block_scaled import SCALINGS, block_quantize_reference, block_scale_bits
from qcompile.runtime.reference.hadamard import hadamard_reference, random_signs_reference
from qcompile.runtime.reference.minifloat import ELEMENT_FORMATS, round_to_element

bq = block_quantize_reference
FP8 = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}
E2M1_GRID = [0.0, 0.5, 1.0, 1.5, 2.0, 3.0, 4.0, 6.0]
K = 2000  # noise draws per element in the statistical tests


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _fp8_values(element: str) -> torch.Tensor:
    """Every finite value of an FP8 format, as float32 (all 256 codes, NaN/inf dropped)."""
    v = torch.arange(256, dtype=torch.uint8).view(FP8[element]).float()
    return v[torch.isfinite(v)]


def _grid(element: str) -> torch.Tensor:
    """Sorted non-negative grid of an element format, float64."""
    if element == "e2m1":
        return torch.tensor(E2M1_GRID, dtype=torch.float64)
    v = _fp8_values(element).double()
    return v[v >= 0].unique()


def _neighbours(r: torch.Tensor, element: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Grid neighbours ``lo <= |r| <= hi`` (float64) of magnitudes within the grid's range."""
    g = _grid(element)
    a = r.double().abs()
    i = torch.searchsorted(g, a, right=True).clamp(max=g.numel() - 1)
    lo = g[i - 1]
    hi = torch.where(g[i - 1] == a, a, g[i])
    return lo, hi


def _on_grid(r: torch.Tensor, element: str) -> bool:
    return bool(torch.isin(r.double().abs(), _grid(element)).all())


def _mx_scale(amax: torch.Tensor, element: str) -> torch.Tensor:
    """``2^(floor(log2 amax) - emax)`` clamped to E8M0's [-127, 127], in float64 via frexp (exact)."""
    e = torch.frexp(amax.double())[1].double() - 1 - ELEMENT_FORMATS[element].emax
    return torch.exp2(e.clamp(-127, 127))


def _varied_rows(rows: int, cols: int, seed: int) -> torch.Tensor:
    """Gaussian rows with magnitudes spread over 2^-30 .. 2^30 and non-power-of-two factors."""
    g = _gen(seed)
    mag = torch.exp2(torch.randint(-30, 30, (rows, 1), generator=g).float()) * (
        1 + torch.rand(rows, 1, generator=g)
    )
    return torch.randn(rows, cols, generator=g) * mag


# ------------------------------------------------------------------------------ element grids


def test_format_properties():
    e2m1, e4m3, e5m2 = (ELEMENT_FORMATS[k] for k in ("e2m1", "e4m3", "e5m2"))
    assert (e2m1.bits, e2m1.emax, e2m1.min_normal_exponent, e2m1.max_value) == (4, 2, 0, 6.0)
    assert (e4m3.bits, e4m3.emax, e4m3.min_normal_exponent) == (8, 8, -6)
    assert (e5m2.bits, e5m2.emax, e5m2.min_normal_exponent) == (8, 15, -14)
    assert e4m3.max_value == torch.finfo(torch.float8_e4m3fn).max == 448.0
    assert e5m2.max_value == torch.finfo(torch.float8_e5m2).max == 57344.0


def test_e2m1_grid_exactly():
    x = torch.arange(-8 * 64, 8 * 64 + 1) / 64.0
    q = round_to_element(x, "e2m1")
    assert q.dtype == torch.float32
    assert sorted(set(q.abs().tolist())) == E2M1_GRID
    assert set(q.tolist()) == {s * v for v in E2M1_GRID for s in (1.0, -1.0)}
    grid = torch.tensor(E2M1_GRID)
    assert torch.equal(round_to_element(grid, "e2m1"), grid)
    assert torch.equal(round_to_element(-grid, "e2m1"), -grid)
    # Ties go to the even mantissa; beyond 6 saturates.
    x = torch.tensor([0.25, 0.75, 1.25, 1.75, 2.5, 3.5, 5.0, 6.5, 7.0, 100.0, 0.2, 0.3, 4.9, 5.1])
    want = torch.tensor([0.0, 1.0, 1.0, 2.0, 2.0, 4.0, 4.0, 6.0, 6.0, 6.0, 0.0, 0.5, 4.0, 6.0])
    assert torch.equal(round_to_element(x, "e2m1"), want)
    assert torch.equal(round_to_element(-x, "e2m1"), -want)


@pytest.mark.parametrize("element", ["e4m3", "e5m2"])
def test_fp8_round_to_nearest_matches_torch_casts(element):
    dtype, fmt = FP8[element], ELEMENT_FORMATS[element]

    def check(x: torch.Tensor) -> None:
        want = x.to(dtype).float()
        got = round_to_element(x, element)
        bad = got != want
        assert not bad.any(), (
            f"{int(bad.sum())} mismatches, e.g. {x[bad][:5].tolist()} -> {got[bad][:5].tolist()}"
        )

    values = _fp8_values(element)
    check(values)
    pos = values[values >= 0].unique()
    mid = (pos[1:] + pos[:-1]) / 2  # exact in float32: one more mantissa bit
    beside = torch.cat([torch.nextafter(mid, mid + 1), torch.nextafter(mid, mid - 1)])
    check(torch.cat([mid, -mid, beside, -beside]))
    g = _gen(1 if element == "e4m3" else 2)
    uniform = (torch.rand(50_000, generator=g) * 2 - 1) * fmt.max_value
    lo = fmt.min_normal_exponent - fmt.mantissa_bits - 2
    log_mag = torch.exp2(lo + torch.rand(50_000, generator=g) * (math.log2(fmt.max_value) - lo))
    sign = torch.where(torch.rand(50_000, generator=g) < 0.5, -1.0, 1.0)
    check(torch.cat([uniform, (sign * log_mag).clamp(-fmt.max_value, fmt.max_value)]))


@pytest.mark.parametrize("element", ["e2m1", "e4m3", "e5m2"])
def test_saturation_at_max(element):
    m = ELEMENT_FORMATS[element].max_value
    x = torch.tensor([m, m * 1.0001, m * 1.1, m * 10, 1e30, torch.finfo(torch.float32).max])
    want = torch.full_like(x, m)
    assert torch.equal(round_to_element(x, element), want)
    assert torch.equal(round_to_element(-x, element), -want)
    noise = torch.rand(x.shape, generator=_gen(3))
    assert torch.equal(round_to_element(x, element, noise), want)
    assert torch.equal(round_to_element(x, element, torch.full_like(x, 0.999)), want)


def test_subnormals():
    # E4M3: subnormals k·2^-9; E5M2: k·2^-16; E2M1: 0.5. Half the smallest ties to zero (even).
    for element, tiny, count in (("e4m3", 2.0**-9, 7), ("e5m2", 2.0**-16, 3), ("e2m1", 0.5, 1)):
        sub = torch.arange(1, count + 1) * tiny
        assert torch.equal(round_to_element(sub, element), sub)
        x = torch.tensor([tiny / 2, tiny * 0.51, tiny * 0.49, tiny * 1.5, tiny * 1e-3])
        want = torch.tensor([0.0, tiny, 0.0, 2 * tiny, 0.0])
        assert torch.equal(round_to_element(x, element), want)
        # Subnormal spacing is the lowest normal binade's: stochastic rounding between 0 and tiny.
        q = round_to_element(torch.full((1000,), tiny / 4), element, torch.rand(1000, generator=_gen(4)))
        assert set(q.tolist()) == {0.0, tiny}


def test_non_finite_elements_become_nan():
    x = torch.tensor([float("nan"), float("inf"), -float("inf"), 1.0])
    for element in ELEMENT_FORMATS:
        for noise in (None, torch.full((4,), 0.5)):
            q = round_to_element(x, element, noise)
            assert torch.isnan(q[:3]).all() and q[3] == 1.0


def test_round_to_element_rejects_bad_arguments():
    with pytest.raises(ValueError, match="e2m1"):
        round_to_element(torch.ones(3), "e3m2")
    with pytest.raises(ValueError, match="shape"):
        round_to_element(torch.ones(3), "e4m3", torch.rand(4))


# ------------------------------------------------------------------------ stochastic rounding


def _in_range_off_grid(n: int, element: str, seed: int) -> torch.Tensor:
    """Signed magnitudes log-spread over the element's range (subnormals included), below max."""
    fmt = ELEMENT_FORMATS[element]
    g = _gen(seed)
    lo = fmt.min_normal_exponent - fmt.mantissa_bits
    mag = torch.exp2(lo + torch.rand(n, generator=g) * (math.log2(fmt.max_value) - lo))
    sign = torch.where(torch.rand(n, generator=g) < 0.5, -1.0, 1.0)
    x = sign * mag
    return x[~torch.isin(x.double().abs(), _grid(element))]


@pytest.mark.parametrize("element", ["e2m1", "e4m3", "e5m2"])
def test_stochastic_rounding_unbiased_with_two_point_support(element):
    x = _in_range_off_grid(500, element, 5)
    noise = torch.rand(K, x.numel(), generator=_gen(6))
    draws = round_to_element(x.expand(K, -1), element, noise).double()
    lo, hi = _neighbours(x, element)
    d = draws.abs()
    assert ((d == lo) | (d == hi)).all() and (torch.sign(draws) == torch.sign(x).double()).all()
    a = x.double().abs()
    se = ((a - lo) * (hi - a) / K).sqrt()
    diff = draws.mean(0) - x.double()
    z = diff / se
    assert float(z.abs().max()) < 6.0, f"max |z| = {float(z.abs().max()):.2f}"
    assert abs(float(diff.sum() / se.pow(2).sum().sqrt())) < 4.0
    # Guard: round-to-nearest fails the same test decisively.
    rtn = round_to_element(x, element).double()
    assert float(((rtn - x.double()) / se).abs().max()) > 6.0


def test_stochastic_rounding_formula_and_grid_points():
    x = torch.tensor([0.2, 1.2, 2.5, 5.0, -3.9])
    assert torch.equal(round_to_element(x, "e2m1", torch.zeros(5)), torch.tensor([0.0, 1.0, 2.0, 4.0, -3.0]))
    top = torch.full((5,), 1 - 2.0**-24)
    assert torch.equal(round_to_element(x, "e2m1", top), torch.tensor([0.5, 1.5, 3.0, 6.0, -4.0]))
    # floor(|x|/ulp + u)·ulp: 1.2 = 2.4 ulps of 0.5, so it rounds up iff u >= 0.6.
    u = torch.tensor([0.59, 0.61])
    assert torch.equal(round_to_element(torch.full((2,), 1.2), "e2m1", u), torch.tensor([1.0, 1.5]))
    for element in ELEMENT_FORMATS:  # grid values never move
        v = torch.cat([_grid(element).float(), -_grid(element).float()])
        assert torch.equal(round_to_element(v, element, torch.rand(v.shape, generator=_gen(7))), v)


# ---------------------------------------------------------------------------------- MX scales


@pytest.mark.parametrize("element", ["e2m1", "e4m3", "e5m2"])
def test_mx_scale_is_the_floor_log2_power_of_two(element):
    x = _varied_rows(16, 96, 8)
    # Block amax just below a power of two: float32 log2 rounds it up to the power itself.
    x[0, :32] /= x[0, :32].abs().max()
    x[0, 5] = 2.0**10 * (1 - 2.0**-24)
    x[1, 32:64] *= 2.0**-22 / x[1, 32:64].abs().max()
    x[1, 40] = -(2.0**-20) * (1 - 2.0**-24)
    q = bq(x, element, "mx", [32])
    xb = x.view(16, 3, 32)
    scale = _mx_scale(xb.abs().amax(-1, keepdim=True), element)
    assert torch.equal(torch.exp2(torch.log2(scale).round()), scale)  # powers of two
    r = q.view(16, 3, 32).double() / scale
    assert _on_grid(r, element)
    want = round_to_element((xb.double() / scale).float(), element).double() * scale
    assert torch.equal(q.view(16, 3, 32).double(), want)
    # Scaled amax lands in [2^emax, 2^(emax+1)): the block's top element uses the top binade.
    top = (xb.double().abs() / scale).amax(-1)
    emax = ELEMENT_FORMATS[element].emax
    assert ((top >= 2.0**emax) & (top < 2.0 ** (emax + 1))).all()
    # Scale 2^(9 - emax), not 2^(10 - emax): x/X is just below 2^(emax+1) and saturates to max.
    m = ELEMENT_FORMATS[element].max_value
    assert q[0, 5] == m * 2.0 ** (9 - emax) and q[1, 40] == -m * 2.0 ** (-21 - emax)


def test_mx_scale_exponent_clamps_at_e8m0_minimum():
    # amax 2^-126 → 2^(-126 - 2) would be the scale; E8M0 stops at 2^-127, so 2^-129 = 0.25·X
    # rounds to zero instead of to the subnormal 0.5·2^-128.
    x = torch.tensor([2.0**-126, 2.0**-129, -(2.0**-127)])
    assert torch.equal(bq(x, "e2m1", "mx", [0]), torch.tensor([2.0**-126, 0.0, -(2.0**-127)]))


def test_mx_fp8_relative_error_bound():
    x = _varied_rows(64, 128, 9) * torch.randn(64, 128, generator=_gen(10)).exp()  # heavy tails
    q = bq(x, "e4m3", "mx", [32])
    xb = x.view(64, 4, 32).double()
    r = xb.abs() / _mx_scale(xb.abs().amax(-1, keepdim=True), "e4m3")
    normal = (r >= 2.0**-6) & (r <= 448)
    rel = ((q.view(64, 4, 32).double() - xb).abs() / xb.abs())[normal]
    assert normal.float().mean() > 0.9
    assert float(rel.max()) <= 2.0**-4
    assert float(rel.max()) > 2.0**-5  # the bound is tight, not vacuous


# ---------------------------------------------------------------------------------- NV scales


def test_nv_scales_are_e4m3_and_tensor_scale_is_amax_over_6_times_448():
    x = _varied_rows(8, 64, 11) * 1e-3
    x[:, :16] *= 2.0**-12  # small blocks whose scale reaches E4M3 subnormals
    q = bq(x, "e2m1", "nv", [16])
    amax = x.abs().amax()
    s_t = amax / (6 * 448)
    amax_b = x.view(8, 4, 16).abs().amax(-1, keepdim=True)
    s_b = (amax_b / (6 * s_t)).to(torch.float8_e4m3fn).float()  # torch's cast: independent rounding
    scale = s_b * s_t
    elements = round_to_element(x.view(8, 4, 16) / torch.where(scale > 0, scale, 1.0), "e2m1")
    want = (elements * s_b * s_t).view(8, 64)
    assert torch.equal(q, want)
    assert (s_b == 0).any() and (s_b > 0).any()  # both regimes exercised
    assert (q.view(8, 4, 16)[(s_b == 0).expand(-1, -1, 16)] == 0).all()
    # The block holding amax(x) has s_b = 448, so amax maps to the element max 6 exactly.
    i = x.abs().argmax()
    assert torch.allclose(q.flatten()[i], x.flatten()[i], rtol=2e-7, atol=0)


def test_nv_block_scale_rounding_to_zero_gives_zeros():
    x = torch.cat([torch.randn(16, generator=_gen(12)), torch.randn(16, generator=_gen(13)) * 1e-9])
    q = bq(x, "e2m1", "nv", [16])
    assert torch.equal(q[16:], torch.zeros(16)) and (q[:16] != 0).any()


def test_nv_fp4_error_at_most_half_a_grid_step():
    x = _varied_rows(32, 64, 14) * torch.randn(32, 64, generator=_gen(15)).exp()
    q = bq(x, "e2m1", "nv", [16]).double()
    s_t = x.abs().amax() / (6 * 448)
    amax_b = x.view(32, 4, 16).abs().amax(-1, keepdim=True)
    s_b = (amax_b / (6 * s_t)).to(torch.float8_e4m3fn).float()
    scale = (s_b * s_t).double().expand(-1, -1, 16).reshape(32, 64)
    keep = scale > 0
    r = x.double().abs() / scale
    half_step = torch.where(r < 2, 0.25, torch.where(r < 4, 0.5, 1.0))
    err = (q - x.double()).abs()
    assert (err[keep] <= half_step[keep] * scale[keep] * (1 + 1e-6)).all()
    assert (r[keep] > 6).any()  # s_b rounded down somewhere: saturation is covered by the bound


# ------------------------------------------------------------------------------- max scaling


@pytest.mark.parametrize("element", ["e4m3", "e5m2", "e2m1"])
@pytest.mark.parametrize("block,axis", [([0], -1), ([0], 0), ([], -1)])
def test_max_scaling_rowwise_and_tensorwise(element, block, axis):
    x = _varied_rows(24, 40, 16)
    q = bq(x, element, "max", block, axis)
    m = ELEMENT_FORMATS[element].max_value
    amax = x.abs().amax() if not block else x.abs().amax(axis, keepdim=True)
    scale = amax / m
    assert torch.equal(q, round_to_element(x / scale, element) * scale)
    top = q.abs().amax() if not block else q.abs().amax(axis)
    want = x.abs().amax() if not block else x.abs().amax(axis)
    assert torch.allclose(top, want, rtol=2.0**-22, atol=0)


# ------------------------------------------------------------------- special values, zeros


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite_in_a_block_makes_it_nan(scaling, bad):
    x = torch.randn(4, 64, generator=_gen(17))
    x[1, 40] = bad
    q = bq(x, "e2m1", scaling, [32])
    if scaling == "nv":
        assert torch.isnan(q).all()  # the tensor scale is NaN/inf: every element
        return
    nan = torch.zeros(4, 64, dtype=torch.bool)
    nan[1, 32:] = True
    assert torch.isnan(q[nan]).all() and torch.isfinite(q[~nan]).all()
    clean = x.clone()
    clean[1, 32:] = 0
    assert torch.equal(q[~nan], bq(clean, "e2m1", scaling, [32])[~nan])
    rows = bq(x, "e4m3", scaling, [0])
    assert torch.isnan(rows[1]).all() and torch.isfinite(rows[[0, 2, 3]]).all()


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("element", ["e2m1", "e4m3"])
def test_zero_block_gives_zeros(scaling, element):
    x = torch.randn(3, 48, generator=_gen(18))
    x[1, 16:32] = 0
    for block in ([16], [16, 16]):
        q = bq(x, element, scaling, block)
        assert torch.isfinite(q).all() and torch.equal(q[1, 16:32], torch.zeros(16))
    # The all-zero tensor: the amax == 0 guard (for "nv", of the tensor scale).
    z = torch.zeros(2, 32)
    for block in ([], [0], [16], [16, 16]):
        assert torch.equal(bq(z, element, scaling, block), z)
        assert torch.equal(bq(z, element, scaling, block, stochastic=True), z)


# -------------------------------------------------------------------------- block layouts


@pytest.mark.parametrize("scaling", ["mx", "max"])
def test_partial_blocks_are_their_own_blocks(scaling):
    x = _varied_rows(3, 40, 19)
    q = bq(x, "e2m1", scaling, [32])
    parts = torch.cat([bq(x[:, :32], "e2m1", scaling, [0]), bq(x[:, 32:], "e2m1", scaling, [0])], dim=1)
    assert torch.equal(q, parts)
    w = _varied_rows(20, 24, 20)
    q2 = bq(w, "e4m3", scaling, [16, 16])
    for rs in (slice(0, 16), slice(16, 20)):
        for cs in (slice(0, 16), slice(16, 24)):
            assert torch.equal(q2[rs, cs], bq(w[rs, cs].contiguous(), "e4m3", scaling, []))


def test_nv_partial_block_matches_an_explicit_padded_block():
    x = _varied_rows(2, 21, 21)
    padded = torch.cat([x, torch.zeros(2, 11)], dim=1)
    assert torch.equal(bq(x, "e2m1", "nv", [16]), bq(padded, "e2m1", "nv", [16])[:, :21])
    w = _varied_rows(20, 24, 22)
    wp = torch.zeros(32, 32)
    wp[:20, :24] = w
    assert torch.equal(bq(w, "e2m1", "nv", [16, 16]), bq(wp, "e2m1", "nv", [16, 16])[:20, :24])


@pytest.mark.parametrize("scaling", SCALINGS)
def test_axis_selects_the_blocked_dim(scaling):
    x = _varied_rows(48, 6, 23)
    assert torch.equal(bq(x, "e2m1", scaling, [16], axis=0), bq(x.T, "e2m1", scaling, [16]).T)
    t = torch.randn(2, 40, 3, generator=_gen(24))
    want = bq(t.transpose(1, 2), "e4m3", scaling, [32]).transpose(1, 2)
    assert torch.equal(bq(t, "e4m3", scaling, [32], axis=1), want)


@pytest.mark.parametrize("scaling", SCALINGS)
@pytest.mark.parametrize("element", ["e2m1", "e4m3"])
def test_square_2d_blocks_commute_with_transpose(scaling, element):
    w = torch.randn(64, 48, generator=_gen(25)) * torch.rand(64, 1, generator=_gen(26))
    q = bq(w, element, scaling, [16, 16])
    assert torch.equal(q.T, bq(w.T, element, scaling, [16, 16]))
    w3 = torch.randn(2, 40, 24, generator=_gen(27))
    assert torch.equal(bq(w3, element, scaling, [16, 16]).mT, bq(w3.mT, element, scaling, [16, 16]))
    if element == "e2m1":  # 1-D blocks along the rows do not commute
        assert not torch.equal(bq(w, element, scaling, [16]).T, bq(w.T, element, scaling, [16]))


def test_dtype_and_shape_preserved():
    for dtype in (torch.float32, torch.bfloat16, torch.float16):
        x = torch.randn(2, 3, 40, generator=_gen(28)).to(dtype)
        for scaling in SCALINGS:
            for block in ([], [0], [32], [16, 16]):
                q = bq(x, "e2m1", scaling, block)
                assert q.dtype == dtype and q.shape == x.shape and torch.isfinite(q).all()
    s = torch.tensor(-2.7)
    assert bq(s, "e2m1", "max", [16]).shape == () and bq(s, "e2m1", "mx", []) == -3.0
    assert bq(torch.empty(0, 32), "e2m1", "mx", [32]).shape == (0, 32)


def test_block_quantize_rejects_bad_arguments():
    x = torch.randn(4, 32, generator=_gen(29))
    with pytest.raises(ValueError, match="e4m3"):
        bq(x, "fp4", "mx", [32])
    with pytest.raises(ValueError, match="nv"):
        bq(x, "e2m1", "ue8m0", [32])
    for block in ([-1], [16, 16, 16], [0, 16], [16, -2]):
        with pytest.raises(ValueError, match="block"):
            bq(x, "e2m1", "mx", block)
    with pytest.raises(ValueError, match="ndim"):
        bq(torch.randn(32), "e2m1", "nv", [16, 16])
    with pytest.raises(ValueError, match="stochastic"):
        bq(x, "e2m1", "mx", [32], noise=torch.rand(4, 32))
    with pytest.raises(ValueError, match="shape"):
        bq(x, "e2m1", "mx", [32], stochastic=True, noise=torch.rand(32))


# ----------------------------------------------------------------- stochastic block rounding


@pytest.mark.parametrize("scaling", SCALINGS)
def test_stochastic_block_quantize_unbiased_with_two_point_support(scaling):
    g = _gen(30)
    x = (
        torch.randn(32, 16, generator=g) * torch.exp2(torch.randint(-8, 1, (32, 1), generator=g).float())
    ).flatten()
    x[3] = 5.0 * x.abs().max()  # one dominant element: small ones round between 0 and the subnormal
    big = x.expand(K, -1)
    noise = torch.rand(K, x.numel(), generator=_gen(31))
    # Scales depend on x only, so per-row blocks of the repeated x give the same scale per draw.
    xb = x.view(1, 32, 16)
    draws = bq(big.reshape(K, 32, 16), "e2m1", scaling, [16], stochastic=True, noise=noise.view(K, 32, 16))
    draws = draws.reshape(K, -1).double()
    rtn = bq(xb, "e2m1", scaling, [16]).flatten().double()
    # Recover each block's scale from the definition, to get the grid neighbours of x / scale.
    amax_b = xb.abs().amax(-1, keepdim=True)
    if scaling == "mx":
        scale = _mx_scale(amax_b, "e2m1")
    elif scaling == "max":
        scale = (amax_b / 6).double()
    else:
        s_t = x.abs().amax() / (6 * 448)
        scale = ((amax_b / (6 * s_t)).to(torch.float8_e4m3fn).float() * s_t).double()
    scale = scale.expand(-1, -1, 16).flatten()
    r = (x.double() / scale).abs()
    inside = r <= 6 * (1 - 1e-6)
    lo, hi = _neighbours(r.clamp(max=6).float(), "e2m1")
    d = (draws / scale).abs()
    # (The "nv" output rounds once in q·s_b·s_t; compare on the grid with a relative slack.)
    close = ((d - lo).abs() <= lo * 1e-6) | ((d - hi).abs() <= hi * 1e-6)
    assert close.all()
    var = (r - lo) * (hi - r) * scale.pow(2) / K
    diff = draws.mean(0) - x.double()
    ok = inside & (var > 0)
    z = diff[ok] / var[ok].sqrt()
    assert float(z.abs().max()) < 6.0, f"max |z| = {float(z.abs().max()):.2f}"
    assert abs(float(diff[ok].sum() / var[ok].sum().sqrt())) < 4.0
    assert float(((rtn - x.double())[ok] / var[ok].sqrt()).abs().max()) > 6.0  # RTN would fail
    # Without a noise hook: torch's generator, reproducible under manual_seed.
    torch.manual_seed(32)
    a = bq(x, "e2m1", scaling, [16], stochastic=True)
    torch.manual_seed(32)
    assert torch.equal(a, bq(x, "e2m1", scaling, [16], stochastic=True))
    assert not torch.equal(a, rtn.float())


# --------------------------------------------------------------------------- storage bits


def test_block_scale_bits():
    assert block_scale_bits("e2m1", "mx", [32], (128, 256)) == 4.25
    assert block_scale_bits("e4m3", "mx", [32], (128, 256)) == 8.25
    assert block_scale_bits("e5m2", "mx", [32], (256, 128), axis=0) == 8.25
    assert block_scale_bits("e2m1", "nv", [16], (128, 256)) == 4.5 + 32 / (128 * 256)
    assert block_scale_bits("e2m1", "nv", [16, 16], (128, 256)) == 4 + 8 / 256 + 32 / (128 * 256)
    assert block_scale_bits("e4m3", "max", [0], (64, 512)) == 8 + 32 / 512
    assert block_scale_bits("e4m3", "max", [0], (64, 512), axis=0) == 8 + 32 / 64
    assert block_scale_bits("e4m3", "max", [], (64, 512)) == 8 + 32 / (64 * 512)
    assert block_scale_bits("e2m1", "mx", [32], (3, 40)) == 4 + 2 * 8 / 40  # partial block: a whole scale
    assert block_scale_bits("e2m1", "mx", [16, 16], (20, 24)) == 4 + 4 * 8 / (20 * 24)
    with pytest.raises(ValueError):
        block_scale_bits("e2m1", "mx", [32, 32, 32], (64, 64))
    with pytest.raises(ValueError):
        block_scale_bits("e2m1", "int", [32], (64, 64))


# ------------------------------------------------------------------------------- Hadamard


def _sylvester(n: int) -> torch.Tensor:
    h = torch.ones(1, 1, dtype=torch.float64)
    while h.shape[0] < n:
        h = torch.cat([torch.cat([h, h], 1), torch.cat([h, -h], 1)], 0)
    return h


@pytest.mark.parametrize("block", [1, 2, 8, 32])
def test_hadamard_is_the_signed_sylvester_matrix(block):
    x = torch.randn(3, 64, generator=_gen(33))
    s = random_signs_reference(block, 34)
    m = _sylvester(block) * s.double() / math.sqrt(block)  # H · diag(s) / sqrt(b)
    want = (x.double().view(3, 64 // block, block) @ m.T).view(3, 64)
    assert torch.allclose(hadamard_reference(x, -1, block, s).double(), want, atol=1e-5, rtol=0)
    inv = (x.double().view(3, 64 // block, block) @ m).view(3, 64)  # the transpose: diag(s) · H / sqrt(b)
    assert torch.allclose(hadamard_reference(x, 1, block, s, inverse=True).double(), inv, atol=1e-5, rtol=0)
    want0 = (m @ x.double().T.reshape(64 // block, block, 3)).reshape(64, 3)
    assert torch.allclose(hadamard_reference(x.T, 0, block, s).double(), want0, atol=1e-5, rtol=0)


@pytest.mark.parametrize("block", [2, 16, 128])
def test_hadamard_inverse_and_orthogonality(block):
    x = torch.randn(4, 5, 256, generator=_gen(35)) * 3
    s = random_signs_reference(block, torch.tensor(36))
    y = hadamard_reference(x, -1, block, s)
    assert torch.allclose(hadamard_reference(y, -1, block, s, inverse=True), x, atol=1e-5, rtol=0)
    assert torch.equal(hadamard_reference(x, 1, 1, -torch.ones(1)), -x)  # block 1: just the signs
    xb, yb = x.view(4, 5, -1, block), y.view(4, 5, -1, block)
    assert torch.allclose(yb.norm(dim=-1), xb.norm(dim=-1), rtol=1e-5)  # each block's norm kept
    assert not torch.allclose(y, x)


@pytest.mark.parametrize("block", [1, 4, 16, 64])
def test_hadamard_on_both_operands_preserves_the_product(block):
    a = torch.randn(8, 192, generator=_gen(37))
    b = torch.randn(192, 24, generator=_gen(38))
    s = random_signs_reference(block, 39)
    got = hadamard_reference(a, -1, block, s) @ hadamard_reference(b, 0, block, s)
    assert torch.allclose(got, a @ b, atol=1e-4, rtol=1e-5)


def test_hadamard_dtype_and_errors():
    s = random_signs_reference(16, 40)
    x = torch.randn(2, 32, generator=_gen(41)).to(torch.bfloat16)
    y = hadamard_reference(x, -1, 16, s)
    assert y.dtype == torch.bfloat16 and y.shape == x.shape
    with pytest.raises(ValueError, match="multiple"):
        hadamard_reference(torch.randn(2, 40), -1, 16, s)
    with pytest.raises(ValueError, match="power of two"):
        hadamard_reference(torch.randn(2, 24), -1, 12, torch.ones(12))
    with pytest.raises(ValueError, match="signs"):
        hadamard_reference(torch.randn(2, 32), -1, 16, torch.ones(8))


def test_random_signs_reproducible_and_pm_one():
    s = random_signs_reference(4096, 42)
    assert s.dtype == torch.float32 and s.shape == (4096,)
    assert set(s.unique().tolist()) == {-1.0, 1.0}
    assert abs(float(s.sum())) < 4 * math.sqrt(4096)  # balanced
    assert torch.equal(s, random_signs_reference(4096, 42))
    assert torch.equal(s, random_signs_reference(4096, torch.tensor(42)))
    assert not torch.equal(s, random_signs_reference(4096, 43))
    assert torch.equal(random_signs_reference(16, 42), s[:16])  # a prefix of the same stream


def test_tensor_quantize_api_takes_block_specs_along_an_axis():
    """`qcompile.quantize(t, "fp4-nv16", axis=...)` is the reference with the spec's fields."""
    import qcompile

    x = torch.randn(32, 48, generator=torch.Generator().manual_seed(3))
    for spec, element, scaling, block in (
        ("fp4-nv16", "e2m1", "nv", [16]),
        ("fp8-e4m3-mx32", "e4m3", "mx", [32]),
        ("fp8-e5m2-row", "e5m2", "max", [0]),
    ):
        for axis in (0, 1):
            got = qcompile.quantize(x, spec, axis=axis)
            assert torch.equal(got, block_quantize_reference(x, element, scaling, block, axis)), (spec, axis)
    assert not torch.equal(qcompile.quantize(x, "fp4-mx32", axis=0), qcompile.quantize(x, "fp4-mx32", axis=1))
