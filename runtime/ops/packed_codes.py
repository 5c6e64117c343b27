"""Packed storage for what backward reads: 4-bit codes two per byte, boolean masks eight per byte.

In fully quantized training the backward GEMMs consume the *quantized* forward operands
(``dX = Q(dY)·Ŵ``, ``dW = Q(dY)ᵀ·X̂``). ``X̂ = q / hi · clip`` is fully described by its integer
codes ``q`` (at most 4 bits each) and the small per-group ``clip`` / ``hi`` tensors, so the
forward can save ``pack_int4(q)`` (half a byte per element) instead of ``X̂`` (four bytes) and the
backward rebuild ``X̂`` with the same float operations, bit for bit.

Ops (used by `qcompile.passes.joint.pack_saved` on AOTAutograd's joint graph; no autograd,
they only ever appear after differentiation):

* ``qcompile::int_quantize_packed``: `int_quantize`'s output plus the packed codes and scales;
* ``qcompile::int_dequantize_packed``: ``X̂`` rebuilt from them (the backward side);
* ``qcompile::int_requantize``: ``Ŵ`` rebuilt in backward from ``W`` itself and the saved clip,
  for deterministic quantizers of tensors backward holds anyway (parameters): no codes saved;
* ``qcompile::pack_bits`` / ``qcompile::unpack_bits``: boolean tensors (ReLU masks) as bits.

Their math is `reference.packing` (bit packing) and `reference.packed_int` (codes, ``X̂``).
"""

from __future__ import annotations

import torch

from qcompile.runtime.reference.packed_int import (
    group_shape,
    int_dequantize_packed_reference,
    int_quantize_packed_reference,
    int_requantize_reference,
)
from qcompile.runtime.reference.packing import pack_bits, packed_size, unpack_bits


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
    packed = x.new_empty([*shape[:-1], packed_size(shape[-1], 2)], dtype=torch.uint8)
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
    return mask.new_empty([*mask.shape[:-1], packed_size(mask.shape[-1], 8)], dtype=torch.uint8)


@torch.library.custom_op("qcompile::unpack_bits", mutates_args=())
def unpack_bits_op(packed: torch.Tensor, last: int) -> torch.Tensor:
    """`unpack_bits` as a graph op (the backward side)."""
    return unpack_bits(packed, last)


@unpack_bits_op.register_fake
def _unpack_bits_fake(packed, last):
    return packed.new_empty([*packed.shape[:-1], last], dtype=torch.bool)
