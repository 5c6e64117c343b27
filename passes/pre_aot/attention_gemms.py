"""Scaled dot-product attention written out as two quantized GEMMs.

`F.scaled_dot_product_attention` is one fused kernel whose matmuls no quantizer can reach; the
rewrite pass replaces it by a call to `quantized_attention`, which AOTAutograd traces into
``softmax(Q(q)·Q(kᵀ)·scale + mask)`` then ``Q(p)·Q(v)``, each GEMM a `qcompile::qmatmul` with SCQ
gradients. Semantics follow the documented reference implementation of SDPA.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from qcompile.runtime import QuantSpec, int_quantize, parse_spec, qmatmul, requant_gemm
from qcompile.runtime.quant_tag import QuantTag


def forward_quantize(
    x: torch.Tensor, spec: QuantSpec | str, reduce_dims: list[int], tag: str
) -> torch.Tensor:
    spec = parse_spec(spec)
    if not spec.is_quantized:
        return x
    return int_quantize(
        x, spec.bits, spec.scaling, spec.signed, reduce_dims, spec.rounding == "stochastic", tag
    )


def activation_dims(spec: QuantSpec | str, ndim: int, right_operand: bool) -> list[int]:
    """Reduce dims for an activation operand of ``a @ b``: per-sample keeps rows of ``a`` (reduce
    over K, the last dim) and columns of ``b`` (reduce over K, the second-to-last)."""
    if parse_spec(spec).granularity == "per-tensor":
        return []
    return [ndim - 2] if right_operand else [ndim - 1]


def quantized_gemm(
    a: torch.Tensor, b: torch.Tensor, specs: tuple[str, str, str, str, str], tag: str
) -> torch.Tensor:
    """``a @ b`` with both operands activations: ``specs`` = (activation for a, activation for b,
    grad_dgrad, grad_wgrad-or-"shared", Hadamard or "") as spec strings; ``tag`` =
    ``"<layer>|gemm|<site>"``. Block-scaled FP specs and Hadamards go through `requant_gemm`."""
    gemm = QuantTag.parse(tag)
    act_a, act_b, grad_a, grad_b, had = specs
    if had or any(parse_spec(x).format == "fp" for x in (act_a, act_b, grad_a, grad_b) if x != "shared"):
        return requant_gemm(a, b, act_a, act_b, grad_a, grad_b, had, tag)
    aq = forward_quantize(
        a, act_a, activation_dims(act_a, a.ndim, False), gemm.with_role("activation").encode()
    )
    bq = forward_quantize(b, act_b, activation_dims(act_b, b.ndim, True), gemm.with_role("weight").encode())
    return qmatmul(aq, bq, grad_a, grad_b, tag)


def quantized_attention(
    query: torch.Tensor,
    key: torch.Tensor,
    value: torch.Tensor,
    attn_mask: torch.Tensor | None = None,
    dropout_p: float = 0.0,
    is_causal: bool = False,
    scale: float | None = None,
    enable_gqa: bool = False,
    *,
    qk: tuple[str, str, str, str, str],
    pv: tuple[str, str, str, str, str],
    qk_tag: str,
    pv_tag: str,
) -> torch.Tensor:
    """Drop-in for `F.scaled_dot_product_attention` with quantized ``q·kᵀ`` and ``p·v``."""
    length, source = query.size(-2), key.size(-2)
    scale_factor = 1.0 / math.sqrt(query.size(-1)) if scale is None else scale
    if enable_gqa:
        repeat = query.size(-3) // key.size(-3)
        key = key.repeat_interleave(repeat, dim=-3)
        value = value.repeat_interleave(repeat, dim=-3)
    scores = quantized_gemm(query, key.transpose(-2, -1), qk, qk_tag) * scale_factor
    if is_causal:
        keep = torch.ones(length, source, dtype=torch.bool, device=query.device).tril()
        scores = scores.masked_fill(~keep, float("-inf"))
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            scores = scores.masked_fill(~attn_mask, float("-inf"))
        else:
            scores = scores + attn_mask
    probs = torch.softmax(scores, dim=-1)
    if dropout_p > 0.0:
        probs = F.dropout(probs, p=dropout_p, training=True)
    return quantized_gemm(probs, value, pv, pv_tag)
