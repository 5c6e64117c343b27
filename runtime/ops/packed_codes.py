"""Packed storage for what backward reads: 4-bit codes two per byte, boolean masks eight per byte.

In fully quantized training the backward GEMMs consume the *quantized* forward operands
(``dX = Q(dY)·Ŵ``, ``dW = Q(dY)ᵀ·X̂``). ``X̂ = q / hi · clip`` is fully described by its integer
codes ``q`` (at most 4 bits each) and the small per-group ``clip`` / ``hi`` tensors, so the
forward can save ``pack_int4(q)`` (half a byte per element) instead of ``X̂`` (four bytes) and the
backward rebuild ``X̂`` with the same float operations, bit for bit.

Ops (used by `qcompile.passes.pack_saved_tensors` on AOTAutograd's joint graph; no autograd,
they only ever appear after differentiation):

* ``qcompile::int_quantize_packed``: `int_quantize`'s output plus the packed codes and scales;
* ``qcompile::int_dequantize_packed``: ``X̂`` rebuilt from them (the backward side);
* ``qcompile::int_requantize``: ``Ŵ`` rebuilt in backward from ``W`` itself and the saved clip,
  for deterministic quantizers of tensors backward holds anyway (parameters): no codes saved;
* ``qcompile::pack_bits`` / ``qcompile::unpack_bits``: boolean tensors (ReLU masks) as bits.

Packing runs along the last dimension (padded to whole bytes), so every other dimension, static
or symbolic, is kept as it is and the fake kernels need no size arguments beyond the last one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from qcompile.runtime.ops.int_quantizer import (
    int_codes_for_clip,
    int_dequantize_reference,
    int_levels,
    int_quantize_codes_reference,
    top_code_tensor,
)
from qcompile.runtime.reference.scaling_groups import normalize_dims

PACKABLE_BITS = 4


def pack_int4(codes: torch.Tensor) -> torch.Tensor:
    """Integer codes in [-8, 15] (any integer or integral float dtype) → uint8 ``[..., ceil(n/2)]``;
    element ``2i`` in the low nibble of byte ``i``, element ``2i+1`` in the high nibble. Only the
    low four bits are kept (two's complement for negative codes)."""
    n = codes.shape[-1]
    nib = (codes.to(torch.int8) & 0xF).to(torch.uint8)
    if n % 2:
        nib = F.pad(nib, (0, 1))
    pairs = nib.reshape(*nib.shape[:-1], (n + 1) // 2, 2)
    return pairs[..., 0] | (pairs[..., 1] << 4)


def unpack_int4(packed: torch.Tensor, last: int, top: int | torch.Tensor = 7) -> torch.Tensor:
    """Inverse of `pack_int4` (int8 codes ``[..., last]``). A nibble above ``top`` (the highest
    code of the format: 7 signed, 15 unsigned, or a per-group tensor for auto-signed codes) is
    negative: ``code = nibble - 16``. Exact for any code in ``[top - 15, top]``, so also for -8."""
    # Element j reads byte j // 2 (an expanded view: no copy) and shifts by 4·(j mod 2): one
    # elementwise expression that Inductor fuses into the consumer, rather than a stack of two
    # nibble tensors (a separate concatenation kernel and two intermediate buffers).
    pairs = packed.unsqueeze(-1).expand(*packed.shape, 2).reshape(*packed.shape[:-1], 2 * packed.shape[-1])
    shift = (torch.arange(2, dtype=torch.uint8, device=packed.device) * 4).repeat(packed.shape[-1])
    nib = ((pairs >> shift) & 0xF)[..., :last].to(torch.int8)
    return torch.where(nib > top, nib - 16, nib)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool ``[..., n]`` → uint8 ``[..., ceil(n/8)]``, element ``8i+k`` in bit ``k`` of byte ``i``."""
    n = mask.shape[-1]
    bits = mask.to(torch.uint8)
    pad = (-n) % 8
    if pad:
        bits = F.pad(bits, (0, pad))
    groups = bits.reshape(*bits.shape[:-1], (n + pad) // 8, 8)
    out = groups[..., 0]
    for k in range(1, 8):
        out = out | (groups[..., k] << k)
    return out


def unpack_bits(packed: torch.Tensor, last: int) -> torch.Tensor:
    """Inverse of `pack_bits`: bool ``[..., last]``."""
    shifts = torch.arange(8, dtype=torch.uint8, device=packed.device)
    bits = (packed.unsqueeze(-1) >> shifts) & 1
    return bits.reshape(*packed.shape[:-1], 8 * packed.shape[-1])[..., :last].to(torch.bool)


def packed_last(n: int, per_byte: int) -> int:
    return (n + per_byte - 1) // per_byte


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


@torch.library.custom_op(
    "qcompile::int_quantize_packed", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def int_quantize_packed(
    x: torch.Tensor,
    bits: int,
    scaling: str,
    signed: str,
    reduce_dims: list[int],
    stochastic: bool,
    tag: str,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """`int_quantize` that also returns what backward needs to rebuild its output: packed codes,
    clip and hi (same arguments and tag as the `int_quantize` node it replaces)."""
    return int_quantize_packed_reference(x, bits, scaling, signed, reduce_dims, stochastic)


def empty_saved_codes(
    x: torch.Tensor, signed: str, reduce_dims: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Empty (packed, clip, hi) shaped as `int_quantize_packed` saves them for ``x`` (fake
    kernels of every op that produces them)."""
    shape = list(x.shape)
    groups = group_shape(shape, reduce_dims)
    packed = x.new_empty([*shape[:-1], packed_last(shape[-1], 2)], dtype=torch.uint8)
    clip = x.new_empty(groups, dtype=torch.float32)
    hi = x.new_empty(groups if signed == "auto" else [], dtype=torch.float32)
    return packed, clip, hi


@int_quantize_packed.register_fake
def _int_quantize_packed_fake(x, bits, scaling, signed, reduce_dims, stochastic, tag):
    return torch.empty_like(x), *empty_saved_codes(x, signed, reduce_dims)


@torch.library.custom_op("qcompile::int_dequantize_packed", mutates_args=())
def int_dequantize_packed(
    packed: torch.Tensor,
    clip: torch.Tensor,
    hi: torch.Tensor,
    last: int,
    bits: int,
    signed: str,
    dtype: torch.dtype,
    tag: str,
) -> torch.Tensor:
    """Backward side of `int_quantize_packed`: ``X̂`` again, bit for bit. ``tag`` is the
    forward quantizer's (layer and role), so the plan can name what backward read."""
    return int_dequantize_packed_reference(packed, clip, hi, last, bits, signed, dtype)


@int_dequantize_packed.register_fake
def _int_dequantize_packed_fake(packed, clip, hi, last, bits, signed, dtype, tag):
    return packed.new_empty([*packed.shape[:-1], last], dtype=dtype)


@torch.library.custom_op("qcompile::int_requantize", mutates_args=())
def int_requantize(
    x: torch.Tensor,
    clip: torch.Tensor,
    hi: torch.Tensor,
    bits: int,
    signed: str,
    dtype: torch.dtype,
    tag: str,
) -> torch.Tensor:
    """Backward side of a round-to-nearest `int_quantize_packed` whose input backward holds
    anyway (a weight): ``X̂`` again, bit for bit, from ``x`` and the saved clip and top code."""
    return int_requantize_reference(x, clip, hi, bits, signed, dtype)


@int_requantize.register_fake
def _int_requantize_fake(x, clip, hi, bits, signed, dtype, tag):
    return torch.empty_like(x, dtype=dtype)


@torch.library.custom_op("qcompile::pack_bits", mutates_args=())
def pack_bits_op(mask: torch.Tensor) -> torch.Tensor:
    """`pack_bits` as a graph op (a boolean tensor the forward saves for backward)."""
    return pack_bits(mask)


@pack_bits_op.register_fake
def _pack_bits_fake(mask):
    return mask.new_empty([*mask.shape[:-1], packed_last(mask.shape[-1], 8)], dtype=torch.uint8)


@torch.library.custom_op("qcompile::unpack_bits", mutates_args=())
def unpack_bits_op(packed: torch.Tensor, last: int) -> torch.Tensor:
    """`unpack_bits` as a graph op (the backward side)."""
    return unpack_bits(packed, last)


@unpack_bits_op.register_fake
def _unpack_bits_fake(packed, last):
    return packed.new_empty([*packed.shape[:-1], last], dtype=torch.bool)
