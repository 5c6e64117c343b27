"""``qcompile::qmatmul``: ``a @ b`` whose backward quantizes dY once per backward GEMM (SCQ).

Forward is `torch.matmul` on already-quantized operands (the forward quantize nodes sit in
front of it in the graph). Backward, traced by AOTAutograd into the backward graph:

    dA = Q_dgrad(dY) @ bᵀ      (contracts over N: per-sample / per-row scales factor out)
    dB = aᵀ @ Q_wgrad(dY)      (contracts over M and batch: per-channel scales factor out)

The two quantizers draw independently; ``grad_b == "shared"`` reuses the dgrad draw for wgrad
(the LUQ paper's single per-tensor sample).
"""

from __future__ import annotations

import torch

from qcompile.runtime.ops.autocast_rule import common_gemm_dtype, register_gemm_autocast
from qcompile.runtime.ops.gradient_quantizer import quantize_gradient
from qcompile.runtime.ops.layer_marker import mark_layer
from qcompile.runtime.quant_tag import QuantTag

SHARED = "shared"


def matmul_forward(a: torch.Tensor, b: torch.Tensor, *_: object) -> torch.Tensor:
    """The forward of `qmatmul` (op, fake kernel and Inductor decomposition alike)."""
    dtype = common_gemm_dtype(a, b)
    return torch.matmul(a.to(dtype), b.to(dtype))


@torch.library.custom_op("qcompile::qmatmul", mutates_args=())
def qmatmul(a: torch.Tensor, b: torch.Tensor, grad_a: str, grad_b: str, tag: str) -> torch.Tensor:
    """`torch.matmul` for operands of rank >= 2; ``grad_a``/``grad_b`` are `QuantSpec` strings
    for dY in the dgrad and wgrad GEMMs, ``tag`` the layer (``"<layer>|gemm|<site>"``)."""
    return matmul_forward(a, b)


qmatmul.register_fake(matmul_forward)


def _setup(ctx, inputs, output):
    a, b, grad_a, grad_b, tag = inputs
    ctx.save_for_backward(a, b)
    ctx.grad_a, ctx.grad_b, ctx.tag = grad_a, grad_b, tag


def _grad_a(ga: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    da = torch.matmul(ga, b.to(ga.dtype).mT)
    return da.sum_to_size(a.shape).to(a.dtype)


def _grad_b(gb: torch.Tensor, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    a = a.to(gb.dtype)
    if b.ndim == 2:
        # Weight-like b: fold every batch dim of a and dY into the contraction (one GEMM).
        k, n = b.shape
        a2, g2 = a.reshape(-1, k), gb.reshape(-1, n)
        if b.stride(0) == 1 and b.stride(1) == k and k > 1:
            # b is Wᵀ of a row-major W (nn.Linear): produce dW in W's own layout, so autograd
            # hands it to .grad without a transposing copy (measured: 10% of an MLP step).
            db = (g2.mT @ a2).mT
        else:
            db = a2.mT @ g2
    else:
        db = torch.matmul(a.mT, gb).sum_to_size(b.shape)
    return db.to(b.dtype)


def _backward(ctx, dy):
    a, b = ctx.saved_tensors
    gemm = QuantTag.parse(ctx.tag)
    da = db = ga = None
    if ctx.needs_input_grad[0] or ctx.grad_b == SHARED:
        ga = quantize_gradient(dy, ctx.grad_a, -1, gemm.with_role("grad_dgrad").encode())
    if ctx.needs_input_grad[0]:
        da = _grad_a(ga, a, b)
    if ctx.needs_input_grad[1]:
        if ctx.grad_b == SHARED:
            gb = mark_layer(ga, gemm.with_role("grad_wgrad").encode())  # same draw; the marker names its GEMM
        else:
            gb = quantize_gradient(dy, ctx.grad_b, -1, gemm.with_role("grad_wgrad").encode())
        db = _grad_b(gb, a, b)
    return da, db, None, None, None


qmatmul.register_autograd(_backward, setup_context=_setup)
register_gemm_autocast(torch.ops.qcompile.qmatmul.default)
