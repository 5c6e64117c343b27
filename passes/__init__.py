"""qcompile.passes: graph passes, one folder per compile phase; `pipeline` lists them in order.

- ``pre_aot/``: Dynamo's torch-level graph, before AOTAutograd: `insert_fqt_quantizers` (with
  `quantized_attention` for SDPA).
- ``joint/``: AOTAutograd's joint graph, after Inductor's joint-graph patterns and before
  partitioning: `SaveQuantizedOperands` (packs what backward reads and rebuilds what it can:
  `pack_quantized_operands`, `recompute_from_codes`, `pack_boolean_masks`).
- ``post_aot/``: each forward/backward ATen graph, before Inductor: `unwrap_rng_replays`,
  `annotate_gemm_kernels`, `match_forward_layout`, `strip_layer_markers`, `fuse_triton_gemms`
  (int8 GEMMs: Triton on CUDA, the integer kernel on the CPU), `cancel_pack_round_trips`,
  `decompose_quantizers`.
- ``analysis/``: read-only, shared by the passes and the plan: `find_gemm_sites`, `read_graph`,
  `read_saved_tensors`, `subgraph_modules`.
- `fx_utils`, `graph_meta`: FX helpers and node-meta keys every phase shares.
"""

from qcompile.passes.analysis.gemm_sites import GemmSite, find_gemm_sites, layer_name
from qcompile.passes.analysis.read_quantized_graph import (
    OperandFact,
    forward_tensor_roles,
    quantized_graph_inputs,
    read_graph,
    trace_operand,
)
from qcompile.passes.analysis.saved_for_backward import SavedTensor, read_saved_tensors
from qcompile.passes.analysis.subgraphs import input_aliases, subgraph_modules
from qcompile.passes.joint.pack_saved import (
    forward_uses_channels_last,
    match_forward_layout,
    pack_boolean_masks,
    pack_quantized_operands,
)
from qcompile.passes.joint.recompute import recompute_from_codes
from qcompile.passes.joint.save_quantized_operands import SaveQuantizedOperands
from qcompile.passes.post_aot.fuse_int8_gemms import fuse_triton_gemms
from qcompile.passes.post_aot.gemm_kernel_choice import (
    KERNEL_MODES,
    SavedQuantized,
    annotate_gemm_kernels,
    choose_gemm_kernel,
    demote_triton_gemms,
    saved_quantized_outputs,
)
from qcompile.passes.post_aot.inline_quantizers import decompose_quantizers
from qcompile.passes.post_aot.layer_markers import strip_layer_markers
from qcompile.passes.post_aot.pack_round_trips import cancel_pack_round_trips
from qcompile.passes.post_aot.rng_replays import unwrap_rng_replays
from qcompile.passes.pre_aot.attention_gemms import quantized_attention
from qcompile.passes.pre_aot.insert_quantizers import SiteRecord, insert_fqt_quantizers

__all__ = [
    "KERNEL_MODES",
    "GemmSite",
    "SavedQuantized",
    "OperandFact",
    "SaveQuantizedOperands",
    "SavedTensor",
    "SiteRecord",
    "annotate_gemm_kernels",
    "cancel_pack_round_trips",
    "choose_gemm_kernel",
    "decompose_quantizers",
    "demote_triton_gemms",
    "fuse_triton_gemms",
    "find_gemm_sites",
    "forward_tensor_roles",
    "forward_uses_channels_last",
    "input_aliases",
    "insert_fqt_quantizers",
    "layer_name",
    "match_forward_layout",
    "pack_boolean_masks",
    "pack_quantized_operands",
    "quantized_attention",
    "quantized_graph_inputs",
    "read_graph",
    "read_saved_tensors",
    "recompute_from_codes",
    "saved_quantized_outputs",
    "strip_layer_markers",
    "subgraph_modules",
    "trace_operand",
    "unwrap_rng_replays",
]
