"""qcompile.runtime: the quantizer ops and their reference implementations.

Importing this package registers the ``qcompile::*`` torch.library ops.
"""

from .aq_quantize import aq_quantize, aq_quantize_reference
from .decompositions import CPU_INT8_DECOMPOSITIONS, QUANTIZER_DECOMPOSITIONS
from .gradient_quantize import gradient_reduce_dims, quantize_gradient
from .int_quantize import int_quantize, int_quantize_reference
from .layer_marker import mark_layer
from .lbt_quantize import lbt_quantize, lbt_quantize_reference
from .learned_clip import learned_clip_quantize, learned_clip_reference
from .luq_quantize import luq_quantize, luq_quantize_reference
from .quantized_conv import qconv
from .quantized_matmul import SHARED, qmatmul
from .quantizer_state import QuantizerState, attach_state, state_of
from .spec import HIGH_PRECISION, NAMED_SPECS, QuantSpec, parse_spec

__all__ = [
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
