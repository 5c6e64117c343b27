"""What the `fqt` backend compiled, kept so `qcompile.plan` can report it later.

One `CompiledGraph` per Dynamo graph (a model with graph breaks has several). It remembers the
parameters the graph reads (weakly), so a plan can pick the graphs of one model.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from qcompile.passes import OperandFact, SavedQuantized, SavedTensor, SiteRecord
from qcompile.policy.config import Policy
from qcompile.runtime.quantizer_state import QuantizerState


@dataclass
class CompiledGraph:
    policy: Policy
    records: list[SiteRecord]
    params: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    facts: dict[tuple[str, str], OperandFact] = field(default_factory=dict)
    compiled: list[str] = field(default_factory=list)
    forward_roles: dict[str, tuple] = field(default_factory=dict)
    saved_quantized: dict[str, SavedQuantized] = field(default_factory=dict)  # by forward output
    had_params: bool = False
    state: QuantizerState | None = None  # when the graph has stateful quantizers
    saved: list[SavedTensor] = field(default_factory=list)
    quantized_inputs: set[str] = field(
        default_factory=set
    )  # tags of quantizers of graph inputs  # what the forward saves for backward
    forward_channels_last: bool = False  # Inductor's layout choice for the forward's conv operands
    # Tags of forward quantizers the fusion pass put on the Triton quantizer (backward follows).
    kernel_quantized: set[str] = field(default_factory=set)
    kernels: str = "auto"  # the backend's ``kernels`` option
    strict: bool = False  # the backend's ``strict`` option: high-precision shortfalls raise
    input_aliases: set[str] = field(default_factory=set)  # forward nodes that are graph inputs
    warned: bool = False  # a shortfall warning was issued for this graph already

    def add_facts(self, graph: str, facts: dict[tuple[str, str], OperandFact]) -> None:
        with _LOCK:
            self.compiled.append(graph)
            self.facts.update(facts)


_LOCK = threading.Lock()
_GRAPHS: list[CompiledGraph] = []


def register(graph: CompiledGraph, example_inputs: Sequence[Any]) -> CompiledGraph:
    for t in example_inputs:
        if isinstance(t, torch.nn.Parameter):
            graph.params.add(t)
            graph.had_params = True
    with _LOCK:
        # Forget graphs whose model has been garbage-collected, so long sessions do not grow.
        _GRAPHS[:] = [g for g in _GRAPHS if not g.had_params or len(g.params)]
        _GRAPHS.append(graph)
    return graph


def graphs_for(model: object | None) -> list[CompiledGraph]:
    """Graphs compiled for ``model`` (matched by its parameters), or all graphs for None."""
    with _LOCK:
        graphs = list(_GRAPHS)
    if model is None:
        return graphs
    if isinstance(model, torch.nn.Module):
        mine = _parameter_ids(model)
        return [g for g in graphs if any(id(p) in mine for p in g.params)]
    return graphs


def _parameter_ids(model: torch.nn.Module) -> set[int]:
    """Ids of every tensor that a compiled graph of ``model`` may have read as a parameter.

    FSDP2 (`fully_shard`) registers sharded DTensor parameters on the module but runs the forward
    (and so Dynamo's graph) on separate unsharded parameters that it all-gathers into and reuses
    each step; those are the ones the backend saw, so they count as the model's too.
    """
    ids = {id(p) for p in model.parameters()}
    for module in model.modules():
        get_state = getattr(module, "_get_fsdp_state", None)
        group = getattr(get_state(), "_fsdp_param_group", None) if callable(get_state) else None
        for fsdp_param in getattr(group, "fsdp_params", ()) if group is not None else ():
            unsharded = getattr(fsdp_param, "_unsharded_param", None)
            if unsharded is not None:
                ids.add(id(unsharded))
    return ids


def clear() -> None:
    """Forget every recorded graph (e.g. between experiments in one process)."""
    with _LOCK:
        _GRAPHS.clear()
