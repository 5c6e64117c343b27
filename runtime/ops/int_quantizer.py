"""The ``qcompile::int_quantize`` custom op: uniform INT quantization (SAWB or max scaling),
the forward quantizer of LUQ and LBT.

Its math is `reference.int_quant.int_quantize_reference`. The op's autograd is the
straight-through estimator (the incoming gradient passes unchanged), as in the LUQ paper's
forward; its Inductor decomposition is the reference itself, so on CPU it fuses into the
generated loops.
"""

from __future__ import annotations

import torch

from qcompile.runtime.reference.int_quant import (
    int_quantize_reference,
)


@torch.library.custom_op("qcompile::int_quantize", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def int_quantize(
    x: torch.Tensor,
    bits: int,
    scaling: str,
    signed: str,
    reduce_dims: list[int],
    stochastic: bool,
    tag: str,
) -> torch.Tensor:
    """Graph op for `int_quantize_reference`. ``tag`` names the layer and role
    (``"layer1.0.conv1|activation"``) so the plan can read the compiled graph back.

    Tagged nondeterministic (it may round stochastically) so the partitioner saves its output
    for backward instead of recomputing it: backward must see the very values forward used."""
    return int_quantize_reference(x, bits, scaling, signed, reduce_dims, stochastic)


@int_quantize.register_fake
def _int_quantize_fake(x, bits, scaling, signed, reduce_dims, stochastic, tag):
    return torch.empty_like(x)


def _int_quantize_backward(ctx, grad):
    # Straight-through estimator: d x̂ / d x = 1 (LUQ and LBT forward).
    return grad, None, None, None, None, None, None


int_quantize.register_autograd(_int_quantize_backward)
