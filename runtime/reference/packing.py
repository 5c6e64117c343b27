"""Bit packing of what backward reads: 4-bit codes two per byte, boolean masks eight per byte.

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
