"""LBT's optional forward: INT quantization with one *learned* clip per layer and role
(Kim et al., ECCV 2024, following PACT/LSQ; docs/algorithms.md "INT4, learned clip").

``qcompile::learned_clip_quantize`` reads the clip α of its slot in the model's
`QuantizerState` (a ``torch.nn.Parameter`` named ``lbt_clip/<layer>/<role>``), initialised on
the first batch to ``3·std(W)`` for weights and ``3·std(X)/sqrt(1 − 2/π)`` for activations.
Its backward is the clipped straight-through estimator for x and PACT's gradient for α:

    ∂x̂/∂x = 1[|x| ≤ α]          ∂x̂/∂α = sign(x)·1[|x| > α]   (clipped elements move with α)

α is not a graph input (Dynamo only lifts tensors the model's code reads), so the backward op
adds ∂L/∂α straight into ``α.grad``; an optimizer that holds the state's parameters
(``opt.add_param_group({"params": list(qcompile.state_of(model).parameters())})``) then learns
it. Both ops run eagerly inside the compiled graphs.
"""

from __future__ import annotations

import math

import torch

from qcompile.runtime.ops.int_quantizer import int_levels
from qcompile.runtime.quantizer_state import clip_slot


def learned_clip_reference(
    x: torch.Tensor, alpha: float | torch.Tensor, bits: int, signed: str
) -> torch.Tensor:
    """``s = α/qmax``, ``x̂ = clamp(round(x/s), qmin, qmax)·s``; ``signed="auto"`` picks the
    unsigned grid when x has no negative value (after ReLU)."""
    xf = x.float()
    unsigned = signed == "unsigned" or (signed == "auto" and bool((xf >= 0).all()))
    lo, hi = int_levels(bits, unsigned)
    a = float(alpha.detach()) if isinstance(alpha, torch.Tensor) else float(alpha)
    scale = a / hi if a > 0 else 1.0
    return (torch.clamp(torch.round(xf / scale), lo, hi) * scale).to(x.dtype)


def initial_clip(x: torch.Tensor, role: str) -> float:
    """``3·std(W)`` for weights, ``3·std(X)/sqrt(1 − 2/π)`` for activations (the paper's init)."""
    std = float(x.float().std()) if x.numel() > 1 else float(x.float().abs().max())
    clip = 3 * std if role == "weight" else 3 * std / math.sqrt(1 - 2 / math.pi)
    return clip if clip > 0 and math.isfinite(clip) else 1.0


@torch.library.custom_op("qcompile::learned_clip_quantize", mutates_args=())
def learned_clip_quantize(x: torch.Tensor, bits: int, signed: str, tag: str) -> torch.Tensor:
    """Graph op: quantize with the learned clip bound to ``tag`` (``"<layer>|<role>|<key>"``)."""
    state, name = clip_slot(tag)
    alpha, ready = state.clip(name), state.clip_ready(name)
    if not bool(ready):
        with torch.no_grad():
            alpha.fill_(initial_clip(x.detach(), tag.split("|")[1]))
            ready.fill_(True)
    return learned_clip_reference(x.detach(), float(alpha.detach()), bits, signed).contiguous()


@learned_clip_quantize.register_fake
def _learned_clip_quantize_fake(x, bits, signed, tag):
    return x.new_empty(x.shape)


@torch.library.custom_op("qcompile::learned_clip_backward", mutates_args=())
def learned_clip_backward(grad: torch.Tensor, x: torch.Tensor, tag: str) -> torch.Tensor:
    """Clipped STE for x; PACT's ``Σ grad·sign(x)·1[|x| > α]`` added into ``α.grad``."""
    state, name = clip_slot(tag)
    alpha = state.clip(name)
    outside = x.abs() > float(alpha.detach())
    with torch.no_grad():
        d_alpha = (grad.float() * torch.sign(x.float()) * outside).sum().to(alpha.dtype)
        if alpha.grad is None:
            alpha.grad = d_alpha.reshape(alpha.shape).clone()
        else:
            alpha.grad.add_(d_alpha)
    return torch.where(outside, torch.zeros_like(grad), grad).contiguous()


@learned_clip_backward.register_fake
def _learned_clip_backward_fake(grad, x, tag):
    return grad.new_empty(grad.shape)


def _setup(ctx, inputs, output):
    x, _, _, tag = inputs
    ctx.save_for_backward(x)
    ctx.tag = tag


def _backward(ctx, grad):
    (x,) = ctx.saved_tensors
    return learned_clip_backward(grad, x, ctx.tag), None, None, None


learned_clip_quantize.register_autograd(_backward, setup_context=_setup)
