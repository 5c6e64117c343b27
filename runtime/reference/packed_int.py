"""INT quantizer outputs saved as packed codes, and ``X̂`` rebuilt from them bit for bit.

``X̂ = q / hi · clip`` is fully described by its integer codes ``q`` (at most 4 bits each) and the
small per-group ``clip`` / ``hi`` tensors, so the forward can save ``pack_int4(q)`` instead of
``X̂`` and backward rebuild ``X̂`` with the same float operations. The references of the
``qcompile::int_quantize_packed`` / ``int_dequantize_packed`` / ``int_requantize`` ops.
"""

from __future__ import annotations

import torch

from qcompile.runtime.reference.int_quant import (
    int_codes_for_clip,
    int_dequantize_reference,
    int_levels,
    int_quantize_codes_reference,
    top_code_tensor,
)
from qcompile.runtime.reference.packing import pack_int4, unpack_int4
from qcompile.runtime.reference.scaling_groups import normalize_dims


def group_shape(shape: torch.Size | list, reduce_dims: list[int]) -> list:
    """Shape of a per-group statistic (keepdim), ``[]`` for per-tensor."""
    dims = normalize_dims(reduce_dims, len(shape))
    if not dims:
        return []
    return [1 if d in dims else s for d, s in enumerate(shape)]


def int_quantize_packed_reference(
    x: torch.Tensor,
    bits: int,
    scaling: str,
    signed: str,
    reduce_dims: list[int],
    stochastic: bool,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(``X̂``, packed codes, clip, hi): ``X̂`` is exactly `int_quantize_reference`'s output for
    the same ``noise``; ``hi`` is the per-group top code for ``signed="auto"`` and a 0-d tensor
    holding the format's top code otherwise."""
    q, clip, hi = int_quantize_codes_reference(x, bits, scaling, signed, reduce_dims, stochastic, noise)
    xq = int_dequantize_reference(q, clip, hi, x.dtype)
    return xq, pack_int4(q), clip, top_code_tensor(hi, x.device)


def int_dequantize_packed_reference(
    packed: torch.Tensor,
    clip: torch.Tensor,
    hi: torch.Tensor,
    last: int,
    bits: int,
    signed: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``X̂`` from `int_quantize_packed_reference`'s outputs, bit-identical to its first output:
    fixed-sign formats divide by the same Python constant ``hi`` as `int_quantize_reference`."""
    hi_v = forward_top_code(hi, bits, signed)
    q = unpack_int4(packed, last, hi_v if signed == "auto" else int(hi_v)).float()
    return int_dequantize_reference(q, clip, hi_v, dtype)


def forward_top_code(hi: torch.Tensor, bits: int, signed: str) -> torch.Tensor | float:
    """The top code as the forward used it: the per-group tensor for ``signed="auto"``, else the
    format's Python constant (Inductor turns a division by a constant into a multiplication by
    its reciprocal, so dividing by an equal tensor would not round the same)."""
    return hi if signed == "auto" else float(int_levels(bits, signed == "unsigned")[1])


def int_requantize_reference(
    x: torch.Tensor,
    clip: torch.Tensor,
    hi: torch.Tensor,
    bits: int,
    signed: str,
    dtype: torch.dtype,
) -> torch.Tensor:
    """``X̂`` of a round-to-nearest `int_quantize_packed` rebuilt from its *input* ``x`` and its
    saved ``clip``/``hi``: `int_codes_for_clip` then `int_dequantize_reference`, the forward's
    own float operations after the clip, so the result is bit-identical to the forward's ``X̂``.
    Used for weights: backward holds ``W`` anyway, so only the clip needs saving."""
    top = forward_top_code(hi, bits, signed)
    q = int_codes_for_clip(x.float(), clip, top, bits, signed)
    return int_dequantize_reference(q, clip, top, dtype)
