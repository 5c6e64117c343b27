"""``qcompile::qconv``: `aten.convolution` (1-3 d, transposed, groups) with SCQ gradients.

Backward calls `aten.convolution_backward` twice, once per backward GEMM, each with its own
quantized dY: per-sample scales for the input gradient (it contracts over output channels and
the kernel window, never across samples) and per-output-channel scales for the weight gradient
(it contracts over batch and space). The bias, if any, is added outside this op, so its
gradient (a reduction, not a GEMM) stays high precision.
"""

from __future__ import annotations

import torch

from qcompile.runtime.ops.autocast_rule import common_gemm_dtype, register_gemm_autocast
from qcompile.runtime.ops.gradient_quantizer import quantize_gradient
from qcompile.runtime.ops.layer_marker import mark_layer
from qcompile.runtime.ops.qmatmul_op import SHARED
from qcompile.runtime.quant_tag import QuantTag


def conv_forward(
    x: torch.Tensor,
    w: torch.Tensor,
    stride,
    padding,
    dilation,
    transposed,
    output_padding,
    groups,
    *_: object,
) -> torch.Tensor:
    """The forward of `qconv` (op, fake kernel and Inductor decomposition alike)."""
    dtype = common_gemm_dtype(x, w)
    return torch.ops.aten.convolution(
        x.to(dtype), w.to(dtype), None, stride, padding, dilation, transposed, output_padding, groups
    )


@torch.library.custom_op("qcompile::qconv", mutates_args=())
def qconv(
    x: torch.Tensor,
    w: torch.Tensor,
    stride: list[int],
    padding: list[int],
    dilation: list[int],
    transposed: bool,
    output_padding: list[int],
    groups: int,
    grad_x: str,
    grad_w: str,
    tag: str,
) -> torch.Tensor:
    return conv_forward(x, w, stride, padding, dilation, transposed, output_padding, groups)


qconv.register_fake(conv_forward)


def _setup(ctx, inputs, output):
    x, w, stride, padding, dilation, transposed, output_padding, groups, grad_x, grad_w, tag = inputs
    ctx.save_for_backward(x, w)
    ctx.conv = (stride, padding, dilation, transposed, output_padding, groups)
    ctx.grad_x, ctx.grad_w, ctx.tag = grad_x, grad_w, tag


def _backward(ctx, dy):
    x, w = ctx.saved_tensors
    gemm = QuantTag.parse(ctx.tag)
    stride, padding, dilation, transposed, output_padding, groups = ctx.conv
    xd, wd = x.to(dy.dtype), w.to(dy.dtype)
    dx = dw = gx = None

    def conv_bwd(g, mask):
        return torch.ops.aten.convolution_backward(
            g, xd, wd, None, stride, padding, dilation, transposed, output_padding, groups, mask
        )

    if ctx.needs_input_grad[0] or ctx.grad_w == SHARED:
        gx = quantize_gradient(dy, ctx.grad_x, 1, gemm.with_role("grad_dgrad").encode())
    if ctx.needs_input_grad[0]:
        dx = conv_bwd(gx, [True, False, False])[0].to(x.dtype)
    if ctx.needs_input_grad[1]:
        if ctx.grad_w == SHARED:
            gw = mark_layer(gx, gemm.with_role("grad_wgrad").encode())  # same draw; the marker names its GEMM
        else:
            gw = quantize_gradient(dy, ctx.grad_w, 1, gemm.with_role("grad_wgrad").encode())
        dw = conv_bwd(gw, [False, True, False])[1].to(w.dtype)
    return dx, dw, None, None, None, None, None, None, None, None, None


qconv.register_autograd(_backward, setup_context=_setup)
register_gemm_autocast(torch.ops.qcompile.qconv.default)
