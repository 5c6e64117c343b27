"""Decompositions of qcompile's graph ops into plain ATen, applied just before Inductor.

Quantizers stay opaque custom ops through AOTAutograd so the compiled graphs can be read back
(the plan) and exported; Inductor then gets their reference implementations, which it fuses
into its generated loops instead of calling them as separate eager kernels. Their random draws
come from `random_bits.hash_uniform` (Inductor's own CPU ``rand`` is ~5x slower).
"""

from __future__ import annotations

import torch

from qcompile.runtime.kernels import cpu_int8_gemm
from qcompile.runtime.ops import (  # noqa: F401  (registers the codes ops this maps)
    block_formats,
    fp8_codes,
    gemm_codes,
    requant_matmul_op,  # noqa: F401  (registers qmatmul_rq)
)
from qcompile.runtime.ops import qconv_op as quantized_conv
from qcompile.runtime.ops import qmatmul_op as quantized_matmul
from qcompile.runtime.reference.block_scaled import block_quantize_reference, fp8_codes_reference
from qcompile.runtime.reference.codes import (
    LUQ,
    dequantize_codes_reference,
    int_requantize_codes_reference,
    packed_quantizer_codes,
    quantizer_codes,
    unpack_int4_codes_reference,
)
from qcompile.runtime.reference.hadamard import hadamard_reference
from qcompile.runtime.reference.int_quant import int_quantize_reference
from qcompile.runtime.reference.luq import luq_quantize_reference
from qcompile.runtime.reference.packed_int import (
    int_dequantize_packed_reference,
    int_quantize_packed_reference,
    int_requantize_reference,
)
from qcompile.runtime.reference.packing import pack_bits, unpack_bits
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


def _fp_quantize(x, element, scaling, block, axis, stochastic, tag):
    noise = hash_uniform(x, draw_seed(x.device)) if stochastic else None
    return block_quantize_reference(x, element, scaling, block, axis, stochastic, noise=noise)


def _fp8_quantize_codes(x, element, block, axis, stochastic):
    # The draws of `_fp_quantize` (same seed order, same hash of the same element index): the
    # FP8 GEMM path quantizes to the very values the simulated path would.
    noise = hash_uniform(x, draw_seed(x.device)) if stochastic else None
    return fp8_codes_reference(x, element, block, axis, stochastic, noise=noise)


def _hadamard(x, signs, axis, block, inverse, tag):
    return hadamard_reference(x, axis, block, signs, inverse=inverse)


def _qmatmul_rq(a_hat, b_hat, *_):
    return quantized_matmul.matmul_forward(a_hat, b_hat)


def _mark_layer(x, tag):
    return x


# The integer GEMM path on the CPU (`cpu-int8`): the quantizers write int8 codes inside the loops
# Inductor generates for them (a reduction for the statistic, one pass for the codes), with the
# same random draws as the float path's `_int_quantize` / `_luq_quantize` (same seed order, same
# hash of the same element index), so `kernels="int8"` and `"reference"` draw the same codes.
# On CUDA these ops stay opaque and run the Triton kernels.


def _quantize_codes(x, kind, bits, scaling, signed, reduce_dims, stochastic):
    noise = hash_uniform(x, draw_seed(x.device)) if kind == LUQ or stochastic else None
    return quantizer_codes(x, kind, bits, scaling, signed, reduce_dims, stochastic, noise=noise)


def _int_quantize_packed_codes(x, bits, scaling, signed, reduce_dims, stochastic, pack):
    noise = hash_uniform(x, draw_seed(x.device)) if stochastic else None
    return packed_quantizer_codes(x, bits, scaling, signed, reduce_dims, stochastic, pack, noise=noise)


CPU_INT8_DECOMPOSITIONS = {
    ops.quantize_codes.default: _quantize_codes,
    ops.int_quantize_packed_codes.default: _int_quantize_packed_codes,
    ops.kernel_requantize_codes.default: int_requantize_codes_reference,
    ops.scaled_int8_gemm_cpu.default: cpu_int8_gemm.scaled_int8_gemm_cpu_decomposition,
}


QUANTIZER_DECOMPOSITIONS = {
    ops.int_quantize.default: _int_quantize,
    ops.luq_quantize.default: _luq_quantize,
    ops.qmatmul.default: quantized_matmul.matmul_forward,
    ops.qmatmul_rq.default: _qmatmul_rq,
    ops.fp_quantize.default: _fp_quantize,
    # The FP8 GEMM path's quantizer and its value for other readers, on every device: Inductor
    # writes the codes in its own loops (CUDA too); only `scaled_fp8_gemm` stays a call.
    ops.fp8_quantize_codes.default: _fp8_quantize_codes,
    ops.fp8_dequantize_codes.default: fp8_codes.fp8_dequantize_reference,
    ops.hadamard.default: _hadamard,
    ops.hadamard_signs.default: block_formats.signs_decomposition,
    ops.qconv.default: quantized_conv.conv_forward,
    ops.mark_layer.default: _mark_layer,
    ops.dequantize_codes.default: dequantize_codes_reference,  # elementwise: fuses into its consumers
    ops.unpack_int4_codes.default: unpack_int4_codes_reference,
    ops.int_requantize_codes.default: int_requantize_codes_reference,
    ops.int_quantize_packed.default: _int_quantize_packed,
    ops.int_dequantize_packed.default: _int_dequantize_packed,
    ops.int_requantize.default: _int_requantize,
    ops.pack_bits.default: pack_bits,
    ops.unpack_bits.default: unpack_bits,
}
