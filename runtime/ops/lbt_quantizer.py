"""LBT's graph ops: ``qcompile::lbt_step`` (declared in-place update of γ) and
``qcompile::lbt_quantize`` (the tag-addressed node the backward graph carries).

The arithmetic is `qcompile.runtime.reference.lbt`. ``lbt_step`` takes the layer's γ and update
count as tensors and updates them in place, declared in its schema (``mutates_args``), with
tensor ops only: no host sync on any step, the first included (the first-batch initialisation
is computed every step and picked with `torch.where`).

``lbt_quantize`` is what the backward graph holds: γ cannot be a graph input there (the
quantizer is traced by AOTAutograd inside `qmatmul`'s backward, and Dynamo lifts only tensors
the model's own code reads), so the node names its slot by tag and, run by Inductor as an
opaque extern kernel, hands the slot's tensors to ``lbt_step``. One call per backward is one
step of the paper's adaptation.
"""

from __future__ import annotations

import torch

from qcompile.runtime.quantizer_state import lbt_slot
from qcompile.runtime.reference.lbt import (
    GAMMA_CEIL,
    GAMMA_FLOOR,
    GAMMA_STEP,
    LBT_A,
    clipped_fraction,
    initial_gamma,
    lbt_quantize_reference,
    lbt_step_reference,
    lbt_target,
    next_gamma,
)
from qcompile.runtime.reference.random_bits import draw_seed, hash_uniform

__all__ = [
    "GAMMA_CEIL",
    "GAMMA_FLOOR",
    "GAMMA_STEP",
    "LBT_A",
    "clipped_fraction",
    "initial_gamma",
    "lbt_quantize",
    "lbt_quantize_reference",
    "lbt_step",
    "lbt_target",
    "next_gamma",
]


@torch.library.custom_op(
    "qcompile::lbt_step",
    mutates_args=("gamma", "updates", "clipped"),
    tags=(torch.Tag.nondeterministic_seeded,),
)
def lbt_step(
    g: torch.Tensor,
    gamma: torch.Tensor,
    updates: torch.Tensor,
    clipped: torch.Tensor,
    bits: int,
    reduce_dims: list[int],
) -> torch.Tensor:
    """Quantize ``g`` with γ (`lbt_step_reference`), then write the next γ, the update count and
    the share clipped at the γ used into ``gamma``, ``updates`` and ``clipped`` (0-d tensors on
    ``g``'s device)."""
    out, new_gamma, new_updates, share = lbt_step_reference(
        g, gamma, updates, bits, reduce_dims, hash_uniform(g, draw_seed(g.device))
    )
    gamma.copy_(new_gamma)
    updates.copy_(new_updates)
    clipped.copy_(share)
    return out.contiguous()  # the fake kernel's layout, whatever g's strides


@lbt_step.register_fake
def _lbt_step_fake(g, gamma, updates, clipped, bits, reduce_dims):
    return g.new_empty(g.shape)


@torch.library.custom_op("qcompile::lbt_quantize", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,))
def lbt_quantize(g: torch.Tensor, bits: int, reduce_dims: list[int], tag: str) -> torch.Tensor:
    """Graph op: `lbt_step` on the γ slot bound to ``tag`` (`quantizer_state.bind_tag`);
    ``tag`` is ``"<layer>|<role>|<site key>"``."""
    state, name = lbt_slot(tag)
    gamma, updates, clipped = state.lbt_tensors(name, g.device)
    with torch.no_grad():
        return lbt_step(g, gamma, updates, clipped, bits, reduce_dims)


@lbt_quantize.register_fake
def _lbt_quantize_fake(g, bits, reduce_dims, tag):
    return g.new_empty(g.shape)  # contiguous, as the op returns
