"""LBT's optional forward in plain PyTorch: INT quantization with a *learned* clip α per layer
and role (Kim et al., ECCV 2024, following PACT/LSQ; docs/algorithms.md "INT4, learned clip"):
the quantizer, the paper's initialisation of α, and the gradients of the clipped
straight-through estimator (x) and of PACT (α)."""

from __future__ import annotations

import math

import torch

from qcompile.runtime.reference.int_quant import int_levels


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


def learned_clip_gradients(
    grad: torch.Tensor, x: torch.Tensor, alpha: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """(∂L/∂x, ∂L/∂α) from the upstream ``grad``: ``∂x̂/∂x = 1[|x| ≤ α]`` (clipped STE) and
    ``∂x̂/∂α = sign(x)·1[|x| > α]`` (PACT: clipped elements move with α), α's summed in float32
    and returned in α's dtype and shape."""
    outside = x.abs() > float(alpha.detach())
    d_alpha = (grad.float() * torch.sign(x.float()) * outside).sum().to(alpha.dtype).reshape(alpha.shape)
    return torch.where(outside, torch.zeros_like(grad), grad), d_alpha
