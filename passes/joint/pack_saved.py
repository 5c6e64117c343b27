"""Joint-graph pass: what backward reads from forward is stored packed, never as FP32.

On AOTAutograd's joint forward-backward graph, before the partitioner chooses what to save:

* every forward ``int_quantize`` (at most 4 bits) whose output ``X̂`` the backward reads becomes
  ``int_quantize_packed``, which also returns ``X̂``'s codes two per byte plus its clip and top code;
  the backward's uses of ``X̂`` (and of views of it) read ``int_dequantize_packed`` instead, marked
  ``MUST_RECOMPUTE`` so it runs in the backward graph. The forward's ``X̂`` then has no backward
  user and is never saved: the partitioner saves the uint8 codes and two small scale tensors.
  Rebuilding ``X̂`` uses the same float operations as the forward, so training is bit-identical.
* every boolean tensor the backward reads (ReLU/threshold masks, comparison masks) goes through
  ``pack_bits`` → ``unpack_bits`` (the latter ``MUST_RECOMPUTE``): if the partitioner saves it
  at all, it saves one bit per element. If something it can recompute the mask from is saved
  anyway, the min-cut recomputes it instead of saving it twice.

A quantized operand stored in a permuted layout (attention heads) is rebuilt in that same layout,
so the backward GEMMs see the strides they would have seen unpacked. Tensors without a static
last dimension or a dense layout, and quantizers above 4 bits or binary (1-bit), are left alone.
"""

from __future__ import annotations

import contextlib
import operator
from collections.abc import Callable

import torch
from torch import fx
from torch.utils.checkpoint import CheckpointPolicy

from qcompile.passes.fx_utils import fake_mode_of, joint_regions, new_node, node_value
from qcompile.passes.graph_meta import RECOMPUTE_META

qops = torch.ops.qcompile
aten = torch.ops.aten

MIN_MASK_ELEMENTS = 64  # smaller masks are not worth two extra kernels


def _packable(val) -> bool:
    """A tensor that can be packed along its last dimension: static and non-empty there."""
    if not isinstance(val, torch.Tensor) or val.ndim < 1:
        return False
    last = val.shape[-1]
    numel = val.numel()
    empty = isinstance(numel, int) and numel == 0  # nothing to save; its statistics are undefined
    return isinstance(last, int) and last > 0 and not empty


def dense_order(val: torch.Tensor) -> list[int] | None:
    """The permutation ``p`` for which ``val.permute(p)`` is contiguous (``None`` if there is
    none, e.g. overlapping or gapped strides, or a layout that would need a symbolic guard)."""
    try:
        if val.is_contiguous():
            return list(range(val.ndim))
        if any(isinstance(s, torch.SymInt) for s in (*val.shape, *val.stride())):
            return None  # ordering symbolic strides would specialise the graph on them
        order = sorted(range(val.ndim), key=lambda d: (-int(val.stride(d)), d))
        return order if val.permute(order).is_contiguous() else None
    except Exception:
        return None


def _backward_uses(node: fx.Node, forward: set[fx.Node]) -> list[tuple[fx.Node, fx.Node]]:
    """(value, user) pairs where a non-forward node reads ``node`` or a forward chain of views and
    dtype casts of it (autocast casts ``X̂`` to bf16 for its GEMM; backward then reads the cast)."""
    uses, stack = [], [node]
    while stack:
        n = stack.pop()
        for user in n.users:
            if user not in forward:
                uses.append((n, user))
            elif (_is_view(user) or is_dtype_cast(user)) and user.args and user.args[0] is n:
                stack.append(user)
    return uses


def _is_view(node: fx.Node) -> bool:
    return isinstance(node.target, torch._ops.OpOverload) and node.target.is_view


_DTYPE_CASTS = (torch.ops.prims.convert_element_type.default, aten._to_copy.default)


def is_dtype_cast(node: fx.Node) -> bool:
    """A cast of a tensor's dtype only (autocast's): replayed on the rebuilt ``X̂`` it gives, bit
    for bit, what the forward's cast gave; the integer codes behind it are the same."""
    return node.target in _DTYPE_CASTS and set(node.kwargs) <= {"dtype"}


def _redirect(graph: fx.Graph, root: fx.Node, replacement: fx.Node, uses) -> None:
    """Point each backward use at ``replacement`` (copying the view chain from ``root``)."""
    copies = {root: replacement}

    def copy_of(n: fx.Node) -> fx.Node:
        if n not in copies:
            src = copy_of(n.args[0])
            with graph.inserting_after(src):
                args = (src, *n.args[1:])
                new = new_node(graph, n.target, args, n, CheckpointPolicy.MUST_RECOMPUTE, dict(n.kwargs))
            copies[n] = new
        return copies[n]

    for value, user in uses:
        user.replace_input_with(value, copy_of(value))


def _restride(graph: fx.Graph, rebuilt: fx.Node, order: list[int], like: fx.Node) -> fx.Node:
    """``rebuilt`` (contiguous) copied into the layout the forward's tensor had (a permutation of
    a contiguous one, e.g. attention heads): backward GEMMs then see the strides they saw
    without packing and pick the same kernels."""
    inverse = sorted(range(len(order)), key=order.__getitem__)
    must = CheckpointPolicy.MUST_RECOMPUTE
    permuted = new_node(graph, aten.permute.default, (rebuilt, order), like, must)
    dense = new_node(
        graph, aten.clone.default, (permuted,), like, must, {"memory_format": torch.contiguous_format}
    )
    return new_node(graph, aten.permute.default, (dense, inverse), like, must)


def _first(graph: fx.Graph, nodes) -> fx.Node:
    order = {n: i for i, n in enumerate(graph.nodes)}
    return min(nodes, key=order.__getitem__)


def _graph_input_view_chain(x: fx.Node) -> list[fx.Node] | None:
    """``[placeholder, view, cast, ...]`` when ``x`` is a graph input (a parameter) seen through
    views and dtype casts only (autocast's bf16 copy of ``W``), else None."""
    chain = [x]
    while (
        chain[0].op == "call_function"
        and (_is_view(chain[0]) or is_dtype_cast(chain[0]))
        and isinstance(chain[0].args[0], fx.Node)
    ):
        chain.insert(0, chain[0].args[0])
    if chain[0].op != "placeholder" or "tangents" in str(chain[0].target):
        return None
    return chain


def _copy_views(graph: fx.Graph, chain: list[fx.Node]) -> fx.Node:
    """The chain ``chain[1:]`` (views, dtype casts) replayed in backward on ``chain[0]``."""
    out = chain[0]
    for view in chain[1:]:
        out = new_node(
            graph,
            view.target,
            (out, *view.args[1:]),
            view,
            CheckpointPolicy.MUST_RECOMPUTE,
            dict(view.kwargs),
        )
    return out


def pack_quantized_operands(
    graph: fx.Graph, requantize_inputs: bool = False, skip: Callable[[fx.Node], bool] | None = None
) -> dict[fx.Node, fx.Node]:
    """Rewrite forward quantizers whose output backward reads. Returns ``{X̂: the node that
    rebuilds it in backward}``, in its own (contiguous) layout, the one Inductor gives the
    forward's ``X̂`` too: backward GEMMs get a copy re-laid out as the unpacked path saves it,
    and a forward GEMM replayed in backward (`recompute_from_codes`) reads this one.

    ``requantize_inputs``: a round-to-nearest quantizer of a graph input (a weight ``W``, which
    backward holds anyway) is rebuilt by `int_requantize` from ``W`` and the saved clip instead
    of from saved codes: only two scalars (per-channel: two vectors) are kept for ``Ŵ``.
    ``skip``: quantizers left as they are (those a user's activation checkpoint replays)."""
    backward, forward = joint_regions(graph)
    rebuilt_for: dict[fx.Node, fx.Node] = {}
    for node in list(graph.nodes):
        if node.op != "call_function" or node.target is not qops.int_quantize.default or node in backward:
            continue
        if skip is not None and skip(node):
            continue
        x, bits, scaling, signed, reduce_dims, stochastic, tag = node.args
        val = node_value(node)
        order = dense_order(val) if _packable(val) else None
        if bits > 4 or bits < 2 or order is None:  # binary (1-bit) forms keep their own path
            continue
        uses = _backward_uses(node, forward)
        if not uses:
            continue
        source = _graph_input_view_chain(x) if requantize_inputs and not stochastic else None
        with graph.inserting_before(node):
            packed_all = new_node(graph, qops.int_quantize_packed.default, node.args, node)
            items = [new_node(graph, operator.getitem, (packed_all, i), node) for i in range(4)]
        xq, packed, clip, hi = items
        for saved in (clip, hi) if source else (packed, clip, hi):
            saved.meta["recompute"] = CheckpointPolicy.MUST_SAVE
        with graph.inserting_before(_first(graph, [u for _, u in uses])):
            if source:
                rebuilt = new_node(
                    graph,
                    qops.int_requantize.default,
                    (_copy_views(graph, source), clip, hi, bits, signed, val.dtype, tag),
                    node,
                    CheckpointPolicy.MUST_RECOMPUTE,
                )
            else:
                rebuilt = new_node(
                    graph,
                    qops.int_dequantize_packed.default,
                    (packed, clip, hi, val.shape[-1], bits, signed, val.dtype, tag),
                    node,
                    CheckpointPolicy.MUST_RECOMPUTE,
                )
            rebuilt_for[xq] = rebuilt  # in the layout of an intermediate, as the forward's GEMM read it
            if dense_order(node_value(rebuilt)) != order:
                rebuilt = _restride(graph, rebuilt, order, node)
        _redirect(graph, node, rebuilt, uses)
        node.replace_all_uses_with(xq)
        graph.erase_node(node)
    return rebuilt_for


def pack_boolean_masks(graph: fx.Graph) -> int:
    """Route boolean tensors that backward reads through pack_bits/unpack_bits; returns how many."""
    backward, forward = joint_regions(graph)
    count = 0
    for node in list(graph.nodes):
        val = node_value(node)
        if (
            node.op not in ("call_function", "placeholder")
            or node in backward
            or not isinstance(val, torch.Tensor)
            or val.dtype is not torch.bool
            or not _packable(val)
            or dense_order(val) != list(range(val.ndim))
            or isinstance(val.numel(), torch.SymInt)
            or val.numel() < MIN_MASK_ELEMENTS
        ):
            continue
        users = [u for u in node.users if u in backward]
        if not users:
            continue
        with graph.inserting_after(node):
            packed = new_node(graph, qops.pack_bits.default, (node,), node)
        with graph.inserting_before(_first(graph, users)):
            unpacked = new_node(
                graph,
                qops.unpack_bits.default,
                (packed, val.shape[-1]),
                node,
                CheckpointPolicy.MUST_RECOMPUTE,
            )
        for user in users:
            user.replace_input_with(node, unpacked)
        count += 1
    return count


def forward_uses_channels_last(gm: fx.GraphModule) -> bool:
    """Whether Inductor lays this forward graph's conv operands out channels-last (its layout
    optimisation; on CPU with oneDNN it always does). Asked of Inductor's own heuristic, on the
    graph as Inductor will see it (quantizers already decomposed into ``aten.convolution``)."""
    from torch._inductor.graph import GraphLowering

    try:
        return bool(GraphLowering.decide_layout_opt(gm, is_inference=False))
    except Exception:  # an unexpected graph: keep the default layout
        return False


def _channels_last(graph: fx.Graph, operand: fx.Node) -> fx.Node:
    """``operand`` copied channels-last, with channels-last strides stated explicitly: for a single
    channel both stride patterns describe the same memory, and Inductor would otherwise pick the
    contiguous one, which sends the convolution down another oneDNN path than the forward's."""
    val = node_value(operand)
    n, c, h, w = val.shape
    strides = [c * h * w, 1, w * c, c]
    mode = fake_mode_of([val])
    with graph.inserting_after(operand):
        clone = graph.call_function(aten.clone.default, (operand,), {"memory_format": torch.channels_last})
        with graph.inserting_after(clone):
            view = graph.call_function(aten.as_strided.default, (clone, list(val.shape), strides))
    with mode if mode is not None else contextlib.nullcontext():
        clone.meta["val"] = val.clone(memory_format=torch.channels_last)
        view.meta["val"] = clone.meta["val"].as_strided(list(val.shape), strides)
    return view


def match_forward_layout(gm: fx.GraphModule, channels_last: bool) -> int:
    """Backward-graph pass: give 2-d conv operands rebuilt from codes (or requantized) the layout
    the forward gave the tensors they stand for (channels-last under Inductor's layout
    optimisation), and the same to both operands of a forward convolution replayed in backward
    (`recompute_from_codes`), so every convolution runs the same kernel on the same layout as
    without packing: same results, bit for bit. Returns how many operands it re-laid out."""
    if not channels_last:
        return 0

    rebuilt_ops = (qops.int_dequantize_packed.default, qops.int_requantize.default)
    pairs: list[tuple[fx.Node, list[fx.Node]]] = []
    for node in gm.graph.nodes:
        if node.target in rebuilt_ops and node_value(node).ndim == 4:
            users = [u for u in node.users if u.target is aten.convolution_backward.default]
            if users:
                pairs.append((node, users))
        if node.target in (qops.qconv.default, aten.convolution.default) and RECOMPUTE_META in node.meta:
            pairs.extend(
                (a, [node]) for a in node.args[:2] if isinstance(a, fx.Node) and node_value(a).ndim == 4
            )
    for operand, users in pairs:
        laid_out = _channels_last(gm.graph, operand)
        for user in users:
            user.replace_input_with(operand, laid_out)
    if pairs:
        gm.graph.lint()
        gm.recompile()
    return len(pairs)
