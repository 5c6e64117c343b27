"""qcompile.passes: graph passes, grouped by compile phase.

Before AOTAutograd (Dynamo's torch-level graph):
    `find_gemm_sites`, `insert_fqt_quantizers` (uses `quantized_attention` for SDPA).
On AOTAutograd's joint graph, before partitioning: `save_quantized_operands`.
After AOTAutograd, per forward/backward ATen graph, before Inductor:
    `annotate_gemm_kernels` (which kernel each GEMM runs), `read_graph` (what the plan reports),
    `strip_layer_markers`, `fuse_triton_gemms` (CUDA + Triton only), `decompose_quantizers`.
"""

from .decompose_quantizers import decompose_quantizers
from .fuse_triton_gemms import fuse_triton_gemms
from .gemm_kernel_choice import (
    SavedQuantized,
    annotate_gemm_kernels,
    choose_gemm_kernel,
    demote_triton_gemms,
    saved_quantized_outputs,
)
from .gemm_sites import GemmSite, find_gemm_sites, layer_name
from .insert_quantizers import SiteRecord, insert_fqt_quantizers
from .quantized_attention import quantized_attention
from .read_quantized_graph import OperandFact, forward_tensor_roles, read_graph, trace_operand
from .save_quantized_operands import SaveQuantizedOperands, save_quantized_operands
from .strip_layer_markers import strip_layer_markers

__all__ = [
    "GemmSite",
    "SavedQuantized",
    "OperandFact",
    "SaveQuantizedOperands",
    "SiteRecord",
    "annotate_gemm_kernels",
    "choose_gemm_kernel",
    "decompose_quantizers",
    "demote_triton_gemms",
    "fuse_triton_gemms",
    "find_gemm_sites",
    "forward_tensor_roles",
    "insert_fqt_quantizers",
    "layer_name",
    "quantized_attention",
    "read_graph",
    "save_quantized_operands",
    "saved_quantized_outputs",
    "strip_layer_markers",
    "trace_operand",
]
