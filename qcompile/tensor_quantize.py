"""`qcompile.quantize`: any quantizer, callable on its own tensor."""

from __future__ import annotations

import torch

from qcompile.runtime import (
    aq_quantize_reference,
    block_quantize_reference,
    int_quantize_reference,
    lbt_quantize_reference,
    luq_quantize_reference,
)
from qcompile.runtime.reference.scaling_groups import gradient_reduce_dims
from qcompile.runtime.spec import QuantSpec, parse_spec


def quantize(
    x: torch.Tensor,
    spec: str | QuantSpec,
    *,
    channel_dim: int = -1,
    gamma: float = 1.0,
    axis: int = -1,
    **overrides: object,
) -> torch.Tensor:
    """Fake-quantize ``x`` (returned dequantized, same dtype) with a spec such as ``"int4"``,
    ``"uint4"``, ``"luq4"``, ``"int8-max-sr"`` or a `QuantSpec`; ``overrides`` change spec fields
    (``granularity="per-channel"``). ``channel_dim`` is the channel axis for per-sample /
    per-channel scales (per-sample keeps every dim before it). SMP specs average ``samples``
    draws. Stochastic quantizers use torch's global RNG (seed with `torch.manual_seed`).
    ``gamma`` is LBT's clip ratio (stateless here: the adaptation runs inside compiled training).
    Block-scaled FP specs (``"fp4-nv16"``, ``"fp8-e4m3-mx32"``) put their blocks (or row scales)
    along ``axis``, the contraction axis of the GEMM the tensor would feed.
    """
    s = parse_spec(spec)
    if overrides:
        s = s.with_(**overrides)
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"quantize expects a torch.Tensor, got {type(x).__name__}")
    if not s.is_quantized:
        return x.clone()
    if s.format == "fp":
        return block_quantize_reference(x, s.element, s.scaling, s.block, axis, s.rounding == "stochastic")
    dims = gradient_reduce_dims(s.granularity, x.ndim, channel_dim)
    draws = []
    for _ in range(s.samples):
        if s.format == "luq":
            draws.append(luq_quantize_reference(x, s.bits, dims))
        elif s.format == "lbt":
            draws.append(lbt_quantize_reference(x, gamma, s.bits, dims))
        elif s.format == "aq":
            draws.append(aq_quantize_reference(x, s.bits, dims, s.pruning)[0])
        else:
            draws.append(
                int_quantize_reference(x, s.bits, s.scaling, s.signed, dims, s.rounding == "stochastic")
            )
    return draws[0] if len(draws) == 1 else torch.stack(draws).mean(0)
