"""Counter-based uniform random numbers that Inductor vectorizes on CPU.

Inductor's CPU lowering of ``aten.rand`` costs about 29 `clone`s per element (measured, 4M
elements, 2 cores), which made every stochastic quantizer ~40x slower than a copy. This
generator hashes each element's flat index plus a per-call seed through a 32-bit integer hash
(the "lowbias32" xorshift-multiply construction, with multipliers below 2^31 so int64 products
never overflow) and keeps the top 24 bits: uniform on the 2^24-point grid of [0, 1), about 6
clones per element (int32 form: ~1.9 clones, measured). It is the same idea as Philox (a keyed hash of a counter), cheaper and
with 24 bits, ample for stochastic rounding (bias at most 2^-24 of a quantization step).

The seed is drawn from torch's generator once per quantizer call, so results are reproducible
under `torch.manual_seed` and fresh on every step.
"""

from __future__ import annotations

import torch

_MASK32 = 0xFFFFFFFF
_M1 = 0x7FEB352D
_M2 = 0x346CA68B
_SEED_MIX = 0x9E3779B1 & 0x7FFFFFFF


RANK_MIX = 0x632BE5AB  # odd multiplier that mixes the data-parallel rank into every key


def process_rank() -> int:
    """This process's rank in the default process group (0 outside distributed runs)."""
    dist = torch.distributed
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def draw_seed(device: torch.device | str = "cpu") -> torch.Tensor:
    """A fresh seed from torch's global generator (a 0-d int64 tensor below 2^33).

    Written as a sum of two draws on purpose: Inductor realises a reduction as its own buffer,
    whereas a bare 0-d ``randint`` is inlined into the consumer's loop and re-drawn (scalar
    Philox) for every element, which costs more than the quantizer itself.

    The process rank is mixed in (baked into each rank's compiled graph), so data-parallel ranks
    seeded alike still draw independent gradient noise, reproducibly per seed.
    """
    seed = torch.randint(0, 2**31 - 1, (2,), device=device, dtype=torch.int64).sum()
    rank = process_rank()
    return seed + rank * RANK_MIX if rank else seed


def hash_uniform(like: torch.Tensor, seed: torch.Tensor | int) -> torch.Tensor:
    """float32 uniforms in [0, 1), shaped like ``like``, a pure function of (flat index, seed).

    32-bit arithmetic (vectorised multiplies wrap natively; logical shifts by masking) is ~3x
    faster on CPU than the same hash in int64; eager and Inductor give identical bits. Tensors
    of 2^31 elements or more take the int64 form of the same hash.
    """
    if like.numel() >= 2**31:
        return _hash_uniform_int64(like, seed)
    idx = torch.arange(like.numel(), device=like.device, dtype=torch.int32).view(like.shape)
    seed32 = (seed & _MASK32) - 2**31 if isinstance(seed, int) else ((seed & _MASK32) - 2**31).to(torch.int32)
    h = idx + seed32 * _SEED_MIX
    h = h ^ ((h >> 16) & 0xFFFF)
    h = h * _M1
    h = h ^ ((h >> 15) & 0x1FFFF)
    h = h * _M2
    h = h ^ ((h >> 16) & 0xFFFF)
    return ((h >> 8) & 0xFFFFFF).to(torch.float32) * (1.0 / 16777216.0)


def _hash_uniform_int64(like: torch.Tensor, seed: torch.Tensor | int) -> torch.Tensor:
    idx = torch.arange(like.numel(), device=like.device, dtype=torch.int64).view(like.shape)
    # + 2^31: the int32 form offsets the seed by -2^31 to fit it, which is +2^31 mod 2^32 here.
    h = (idx + (seed & _MASK32) * _SEED_MIX + 2**31) & _MASK32
    h = h ^ (h >> 16)
    h = (h * _M1) & _MASK32
    h = h ^ (h >> 15)
    h = (h * _M2) & _MASK32
    h = h ^ (h >> 16)
    return (h >> 8).to(torch.float32) * (1.0 / 16777216.0)
