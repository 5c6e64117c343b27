"""Capture the AOTAutograd forward and backward graphs the `fqt` backend compiles, for export.

`capture_training_graphs` compiles a deep copy of the model with the very backend training
uses (same rewrite pass, same joint-graph pass, same partitioner), runs one forward and one
backward so AOTAutograd produces both graphs, and keeps a copy of each graph as our inner
compile receives it: quantizers still opaque ``qcompile::*`` ops, layer markers still in place.
Nothing is compiled by Inductor while capturing (the graphs run eagerly), which makes an export
seconds instead of a full compile.
"""

from __future__ import annotations

import contextlib
import copy
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import fx


@dataclass
class CapturedGraphs:
    """One Dynamo graph's AOT forward/backward pair and what its inputs are."""

    dynamo_inputs: list[Any]
    dynamo_names: list[str]
    record: Any  # qcompile.compiled_graphs.CompiledGraph
    forward: fx.GraphModule | None = None
    backward: fx.GraphModule | None = None
    fw_metadata: Any = None


@dataclass
class _Sink:
    graphs: list[CapturedGraphs] = field(default_factory=list)


_STATE = threading.local()


def active_sink() -> _Sink | None:
    """The capture in progress on this thread, if any (read by `qcompile.backend`)."""
    return getattr(_STATE, "sink", None)


@contextlib.contextmanager
def _capturing() -> Iterator[_Sink]:
    sink = _Sink()
    previous = active_sink()
    _STATE.sink = sink
    try:
        yield sink
    finally:
        _STATE.sink = previous


def begin_graph(gm: fx.GraphModule, example_inputs: Sequence[Any], record: Any) -> None:
    """Called by the backend for each Dynamo graph while a capture is active."""
    sink = active_sink()
    if sink is None:
        return
    names = [n.name for n in gm.graph.nodes if n.op == "placeholder"]
    sink.graphs.append(CapturedGraphs(list(example_inputs), names, record))


def add_aot_graph(kind: str, gm: fx.GraphModule) -> None:
    """Called by the backend's inner compile for the forward and the backward graph."""
    sink = active_sink()
    if sink is None or not sink.graphs:
        return
    current = sink.graphs[-1]
    if kind == "backward":
        # Backward graphs compile lazily, in reverse order of their forwards when there are several.
        target = next(
            (g for g in reversed(sink.graphs) if g.backward is None and g.forward is not None), current
        )
        target.backward = copy.deepcopy(gm)
        return
    from torch._guards import TracingContext

    ctx = TracingContext.try_get()
    current.forward = copy.deepcopy(gm)
    current.fw_metadata = ctx.fw_metadata if ctx is not None else None


def capture_training_graphs(
    model: torch.nn.Module, example_inputs: tuple, policy: Any, inference: bool = False
) -> tuple[torch.nn.Module, list[CapturedGraphs]]:
    """Compile a deep copy of ``model`` with ``fqt`` and ``policy``, run forward and backward
    once on ``example_inputs``, and return the copy and its captured graphs. ``inference``: the
    copy in ``eval()`` mode, one forward under ``torch.no_grad()`` (AOTAutograd's inference graph).

    Resets Dynamo first (`torch._dynamo.reset`): a cached compilation of the same code would
    otherwise be reused without calling the backend, leaving nothing to capture. Other compiled
    models recompile on their next call.
    """
    from qcompile.compiler.backend import fqt_backend

    torch._dynamo.reset()

    shadow = copy.deepcopy(model)
    compiled = torch.compile(shadow, backend=fqt_backend, options={"policy": policy})
    if inference:
        shadow.eval()
        with _capturing() as sink, torch.no_grad():
            compiled(*example_inputs)
        return shadow, sink.graphs
    with _capturing() as sink, torch.enable_grad():
        out = compiled(*example_inputs)
        leaves = [
            t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad
        ]
        if leaves:
            torch.autograd.backward([t.float().sum() for t in leaves])
    return shadow, sink.graphs
