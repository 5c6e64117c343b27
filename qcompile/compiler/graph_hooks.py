"""What the backend's callers ask of one compile: graphs only (no Inductor), and who watches.

`qcompile.plan(model, example_inputs)` and `qcompile.export` compile a deep copy of a model to
read its graphs; both want the graphs as our passes leave them, run eagerly (skipping Inductor's
code generation), and export also wants a copy of each graph (`GraphObserver`). This module
holds that per-call state so the backend reads it without importing its callers.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Iterator, Sequence
from typing import Any, Protocol

import torch
from torch import fx

from qcompile.compiler.compiled_graphs import CompiledGraph


class GraphObserver(Protocol):
    """Receives the graphs of the compile in progress (`qcompile.exporters.capture` is one)."""

    def begin_graph(self, gm: fx.GraphModule, example_inputs: Sequence[Any], record: CompiledGraph) -> None:
        """A Dynamo graph, rewritten by the policy, before AOTAutograd."""

    def add_aot_graph(self, kind: str, gm: fx.GraphModule) -> None:
        """A forward, backward or inference graph as AOTAutograd hands it to the inner compile."""


_READ_ONLY: contextvars.ContextVar[bool] = contextvars.ContextVar("qcompile_read_only", default=False)
_OBSERVER: contextvars.ContextVar[GraphObserver | None] = contextvars.ContextVar(
    "qcompile_graph_observer", default=None
)


@contextlib.contextmanager
def graphs_only(observer: GraphObserver | None = None) -> Iterator[None]:
    """Compile with every qcompile pass but run the resulting ATen graphs eagerly instead of
    generating Inductor kernels: what `qcompile.plan(model, example_inputs)` needs (the plan is
    read from the graphs before Inductor sees them), minutes faster on a cold cache.

    AOTAutograd's cache is off inside: a hit would hand back compiled graphs without calling
    the inner compile, leaving nothing to read. ``observer`` receives each graph."""
    read_only = _READ_ONLY.set(True)
    watching = _OBSERVER.set(observer)
    try:
        with torch._functorch.config.patch(enable_autograd_cache=False):
            yield
    finally:
        _OBSERVER.reset(watching)
        _READ_ONLY.reset(read_only)


def read_only() -> bool:
    """Whether the compile in progress should skip Inductor (inside `graphs_only`)."""
    return _READ_ONLY.get()


def observer() -> GraphObserver | None:
    """The `GraphObserver` of the compile in progress, if any."""
    return _OBSERVER.get()
