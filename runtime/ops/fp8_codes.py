"""Graph ops of the FP8 GEMM path that `qcompile.passes.post_aot.fuse_int8_gemms` inserts for
GEMMs the kernel choice routes to ``triton-fp8``:

    qcompile::fp8_quantize_codes(x, ...)        -> (codes fp8, scale fp32)  an ``fp_quantize``
                                                   with "max" row/tensor scales, as FP8 codes
    qcompile::fp8_dequantize_codes(c, s, dtype) -> codes · scale (the ``fp_quantize`` value)
    qcompile::scaled_fp8_gemm(A codes, A scale, B codes, B scale, bias, views) -> the GEMM's output

The quantizer and the dequantization are decomposed into ATen before Inductor
(`decompositions.py`), so on CUDA Inductor generates the amax reduction and the FP8 cast, with
the same random draws as the simulated ``fp_quantize``; the GEMM stays opaque and runs
`triton_fp8_gemm.fp8_mm` (on CUDA, or on CPU under ``TRITON_INTERPRET=1``), else a PyTorch
product of the same values, so a rewritten graph runs anywhere.
"""

from __future__ import annotations

import torch

from qcompile.runtime.kernels.triton_support import kernels_can_run_on
from qcompile.runtime.reference.block_scaled import FP8_DTYPES, fp8_codes_reference
from qcompile.runtime.reference.view_chains import scaled_operand_2d


@torch.library.custom_op(
    "qcompile::fp8_quantize_codes", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def fp8_quantize_codes(
    x: torch.Tensor, element: str, block: list[int], axis: int, stochastic: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """`fp8_codes_reference`: ``fp_quantize(x, element, "max", block, axis, stochastic)`` as FP8
    codes and the FP32 scale (keepdim shape) that multiplies them back to its value."""
    codes, scale = fp8_codes_reference(x, element, block, axis, stochastic)
    return codes.contiguous(), scale.contiguous().clone()


@fp8_quantize_codes.register_fake
def _fp8_quantize_codes_fake(x, element, block, axis, stochastic):
    group = [1 if not block or d == axis % x.ndim else s for d, s in enumerate(x.shape)]
    codes = torch.empty(x.shape, dtype=FP8_DTYPES[element], device=x.device)
    return codes, x.new_empty(group, dtype=torch.float32)


@torch.library.custom_op("qcompile::fp8_dequantize_codes", mutates_args=())
def fp8_dequantize_codes(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes · scale`` in ``dtype``: bit for bit the ``fp_quantize`` value the codes came from
    (for the quantizer's users other than the FP8 GEMM, such as a tensor saved for backward)."""
    return fp8_dequantize_reference(codes, scale, dtype).contiguous()


@fp8_dequantize_codes.register_fake
def _fp8_dequantize_codes_fake(codes, scale, dtype):
    return torch.empty(codes.shape, dtype=dtype, device=codes.device)


def fp8_dequantize_reference(codes: torch.Tensor, scale: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``codes · scale`` (one FP32 rounding, as `block_quantize_reference` scales back), in ``dtype``."""
    return (codes.float() * scale).to(dtype)


@torch.library.custom_op(
    "qcompile::scaled_fp8_gemm",
    mutates_args=(),
    schema="(Tensor a_codes, Tensor a_scale, Tensor b_codes, Tensor b_scale, Tensor? bias, int[] a_views, "
    "int[] b_views, int[] out_shape, ScalarType out_dtype) -> Tensor",
)
def scaled_fp8_gemm(
    a_codes: torch.Tensor,
    a_scale: torch.Tensor,
    b_codes: torch.Tensor,
    b_scale: torch.Tensor,
    bias: torch.Tensor | None,
    a_views: list[int],
    b_views: list[int],
    out_shape: list[int],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``Q(A)·Q(B) (+ bias)`` of two FP8-quantized operands given as codes and keepdim scales,
    with the Triton FP8 GEMM (FP32 accumulation, scales and bias in the epilogue). The views
    are those the graph applied between each quantizer and the GEMM, ending in 2-D ``[M, K]``
    and ``[K, N]``: transposes stay strides."""
    a, rs = scaled_operand_2d(a_codes, a_scale, a_views, 0)
    b, cs = scaled_operand_2d(b_codes, b_scale, b_views, 1)
    from qcompile.runtime.kernels.triton_fp8_gemm import fp8_mm, fp8_mm_reference  # Triton: lazily

    gemm = fp8_mm if kernels_can_run_on(a.device) else fp8_mm_reference  # the reference: same sums
    return gemm(a, b, rs, cs, bias, out_dtype).reshape(out_shape)


@scaled_fp8_gemm.register_fake
def _scaled_fp8_gemm_fake(a_codes, a_scale, b_codes, b_scale, bias, a_views, b_views, out_shape, out_dtype):
    return torch.empty(out_shape, dtype=out_dtype, device=a_codes.device)
