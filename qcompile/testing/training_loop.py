"""The few-step training loop several tests share (cross-entropy unless told otherwise)."""

from __future__ import annotations

import torch
import torch.nn.functional as F


def train_steps(
    compiled,
    opt: torch.optim.Optimizer,
    x: torch.Tensor,
    y: torch.Tensor,
    steps: int,
    loss_fn=F.cross_entropy,
) -> list[float]:
    """Run ``steps`` SGD-style steps of ``compiled`` on one batch; the losses, as floats."""
    losses = []
    for _ in range(steps):
        loss = loss_fn(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses
