"""Bind the stateful quantizers of a freshly rewritten graph to their model's state.

The backend sees a Dynamo graph and its example inputs, not the model. The model is found
through its parameters (`qcompile.attach_state` maps them) or, failing that, through the
Dynamo sources of the graph's parameter inputs (``L['self']._modules['fc1']._parameters[...]``):
the outermost object of such a source is the module being compiled, and the state is attached
to it. Each LBT quantizer's tag is then bound to a slot named by layer path and role, stable
across recompilations (`qcompile.runtime.quantizer_state`).
"""

from __future__ import annotations

import collections
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx

from qcompile.passes import SiteRecord
from qcompile.runtime.quantizer_state import QuantizerState, attach_state, bind_tag, state_for_params

GRAD_ROLES = ("grad_dgrad", "grad_wgrad")


def _root_module(gm: fx.GraphModule) -> torch.nn.Module | None:
    """The module whose forward Dynamo is compiling, from a parameter input's source."""
    try:
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
    except Exception:  # noqa: BLE001  (not inside a Dynamo compile: no root to find)
        return None
    if tx is None:
        return None
    tx = getattr(getattr(tx, "output", None), "root_tx", None) or tx
    scope = {"L": tx.f_locals, "G": tx.f_globals}
    for node in gm.graph.find_nodes(op="placeholder"):
        arg = node.meta.get("grapharg")
        if arg is None or not isinstance(getattr(arg, "example", None), torch.nn.Parameter):
            continue
        source = arg.source
        while getattr(source, "base", None) is not None:
            source = source.base
        try:
            root = eval(source.name, {"__builtins__": {}}, scope)  # a Dynamo source name, e.g. L['self']
        except Exception:  # noqa: BLE001
            continue
        if isinstance(root, torch.nn.Module):
            return root
    return None


def stateful_slots(records: Sequence[SiteRecord]) -> list[tuple[str, str]]:
    """(op tag, slot name) for every stateful quantizer the rewrite put in the graph: LBT's γ
    (gradient roles) and learned clips (forward roles)."""
    seen: collections.Counter[str] = collections.Counter()
    out = []
    for rec in records:
        d = rec.decision
        if d is None or not rec.rewritten:
            continue
        occurrence = seen[rec.layer]
        seen[rec.layer] += 1
        layer = rec.layer if occurrence == 0 else f"{rec.layer}#{occurrence}"
        for role in ("weight", "activation", *GRAD_ROLES):
            if role == "grad_wgrad" and d.share_gradient_sample:
                continue  # wgrad reuses the dgrad draw: one γ for the layer
            if getattr(d, role).is_stateful:
                out.append((f"{rec.layer}|{role}|{rec.key}", QuantizerState.slot_name(layer, role)))
    return out


def bind_state(
    gm: fx.GraphModule, example_inputs: Sequence[Any], records: Sequence[SiteRecord]
) -> QuantizerState | None:
    """Attach/find the model's `QuantizerState` and bind every stateful quantizer of ``records``.
    Returns None when the graph has none. A model that cannot be found still trains with a
    state of its own (kept by the plan record), just not inside a ``state_dict``."""
    slots = stateful_slots(records)
    if not slots:
        return None
    state = state_for_params(example_inputs)
    if state is None:
        root = _root_module(gm)
        state = attach_state(root) if root is not None else QuantizerState()
    for tag, name in slots:
        bind_tag(tag, state, name)
        for rec in records:
            if tag.endswith(f"|{rec.key}"):
                rec.extra.setdefault("state_slots", {})[tag.split("|")[-2]] = name
    return state
