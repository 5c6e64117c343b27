"""AQ: average-1-bit gradients by pruning groups, then 4-bit per-group stochastic rounding
(Gao et al., "1-bit FQT", ICLR 2025 submission; the SCQ grouping of its Sec. 4), as pure PyTorch.

The random draws are arguments (``group_noise``, ``noise``) so the ``qcompile::aq_quantize`` op
can pass its hashed draws and tests their own.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qcompile.runtime.reference.scaling_groups import group_amax, group_amin, normalize_dims


def aq_budget(groups: int, bits: int) -> float:
    """Expected number of kept groups, ``n/b`` (so ``b`` bits per kept element average to 1),
    and at least one group."""
    return max(1.0, groups / bits)


AQ_SCALE_BITS = 32  # each kept group's step ``s`` (the 1/p rescale folds into it), float32 as computed
AQ_ZERO_BITS = 32  # each kept group's minimum (the zero point), float32 as computed
AQ_KEEP_BITS = 1  # one keep/drop bit per group, kept or not


def aq_storage_bits(kept_groups: int, groups: int, group_size: int, bits: int) -> int:
    """Bits one AQ-quantized tensor costs to store or send: ``bits`` per kept element, a scale
    and a zero point per kept group, a keep bit per group. Counting the data bits alone (the
    paper's "1 bit per element") hides the metadata, which matters when groups are short: 64
    bits of scale and zero point per kept 64-element row add a quarter of a bit per element."""
    return kept_groups * (group_size * bits + AQ_SCALE_BITS + AQ_ZERO_BITS) + groups * AQ_KEEP_BITS


def keep_probabilities(importance: torch.Tensor, budget: float) -> torch.Tensor:
    """``p_i = min(1, s·R_i)`` with ``s`` chosen so that ``Σ p_i = budget`` (1-bit FQT, AQ:
    ``p_i ∝ R_i``, mass above 1 redistributed to the others: water-filling).

    ``importance`` is 1-D and ≥ 0. Zero-importance groups get 0; when at most ``budget`` groups
    are non-zero they are all kept (p = 1).
    """
    r = importance.double().flatten()
    positive = r > 0
    if int(positive.sum()) <= budget:
        return positive.float()
    ordered = torch.sort(r, descending=True).values
    suffix = ordered.flip(0).cumsum(0).flip(0)  # suffix[k] = Σ_{i ≥ k} ordered[i]
    k = torch.arange(r.numel(), dtype=torch.float64)
    s = (budget - k) / suffix.clamp_min(torch.finfo(torch.float64).tiny)
    # k groups saturated at p = 1: valid when the largest unsaturated one stays at or below 1.
    valid = (s * ordered <= 1 + 1e-12) & (suffix > 0) & (k < budget)
    first = int(valid.to(torch.int8).argmax())
    return torch.clamp(s[first] * r, max=1.0).float()


def aq_quantize_reference(
    g: torch.Tensor,
    bits: int = 4,
    reduce_dims: Sequence[int] = (),
    pruning: str = "range",
    group_noise: torch.Tensor | None = None,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, int]:
    """AQ + per-group asymmetric SR; returns (ĝ, number of elements kept).

    Groups are the indices kept by ``reduce_dims`` (samples for dgrad, output channels for
    wgrad, SCQ). With ``n`` groups and ``R_i = max − min`` of group i:

    * ``pruning="range"`` (the paper, unbiased): keep group i with probability
      ``p_i = min(1, s·R_i)``, ``Σ p_i = max(1, n/b)``; kept groups are scaled by ``1/p_i``.
      A constant non-zero group has range 0; it uses ``max|g|`` as importance instead, so it is
      not silently dropped (which would bias it to zero).
    * ``pruning="topk"`` (the released code, biased): keep the ``max(1, round(n/b))`` groups of
      largest ``max|g|``, no rescale.

    Kept groups: ``s = R/(2^b − 1)``, ``q = clamp(⌊(g − min)/s + u⌋, 0, 2^b − 1)``,
    ``ĝ = q·s + min`` (unbiased). ``group_noise`` (shape of one value per group) and ``noise``
    (shape of ``g``), in [0, 1), replace the random draws (test hooks). Non-finite input is
    returned unchanged, so inf/NaN stay visible to loss-scaling logic.
    """
    if g.numel() == 0:
        return g.clone(), 0
    gf = g.float()
    if not bool(torch.isfinite(gf).all()):
        return g.clone(), g.numel()
    dims = normalize_dims(reduce_dims, g.ndim)
    hi = -group_amin(-gf, dims)
    lo = group_amin(gf, dims)
    amax = group_amax(gf, dims)
    spread = hi - lo
    n = spread.numel()
    if pruning == "range":
        importance = torch.where(spread > 0, spread, amax)
        p = keep_probabilities(importance.flatten(), aq_budget(n, bits)).view(spread.shape)
        u = torch.rand_like(p) if group_noise is None else group_noise.float().view(p.shape)
        keep = u < p
        weight = torch.where(keep, 1.0 / p.clamp_min(1e-30), 0.0)
    elif pruning == "topk":
        k = max(1, round(n / bits))
        keep = torch.zeros(n, dtype=torch.bool)
        keep[torch.topk(amax.flatten(), k).indices] = True
        keep = keep.view(spread.shape)
        weight = keep.float()
    else:
        raise ValueError(f"unknown AQ pruning {pruning!r}; valid: range, topk")
    levels = float(2**bits - 1)
    scale = spread / levels
    safe = torch.where(scale == 0, torch.ones_like(scale), scale)
    u = torch.rand_like(gf) if noise is None else noise.float()
    q = torch.clamp(torch.floor((gf - lo) / safe + u), 0.0, levels)
    deq = torch.where(scale == 0, lo.expand_as(gf), q * scale + lo)
    kept = int(keep.sum()) * (g.numel() // n)
    return (deq * weight).to(g.dtype), kept
