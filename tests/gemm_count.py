"""Count the GEMMs of a model's forward ATen graph independently of qcompile (AOTAutograd with
no qcompile pass), to check that the plan lists every one (`tests/test_gemm_census.py`,
`tests/test_graph_fuzz.py`)."""

from __future__ import annotations

import copy

import torch
from torch._dynamo.backends.common import aot_autograd

aten = torch.ops.aten
ONE_GEMM = {aten.mm.default, aten.addmm.default, aten.bmm.default, aten.baddbmm.default,
            aten.convolution.default}  # fmt: skip
TWO_GEMMS = {  # fused attention: q·kᵀ and p·v
    aten._scaled_dot_product_flash_attention_for_cpu.default,
    aten._scaled_dot_product_efficient_attention.default,
    aten._scaled_dot_product_flash_attention.default,
    aten._scaled_dot_product_cudnn_attention.default,
}
RUN_AND_SAVE = torch._prims.rng_prims.run_and_save_rng_state
RUN_WITH = torch._prims.rng_prims.run_with_rng_state


def _count_gemms(gm: torch.fx.GraphModule) -> int:
    """GEMMs one run of ``gm`` performs, higher-order op bodies counted per call."""
    count = 0
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        target = node.target
        if target in (RUN_AND_SAVE, RUN_WITH):  # a random op kept replayable under checkpointing
            target = node.args[0] if target is RUN_AND_SAVE else node.args[1]
        count += 1 if target in ONE_GEMM else 2 if target in TWO_GEMMS else 0
        if isinstance(node.target, torch._ops.HigherOrderOperator):
            for arg in node.args:
                if isinstance(arg, torch.fx.Node) and arg.op == "get_attr":
                    body = getattr(gm, str(arg.target))
                    if isinstance(body, torch.fx.GraphModule):
                        count += _count_gemms(body)
    return count


def independent_gemm_count(model: torch.nn.Module, inputs: tuple) -> int:
    """Forward GEMMs of ``model`` in the ATen graph AOTAutograd makes, qcompile not involved."""
    counts = []

    def forward_compiler(gm, example_inputs):
        counts.append(_count_gemms(gm))
        return gm.forward

    compiled = torch.compile(copy.deepcopy(model), backend=aot_autograd(fw_compiler=forward_compiler))
    compiled(*inputs)
    return sum(counts)
