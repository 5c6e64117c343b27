"""Quantize a neural gradient dY for one backward GEMM, as a policy spec says.

Called while AOTAutograd traces the backward formulas of `qmatmul` and `qconv`, so each call
leaves explicit quantizer nodes in the backward graph in front of the GEMM that consumes them.
"""

from __future__ import annotations

import torch

from qcompile.runtime.ops.aq_quantizer import aq_quantize
from qcompile.runtime.ops.block_formats import fp_args, fp_quantize
from qcompile.runtime.ops.int_quantizer import int_quantize
from qcompile.runtime.ops.layer_marker import mark_layer
from qcompile.runtime.ops.lbt_quantizer import lbt_quantize
from qcompile.runtime.ops.luq_quantizer import luq_quantize
from qcompile.runtime.quant_tag import QuantTag
from qcompile.runtime.reference.scaling_groups import gradient_reduce_dims
from qcompile.runtime.spec import QuantSpec, parse_spec


def quantize_gradient(
    dy: torch.Tensor, spec: QuantSpec | str, channel_dim: int, tag: str, axis: int | None = None
) -> torch.Tensor:
    """Return the quantized dY for one backward GEMM (averaged over ``spec.samples`` draws, SMP).

    ``axis`` is the GEMM's contraction axis of ``dy``, along which a block-scaled FP format
    puts its blocks (N for dgrad, the tokens M for wgrad); the other formats place their scales
    by granularity and ``channel_dim``. A high-precision spec still leaves a `mark_layer` node
    so the plan can name the GEMM.
    """
    spec = parse_spec(spec)
    if not spec.is_quantized:
        return mark_layer(dy, tag)
    if spec.format == "fp":
        if axis is None:
            raise ValueError("a block-scaled FP gradient needs its GEMM's contraction axis")
        return fp_quantize(dy, *fp_args(spec), axis, spec.rounding == "stochastic", tag)
    dims = gradient_reduce_dims(spec.granularity, dy.ndim, channel_dim)
    if spec.format == "lbt":
        return lbt_quantize(dy, spec.bits, dims, tag)
    if spec.format == "aq":
        return aq_quantize(dy, spec.bits, dims, spec.pruning, tag)
    draws = []
    for sample in range(spec.samples):
        if spec.format == "luq":
            draws.append(luq_quantize(dy, spec.bits, dims, sample, tag))
        else:
            draws.append(
                int_quantize(
                    dy,
                    spec.bits,
                    spec.scaling,
                    spec.signed,
                    dims,
                    spec.rounding == "stochastic",
                    QuantTag.parse(tag).with_draw(sample).encode(),
                )
            )
    if len(draws) == 1:
        return draws[0]
    return torch.stack(draws).mean(0)
