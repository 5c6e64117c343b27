"""Graph ops of the block-scaled FP formats (MXFP4/MXFP8, NVFP4, FP8 row/tensor) and the
random Hadamard transform.

- ``qcompile::fp_quantize``: fake-quantize to a block-scaled format along one axis (the GEMM's
  contraction axis); straight-through backward, like ``int_quantize``.
- ``qcompile::hadamard``: the blockwise randomized Walsh–Hadamard transform along one axis; its
  backward is the inverse (transpose) transform, so autograd stays exact.
- ``qcompile::hadamard_signs``: the random ±1 vector both operands of one GEMM share.

Their math is in `reference.block_scaled` and `reference.hadamard` (docs/algorithms.md). On the CPU
these formats are simulated: the fake-quantized float32 values go into a float GEMM.
"""

from __future__ import annotations

import torch

from qcompile.runtime.reference.block_scaled import block_quantize_reference
from qcompile.runtime.reference.hadamard import hadamard_reference, random_signs_reference
from qcompile.runtime.reference.random_bits import draw_seed
from qcompile.runtime.spec import QuantSpec

#: Seed of the ``fixed`` Hadamard sign vector: one vector for the whole run, the same in every
#: process (a constant, so data-parallel ranks and restarts agree).
FIXED_SIGNS_SEED = 0x5EED5


@torch.library.custom_op("qcompile::fp_quantize", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def fp_quantize(
    x: torch.Tensor,
    element: str,
    scaling: str,
    block: list[int],
    axis: int,
    stochastic: bool,
    tag: str,
) -> torch.Tensor:
    """Graph op for `block_quantize_reference`: ``block`` runs along ``axis`` (``[]`` per tensor,
    ``[0]`` per row, ``[n]`` or ``[n, n]``). ``tag`` names the layer and role for the plan.

    Tagged nondeterministic (it may round stochastically) so the partitioner never recomputes a
    different draw in backward."""
    # Contiguous, as its fake says: a transposed operand (Wᵀ) must not give a kernel output whose
    # strides differ from the fake's (checkpointing's RNG wrapper checks them).
    return block_quantize_reference(x, element, scaling, block, axis, stochastic).contiguous()


@fp_quantize.register_fake
def _fp_quantize_fake(x, element, scaling, block, axis, stochastic, tag):
    return x.new_empty(x.shape)


fp_quantize.register_autograd(lambda ctx, grad: (grad, None, None, None, None, None, None))


@torch.library.custom_op("qcompile::hadamard", mutates_args=())
def hadamard(x: torch.Tensor, signs: torch.Tensor, axis: int, block: int, inverse: bool, tag: str) -> torch.Tensor:
    """Graph op for `hadamard_reference`: ``H·diag(signs)/√block`` on each run of ``block``
    elements along ``axis`` (its transpose when ``inverse``). ``tag`` names the GEMM operand."""
    return hadamard_reference(x, axis, block, signs, inverse=inverse).contiguous()


@hadamard.register_fake
def _hadamard_fake(x, signs, axis, block, inverse, tag):
    return x.new_empty(x.shape)


def _hadamard_backward(ctx, grad):
    # The transform is orthogonal: its vector-Jacobian product is the transpose transform.
    return hadamard(grad, ctx.signs, ctx.axis, ctx.block, not ctx.inverse, ctx.tag), None, None, None, None, None


def _hadamard_setup(ctx, inputs, output):
    _, ctx.signs, ctx.axis, ctx.block, ctx.inverse, ctx.tag = inputs


hadamard.register_autograd(_hadamard_backward, setup_context=_hadamard_setup)


@torch.library.custom_op(
    "qcompile::hadamard_signs", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def hadamard_signs(like: torch.Tensor, block: int, fixed: bool, tag: str) -> torch.Tensor:
    """A ±1 float vector of length ``block`` on ``like``'s device: fresh from torch's generator
    each call, or the run-wide fixed vector. ``like`` only names the device."""
    return signs_decomposition(like, block, fixed, tag)


@hadamard_signs.register_fake
def _hadamard_signs_fake(like, block, fixed, tag):
    return like.new_empty((block,), dtype=torch.float32)


# The signs are constants of the transform: no gradient flows into ``like``.
hadamard_signs.register_autograd(lambda ctx, grad: (None, None, None, None))


def signs_decomposition(like: torch.Tensor, block: int, fixed: bool, tag: str) -> torch.Tensor:
    seed = FIXED_SIGNS_SEED if fixed else draw_seed(like.device)
    return random_signs_reference(block, seed, device=like.device)


def fp_args(spec: QuantSpec) -> tuple[str, str, list[int]]:
    """(element, scaling, block) of an FP spec, as `fp_quantize` takes them."""
    return spec.element, spec.scaling, list(spec.block)
