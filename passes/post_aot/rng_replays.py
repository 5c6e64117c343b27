"""Post-AOT pass: `unwrap_rng_replays`, quantizers that a user's activation checkpoint replays
back as plain calls.

Under ``torch.utils.checkpoint`` AOTAutograd's partitioner recomputes the checkpointed region in
the backward graph. Every op tagged ``nondeterministic_seeded`` in it (our quantizer ops carry
that tag, because their stochastic form draws a seed) is wrapped so that the replay sees the same
random state: ``run_and_save_rng_state(op, *args)`` in the forward graph (which also outputs the
CPU generator's state for backward) and ``run_with_rng_state(state, op, *args)`` in the backward
graph. A round-to-nearest quantizer draws nothing, so the wrapper only hides it: from the plan's
reader, from the kernel decision and from the inlining of quantizers into Inductor's loops.
This pass puts such calls back as the op itself; the forward outputs an empty tensor in place
of the generator state, so the graphs' signatures stay as AOTAutograd made them, and backward
ignores it. Stochastic quantizers in checkpointed regions are saved,
not replayed (`SaveQuantizedOperands`), so they never reach here.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

_RUN_AND_SAVE = torch._prims.rng_prims.run_and_save_rng_state
_RUN_WITH = torch._prims.rng_prims.run_with_rng_state


def draws_nothing(op: object, args: tuple) -> bool:
    """A qcompile quantizer call that uses no random numbers: ``int_quantize`` (and its packed
    form) with round-to-nearest."""
    qops = torch.ops.qcompile
    if op in (qops.int_quantize.default, qops.int_quantize_packed.default, qops.fp_quantize.default):
        return not args[5]
    if op is qops.hadamard_signs.default:
        return bool(args[2])  # the run's fixed sign vector
    return False


def _concrete(size: int | torch.SymInt) -> int:
    """The generator state's length (the partitioner's fake state may carry a symbol for it)."""
    return size if isinstance(size, int) else int(size.node.hint)


def unwrap_rng_replays(gm: fx.GraphModule) -> int:
    """In place on a forward or backward graph; returns how many calls were unwrapped."""
    count = 0
    for node in list(gm.graph.nodes):
        if node.op != "call_function" or node.target not in (_RUN_AND_SAVE, _RUN_WITH):
            continue
        saving = node.target is _RUN_AND_SAVE
        op, *args = node.args if saving else node.args[1:]
        if not draws_nothing(op, tuple(args)):
            continue
        if saving and any(u.op != "call_function" or u.target is not operator.getitem for u in node.users):
            continue  # not the partitioner's (state, value) pair: leave it
        with gm.graph.inserting_before(node):
            call = gm.graph.call_function(op, tuple(args), dict(node.kwargs))
        (_unwrap_saving if saving else _unwrap_replay)(gm.graph, node, call)
        count += 1
    if count:
        gm.graph.lint()
        gm.recompile()
    return count


def _unwrap_replay(graph: fx.Graph, node: fx.Node, call: fx.Node) -> None:
    """Backward: ``run_with_rng_state(state, op, *args)`` → ``op(*args)``; the state input, now
    unread, is described as the empty tensor the forward hands over."""
    call.meta.update(node.meta)
    state = node.args[0]
    node.replace_all_uses_with(call)
    graph.erase_node(node)
    if state.op == "placeholder" and not state.users:
        state.meta["val"] = state.meta["val"].new_empty((0,))


def _unwrap_saving(graph: fx.Graph, node: fx.Node, call: fx.Node) -> None:
    """Forward: ``run_and_save_rng_state(op, *args)`` → ``op(*args)`` for its value, and an
    empty tensor for the generator state it handed to backward."""
    for user in list(node.users):
        if user.args[1] == 1:
            call.meta.update(user.meta)
            user.replace_all_uses_with(call)
        else:
            state = user.meta["val"]
            with graph.inserting_before(user):
                empty = graph.call_function(
                    torch.ops.aten.full.default, ([0], 0), {"dtype": state.dtype, "device": state.device}
                )
            empty.meta.update(user.meta)
            user.replace_all_uses_with(empty)
        graph.erase_node(user)
    graph.erase_node(node)
