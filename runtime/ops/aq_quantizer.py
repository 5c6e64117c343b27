"""The ``qcompile::aq_quantize`` op: AQ, average-1-bit gradients by pruning groups, then 4-bit
per-group stochastic rounding (Gao et al., "1-bit FQT"). Its math is `reference.aq.aq_quantize_reference`.

The op runs eagerly inside the compiled backward (no decomposition) so it can count the bits it
really spends for the plan.
"""

from __future__ import annotations

import math

import torch

from qcompile.runtime.quantizer_state import record_bits
from qcompile.runtime.reference.aq import aq_quantize_reference, aq_storage_bits
from qcompile.runtime.reference.random_bits import draw_seed, hash_uniform
from qcompile.runtime.reference.scaling_groups import normalize_dims


@torch.library.custom_op("qcompile::aq_quantize", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def aq_quantize(g: torch.Tensor, bits: int, reduce_dims: list[int], pruning: str, tag: str) -> torch.Tensor:
    """Graph op for `aq_quantize_reference`; records the bits spent under ``tag`` for the plan
    (`aq_storage_bits`: codes of the kept groups, their scales and zero points, the keep mask)."""
    dims = normalize_dims(reduce_dims, g.ndim)
    groups = math.prod(g.shape[d] for d in range(g.ndim) if d not in dims) if dims else 1
    seed = draw_seed(g.device)
    group_noise = hash_uniform(torch.empty(groups, device=g.device), seed + 1) if g.numel() else None
    noise = hash_uniform(g, seed) if g.numel() else None
    out, kept = aq_quantize_reference(g, bits, reduce_dims, pruning, group_noise, noise)
    size = g.numel() // groups if groups else 0
    if size:  # data, per-group scale and zero point, keep mask: what storage would really cost
        record_bits(tag, float(aq_storage_bits(kept // size, groups, size, bits)), g.numel())
    return out.contiguous()  # the fake kernel's layout, whatever g's strides


@aq_quantize.register_fake
def _aq_quantize_fake(g, bits, reduce_dims, pruning, tag):
    return g.new_empty(g.shape)  # contiguous, as the op returns
