"""qcompile.runtime: the quantizer ops and their reference implementations.

Importing this package registers the ``qcompile::*`` torch.library ops.
"""

from qcompile.runtime.ops.aq_quantizer import aq_quantize
from qcompile.runtime.ops.block_formats import fp_quantize, hadamard, hadamard_signs
from qcompile.runtime.ops.decompositions import CPU_INT8_DECOMPOSITIONS, QUANTIZER_DECOMPOSITIONS
from qcompile.runtime.ops.gradient_quantizer import quantize_gradient
from qcompile.runtime.ops.int_quantizer import int_quantize
from qcompile.runtime.ops.layer_marker import mark_layer
from qcompile.runtime.ops.lbt_quantizer import lbt_quantize, lbt_quantize_reference
from qcompile.runtime.ops.learned_clip_quantizer import learned_clip_quantize, learned_clip_reference
from qcompile.runtime.ops.luq_quantizer import luq_quantize
from qcompile.runtime.ops.qconv_op import qconv
from qcompile.runtime.ops.qmatmul_op import SHARED, qmatmul
from qcompile.runtime.ops.requant_matmul_op import qmatmul_rq, requant_gemm
from qcompile.runtime.quantizer_state import QuantizerState, attach_state, state_of
from qcompile.runtime.reference.aq import aq_quantize_reference
from qcompile.runtime.reference.block_scaled import block_quantize_reference
from qcompile.runtime.reference.hadamard import hadamard_reference
from qcompile.runtime.reference.int_quant import int_quantize_reference
from qcompile.runtime.reference.luq import luq_quantize_reference
from qcompile.runtime.reference.scaling_groups import gradient_reduce_dims
from qcompile.runtime.spec import (
    HIGH_PRECISION,
    NAMED_SPECS,
    HadamardSpec,
    QuantSpec,
    parse_hadamard,
    parse_spec,
)

__all__ = [
    "HadamardSpec",
    "block_quantize_reference",
    "fp_quantize",
    "hadamard",
    "hadamard_reference",
    "hadamard_signs",
    "parse_hadamard",
    "qmatmul_rq",
    "requant_gemm",
    "QuantizerState",
    "aq_quantize",
    "aq_quantize_reference",
    "attach_state",
    "lbt_quantize",
    "learned_clip_quantize",
    "learned_clip_reference",
    "lbt_quantize_reference",
    "state_of",
    "HIGH_PRECISION",
    "NAMED_SPECS",
    "CPU_INT8_DECOMPOSITIONS",
    "QUANTIZER_DECOMPOSITIONS",
    "SHARED",
    "QuantSpec",
    "gradient_reduce_dims",
    "int_quantize",
    "int_quantize_reference",
    "luq_quantize",
    "luq_quantize_reference",
    "mark_layer",
    "parse_spec",
    "qconv",
    "qmatmul",
    "quantize_gradient",
]
