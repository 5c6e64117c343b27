"""Joint-graph pass: backward recomputes FP32 activations from the packed codes instead of saving them.

Packing leaves FP32 only what no quantizer produced: the inputs of LayerNorm and BatchNorm, the
softmax probabilities, the input of a high-precision (first/last) layer. Most of them are one GEMM
away from codes the backward holds anyway: a LayerNorm input is ``x + out_proj(Â)``, softmax's
output is ``softmax(q̂·k̂ᵀ)``, the last layer's input is ``relu(X̂·Ŵᵀ + b)``. This pass clones such
chains into the backward (each clone marked ``MUST_RECOMPUTE``) on top of the rebuilt ``X̂``/``Ŵ``
(`joint.pack_saved`), so the partitioner saves the codes and a few small statistics instead of
the FP32 tensor: flash attention's trick, applied to every tensor it fits.

Which tensors, decided in forward order, one tensor (a *target*: a forward value the backward
reads) at a time:

* its recompute chain may use pointwise ops, views, copies, gathers and GEMMs; it stops at
  *leaves*: graph inputs and parameters, rebuilt quantizer outputs, tensors already saved, and
  small statistics (results of reductions, or tensors broadcast into larger ones: LayerNorm's mean
  and rstd, softmax's max and sum), at most an eighth of the target's elements each;
* it holds at most ``max_gemms`` GEMMs in all (default 1), so a recompute stays local: the
  residual stream of a transformer is saved once per layer and the tensor one GEMM downstream
  of it recomputed, rather than the whole network replayed in backward;
* a boolean mask is recomputed only when its chain, within that limit, needs no GEMM that is not
  replayed already (otherwise one bit per element is cheaper: `pack_boolean_masks` stores it);
* random ops, and anything else unknown, are never recomputed; a target that needs one is saved.

Bit-identity: replayed GEMMs run on bit-identical operands in the layout the forward's had (the
contiguous layout of an intermediate; channels-last for convolutions under Inductor's layout
optimisation, `match_forward_layout`), pointwise ops are the forward's own, and no statistic is
recomputed (its saved value is reused), so the backward sees the very values the forward computed
(tested against unpacked training). The pass runs after Inductor's joint-graph rewrites, so they
do not depend on what it saves.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx
from torch.utils.checkpoint import CheckpointPolicy

from qcompile.passes.fx_utils import FORWARD_GEMM_TARGETS, hinted_numel, joint_regions, new_node, node_value
from qcompile.passes.graph_meta import RECOMPUTE_META, TARGET_META
from qcompile.passes.joint.pack_saved import MIN_MASK_ELEMENTS

aten = torch.ops.aten
qops = torch.ops.qcompile

LEAF_FRACTION = 8  # a new (not otherwise saved) leaf has at most 1/8 of the target's elements

# Deterministic, one output element from a few input elements: cheap to replay.
COPY_TARGETS = {
    aten.clone.default, aten.embedding.default, aten._to_copy.default, aten.cat.default,
    aten.constant_pad_nd.default, aten.index.Tensor, aten.gather.default,
    aten.arange.start, aten.arange.default, aten.full.default, aten.scalar_tensor.default,
    aten.zeros.default, aten.ones.default, aten.lift_fresh_copy.default,
    torch.ops.prims.convert_element_type.default, torch.ops.prims.iota.default,
}  # fmt: skip


def _replayable_here(node: fx.Node) -> bool:
    """A call whose output the backward can recompute exactly from its inputs."""
    if node.op != "call_function":
        return False
    if node.target is operator.getitem:  # an output of a multi-output op: replayable with it
        return _replayable(node.args[0])
    return _replayable(node)


def _replayable(node: fx.Node) -> bool:
    target = node.target
    if target in FORWARD_GEMM_TARGETS or target in COPY_TARGETS:
        return True
    if not isinstance(target, torch._ops.OpOverload):
        return False
    if torch.Tag.nondeterministic_seeded in target.tags or target._schema.is_mutable:
        return False
    return target.is_view or torch.Tag.pointwise in target.tags


@dataclass
class _Chain:
    """What recomputing one node takes: the GEMMs it replays, and the leaves it reads that are
    neither free nor saved already (they would become new saved tensors)."""

    gemms: set[fx.Node] = field(default_factory=set)
    new_leaves: set[fx.Node] = field(default_factory=set)
    ok: bool = True


class _Planner:
    def __init__(self, graph: fx.Graph, rebuilt: dict[fx.Node, fx.Node], max_gemms: int) -> None:
        self.graph = graph
        self.rebuilt = rebuilt
        self.max_gemms = max_gemms
        self.backward, self.forward = joint_regions(graph)  # the rest needs no tangent: computable before
        self.saved: set[fx.Node] = set()  # targets decided to stay saved
        self.clones: dict[fx.Node, fx.Node] = {}  # forward node -> its recompute in backward
        self.chains: dict[fx.Node, _Chain] = {}
        self.barriers: dict[fx.Node, fx.Node] = {}  # graph input -> its marker in backward
        self.counted: set[fx.Node] = set()  # recomputed tensors the plan counts as FP32-saved

    def free(self, node: fx.Node) -> bool:
        """Available in backward at no memory cost beyond what is saved already: graph inputs,
        rebuilt operands (and what is already rebuilt in backward from them), saved tensors."""
        return (
            node.op == "placeholder"
            or node in self.rebuilt
            or node in self.saved
            or node.meta.get("recompute") is CheckpointPolicy.MUST_RECOMPUTE
        )

    def chain(self, root: fx.Node) -> _Chain:
        """The recompute chain of ``root`` (memoised, built inputs first without recursion).

        Nodes already cloned for an earlier target are walked through, not treated as free:
        their GEMMs count, which is what keeps every recompute within ``max_gemms`` of a leaf."""
        stack = [root]
        while stack:
            node = stack[-1]
            if node in self.chains:
                stack.pop()
                continue
            pending = [a for a in node.all_input_nodes if not self.free(a) and a not in self.chains]
            if pending and _replayable_here(node) and not _is_statistic(node):
                stack.extend(pending)
                continue
            stack.pop()
            self.chains[node] = self._combine(node)
        return self.chains[root]

    def _combine(self, node: fx.Node) -> _Chain:
        c = _Chain()
        if not _replayable_here(node) or _is_statistic(node):
            c.ok = False
            return c
        if node.target in FORWARD_GEMM_TARGETS:
            c.gemms.add(node)
        for arg in node.all_input_nodes:
            if self.free(arg):
                continue
            sub = self.chains[arg]
            if sub.ok:
                c.gemms |= sub.gemms
                c.new_leaves |= sub.new_leaves
            else:
                c.new_leaves.add(arg)
        return c

    def accept(self, target: fx.Node) -> bool:
        """Whether recomputing ``target`` saves memory at an acceptable cost (module docstring)."""
        val = node_value(target)
        numel = hinted_numel(val)
        if numel is None or numel < MIN_MASK_ELEMENTS:
            return False
        c = self.chain(target)
        if not c.ok:
            return False
        for leaf in c.new_leaves:
            leaf_numel = hinted_numel(node_value(leaf))
            if leaf_numel is None or leaf_numel * LEAF_FRACTION > numel:
                return False
        if len(c.gemms) > self.max_gemms:
            return False
        return val.dtype is not torch.bool or not c.gemms - set(self.clones)

    def clone(self, root: fx.Node) -> tuple[fx.Node, set[fx.Node]]:
        """``root``'s recompute in backward: its chain cloned (inputs first, without recursion),
        leaves read as they are, rebuilt operands in place of the quantizer outputs. Returns the
        replacement and the forward nodes of the chain."""
        chain, stack = set(), [root]
        while stack:  # the forward nodes to replay, cloned already or not
            node = stack.pop()
            if node not in chain and not self._leaf(node):
                chain.add(node)
                stack.extend(node.all_input_nodes)
        stack = [root]
        while stack:
            node = stack[-1]
            if node not in chain or node in self.clones:
                stack.pop()
                continue
            pending = [a for a in node.all_input_nodes if a in chain and a not in self.clones]
            if pending:
                stack.extend(pending)
                continue
            stack.pop()
            args = fx.map_arg(node.args, self._read)
            kwargs = fx.map_arg(node.kwargs, self._read)
            with self.graph.inserting_before(self.graph.output_node()):
                new = new_node(
                    self.graph, node.target, args, node, CheckpointPolicy.MUST_RECOMPUTE, dict(kwargs)
                )
            new.meta[RECOMPUTE_META] = node.name
            self.clones[node] = new
        return self._read(root), chain

    def count_as_fp32_saved(self, target: fx.Node, chain: set[fx.Node]) -> None:
        """Mark the tensor FP32 training would have saved in ``target``'s place (for the plan's
        "FP32 would save"): its base through views, unless it is a float derived from a tensor
        counted already (softmax's output and its negation are one saved tensor) or a constant."""
        base = _view_base(target)
        reads_a_tensor = any(self._leaf(a) for n in chain for a in n.all_input_nodes)
        if (
            base in self.clones
            and node_value(base).is_floating_point()
            and reads_a_tensor
            and not chain & self.counted
        ):
            self.clones[base].meta[TARGET_META] = True
            self.counted.add(base)

    def _leaf(self, node: fx.Node) -> bool:
        """Read as it is: free, or a small result the chain cannot replay (saved)."""
        return self.free(node) or not self.chains[node].ok

    def _read(self, node: fx.Node) -> fx.Node:
        """What backward reads in place of forward ``node``. A graph input goes through an
        identity marker: a clone whose inputs were all the forward node's own would otherwise be
        merged back into it by the partitioner's common-subexpression elimination (and saved).
        A symbolic size (a SymInt input under dynamic shapes) is read as it is."""
        if node.op == "placeholder" and isinstance(node_value(node), torch.Tensor):
            if node not in self.barriers:
                with self.graph.inserting_before(self.graph.output_node()):
                    self.barriers[node] = new_node(
                        self.graph, qops.mark_layer.default, (node, "|recompute|"), node,
                        CheckpointPolicy.MUST_RECOMPUTE,
                    )  # fmt: skip
            return self.barriers[node]
        return self.rebuilt.get(node) or self.clones.get(node) or node


def recompute_from_codes(graph: fx.Graph, rebuilt: dict[fx.Node, fx.Node], max_gemms: int = 1) -> int:
    """In place on the joint graph; returns how many forward tensors backward now recomputes.

    ``rebuilt`` maps each forward quantizer output ``X̂`` to the node that rebuilds it in backward
    from its codes (`pack_quantized_operands`). ``max_gemms=0`` recomputes pointwise chains only.
    """
    merge_duplicates(graph)
    planner = _Planner(graph, rebuilt, max_gemms)
    backward = planner.backward
    # Targets: values computed without the tangents that a tangent-dependent node reads, i.e.
    # what the partitioner would otherwise save (a mask, not the tensor it was compared from).
    targets = [
        n
        for n in graph.nodes
        if n.op == "call_function"
        and n not in backward
        and not planner.free(n)
        and any(_reads_in_backward(u, backward) for u in n.users)
        and any(a.op == "placeholder" or not planner.free(a) for a in n.all_input_nodes)
    ]  # (a node made from rebuilt operands only, or from nothing, costs the partitioner nothing)
    count = 0
    for target in sorted(targets, key=_forward_time(graph, planner.forward).__getitem__):
        if target in rebuilt or target in planner.clones:
            continue
        if not planner.accept(target):
            planner.saved.add(target)
            continue
        replacement, chain = planner.clone(target)
        planner.count_as_fp32_saved(target, chain)
        for user in [u for u in target.users if _reads_in_backward(u, backward)]:
            user.replace_input_with(target, replacement)
        count += 1
    if count:
        _place_before_first_use(graph)
    return count


def _is_statistic(node: fx.Node) -> bool:
    """A small tensor broadcast into a larger one (a LayerNorm's rstd, a BatchNorm's scale): kept
    as a leaf, saved as it is, even where it could be replayed. Saving it costs next to nothing,
    and replaying it would recompute a transcendental function in another kernel, where its
    vectorisation, and so its last bit, may differ."""
    numel = hinted_numel(node_value(node))
    if numel is None or not node.all_input_nodes:
        return False
    return any((hinted_numel(node_value(u)) or 0) >= LEAF_FRACTION * numel for u in node.users)


def _reads_in_backward(user: fx.Node, backward: set[fx.Node]) -> bool:
    """A backward node reading a value (the joint graph's output node returns forward outputs
    and gradients alike: it reads nothing in backward)."""
    return user in backward and user.op != "output"


def _hashable(value):
    if isinstance(value, (list, tuple)):
        return tuple(_hashable(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _hashable(v)) for k, v in value.items()))
    return value


def merge_duplicates(graph: fx.Graph) -> int:
    """In place: a pure node that repeats an earlier node (same op on the same inputs) is
    replaced by it; returns how many. AOTAutograd's backward recomputes some forward values
    itself (a LayerNorm's normalised input, from the input and the saved statistics); merged,
    that value is one node, so deciding to save it lets later recompute chains start from it.
    The partitioner merges them the same way before it cuts the graph."""
    seen: dict[tuple, fx.Node] = {}
    merged = 0
    for node in list(graph.nodes):
        if node.op != "call_function" or not (node.target is operator.getitem or _replayable(node)):
            continue
        try:
            key = (node.target, _hashable(node.args), _hashable(node.kwargs), node.meta.get("recompute"))
            hash(key)
        except TypeError:  # an argument that cannot be compared: leave the node alone
            continue
        first = seen.setdefault(key, node)
        if first is not node:
            node.replace_all_uses_with(first)
            graph.erase_node(node)
            merged += 1
    return merged


def _forward_time(graph: fx.Graph, forward: set[fx.Node]) -> dict[fx.Node, tuple[int, int]]:
    """When each value exists in a forward-only execution: a forward node at its place in the
    graph; a node that AOTAutograd put among the backward's without needing a tangent (e.g. a
    LayerNorm's normalised input, recomputed there from saved statistics) right after its latest
    input. Targets are decided in this order, so the residual stream of layer ``i`` is decided
    before layer ``i + 1``'s, whatever order the backward reads them in."""
    time: dict[fx.Node, tuple[int, int]] = {}
    for i, node in enumerate(graph.nodes):
        inputs = [time[a][0] for a in node.all_input_nodes]
        time[node] = (i, i) if node in forward or not inputs else (max(inputs), i)
    return time


def _view_base(node: fx.Node) -> fx.Node:
    """The tensor a chain of views starts from (``node`` itself if it is no view)."""
    while isinstance(node.target, torch._ops.OpOverload) and node.target.is_view and node.all_input_nodes:
        node = node.args[0]
    return node


def _place_before_first_use(graph: fx.Graph) -> None:
    """Reorder ``graph`` so every node follows its inputs, otherwise keeping the order: the clones
    (made at the end) move up to just before their first user, and rebuilt operands they read
    move up with them."""
    nodes = list(graph.nodes)
    position = {n: i for i, n in enumerate(nodes)}
    clones = {n for n in nodes if RECOMPUTE_META in n.meta}
    # Emit every original node in order; a clone is emitted right before the first node that needs it.
    done: set[fx.Node] = set()
    order: list[fx.Node] = []

    def emit(root: fx.Node) -> None:
        stack = [(root, False)]
        while stack:
            n, expanded = stack.pop()
            if n in done:
                continue
            if expanded:
                done.add(n)
                order.append(n)
                continue
            stack.append((n, True))
            for a in sorted(n.all_input_nodes, key=position.__getitem__, reverse=True):
                if a not in done:
                    stack.append((a, False))

    for n in nodes:
        if n not in clones:
            emit(n)
    for n in nodes:  # clones nothing reads (none expected) keep their place at the end
        emit(n)
    prev = graph._root
    for n in order:
        if prev.next is not n:
            prev.append(n)
        prev = n
