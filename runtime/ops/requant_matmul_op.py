"""``qcompile::qmatmul_rq``: ``a @ b`` whose backward requantizes its operands along the
backward GEMMs' own contraction axes.

`qmatmul` reuses the forward's ``X̂``/``Ŵ`` in backward, which is exact only when their scales
are constant along the backward contraction too (SCQ). A block-scaled format (MXFP4, NVFP4, FP8
per row) puts its scales along the *forward* contraction axis K; the dgrad GEMM ``dY·W``
contracts over N and the wgrad GEMM ``dYᵀ·X`` over the tokens M, so each needs its operand
quantized again, from the high-precision tensor, with blocks along that axis (what NVIDIA's
NVFP4 recipe and torchao's MX training do). The same holds for a Hadamard transform on a
backward GEMM: it must act along that GEMM's contraction axis on both operands.

    forward:  Y  = Q_K(a) @ Q_K(b)                        (quantizers in front of the op)
    dgrad:    dA = Q_N(H_N dY) @ Q_N(H_N b)ᵀ                (requant_b; H only with a Hadamard)
    wgrad:    dB = Q_M(H_M a)ᵀ @ Q_M(H_M dY)                (requant_a)

``requant_a`` / ``requant_b`` are spec strings; ``""`` reuses the forward's quantized operand
(scales that factor out of every GEMM: per tensor, or an INT/LUQ spec), ``"fp32"`` uses the
high-precision one (a Hadamard with no quantizer).
"""

from __future__ import annotations

import torch

from qcompile.runtime.ops.autocast_rule import register_gemm_autocast
from qcompile.runtime.ops.block_formats import fp_args, fp_quantize, hadamard, hadamard_signs
from qcompile.runtime.ops.gradient_quantizer import quantize_gradient
from qcompile.runtime.ops.int_quantizer import int_quantize
from qcompile.runtime.ops.qmatmul_op import SHARED, matmul_forward
from qcompile.runtime.quant_tag import QuantTag
from qcompile.runtime.spec import HadamardSpec, QuantSpec, parse_hadamard, parse_spec

REUSE = ""


@torch.library.custom_op("qcompile::qmatmul_rq", mutates_args=())
def qmatmul_rq(
    a_hat: torch.Tensor,
    b_hat: torch.Tensor,
    a: torch.Tensor,
    b: torch.Tensor,
    grad_a: str,
    grad_b: str,
    requant_a: str,
    requant_b: str,
    hadamard_spec: str,
    tag: str,
) -> torch.Tensor:
    """``a_hat @ b_hat``; ``a``/``b`` are the tensors the forward quantizers read (after any
    forward Hadamard), kept for backward's requantization. ``grad_a``/``grad_b`` are the dY
    specs of dgrad/wgrad, ``hadamard_spec`` a `HadamardSpec` string or ``""``."""
    return matmul_forward(a_hat, b_hat)


qmatmul_rq.register_fake(lambda a_hat, b_hat, *_: matmul_forward(a_hat, b_hat))


def quantize_along(x: torch.Tensor, spec: QuantSpec | str, axis: int, tag: str) -> torch.Tensor:
    """``x`` quantized with its scales along ``axis`` (a GEMM's contraction axis): block-scaled FP
    with blocks along it, INT with one scale per row along it (or per tensor)."""
    spec = parse_spec(spec)
    if not spec.is_quantized:
        return x
    if spec.format == "fp":
        return fp_quantize(x, *fp_args(spec), axis, spec.rounding == "stochastic", tag)
    if spec.format != "int" or spec.scaling == "learned":
        raise ValueError(f"{spec.to_string()} cannot be requantized along another axis (FP and INT can)")
    dims = [] if spec.granularity == "per-tensor" else [axis % x.ndim]
    return int_quantize(x, spec.bits, spec.scaling, spec.signed, dims, spec.rounding == "stochastic", tag)


def transform_pair(
    x: torch.Tensor, y: torch.Tensor, axes: tuple[int, int], had: HadamardSpec | None, tag: QuantTag
) -> tuple[torch.Tensor, torch.Tensor]:
    """Both operands of one GEMM through the same random Hadamard along their contraction axes
    (``axes``), when ``had`` is given and its block divides the contraction length (otherwise
    unchanged: the plan reads from the graph which GEMMs ran with one)."""
    if had is None or x.shape[axes[0]] % had.block != 0:
        return x, y
    signs = hadamard_signs(x, had.block, had.signs == "fixed", tag.encode())
    ax, ay = (a % t.ndim for a, t in zip(axes, (x, y), strict=True))
    return (
        hadamard(x, signs, ax, had.block, False, tag.encode()),
        hadamard(y, signs, ay, had.block, False, tag.encode()),
    )


def _setup(ctx, inputs, output):
    a_hat, b_hat, a, b, grad_a, grad_b, requant_a, requant_b, had, tag = inputs
    ctx.save_for_backward(a_hat, b_hat, a, b)
    ctx.specs = (grad_a, grad_b, requant_a, requant_b, had, tag)


def _backward(ctx, dy):
    a_hat, b_hat, a, b = ctx.saved_tensors
    grad_a, grad_b, requant_a, requant_b, had_text, tag = ctx.specs
    gemm = QuantTag.parse(tag)
    had = parse_hadamard(had_text) if had_text else None
    da = db = ga = None
    if ctx.needs_input_grad[0] or grad_b == SHARED:
        # dgrad: dA = dY · bᵀ contracts over N (the last axis of dY and of b).
        use_had = had if had is not None and had.applies_to("dgrad") else None
        g, bt = transform_pair(dy, b if requant_b != REUSE else b_hat, (-1, -1), use_had, gemm.with_role("dgrad"))
        ga = quantize_gradient(g, grad_a, -1, gemm.with_role("grad_dgrad").encode(), axis=-1)
        bq = b_hat if requant_b == REUSE else quantize_along(bt, requant_b, -1, gemm.with_role("weight").encode())
        if ctx.needs_input_grad[0]:
            da = torch.matmul(ga, bq.to(ga.dtype).mT).sum_to_size(a_hat.shape).to(a_hat.dtype)
    if ctx.needs_input_grad[1]:
        db = _wgrad(dy, ga, a_hat, a, b_hat, grad_b, requant_a, had, gemm)
    return da, db, None, None, None, None, None, None, None, None


def _wgrad(dy, ga, a_hat, a, b_hat, grad_b, requant_a, had, gemm: QuantTag) -> torch.Tensor:
    """dB = aᵀ · dY, contracting over the tokens M (every batch dim folded in when b is a 2-D
    weight, per batch otherwise); blocks and the Hadamard run along M."""
    x = a if requant_a != REUSE else a_hat
    if b_hat.ndim == 2:
        k, n = b_hat.shape
        x, g, shared = x.reshape(-1, k), dy.reshape(-1, n), None if ga is None else ga.reshape(-1, n)
        axis = 0
    else:
        g, shared, axis = dy, ga, -2
    use_had = had if had is not None and had.applies_to("wgrad") else None
    g, x = transform_pair(g, x, (axis, axis), use_had, gemm.with_role("wgrad"))
    tag = gemm.with_role("grad_wgrad").encode()
    gq = shared if grad_b == SHARED else quantize_gradient(g, grad_b, -1, tag, axis=axis)
    xq = x if requant_a == REUSE else quantize_along(x, requant_a, axis, gemm.with_role("activation").encode())
    xq = xq.to(gq.dtype)
    if b_hat.ndim == 2:
        return (xq.mT @ gq).to(b_hat.dtype)
    return torch.matmul(xq.mT, gq).sum_to_size(b_hat.shape).to(b_hat.dtype)


qmatmul_rq.register_autograd(_backward, setup_context=_setup)
register_gemm_autocast(torch.ops.qcompile.qmatmul_rq.default)


def requant_spec(spec: QuantSpec, hadamard_here: bool) -> str:
    """What backward does with a forward operand of this spec: ``""`` reuse it (its scales
    factor out of the backward GEMM too), else the spec to requantize it with along the
    backward contraction axis (``"fp32"``: a Hadamard on a high-precision operand)."""
    if hadamard_here:
        return spec.to_string()
    if spec.format == "fp" and spec.granularity != "per-tensor":
        return spec.to_string()
    return REUSE


def requant_gemm(
    a: torch.Tensor,
    b: torch.Tensor,
    spec_a: str,
    spec_b: str,
    grad_a: str,
    grad_b: str,
    hadamard_spec: str,
    tag: str,
    roles: tuple[str, str] = ("activation", "weight"),
) -> torch.Tensor:
    """``a @ b`` with ``a`` quantized along its last axis and ``b`` along its second-to-last
    (the contraction K), after a forward Hadamard if the spec asks, then `qmatmul_rq`.

    Traced by AOTAutograd (the pre-AOT rewrite calls it from the graph), so every quantizer and
    transform is an explicit node the plan reads back."""
    gemm = QuantTag.parse(tag)
    had = parse_hadamard(hadamard_spec) if hadamard_spec else None
    sa, sb = parse_spec(spec_a), parse_spec(spec_b)
    if had is not None and had.applies_to("forward"):
        a, b = transform_pair(a, b, (-1, -2), had, gemm.with_role("forward"))
    aq = quantize_along(a, sa, -1, gemm.with_role(roles[0]).encode())
    bq = quantize_along(b, sb, -2, gemm.with_role(roles[1]).encode())
    backward = had is not None and (had.applies_to("dgrad"), had.applies_to("wgrad"))
    ra = requant_spec(sa, bool(backward and backward[1]))
    rb = requant_spec(sb, bool(backward and backward[0]))
    return qmatmul_rq(aq, bq, a, b, grad_a, grad_b, ra, rb, hadamard_spec, tag)
