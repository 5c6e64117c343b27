"""Compile a deep copy of a model with ``fqt`` and run one step, to read its graphs.

Shared by `qcompile.plan(model, example_inputs)` and `qcompile.export`: both want the graphs
our passes produce for a model without touching the model (its parameters, gradients and
compiled code stay as they are) and without Inductor's code generation (`graphs_only`).

The copy gets its own ``torch.compile`` call and backend object, so Dynamo calls the backend for
it even when a model of the same class is compiled already, and nothing of the user's is
evicted: no `torch._dynamo.reset`.
"""

from __future__ import annotations

import copy
import functools
from collections.abc import Sequence
from typing import Any

import torch

from qcompile.compiler.backend import fqt_backend
from qcompile.compiler.graph_hooks import GraphObserver, graphs_only


def compile_and_step(
    model: torch.nn.Module,
    example_inputs: Sequence[Any],
    options: dict[str, Any],
    *,
    grad: bool,
    eval_mode: bool = False,
    observer: GraphObserver | None = None,
) -> torch.nn.Module:
    """Compile a deep copy of ``model`` with ``fqt`` and ``options``, run it once on
    ``example_inputs`` and return the copy (the plan's graphs match it by its parameters).

    ``grad=True``: a training step, forward then backward of the outputs' sum (AOTAutograd's
    forward and backward graphs). ``grad=False``: one forward under ``torch.no_grad()``
    (AOTAutograd's inference graph). ``eval_mode``: the copy in ``eval()`` mode (else the
    model's own mode). ``observer`` receives each graph.
    """
    shadow = copy.deepcopy(model)
    if eval_mode:
        shadow.eval()
    # A backend object of its own: Dynamo never reuses code compiled for another `torch.compile`
    # call (an earlier probe of the same class would otherwise answer without calling the
    # backend); isolated recompiles: the probe's entries count against no limit of the user's.
    backend = functools.partial(fqt_backend)
    compiled = torch.compile(shadow, backend=backend, options=options, isolate_recompiles=True)
    with graphs_only(observer), torch.set_grad_enabled(grad):
        out = compiled(*example_inputs)
        leaves = [
            t for t in torch.utils._pytree.tree_leaves(out) if isinstance(t, torch.Tensor) and t.requires_grad
        ]
        if leaves:
            torch.autograd.backward([t.float().sum() for t in leaves])
    return shadow
