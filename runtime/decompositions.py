"""Decompositions of qcompile's graph ops into plain ATen, applied just before Inductor.

Quantizers stay opaque custom ops through AOTAutograd so the compiled graphs can be read back
(the plan) and exported; Inductor then gets their reference implementations, which it fuses
into its generated loops instead of calling them as separate eager kernels. Their random draws
come from `random_bits.hash_uniform` (Inductor's own CPU ``rand`` is ~5x slower).
"""

from __future__ import annotations

import torch

from . import layer_marker, packed_codes, quantized_conv, quantized_matmul, triton_gemm_ops  # noqa: F401  (register the ops first)
from .int_quantize import int_quantize_reference
from .luq_quantize import luq_quantize_reference
from .packed_codes import (
    int_dequantize_packed_reference,
    int_quantize_packed_reference,
    int_requantize_reference,
    pack_bits,
    unpack_bits,
)
from .random_bits import draw_seed, hash_uniform

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
