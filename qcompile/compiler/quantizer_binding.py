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
import re
from collections.abc import Sequence
from typing import Any

import torch
from torch import fx

from qcompile.passes import SiteRecord
from qcompile.runtime.quant_tag import QuantTag
from qcompile.runtime.quantizer_state import QuantizerState, attach_state, bind_tag, state_for_params

GRAD_ROLES = ("grad_dgrad", "grad_wgrad")


def resolve_source(source: Any, f_locals: dict[str, Any], f_globals: dict[str, Any]) -> Any:
    """The object a Dynamo `Source` names, found by walking its chain (no ``eval`` of its name).

    Dynamo names a parameter by how the compiled frame reaches it, e.g.
    ``L['self']._modules['blocks']._modules['0']._parameters['weight']``: a `LocalSource` or
    `GlobalSource` at the root, then attribute (`AttrSource`) and item (`GetItemSource`,
    `DictGetItemSource`) steps, with module/parameter wrappers (`NNModuleSource` and kin) that
    name the same object as their base. Raises LookupError for any other kind of source.
    """
    from torch._dynamo import source as dynamo_source

    if isinstance(source, dynamo_source.LocalSource):
        return f_locals[source.local_name]
    if isinstance(source, dynamo_source.GlobalSource):
        return f_globals[source.global_name]
    if isinstance(source, dynamo_source.AttrSource):  # ParamBufferSource and kin are AttrSources
        obj = resolve_source(source.base, f_locals, f_globals)
        for member in source.member.split("."):
            obj = getattr(obj, member)
        return obj
    if isinstance(source, (dynamo_source.GetItemSource, dynamo_source.DictGetItemSource)):
        index = source.index
        if not isinstance(index, (str, int)):
            raise LookupError(f"cannot follow the item {index!r} of {source.name}")
        return resolve_source(source.base, f_locals, f_globals)[index]
    if isinstance(source, dynamo_source.NNModuleSource):
        return resolve_source(source.base, f_locals, f_globals)
    raise LookupError(f"cannot follow a {type(source).__name__} ({source.name})")


def root_source(source: Any) -> Any:
    """The outermost source of a chain (the frame's local or global that everything hangs from)."""
    while getattr(source, "base", None) is not None:
        source = source.base
    return source


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
    for node in gm.graph.find_nodes(op="placeholder"):
        arg = node.meta.get("grapharg")
        if arg is None or not isinstance(getattr(arg, "example", None), torch.nn.Parameter):
            continue
        try:
            root = resolve_source(root_source(arg.source), tx.f_locals, tx.f_globals)
        except (LookupError, AttributeError, TypeError):
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
                out.append(
                    (QuantTag(rec.layer, role, rec.key).encode(), QuantizerState.slot_name(layer, role))
                )
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
        parsed = QuantTag.parse(tag)
        for rec in records:
            if parsed.key == rec.key:
                rec.extra.setdefault("state_slots", {})[parsed.role] = name
    pass_learned_clips(gm, state, dict(slots))
    return state


def pass_learned_clips(gm: fx.GraphModule, state: QuantizerState, slots: dict[str, str]) -> None:
    """Give every learned-clip quantizer its α as an input: each
    ``learned_clip_quantize.unbound(x, bits, signed, tag)`` node becomes
    ``learned_clip_quantize(x, bits, signed, α, tag)``, where α, the slot's Parameter, is a
    parameter of ``gm`` (read by a ``get_attr`` node) that AOTAutograd lifts into a graph input.
    The op's backward then returns ∂L/∂α through autograd, so ``α.grad`` accumulates as any
    parameter's does, where optimizers and DDP's and FSDP's gradient hooks see it."""
    from torch._dynamo.source import ConstantSource

    unbound = torch.ops.qcompile.learned_clip_quantize.unbound
    for node in list(gm.graph.find_nodes(op="call_function", target=unbound)):
        x, bits, signed, tag = node.args
        attr = "qcompile_clip_" + re.sub(r"\W", "_", slots[tag])
        if not hasattr(gm, attr):
            gm.register_parameter(attr, state.clip(slots[tag]))
            # AOTAutograd matches every parameter of a Dynamo graph to the source it came
            # from; this one comes from no frame, so it is named as a constant of the graph.
            sources = getattr(gm, "_param_name_to_source", None)
            if sources is not None:
                sources[attr] = ConstantSource(attr)
        with gm.graph.inserting_before(node):
            alpha = gm.graph.get_attr(attr)
            bound = gm.graph.call_function(
                torch.ops.qcompile.learned_clip_quantize.default, (x, bits, signed, alpha, tag)
            )
        bound.meta.update(node.meta)
        node.replace_all_uses_with(bound)
        gm.graph.erase_node(node)
    gm.recompile()
