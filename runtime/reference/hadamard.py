"""Blockwise random Hadamard transform (RHT) as pure PyTorch, the reference of the transform that
precedes a 4-bit GEMM's quantizers.

An orthogonal rotation applied to both operands along the contraction axis leaves the product
unchanged, ``(a·M)(Mᵀ·B) = a·B``, while spreading each block's outliers over all of its elements,
which shrinks the block's max relative to its typical value and so the quantization error
(QuaRot, Ashkboos et al. 2024; QuIP#, Tseng et al. 2024). NVIDIA's NVFP4 recipe applies 16×16
random Hadamard transforms to the wgrad GEMM's inputs ("Pretraining LLMs with NVFP4",
arXiv:2509.25149). Random signs make the rotation a random one, so no fixed input direction
is systematically aligned with a Hadamard row.
"""

from __future__ import annotations

import math

import torch

from qcompile.runtime.reference.random_bits import hash_uniform


def hadamard_reference(
    x: torch.Tensor, axis: int, block: int, signs: torch.Tensor, inverse: bool = False
) -> torch.Tensor:
    """Blockwise randomized Walsh–Hadamard transform of ``x`` along ``axis`` (same shape, dtype).

    Each run ``v`` of ``block`` consecutive elements (``block`` a power of two dividing the axis
    length) becomes ``H · diag(signs) · v / sqrt(block)``, with ``H`` the Sylvester Hadamard
    matrix (``H_2n = [[H_n, H_n], [H_n, -H_n]]``); the map is orthogonal, and ``inverse=True``
    applies its transpose, ``diag(signs) · H · v / sqrt(block)``. Applying it to ``a`` along its
    last axis and to ``B`` ([K, N]) along axis 0 with the same ``signs`` preserves ``a @ B``.

    The fast transform: log2(block) butterfly stages of ``(u + w, u - w)`` on reshaped views,
    elementwise ops that Inductor fuses into one loop, not a ``block×block`` matmul. float32 math.
    """
    if block < 1 or block & (block - 1):
        raise ValueError(f"block must be a power of two, got {block}")
    if x.ndim == 0:
        raise ValueError("the Hadamard transform needs a tensor with at least one dim")
    length = x.shape[axis]
    if length % block:
        raise ValueError(f"axis {axis} has length {length}, not a multiple of the Hadamard block {block}")
    if tuple(signs.shape) != (block,):
        raise ValueError(f"signs has shape {tuple(signs.shape)}, expected ({block},)")
    s = signs.to(device=x.device, dtype=torch.float32)
    v = x.float().movedim(axis, -1)
    lead = v.shape[:-1]
    v = v.reshape(*lead, length // block, block)
    if not inverse:
        v = v * s
    h = 1
    while h < block:
        # Pairs (i, i + h) within each run of 2h: the Sylvester recursion, one level per stage.
        pairs = v.reshape(*lead, length // block, block // (2 * h), 2, h)
        u, w = pairs[..., 0, :], pairs[..., 1, :]
        v = torch.stack((u + w, u - w), dim=-2).reshape(*lead, length // block, block)
        h *= 2
    if inverse:
        v = v * s
    v = v * (1.0 / math.sqrt(block))
    return v.reshape(*lead, length).movedim(-1, axis).to(x.dtype)


def random_signs_reference(
    block: int, seed: torch.Tensor | int, device: torch.device | str | None = None
) -> torch.Tensor:
    """``block`` random ±1.0 (float32), a pure function of ``seed`` through
    `random_bits.hash_uniform`, so every rank and every replay of a step rebuilds the same
    rotation from the seed alone. ``device`` defaults to the seed tensor's (else CPU)."""
    if block < 1:
        raise ValueError(f"block must be positive, got {block}")
    if device is None:
        device = seed.device if isinstance(seed, torch.Tensor) else "cpu"
    u = hash_uniform(torch.empty(block, device=device), seed)
    return torch.where(u < 0.5, -1.0, 1.0)
