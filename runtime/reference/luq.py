"""LUQ: logarithmic unbiased quantization of neural gradients (Chmiel et al., ICLR 2023), as
pure PyTorch: the reference of the ``qcompile::luq_quantize`` op and of the int8 GEMMs' LUQ codes.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qcompile.runtime.reference.scaling_groups import group_amax, normalize_dims


def luq_levels(bits: int) -> int:
    """Number of non-zero magnitudes: 1 sign bit, bits-1 exponent bits, one code for zero.
    4 bits → 7 magnitudes α·2^k, k = 0..6 (FP4 [1,3,0])."""
    return 2 ** (bits - 1) - 1


def luq_quantize_reference(
    g: torch.Tensor,
    bits: int = 4,
    reduce_dims: Sequence[int] = (),
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """LUQ, Chmiel et al. ICLR 2023, Eq. 10 (stochastic underflow) and Eq. 12 (logarithmic
    stochastic rounding), with the scale of docs/algorithms.md: ``α = max|g| / 2^(levels-1)``
    (``m/64`` for 4 bits, so the top level is exactly ``max|g|`` and nothing is clipped).

    With ``x = |g|/α``:
      * ``x < 1``: output ``α`` with probability ``x``, else 0 (Eq. 10);
      * ``2^(n-1) ≤ x ≤ 2^n``: with ``f = 2^⌊log2 x⌋``, output ``2f·α`` with probability
        ``(x - f)/f``, else ``f·α`` (Eq. 12; the same distribution as the cheap form Eq. 13-14).
    Both branches are unbiased, so ``E[Q(g)] = g``. One uniform ``u`` per element decides.

    ``noise`` (values in [0, 1), shape of ``g``) replaces the random draw (test hook).
    An all-zero group gives zeros (never NaN); NaN/inf in a group propagate to its output.
    """
    if g.numel() == 0:
        return g.clone()
    codes, alpha = luq_codes_reference(g, bits, reduce_dims, noise)
    return (codes * alpha).to(g.dtype)


def luq_codes_reference(
    g: torch.Tensor,
    bits: int = 4,
    reduce_dims: Sequence[int] = (),
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`luq_quantize_reference` as integer codes and scale: ``(codes, α)`` with ``codes`` in
    ``{0, ±1, ±2, ..., ±2^(levels-1)}`` (float32; NaN for a non-finite group) and ``α`` per group
    (keepdim), so that ``codes · α`` is its output bit for bit. The integer GEMMs read the codes
    (they fit int8: ``|code| <= 64`` for 4 bits) and apply ``α`` in their epilogue."""
    dims = normalize_dims(reduce_dims, g.ndim)
    gf = g.float()
    levels = luq_levels(bits)
    alpha = group_amax(gf, dims) / float(2 ** (levels - 1))
    alpha = torch.where(alpha == 0, torch.ones_like(alpha), alpha)
    x = gf.abs() / alpha
    u = torch.rand_like(gf) if noise is None else noise.float()
    f = _floor_pow2(x, levels)
    # Round up to 2f with probability (x - f)/f, written without a division.
    log_rounded = torch.where(u * f < x - f, 2 * f, f)
    underflow = (u < x).to(gf.dtype)
    q = torch.where(x < 1, underflow, log_rounded)
    # x is NaN for non-finite groups: keep it visible (loss-scaling skip logic reads it).
    # (``x != x`` is isnan; Inductor vectorises the compare, not ``isnan``.)
    q = torch.where(x != x, x, q)
    return torch.sign(gf) * q, alpha


def _floor_pow2(x: torch.Tensor, levels: int) -> torch.Tensor:
    """``f = 2^floor(log2 x)`` for ``1 <= x <= 2^(levels-1)`` (1 below), exactly: the largest
    level power not above ``x``, as a chain of compares (what the float's exponent bits say,
    but in ops Inductor vectorises, where a bit-cast view is not)."""
    f = torch.ones_like(x)
    for e in range(1, levels):
        f = torch.where(x >= float(2**e), float(2**e), f)
    return f
