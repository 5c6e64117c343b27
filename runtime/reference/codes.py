"""A quantizer's value as int8 codes and per-group scales: what the int8 GEMMs read.

``codes / top · clip`` is the quantizer's value bit for bit. One function per question, shared by
the eager fallbacks of the ``qcompile::*_codes`` ops and their Inductor decompositions (the
`cpu-int8` path), which differ only in where the random draw comes from: the ops leave ``noise``
out (``torch.rand``), the decompositions pass the counter-hash draw Inductor fuses.
"""

from __future__ import annotations

import torch

from qcompile.runtime.reference.int_quant import (
    int_codes_for_clip,
    int_quantize_codes_reference,
    top_code_tensor,
)
from qcompile.runtime.reference.luq import luq_codes_reference
from qcompile.runtime.reference.packed_int import forward_top_code
from qcompile.runtime.reference.packing import pack_int4, unpack_int4
from qcompile.runtime.reference.scaling_groups import normalize_dims

# The quantizer kinds the codes ops take (their ``kind`` argument).
INT, LUQ = "int", "luq"


def codes_group_shape(x: torch.Tensor, reduce_dims: list[int]) -> list[int]:
    """Keepdim shape of the codes' ``clip`` and ``top`` (all ones for per-tensor, never 0-d)."""
    dims = normalize_dims(reduce_dims, x.ndim)
    return [1 if (not dims or d in dims) else x.shape[d] for d in range(x.ndim)]


def codes_as_int8(q: torch.Tensor) -> torch.Tensor:
    """Integer-valued float codes as int8; NaN (a non-finite group, whose scale is NaN or inf and
    so still poisons every output it reaches) becomes 0. ``q == q`` rather than ``nan_to_num``:
    Inductor vectorises the compare, not ``isnan``."""
    return torch.where(q == q, q, 0.0).to(torch.int8)


def quantizer_codes(
    x: torch.Tensor,
    kind: str,
    bits: int,
    scaling: str,
    signed: str,
    reduce_dims: list[int],
    stochastic: bool,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 codes, clip, top) of the quantizer ``kind`` (`INT`: `int_quantize_reference`'s
    arguments; `LUQ`: `luq_quantize_reference`, always stochastic), ``clip``/``top`` in
    `codes_group_shape`. ``noise`` (values in [0, 1), shape of ``x``) is the draw of a stochastic
    quantizer; without it ``torch.rand`` draws, as the references do."""
    shape = codes_group_shape(x, reduce_dims)
    if kind == LUQ:
        codes, alpha = luq_codes_reference(x, bits, reduce_dims, noise=noise)
        return codes_as_int8(codes), alpha.reshape(shape), torch.ones(shape, device=x.device)
    codes, clip, top = int_codes(x, bits, scaling, signed, reduce_dims, stochastic, noise)
    return codes, clip.reshape(shape), top.reshape(shape)


def int_codes(
    x: torch.Tensor,
    bits: int,
    scaling: str,
    signed: str,
    reduce_dims: list[int],
    stochastic: bool = False,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 codes, clip, top) of `int_quantize_reference`, ``clip`` in the shape its statistic
    has (0-d per tensor) and ``top`` an expanded view of that shape: what an exporter stores
    next to a folded weight's codes. ``noise`` as in `quantizer_codes`."""
    q, clip, hi = int_quantize_codes_reference(x, bits, scaling, signed, reduce_dims, stochastic, noise=noise)
    return codes_as_int8(q), clip, top_code_tensor(hi, x.device).expand(clip.shape)


def packed_quantizer_codes(
    x: torch.Tensor,
    bits: int,
    scaling: str,
    signed: str,
    reduce_dims: list[int],
    stochastic: bool,
    pack: bool,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(int8 codes, packed codes, clip, hi): `int_quantize_packed_reference`'s saved outputs plus
    the codes, from one quantization. ``pack=False`` (a weight, which backward requantizes)
    gives an empty ``packed`` (last dim 0). ``noise`` as in `quantizer_codes`."""
    q, clip, hi = int_quantize_codes_reference(x, bits, scaling, signed, reduce_dims, stochastic, noise=noise)
    packed = pack_int4(q) if pack else x.new_empty([*x.shape[:-1], 0], dtype=torch.uint8)
    return codes_as_int8(q), packed, clip.float(), top_code_tensor(hi, x.device).float()


def unpack_int4_codes_reference(packed: torch.Tensor, hi: torch.Tensor, last: int) -> torch.Tensor:
    """The int8 codes a packed ``X̂`` was saved as (``hi``: the saved top code)."""
    return unpack_int4(packed, last, hi)


def int_requantize_codes_reference(
    x: torch.Tensor, clip: torch.Tensor, hi: torch.Tensor, bits: int, signed: str
) -> torch.Tensor:
    """The int8 codes `int_requantize_reference` rebuilds ``Ŵ`` from (``W``, its saved clip)."""
    top = forward_top_code(hi, bits, signed)
    return int_codes_for_clip(x.float(), clip, top, bits, signed).to(torch.int8)


def dequantize_codes_reference(
    codes: torch.Tensor, clip: torch.Tensor, top: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``codes / top · clip``: bit for bit the value of the quantizer that produced the codes."""
    return (codes.float() / top * clip).to(dtype)
