"""Uniform INT quantization (SAWB or max scaling): the forward quantizer of LUQ and LBT, as
pure PyTorch.

The reference the ``qcompile::int_quantize`` op runs eagerly and Inductor inlines, and the
definition the Triton quantizers are tested against. Codes, clip and dequantization are separate
functions so every path that rebuilds ``x̂`` (packed saves, requantized weights, int8 GEMMs) uses
the forward's very float operations.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qcompile.runtime.reference.scaling_groups import group_amax, group_amin, group_mean, normalize_dims

# SAWB 4-bit coefficients (Choi et al. 2018, as used by the LUQ code): clip = c1*sqrt(E[x^2]) - c2*E|x|
SAWB_C1 = 12.1
SAWB_C2 = 12.2


def int_levels(bits: int, unsigned: bool) -> tuple[int, int]:
    """(lowest, highest) integer code. Signed is symmetric: -7..7 for 4 bits (15 levels; the
    released LUQ code's ±8 has 17 levels, a known bug), unsigned 0..15."""
    if unsigned:
        return 0, 2**bits - 1
    top = 2 ** (bits - 1) - 1
    return -top, top


def int_clip(x: torch.Tensor, scaling: str, reduce_dims: Sequence[int]) -> torch.Tensor:
    """Clip value per group. SAWB (docs/algorithms.md, INT4 SAWB step 1) falls back to max|x| when
    its estimate is <= 0 or larger than max|x|. Its statistics accumulate in float64: ``x²``
    cannot overflow or underflow for any float32 input, and they share one pass over ``x`` with
    the max (no second pass to normalise first)."""
    amax = group_amax(x, reduce_dims)
    if scaling == "max":
        return amax
    xd = x.double()
    return sawb_clip_from_moments(group_mean(xd * xd, reduce_dims), group_mean(xd.abs(), reduce_dims), amax)


def sawb_clip_from_moments(mean_sq: torch.Tensor, mean_abs: torch.Tensor, amax: torch.Tensor) -> torch.Tensor:
    """SAWB's clip from a group's float64 ``E[x²]`` and ``E|x|`` (docs/algorithms.md, INT4 SAWB step 1:
    ``c1·sqrt(E[x²]) − c2·E|x|``), falling back to ``max|x|`` where that estimate is <= 0 or above
    it. Shared by the reference (`int_clip`) and the Triton reduction's moments (`sawb_clip`)."""
    sawb = (SAWB_C1 * mean_sq.sqrt() - SAWB_C2 * mean_abs).float()
    return torch.where((sawb <= 0) | (sawb > amax), amax, sawb)


def int_quantize_reference(
    x: torch.Tensor,
    bits: int = 4,
    scaling: str = "sawb",
    signed: str = "signed",
    reduce_dims: Sequence[int] = (),
    stochastic: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` to a uniform ``bits``-bit grid and return it dequantized.

    INT4 SAWB / max scaling (docs/algorithms.md "Forward quantizers"; LUQ paper §4, forward path):
    ``s = clip / qmax``, ``q = clamp(round(x / s), qmin, qmax)``, ``x̂ = q·s``. With
    ``stochastic=True`` rounding is ``floor(x/s + u)``, ``u ~ U[0, 1)`` (unbiased inside the clip).
    ``signed="auto"`` picks the unsigned grid 0..2^b-1 per group when the group has no negative
    value (e.g. after ReLU), branch-free so it fuses.

    ``noise`` (same shape as ``x``, values in [0, 1)) replaces the random draw: a test hook that
    makes stochastic rounding exactly reproducible against other implementations.
    All-zero groups give zeros; NaN/inf propagate (never silently clipped away).
    """
    if x.numel() == 0:
        return x.clone()
    if bits == 1:  # binary forms (sign·mean|x|, or {0, 2·mean} for non-negative groups) have no codes
        return binarize_reference(x.float(), normalize_dims(reduce_dims, x.ndim), signed).to(x.dtype)
    q, clip, hi = int_quantize_codes_reference(x, bits, scaling, signed, reduce_dims, stochastic, noise)
    return int_dequantize_reference(q, clip, hi, x.dtype)


def int_quantize_codes_reference(
    x: torch.Tensor,
    bits: int = 4,
    scaling: str = "sawb",
    signed: str = "signed",
    reduce_dims: Sequence[int] = (),
    stochastic: bool = False,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
    """The integer codes of `int_quantize_reference` (as float32), its per-group clip and top
    code ``hi`` (a per-group tensor for ``signed="auto"``, else a Python float), such that
    ``int_dequantize_reference(q, clip, hi)`` is its output. Split out so the forward can keep
    the codes (packed) for backward and rebuild the very same float values there."""
    if bits < 2:
        raise ValueError(f"integer codes need 2..8 bits, got {bits} (binary forms are not coded)")
    dims = normalize_dims(reduce_dims, x.ndim)
    xf = x.float()
    clip = int_clip(xf, scaling, dims)
    if signed == "auto":
        unsigned = group_amin(xf, dims) >= 0
        hi = torch.where(unsigned, float(2**bits - 1), float(2 ** (bits - 1) - 1))
    else:
        hi = float(int_levels(bits, signed == "unsigned")[1])
    q = int_codes_for_clip(xf, clip, hi, bits, signed, stochastic, noise)
    return q, clip, hi


def int_codes_for_clip(
    xf: torch.Tensor,
    clip: torch.Tensor,
    hi: torch.Tensor | float,
    bits: int,
    signed: str,
    stochastic: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Codes of float32 ``xf`` on the grid whose top code is ``hi`` (per group for
    ``signed="auto"``, where a group is unsigned iff ``hi == 2^bits - 1``), given the clip.

    The second half of `int_quantize_codes_reference`, split out so a deterministic weight
    quantizer can be re-run in backward from ``W`` and the saved clip (`int_requantize`) with
    exactly the forward's float operations: same bits, nothing but the clip kept."""
    if isinstance(hi, torch.Tensor):
        lo = torch.where(hi == float(2**bits - 1), 0.0, -hi)
    else:
        lo = 0.0 if signed == "unsigned" else -hi
    scale = clip / hi
    # All-zero group: any non-zero scale gives exact zeros; keep NaN/inf scales as they are.
    scale = torch.where(scale == 0, torch.ones_like(scale), scale)
    y = xf / scale
    if stochastic:
        u = torch.rand_like(xf) if noise is None else noise.float()
        y = torch.floor(y + u)
    else:
        y = torch.round(y)
    return torch.clamp(y, lo, hi) if isinstance(lo, float) else torch.maximum(torch.minimum(y, hi), lo)


def top_code_tensor(hi: torch.Tensor | float, device: torch.device) -> torch.Tensor:
    """``hi`` of `int_quantize_codes_reference` as a tensor (a 0-d float32 one for a fixed grid),
    the form the packed ops save and return."""
    return hi if isinstance(hi, torch.Tensor) else torch.full((), hi, dtype=torch.float32, device=device)


def int_dequantize_reference(
    q: torch.Tensor, clip: torch.Tensor, hi: torch.Tensor | float, dtype: torch.dtype
) -> torch.Tensor:
    """``x̂ = q / hi · clip`` in ``dtype``. Every path that rebuilds ``x̂`` from codes goes
    through here, so forward and backward compute it with the same float operations."""
    # (q / qmax) · clip rather than q · (clip / qmax): the top level is then exactly the clip.
    return (q.float() / hi * clip).to(dtype)


def binarize_reference(x: torch.Tensor, reduce_dims: Sequence[int], signed: str = "signed") -> torch.Tensor:
    """Binary forward (1-bit FQT's forward, XNOR-Net scale): ``sign(x)·mean|x|`` per group,
    ``sign(0) = +1``. The paper learns the per-channel scale; a compile backend cannot add
    parameters, so the closed-form XNOR-Net scale stands in for it (docs/algorithms.md, AQ step 5).

    A group with no negative value (after ReLU) would binarize to a constant under ``sign``;
    ``signed="unsigned"`` (or ``"auto"`` on such a group) uses the levels ``{0, 2·mean(x)}``
    with the threshold ``mean(x)`` instead. NaN propagates through the scale."""
    scale = group_mean(x.abs(), reduce_dims)
    signed_out = torch.where(x >= 0, 1.0, -1.0) * scale
    if signed == "signed":
        return signed_out
    unsigned_out = torch.where(x > scale, 2 * scale, 0.0)
    unsigned_out = torch.where(torch.isnan(scale), scale, unsigned_out)
    if signed == "unsigned":
        return unsigned_out
    return torch.where(group_amin(x, reduce_dims) >= 0, unsigned_out, signed_out)
