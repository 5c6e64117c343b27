"""Decompositions of qcompile's graph ops into plain ATen, applied just before Inductor.

Quantizers stay opaque custom ops through AOTAutograd so the compiled graphs can be read back
(the plan) and exported; Inductor then gets their reference implementations, which it fuses
into its generated loops instead of calling them as separate eager kernels. Their random draws
come from `random_bits.hash_uniform` (Inductor's own CPU ``rand`` is ~5x slower).
"""

from __future__ import annotations

import torch

from qcompile.runtime.kernels import cpu_int8_gemm
from qcompile.runtime.ops import gemm_codes as triton_gemm_ops  # noqa: F401  (register the ops first)
from qcompile.runtime.ops import packed_codes
from qcompile.runtime.ops import qconv_op as quantized_conv
from qcompile.runtime.ops import qmatmul_op as quantized_matmul
from qcompile.runtime.ops.int_quantizer import (
    int_quantize_codes_reference,
    int_quantize_reference,
    top_code_tensor,
)
from qcompile.runtime.ops.luq_quantizer import luq_codes_reference, luq_quantize_reference
from qcompile.runtime.ops.packed_codes import (
    int_dequantize_packed_reference,
    int_quantize_packed_reference,
    int_requantize_reference,
    pack_bits,
    unpack_bits,
)
from qcompile.runtime.reference.random_bits import draw_seed, hash_uniform

ops = torch.ops.qcompile


def _int_quantize(x, bits, scaling, signed, reduce_dims, stochastic, tag):
    noise = hash_uniform(x, draw_seed(x.device)) if stochastic else None
    return int_quantize_reference(x, bits, scaling, signed, reduce_dims, stochastic, noise=noise)


def _int_quantize_packed(x, bits, scaling, signed, reduce_dims, stochastic, tag):
    noise = hash_uniform(x, draw_seed(x.device)) if stochastic else None
    return int_quantize_packed_reference(x, bits, scaling, signed, reduce_dims, stochastic, noise=noise)


def _int_dequantize_packed(packed, clip, hi, last, bits, signed, dtype, tag):
    return int_dequantize_packed_reference(packed, clip, hi, last, bits, signed, dtype)


def _int_requantize(x, clip, hi, bits, signed, dtype, tag):
    return int_requantize_reference(x, clip, hi, bits, signed, dtype)


def _luq_quantize(g, bits, reduce_dims, sample, tag):
    return luq_quantize_reference(g, bits, reduce_dims, noise=hash_uniform(g, draw_seed(g.device)))


def _mark_layer(x, tag):
    return x


def _dequantize_codes(codes, clip, top, dtype):
    # Elementwise: Inductor fuses it into the consumers of the fused path's quantizer values.
    return (codes.float() / top * clip).to(dtype)


# The integer GEMM path on the CPU (`cpu-int8`): the quantizers write int8 codes inside the loops
# Inductor generates for them (a reduction for the statistic, one pass for the codes), with the
# same random draws as the float path's `_int_quantize` / `_luq_quantize` (same seed order, same
# hash of the same element index), so `kernels="int8"` and `"reference"` draw the same codes.
# On CUDA these ops stay opaque and run the Triton kernels.


def _as_int8(q: torch.Tensor) -> torch.Tensor:
    """Integer-valued float codes as int8; NaN (a non-finite group, whose scale is NaN or inf and
    so still poisons every output it reaches) becomes 0. ``q == q`` rather than ``nan_to_num``:
    Inductor vectorises the compare, not ``isnan``."""
    return torch.where(q == q, q, 0.0).to(torch.int8)


def _quantize_codes(x, kind, bits, scaling, signed, reduce_dims, stochastic):
    shape = triton_gemm_ops.group_shape_of(x, reduce_dims)
    if kind == triton_gemm_ops.LUQ:
        codes, alpha = luq_codes_reference(x, bits, reduce_dims, noise=hash_uniform(x, draw_seed(x.device)))
        return _as_int8(codes), alpha.reshape(shape), torch.ones(shape, device=x.device)
    noise = hash_uniform(x, draw_seed(x.device)) if stochastic else None
    q, clip, hi = int_quantize_codes_reference(x, bits, scaling, signed, reduce_dims, stochastic, noise=noise)
    top = top_code_tensor(hi, x.device).expand(clip.shape).reshape(shape)
    return _as_int8(q), clip.reshape(shape), top


def _int_quantize_packed_codes(x, bits, scaling, signed, reduce_dims, stochastic, pack):
    noise = hash_uniform(x, draw_seed(x.device)) if stochastic else None
    q, clip, hi = int_quantize_codes_reference(x, bits, scaling, signed, reduce_dims, stochastic, noise=noise)
    packed = packed_codes.pack_int4(q) if pack else x.new_empty([*x.shape[:-1], 0], dtype=torch.uint8)
    return _as_int8(q), packed, clip.float(), top_code_tensor(hi, x.device).float()


CPU_INT8_DECOMPOSITIONS = {
    ops.quantize_codes.default: _quantize_codes,
    ops.int_quantize_packed_codes.default: _int_quantize_packed_codes,
    ops.kernel_requantize_codes.default: triton_gemm_ops.int_requantize_codes_reference,
    ops.scaled_int8_gemm_cpu.default: cpu_int8_gemm.scaled_int8_gemm_cpu_decomposition,
}


QUANTIZER_DECOMPOSITIONS = {
    ops.int_quantize.default: _int_quantize,
    ops.luq_quantize.default: _luq_quantize,
    ops.qmatmul.default: quantized_matmul.matmul_forward,
    ops.qconv.default: quantized_conv.conv_forward,
    ops.mark_layer.default: _mark_layer,
    ops.dequantize_codes.default: _dequantize_codes,
    ops.unpack_int4_codes.default: triton_gemm_ops.unpack_int4_codes_reference,
    ops.int_requantize_codes.default: triton_gemm_ops.int_requantize_codes_reference,
    ops.int_quantize_packed.default: _int_quantize_packed,
    ops.int_dequantize_packed.default: _int_dequantize_packed,
    ops.int_requantize.default: _int_requantize,
    ops.pack_bits.default: pack_bits,
    ops.unpack_bits.default: unpack_bits,
}
