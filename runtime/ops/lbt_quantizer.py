"""LBT: INT gradients with an adaptive clipping interval (Kim et al., ECCV 2024).

Reference implementation, the γ update, and the ``qcompile::lbt_quantize`` op. The op is kept
opaque through Inductor (no decomposition): it reads the layer's γ from `quantizer_state`,
quantizes with it, then moves γ from the *unquantized* dY, so one call per backward is one
step of the paper's adaptation.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qcompile.runtime.quantizer_state import lbt_slot
from qcompile.runtime.reference.random_bits import draw_seed, hash_uniform
from qcompile.runtime.reference.scaling_groups import group_amax, normalize_dims

LBT_A = 1e-3  # the paper's a in the optimal condition R(γ*) = a / (2^b - 1)
GAMMA_STEP = 1e-3
GAMMA_FLOOR = 1e-3
GAMMA_CEIL = 1.0
INIT_EMA = 0.999


def lbt_target(bits: int) -> float:
    """Optimal fraction of clipped gradients, ``a / (2^b - 1)`` (≈ 6.7e-5 for 4 bits)."""
    return LBT_A / (2**bits - 1)


def lbt_quantize_reference(
    g: torch.Tensor,
    gamma: float,
    bits: int = 4,
    reduce_dims: Sequence[int] = (),
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """LBT (Kim et al., ECCV 2024, Sec. 4, the fixed-point gradient quantizer with clipping):
    ``c = γ·max|g|``, ``qmax = 2^b − 2`` (levels −7..7 for 4 bits), ``Δ = 2c/qmax``,
    ``q = clamp(⌊(g + c)/Δ + u⌋, 0, qmax)`` with ``u ~ U[0, 1)``, ``ĝ = q·Δ − c``.

    Unbiased inside ``[−c, c]``; values beyond are clipped to ``±c`` on purpose (the paper
    trades that bias for a finer step on the bulk). ``max`` is per group of ``reduce_dims``
    (per tensor in the paper). ``noise`` in [0, 1) replaces the random draw (test hook).
    All-zero groups give zeros; NaN/inf propagate.
    """
    if g.numel() == 0:
        return g.clone()
    dims = normalize_dims(reduce_dims, g.ndim)
    gf = g.float()
    qmax = float(2**bits - 2)
    c = group_amax(gf, dims) * gamma
    delta = 2 * c / qmax
    delta = torch.where(delta == 0, torch.ones_like(delta), delta)
    u = torch.rand_like(gf) if noise is None else noise.float()
    q = torch.clamp(torch.floor((gf + c) / delta + u), 0.0, qmax)
    return (q * delta - c).to(g.dtype)


def clipped_fraction(g: torch.Tensor, gamma: float, reduce_dims: Sequence[int] = ()) -> float:
    """``r = mean(|g| > γ·max|g|)``, the share of elements the clip cuts."""
    gf = g.float()
    c = group_amax(gf, normalize_dims(reduce_dims, g.ndim)) * gamma
    return float((gf.abs() > c).float().mean())


def initial_gamma(g: torch.Tensor, bits: int, reduce_dims: Sequence[int] = ()) -> float:
    """The paper's first-batch initialisation: from γ = 1, step γ down by 1e-3 while an EMA
    (factor 0.999) of the clipped fraction ``r(γ)`` stays at or below the target; stop at the
    floor. One sort makes every ``r(γ)`` a binary search."""
    gf = g.float()
    ratio = (gf.abs() / group_amax(gf, normalize_dims(reduce_dims, g.ndim))).nan_to_num(0.0).flatten()
    ordered = torch.sort(ratio.double()).values
    n = ordered.numel()
    target = lbt_target(bits)
    gamma, ema = GAMMA_CEIL, 0.0
    while gamma > GAMMA_FLOOR:
        gamma = max(gamma - GAMMA_STEP, GAMMA_FLOOR)
        at_most = int(torch.searchsorted(ordered, torch.tensor([gamma], dtype=torch.float64), right=True))
        ema = INIT_EMA * ema + (1 - INIT_EMA) * (n - at_most) / n
        if ema > target:
            break
    return gamma


def next_gamma(
    g: torch.Tensor, gamma: float, bits: int, reduce_dims: Sequence[int], first: bool
) -> tuple[float, float]:
    """(γ for the next step, clipped fraction at this step's γ).

    ``γ ← clamp(γ + 1e-3·sign(r − target), 1e-3, 1)`` from the unquantized ``g`` (LBT Sec. 4.2);
    on the first batch the initialisation loop instead. Guards: a non-finite ``g`` (an
    overflowing loss scale) leaves γ alone, and so does a tensor too small to see the target
    (``numel·target < 1``: the count would almost always be 0 and γ would drift to its floor).
    """
    if g.numel() == 0 or not bool(torch.isfinite(g).all()):
        return gamma, float("nan")
    r = clipped_fraction(g, gamma, reduce_dims)
    target = lbt_target(bits)
    if g.numel() * target < 1:
        return gamma, r
    if first:
        return initial_gamma(g, bits, reduce_dims), r
    step = GAMMA_STEP * ((r > target) - (r < target))
    return min(max(gamma + step, GAMMA_FLOOR), GAMMA_CEIL), r


@torch.library.custom_op("qcompile::lbt_quantize", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def lbt_quantize(g: torch.Tensor, bits: int, reduce_dims: list[int], tag: str) -> torch.Tensor:
    """Graph op: quantize ``g`` with the γ bound to ``tag`` (`quantizer_state.bind_tag`), then
    update that γ in place. ``tag`` is ``"<layer>|<role>|<site key>"``."""
    state, name = lbt_slot(tag)
    gamma_buf, updates = state.gamma(name), state.updates(name)
    gamma = float(gamma_buf)
    with torch.no_grad():
        if int(updates) == 0:
            # First batch: initialise γ on it (the paper's loop), then quantize with that γ.
            gamma, r = next_gamma(g.detach(), gamma, bits, reduce_dims, first=True)
            new = gamma
        out = lbt_quantize_reference(g, gamma, bits, reduce_dims, noise=hash_uniform(g, draw_seed(g.device)))
        if int(updates) > 0:
            new, r = next_gamma(g.detach(), gamma, bits, reduce_dims, first=False)
        if r == r:  # a finite step: count it (γ may stay put under the tiny-tensor guard)
            gamma_buf.fill_(new)
            updates.add_(1)
    state.last_clipped[name] = clipped_fraction(g, gamma, reduce_dims) if r == r else r
    return out.contiguous()  # the fake kernel's layout, whatever g's strides


@lbt_quantize.register_fake
def _lbt_quantize_fake(g, bits, reduce_dims, tag):
    return g.new_empty(g.shape)  # contiguous, as the op returns
