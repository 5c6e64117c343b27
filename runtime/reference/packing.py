"""Bit packing of what backward reads: 4-bit codes two per byte, boolean masks eight per byte
(in blocks of up to 128 elements, `pack_bits`).

Packing runs along the last dimension (padded to whole bytes), so every other dimension, static
or symbolic, is kept as it is and the ops' fake kernels need no size arguments beyond the last one.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


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
    # Element j reads byte j // 2 (an expanded view: no copy) and takes its high nibble where j is
    # odd: one elementwise expression that Inductor fuses into the consumer. It is written in
    # int32 with constant shifts and a select on j's parity because Inductor's CPU code
    # vectorises exactly that; uint8 vector shifts and shift amounts computed from the index
    # made it a scalar loop (measured 1.07 ms against 0.42 ms for 256×1024 codes, 2 threads).
    n2 = 2 * packed.shape[-1]
    byte = packed.to(torch.int32).unsqueeze(-1).expand(*packed.shape, 2).reshape(*packed.shape[:-1], n2)
    odd = torch.arange(n2, device=packed.device) % 2 == 1
    nib = torch.where(odd, byte >> 4, byte & 0xF)[..., :last]
    return torch.where(nib > top, nib - 16, nib).to(torch.int8)


def bit_block(n: int) -> int:
    """Bytes per block of `pack_bits` for rows of ``n`` elements: 16 (128 elements), or one block
    of ``ceil(n/8)`` bytes for a row shorter than that."""
    return torch.sym_min(16, (n + 7) // 8)


def pack_bits(mask: torch.Tensor) -> torch.Tensor:
    """bool ``[..., n]`` → uint8 ``[..., ceil(n/8L)·L]`` with ``L = bit_block(n)``, in blocks of
    ``8L`` elements: element ``k·L + i`` of a block is bit ``k`` of the block's byte ``i``.

    Why blocks rather than element ``8i+k`` in bit ``k`` of byte ``i``: a vector of 16 consecutive
    elements then reads 16 consecutive bytes and shifts them all by the same ``k``, which Inductor
    vectorises; the interleaved layout made it gather 16 single bytes and shift each by a
    different amount (ReLU-backward loop of the 4×1024 MLP: 1.38 ms → 0.09 ms per call)."""
    n = mask.shape[-1]
    block = bit_block(n)
    blocks = (n + 8 * block - 1) // (8 * block)
    bits = mask.to(torch.int32)
    if blocks * 8 * block != n:
        bits = F.pad(bits, (0, blocks * 8 * block - n))
    groups = bits.reshape(*bits.shape[:-1], blocks, 8, block)
    out = groups[..., 0, :]
    for k in range(1, 8):
        out = out | (groups[..., k, :] << k)
    return out.reshape(*bits.shape[:-1], blocks * block).to(torch.uint8)


def unpack_bits(packed: torch.Tensor, last: int) -> torch.Tensor:
    """Inverse of `pack_bits`: bool ``[..., last]``."""
    block = bit_block(last)
    blocks = packed.shape[-1] // block
    byte = packed.to(torch.int32).reshape(*packed.shape[:-1], blocks, 1, block)
    shifts = torch.arange(8, dtype=torch.int32, device=packed.device).reshape(8, 1)
    bits = ((byte >> shifts) & 1).reshape(*packed.shape[:-1], blocks * 8 * block)
    return bits[..., :last] != 0


def packed_bits_last(n: int) -> int:
    """Last dimension of `pack_bits` for rows of ``n`` elements."""
    block = bit_block(n)
    return (n + 8 * block - 1) // (8 * block) * block


def packed_last(n: int, per_byte: int) -> int:
    return (n + per_byte - 1) // per_byte
