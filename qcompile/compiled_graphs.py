"""What the `fqt` backend compiled, kept so `qcompile.plan` can report it later.

One `CompiledGraph` per Dynamo graph (a model with graph breaks has several). It remembers the
parameters the graph reads (weakly), so a plan can pick the graphs of one model.
"""

from __future__ import annotations

import threading
import weakref
from dataclasses import dataclass, field

import torch

from qcompile.passes import OperandFact, SavedTensor, SiteRecord
from qcompile.policy import Policy


@dataclass
class CompiledGraph:
    policy: Policy
    records: list[SiteRecord]
    params: weakref.WeakSet = field(default_factory=weakref.WeakSet)
    facts: dict[tuple[str, str], OperandFact] = field(default_factory=dict)
    compiled: list[str] = field(default_factory=list)
    forward_roles: dict[str, tuple] = field(default_factory=dict)
    had_params: bool = False
    saved: list[SavedTensor] = field(default_factory=list)
    quantized_inputs: set[str] = field(
        default_factory=set
    )  # tags of quantizers of graph inputs  # what the forward saves for backward
    forward_channels_last: bool = False  # Inductor's layout choice for the forward's conv operands

    def add_facts(self, graph: str, facts: dict[tuple[str, str], OperandFact]) -> None:
        with _LOCK:
            self.compiled.append(graph)
            self.facts.update(facts)


_LOCK = threading.Lock()
_GRAPHS: list[CompiledGraph] = []


def register(graph: CompiledGraph, example_inputs) -> CompiledGraph:
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
        mine = {id(p) for p in model.parameters()}
        return [g for g in graphs if any(id(p) in mine for p in g.params)]
    return graphs


def clear() -> None:
    """Forget every recorded graph (e.g. between experiments in one process)."""
    with _LOCK:
        _GRAPHS.clear()
