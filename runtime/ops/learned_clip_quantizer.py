"""``qcompile::learned_clip_quantize``: LBT's optional forward, INT quantization with a learned
clip α per layer and role (arithmetic in `qcompile.runtime.reference.learned_clip`).

α is the Parameter ``lbt_clip/<layer>/<role>`` of the model's `QuantizerState`, initialised on
the first batch to ``3·std(W)`` for weights and ``3·std(X)/sqrt(1 − 2/π)`` for activations.
The compiled graph passes α to the op as an input (`quantizer_binding.bind_state` adds it as a
parameter of the graph, which AOTAutograd lifts), so its backward *returns* ∂L/∂α and autograd
accumulates it into ``α.grad`` like any parameter's: DDP's and FSDP's gradient hooks fire, and
an optimizer that holds the state's parameters
(``opt.add_param_group({"params": list(qcompile.state_of(model).parameters())})``) learns it.

The overload ``learned_clip_quantize.unbound(x, bits, signed, tag)`` takes no α: it calls the
op with the α of the slot bound to ``tag`` (what a graph holds before binding, and what a direct
call without α gets).
"""

from __future__ import annotations

import torch

from qcompile.runtime.quant_tag import QuantTag
from qcompile.runtime.quantizer_state import clip_slot
from qcompile.runtime.reference.learned_clip import (
    initial_clip,
    learned_clip_gradients,
    learned_clip_reference,
)

__all__ = [
    "initial_clip",
    "learned_clip_backward",
    "learned_clip_quantize",
    "learned_clip_quantize_unbound",
    "learned_clip_reference",
]


@torch.library.custom_op("qcompile::learned_clip_quantize", mutates_args=())
def learned_clip_quantize(
    x: torch.Tensor, bits: int, signed: str, alpha: torch.Tensor, tag: str
) -> torch.Tensor:
    """Graph op: quantize with the learned clip ``alpha`` of the slot bound to ``tag``
    (``"<layer>|<role>|<key>"``), which sets α from this batch on the slot's first call."""
    state, name = clip_slot(tag)
    ready = state.clip_ready(name)
    if not bool(ready):
        with torch.no_grad():
            alpha.fill_(initial_clip(x.detach(), QuantTag.parse(tag).role))
            ready.fill_(True)
    return learned_clip_reference(x.detach(), float(alpha.detach()), bits, signed).contiguous()


@learned_clip_quantize.register_fake
def _learned_clip_quantize_fake(x, bits, signed, alpha, tag):
    return x.new_empty(x.shape)


@torch.library.custom_op("qcompile::learned_clip_backward", mutates_args=())
def learned_clip_backward(
    grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂x, ∂L/∂α): the clipped STE and PACT's ``Σ grad·sign(x)·1[|x| > α]``."""
    d_x, d_alpha = learned_clip_gradients(grad, x, alpha)
    return d_x.contiguous(), d_alpha


@learned_clip_backward.register_fake
def _learned_clip_backward_fake(grad, x, alpha):
    return grad.new_empty(grad.shape), alpha.new_empty(alpha.shape)


def _setup(ctx, inputs, output):
    x, _, _, alpha, _ = inputs
    ctx.save_for_backward(x, alpha)


def _backward(ctx, grad):
    x, alpha = ctx.saved_tensors
    d_x, d_alpha = learned_clip_backward(grad, x, alpha)
    return d_x, None, None, d_alpha, None


learned_clip_quantize.register_autograd(_backward, setup_context=_setup)

_LIB = torch.library.Library("qcompile", "FRAGMENT")
_LIB.define("learned_clip_quantize.unbound(Tensor x, int bits, str signed, str tag) -> Tensor")


@torch.library.impl(_LIB, "learned_clip_quantize.unbound", "CompositeImplicitAutograd")
def learned_clip_quantize_unbound(x: torch.Tensor, bits: int, signed: str, tag: str) -> torch.Tensor:
    """``learned_clip_quantize(x, bits, signed, tag)``, no α given: the op with the α of the slot
    bound to ``tag``. What `insert_quantizers` puts in a graph before the slots exist; the backend
    then passes α in (`quantizer_binding.pass_learned_clips`). Called eagerly, it decomposes into
    the op with the slot's Parameter as input, so ∂L/∂α reaches ``α.grad`` through autograd."""
    state, name = clip_slot(tag)
    return learned_clip_quantize(x, bits, signed, state.clip(name), tag)
