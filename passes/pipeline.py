"""The graph passes of each compile phase, in the order the ``fqt`` backend runs them.

This file is the pipeline; `qcompile.compiler.backend` runs these lists and adds only what is the
compiler's own business (the plan's record, export observers, Inductor itself).

1. ``PRE_AOT`` on Dynamo's torch-level graph: the policy's quantizers go in (`pre_aot/`).
2. ``JOINT`` on AOTAutograd's joint forward+backward graph, as Inductor's joint custom post pass:
   what backward reads from forward is saved packed or rebuilt from codes (`joint/`).
3. On each partitioned forward / backward ATen graph (`post_aot/`, reading through `analysis/`):
   ``POST_AOT_PREPARE`` (checkpoint replays unwrapped, forward outputs read, each GEMM's kernel
   chosen), then the backend shows the graph to an export observer, then ``POST_AOT_LOWER``
   (what backward saves read, layouts matched, the plan's facts read, layer markers stripped,
   int8 GEMMs fused, higher-order-op bodies lowered, quantizers inlined as ATen). A graph for
   Inductor then gets ``POST_AOT_INDUCTOR`` (the inlined random draws seeded Inductor's way) and
   Inductor compiles what comes out; a graph run eagerly (graphs-only) does not.
"""

from __future__ import annotations

import copy
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Protocol

from torch import fx

from qcompile.passes.analysis.read_quantized_graph import (
    OperandFact,
    forward_tensor_roles,
    quantized_graph_inputs,
    read_graph,
)
from qcompile.passes.analysis.saved_for_backward import SavedTensor, read_saved_tensors
from qcompile.passes.analysis.subgraphs import input_aliases, subgraph_modules
from qcompile.passes.joint.pack_saved import forward_uses_channels_last, match_forward_layout
from qcompile.passes.joint.save_quantized_operands import SaveQuantizedOperands
from qcompile.passes.post_aot.fuse_int8_gemms import fuse_triton_gemms
from qcompile.passes.post_aot.gemm_kernel_choice import (
    SavedQuantized,
    annotate_gemm_kernels,
    demote_triton_gemms,
    saved_quantized_outputs,
)
from qcompile.passes.post_aot.inductor_random import seed_random_draws
from qcompile.passes.post_aot.inline_quantizers import decompose_quantizers
from qcompile.passes.post_aot.layer_markers import strip_layer_markers
from qcompile.passes.post_aot.pack_round_trips import cancel_pack_round_trips
from qcompile.passes.post_aot.rng_replays import unwrap_rng_replays
from qcompile.passes.pre_aot.insert_quantizers import insert_fqt_quantizers


class CompileRecord(Protocol):
    """What the post-AOT passes of one Dynamo graph share between its forward and backward
    graphs (the backend's `CompiledGraph` is one)."""

    kernels: str
    forward_roles: dict[str, tuple]
    saved_quantized: dict[str, SavedQuantized]
    quantized_inputs: set[str]
    input_aliases: set[str]
    kernel_quantized: set[str]
    saved: list[SavedTensor]
    forward_channels_last: bool

    def add_facts(self, graph: str, facts: dict[tuple[str, str], OperandFact]) -> None: ...


@dataclass
class GraphInCompile:
    """One AOT graph going through the post-AOT passes: its kind (``forward``, ``backward`` or
    ``inference``), the bodies of its higher-order op calls, and the record it fills."""

    gm: fx.GraphModule
    kind: str
    record: CompileRecord
    subgraphs: list[fx.GraphModule]

    @classmethod
    def of(cls, gm: fx.GraphModule, kind: str, record: CompileRecord) -> GraphInCompile:
        return cls(gm, kind, record, subgraph_modules(gm))


@dataclass(frozen=True)
class PostAotPass:
    """One post-AOT step: ``run`` on the graph, for graphs of the given kinds only."""

    name: str
    run: Callable[[GraphInCompile], None]
    kinds: tuple[str, ...] = ("forward", "backward", "inference")


def _unwrap_rng_replays(g: GraphInCompile) -> None:
    for gm in (g.gm, *g.subgraphs):  # quantizers a user's activation checkpoint replays
        unwrap_rng_replays(gm)


def _read_forward_outputs(g: GraphInCompile) -> None:
    g.record.forward_roles.update(forward_tensor_roles(g.gm))
    g.record.saved_quantized.update(saved_quantized_outputs(g.gm))
    g.record.quantized_inputs.update(quantized_graph_inputs(g.gm))
    g.record.input_aliases.update(input_aliases(g.gm))


def _choose_gemm_kernels(g: GraphInCompile) -> None:
    annotate_gemm_kernels(g.gm, g.record.saved_quantized, kernels=g.record.kernels)
    for sub in g.subgraphs:  # bodies stay on Inductor's float path: fusion does not enter them
        annotate_gemm_kernels(sub, g.record.saved_quantized, kernels=g.record.kernels)
        demote_triton_gemms(sub, "inside a higher-order op's body, not fused")


def _read_saved_for_backward(g: GraphInCompile) -> None:
    r = g.record
    r.saved = read_saved_tensors(g.gm, r.forward_roles, r.quantized_inputs, r.input_aliases)


def _match_forward_layout(g: GraphInCompile) -> None:
    match_forward_layout(g.gm, g.record.forward_channels_last)


def _read_plan_and_fuse_int8_gemms(g: GraphInCompile) -> None:
    """The plan's facts are read before markers go; then int8 GEMMs are fused. Fusion is a fast
    path: if it fails the graph is restored, every GEMM demoted with the reason, and a warning
    says so (never a failed compile, never a silent fallback)."""
    backup = copy.deepcopy(g.gm.graph)  # nodes copied, metadata shared: cheap
    try:
        facts = read_graph(g.gm, g.kind)
        strip_layer_markers(g.gm)
        fuse_triton_gemms(g.gm, g.record.saved_quantized, g.record.kernel_quantized)
    except Exception as exc:
        g.gm.graph = backup
        demote_triton_gemms(g.gm, f"fusion failed ({type(exc).__name__})")
        warnings.warn(f"qcompile: Triton GEMM fusion failed, Inductor path kept: {exc!r}", stacklevel=2)
        facts = read_graph(g.gm, g.kind)
        strip_layer_markers(g.gm)
    for sub in g.subgraphs:  # bodies of torch.cond branches and nested regions: read, then lowered
        facts.update(read_graph(sub, g.kind))
        strip_layer_markers(sub)
        decompose_quantizers(sub)
    g.record.add_facts(g.kind, facts)


def _cancel_pack_round_trips(g: GraphInCompile) -> None:
    cancel_pack_round_trips(g.gm)


def _inline_quantizers(g: GraphInCompile) -> None:
    decompose_quantizers(g.gm)


def _seed_random_draws(g: GraphInCompile) -> None:
    for gm in (g.gm, *g.subgraphs):
        seed_random_draws(gm)


def _read_forward_layout(g: GraphInCompile) -> None:
    g.record.forward_channels_last = forward_uses_channels_last(g.gm)


# Each takes (Dynamo graph, policy), rewrites it in place and returns its sites' records.
PRE_AOT = (insert_fqt_quantizers,)
# Inductor takes one joint-graph post pass: this class, built with the policy's pack/recompute.
JOINT_PASS = SaveQuantizedOperands
POST_AOT_PREPARE: Sequence[PostAotPass] = (
    PostAotPass("unwrap_rng_replays", _unwrap_rng_replays),
    PostAotPass("read_forward_outputs", _read_forward_outputs, ("forward", "inference")),
    PostAotPass("choose_gemm_kernels", _choose_gemm_kernels),
)
POST_AOT_LOWER: Sequence[PostAotPass] = (
    PostAotPass("read_saved_for_backward", _read_saved_for_backward, ("backward",)),
    PostAotPass("match_forward_layout", _match_forward_layout, ("backward",)),
    PostAotPass("read_plan_and_fuse_int8_gemms", _read_plan_and_fuse_int8_gemms),
    PostAotPass("cancel_pack_round_trips", _cancel_pack_round_trips, ("backward",)),
    PostAotPass("inline_quantizers", _inline_quantizers),
    PostAotPass("read_forward_layout", _read_forward_layout, ("forward",)),
)
# Only where Inductor compiles the graph (not in eager graphs-only runs: see `seed_random_draws`).
POST_AOT_INDUCTOR: Sequence[PostAotPass] = (PostAotPass("seed_random_draws", _seed_random_draws),)


def run_post_aot(passes: Sequence[PostAotPass], graph: GraphInCompile) -> None:
    """Run ``passes`` in order on ``graph``, each only on the kinds of graph it is for."""
    for p in passes:
        if graph.kind in p.kinds:
            p.run(graph)
