"""Capture the AOTAutograd forward and backward graphs the `fqt` backend compiles, for export.

`capture_training_graphs` compiles a deep copy of the model with the very backend training
uses (same rewrite pass, same joint-graph pass, same partitioner), runs one forward and one
backward so AOTAutograd produces both graphs, and keeps a copy of each graph as our inner
compile receives it: quantizers still opaque ``qcompile::*`` ops, layer markers still in place.
Nothing is compiled by Inductor while capturing (the graphs run eagerly), which makes an export
seconds instead of a full compile.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx
from torch._functorch._aot_autograd.schemas import ViewAndMutationMeta
from torch._guards import TracingContext

from qcompile.compiler.compiled_graphs import CompiledGraph
from qcompile.compiler.probe import compile_and_step
from qcompile.policy.config import Policy


@dataclass
class CapturedGraphs:
    """One Dynamo graph's AOT forward/backward pair and what its inputs are."""

    dynamo_inputs: list[Any]
    dynamo_names: list[str]
    record: CompiledGraph
    forward: fx.GraphModule | None = None
    backward: fx.GraphModule | None = None
    fw_metadata: ViewAndMutationMeta | None = None


@dataclass
class GraphSink:
    """The `GraphObserver` of one capture: keeps a copy of every graph the backend reads."""

    graphs: list[CapturedGraphs] = field(default_factory=list)

    def begin_graph(self, gm: fx.GraphModule, example_inputs: Sequence[Any], record: CompiledGraph) -> None:
        """Called by the backend for each Dynamo graph."""
        names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
        self.graphs.append(CapturedGraphs(list(example_inputs), names, record))

    def add_aot_graph(self, kind: str, gm: fx.GraphModule) -> None:
        """Called by the backend's inner compile for the forward and the backward graph."""
        if not self.graphs:
            return
        current = self.graphs[-1]
        if kind == "backward":
            # Backward graphs compile lazily, in reverse order of their forwards when there are several.
            target = next(
                (g for g in reversed(self.graphs) if g.backward is None and g.forward is not None), current
            )
            target.backward = copy.deepcopy(gm)
            return
        ctx = TracingContext.try_get()
        current.forward = copy.deepcopy(gm)
        current.fw_metadata = ctx.fw_metadata if ctx is not None else None


def capture_training_graphs(
    model: torch.nn.Module, example_inputs: tuple, policy: Policy, inference: bool = False
) -> tuple[torch.nn.Module, list[CapturedGraphs]]:
    """Compile a deep copy of ``model`` with ``fqt`` and ``policy``, run forward and backward
    once on ``example_inputs``, and return the copy and its captured graphs. ``inference``: the
    copy in ``eval()`` mode, one forward under ``torch.no_grad()`` (AOTAutograd's inference graph).

    The copy compiles under its own ``torch.compile`` wrapper (`compile_and_step`): the user's
    other compiled models keep their compiled code (no `torch._dynamo.reset`).
    """
    sink = GraphSink()
    shadow = compile_and_step(
        model, example_inputs, {"policy": policy}, grad=not inference, eval_mode=inference, observer=sink
    )
    return shadow, sink.graphs
