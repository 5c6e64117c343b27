"""The baseline users compare against: eager per-layer fake quantization in Python.

This is the style of the papers' reference code: every Linear/Conv2d runs an
`autograd.Function` that quantizes W and X (INT4 SAWB) in forward and dY (LUQ, per-sample for
dgrad, per-channel for wgrad) in backward with ordinary tensor ops, with no compiler involved.
It uses qcompile's reference quantizers so both sides compute the same math.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from qcompile.runtime import int_quantize_reference, luq_quantize_reference


class _FakeQuantLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, b):
        xq = int_quantize_reference(x, 4, "sawb", "auto")
        wq = int_quantize_reference(w, 4, "sawb")
        ctx.save_for_backward(xq, wq)
        return F.linear(xq, wq, b)

    @staticmethod
    def backward(ctx, dy):
        xq, wq = ctx.saved_tensors
        g2 = dy.reshape(-1, dy.shape[-1])
        gd = luq_quantize_reference(g2, 4, [1])
        gw = luq_quantize_reference(g2, 4, [0])
        dx = (gd @ wq).view(*dy.shape[:-1], wq.shape[1])
        dw = gw.t() @ xq.reshape(-1, xq.shape[-1])
        return dx, dw, g2.sum(0)


class _FakeQuantConv2d(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x, w, stride, padding):
        xq = int_quantize_reference(x, 4, "sawb", "auto")
        wq = int_quantize_reference(w, 4, "sawb")
        ctx.save_for_backward(xq, wq)
        ctx.conv = (stride, padding)
        return F.conv2d(xq, wq, None, stride, padding)

    @staticmethod
    def backward(ctx, dy):
        xq, wq = ctx.saved_tensors
        stride, padding = ctx.conv
        gd = luq_quantize_reference(dy, 4, [1, 2, 3])
        gw = luq_quantize_reference(dy, 4, [0, 2, 3])
        dx = torch.nn.grad.conv2d_input(xq.shape, wq, gd, stride, padding)
        dw = torch.nn.grad.conv2d_weight(xq, wq.shape, gw, stride, padding)
        return dx, dw, None, None


def to_eager_fake_quant(model: nn.Module, keep_first_last: bool = True) -> nn.Module:
    """Patch Linear and bias-free Conv2d layers of ``model`` (in place) to fake-quantize; like
    qcompile's default policy, the first and last such layer stay high precision."""
    layers = [m for m in model.modules() if isinstance(m, (nn.Linear, nn.Conv2d))]
    if keep_first_last:
        layers = layers[1:-1]
    for m in layers:
        if isinstance(m, nn.Linear):
            m.forward = (lambda mod: lambda x: _FakeQuantLinear.apply(x, mod.weight, mod.bias))(m)
        elif isinstance(m, nn.Conv2d) and m.bias is None and m.groups == 1:
            m.forward = (
                lambda mod: lambda x: _FakeQuantConv2d.apply(x, mod.weight, mod.stride, mod.padding)
            )(m)
    return model
