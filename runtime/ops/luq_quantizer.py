"""The ``qcompile::luq_quantize`` custom op: LUQ, logarithmic unbiased quantization of neural
gradients (Chmiel et al., ICLR 2023). Its math is `reference.luq.luq_quantize_reference`; no
autograd: it only runs inside backward formulas.
"""

from __future__ import annotations

import torch

from qcompile.runtime.reference.luq import luq_quantize_reference


@torch.library.custom_op("qcompile::luq_quantize", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def luq_quantize(g: torch.Tensor, bits: int, reduce_dims: list[int], sample: int, tag: str) -> torch.Tensor:
    """Graph op for `luq_quantize_reference`. ``sample`` numbers SMP draws so that graph CSE
    never merges two independent draws; ``tag`` names the layer and role for the plan."""
    return luq_quantize_reference(g, bits, reduce_dims)


@luq_quantize.register_fake
def _luq_quantize_fake(g, bits, reduce_dims, sample, tag):
    return torch.empty_like(g)
