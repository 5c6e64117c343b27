"""Route quantized GEMMs of the AOT forward/backward graphs to the int8 kernels, Triton (CUDA) or
the CPU integer GEMM, and FP8 GEMMs to the Triton FP8 kernel (CUDA).

Runs after `gemm_kernel_choice.annotate_gemm_kernels` (and after the plan has read the graph):
the GEMMs annotated ``triton-int8``, ``cpu-int8`` or ``triton-fp8`` are rewritten (views and
autocast's dtype casts between a quantizer and its GEMM are followed):

* each operand's quantizer becomes ``qcompile::quantize_codes``; its other users read
  ``dequantize_codes`` of the same codes (the quantizer's value);
* an operand the forward saves packed (`joint.pack_saved`) is read as its codes: the forward's
  ``int_quantize_packed`` becomes ``int_quantize_packed_codes`` (one Triton pass writing the
  int8 codes and the saved nibbles), the backward's ``int_dequantize_packed`` gives
  ``unpack_int4_codes`` of the saved nibbles, a requantized ``Ŵ`` (``int_requantize``) gives
  ``kernel_requantize_codes`` when its forward quantizer was moved onto the Triton quantizer
  (the same arithmetic, also for an unfused GEMM's ``Ŵ``), else ``int_requantize_codes``; the
  scale is the saved ``clip / hi``, so no float ``X̂`` is rebuilt for a fused GEMM;
* an operand saved by the forward as a float (X̂, Ŵ) is turned back into codes with
  ``qcompile::recover_codes``;
* the GEMM becomes ``qcompile::scaled_int8_gemm`` (``scaled_int8_gemm_cpu`` for ``cpu-int8``,
  which also carries the codes' bounds), which applies the recorded views to the codes
  (strides, no transposed copies) and the scales in its epilogue; a bias ``add`` right after a
  forward GEMM moves into the epilogue (a bias computed after the GEMM from earlier values,
  such as autocast's bf16 cast of the bias parameter, is moved before it first);
* for ``triton-fp8``: each ``fp_quantize`` (FP8, one scale per row or tensor) becomes
  ``fp8_quantize_codes`` (FP8 codes and the FP32 scale), its other users read
  ``fp8_dequantize_codes`` (the same value, bit for bit), and the GEMM (``qmatmul_rq``'s forward,
  or a backward ``mm`` on the operands it requantized along its own contraction) becomes
  ``scaled_fp8_gemm``, with views, scales and bias handled as above; an FP8 operand the forward
  saved as a float is quantized again from that copy, which gives its codes exactly
  (`saved_fp8_grouping`).

The codes ops are the same on both devices (one representation); on CUDA they run Triton
kernels, on the CPU path `decompose_quantizers` inlines them as ATen loops. Everything else stays
on the Inductor path.
"""

from __future__ import annotations

import operator

import torch
from torch import fx

from qcompile.passes.post_aot.gemm_kernel_choice import (
    BOUNDS_META,
    FUSED_KERNELS,
    KERNEL_CPU,
    KERNEL_FP8,
    KERNEL_META,
    SavedQuantized,
    find_source,
    gemm_operands,
    quantizer_facts,
    saved_fp8_grouping,
)
from qcompile.runtime.ops import fp8_codes as fp8_gemm_ops  # noqa: F401  (registers the ops)
from qcompile.runtime.ops import gemm_codes as triton_gemm_ops  # noqa: F401  (registers the ops)
from qcompile.runtime.reference.view_chains import encode_views

aten = torch.ops.aten
qops = torch.ops.qcompile


# ---------------------------------------------------------------------------------------------
# Rewrite


def _fake_mode(gm: fx.GraphModule):
    for n in gm.graph.nodes:
        val = n.meta.get("val")
        if isinstance(val, torch._subclasses.fake_tensor.FakeTensor):
            return val.fake_mode
    return None


class _Builder:
    """Creates nodes with their ``meta["val"]`` computed on the graph's fake tensors."""

    def __init__(self, gm: fx.GraphModule, kernel_quantized: set[str]):
        self.graph = gm.graph
        self.mode = _fake_mode(gm)
        # Tags of the forward quantizers this pass moved onto the Triton quantizer (shared by a
        # model's forward and backward compile): their requantization in backward must run there too.
        self.kernel_quantized = kernel_quantized

    def call(self, target, args: tuple, like: fx.Node) -> fx.Node:
        node = self.graph.call_function(target, args)
        fake_args = fx.map_arg(args, lambda n: n.meta["val"])
        if self.mode is not None:
            with self.mode:
                node.meta["val"] = target(*fake_args)
        else:
            node.meta["val"] = target(*fake_args)
        for key in ("nn_module_stack", "stack_trace", "seq_nr"):
            if key in like.meta:
                node.meta[key] = like.meta[key]
        return node

    def dequantize(self, parts: tuple, dtype: torch.dtype, like: fx.Node) -> fx.Node:
        """``dequantize_codes`` of (codes, clip, top) standing in for ``like``: the quantizer's
        value, with ``like``'s metadata (all but its fake value)."""
        node = self.call(qops.dequantize_codes.default, (*parts, dtype), like)
        node.meta.update({k: v for k, v in like.meta.items() if k != "val"})
        return node

    def unpack(self, node: fx.Node, like: fx.Node) -> tuple[fx.Node, fx.Node, fx.Node]:
        return tuple(self.call(operator.getitem, (node, i), like) for i in range(3))


def _codes_for(src_node: fx.Node, b: _Builder, cache: dict, saved: dict[str, SavedQuantized]):
    """(codes, clip, top) nodes for a quantizer or saved placeholder, made once per source."""
    if src_node in cache:
        return cache[src_node]
    if src_node.op == "placeholder":
        info = saved[src_node.name]
        with b.graph.inserting_after(src_node):
            rec = b.call(qops.recover_codes.default, (src_node, info.bits, info.signed, list(info.reduce_dims)),
                         src_node)  # fmt: skip
        with b.graph.inserting_after(rec):
            parts = b.unpack(rec, src_node)
        cache[src_node] = parts
        return parts
    if src_node.target in _FROM_SAVED_CODES:
        cache[src_node] = _FROM_SAVED_CODES[src_node.target](src_node, b)
        return cache[src_node]
    kind, bits, signed, stochastic, dims = quantizer_facts(src_node)
    scaling = "max" if kind == "luq" else src_node.args[2]
    x = src_node.args[0]
    b.kernel_quantized.add(src_node.args[-1])
    with b.graph.inserting_before(src_node):
        qc = b.call(qops.quantize_codes.default, (x, kind, bits, scaling, signed, dims, stochastic), src_node)
        parts = b.unpack(qc, src_node)
        deq = b.dequantize(parts, src_node.meta["val"].dtype, src_node)
    src_node.replace_all_uses_with(deq)
    b.graph.erase_node(src_node)
    cache[src_node] = parts
    return parts


def _packed_quantizer_codes(node: fx.Node, b: _Builder):
    """Forward: a quantizer whose output backward keeps packed (``int_quantize_packed``) becomes
    ``int_quantize_packed_codes``, one Triton pass giving the int8 codes the GEMM reads and the
    packed codes, clip and hi the forward saves (same shapes and format, so backward is
    unchanged). Its float ``X̂``, where something else reads it, is ``dequantize_codes`` of the
    codes. The new nodes go where the quantizer was, so they precede every GEMM reading them."""
    x, bits, scaling, signed, dims, stochastic = node.args[:6]
    b.kernel_quantized.add(node.args[6])
    # A weight's nibbles are not saved (backward requantizes W): do not write them.
    pack = any(u.args[1] == 1 and u.users for u in node.users)
    with b.graph.inserting_before(node):
        qp = b.call(qops.int_quantize_packed_codes.default,
                    (x, bits, scaling, signed, list(dims), stochastic, pack), node)  # fmt: skip
        codes, packed, clip, hi = (b.call(operator.getitem, (qp, i), node) for i in range(4))
        xhat = None
        for user in list(node.users):  # getitem nodes of the old quantizer's outputs
            index = user.args[1]
            if index == 0 and user.users and xhat is None:
                xhat = b.dequantize((codes, clip, hi), node.meta["val"][0].dtype, user)
            user.replace_all_uses_with(xhat if index == 0 else (packed, clip, hi)[index - 1])
            b.graph.erase_node(user)
    b.graph.erase_node(node)
    return codes, clip, hi


def _dequantized_codes(node: fx.Node, b: _Builder):
    """Backward: the saved codes ``int_dequantize_packed`` would rebuild ``X̂`` from."""
    packed, clip, hi, last = node.args[:4]
    with b.graph.inserting_before(node):
        codes = b.call(qops.unpack_int4_codes.default, (packed, hi, last), node)
    return codes, clip, hi


def _requantized_codes(node: fx.Node, b: _Builder):
    """Backward: the codes ``int_requantize`` would rebuild ``Ŵ`` from (``W`` and its clip), with
    the arithmetic its forward quantizer used: the Triton quantizer's if this pass put that
    quantizer there (`kernel_requantize_codes`), else Inductor's (`int_requantize_codes`)."""
    x, clip, hi, bits, signed = node.args[:5]
    op = qops.kernel_requantize_codes if node.args[6] in b.kernel_quantized else qops.int_requantize_codes
    with b.graph.inserting_before(node):
        codes = b.call(op.default, (x, clip, hi, bits, signed), node)
    return codes, clip, hi


def _requantize_as_forward(gm: fx.GraphModule, b: _Builder, cache: dict) -> None:
    """An ``int_requantize`` left for an unfused GEMM (dgrad with a per-channel ``Ŵ``) whose
    forward quantizer now runs on the Triton quantizer: rebuild ``Ŵ`` from that quantizer's
    codes (`kernel_requantize_codes`), so backward reads the forward's ``Ŵ`` bit for bit."""
    for node in list(gm.graph.nodes):
        if node.target is not qops.int_requantize.default or node.args[6] not in b.kernel_quantized:
            continue
        if not node.users:  # only fused GEMMs read it: they have its codes already
            continue
        parts = cache[node] if node in cache else _requantized_codes(node, b)
        with b.graph.inserting_before(node):
            w = b.dequantize(parts, node.args[5], node)
        node.replace_all_uses_with(w)
        gm.graph.erase_node(node)


def _fp8_codes_for(
    src_node: fx.Node, b: _Builder, cache: dict, saved: dict[str, SavedQuantized]
) -> tuple[fx.Node, fx.Node]:
    """(codes, scale) nodes of an ``fp_quantize`` feeding an FP8 GEMM, made once per quantizer:
    it becomes ``fp8_quantize_codes`` (same arguments, so the same values and random draws), and
    whatever else read it (a tensor saved for backward) reads ``fp8_dequantize_codes``. An FP8
    operand the forward saved as a float is re-coded from that copy (`saved_fp8_grouping`)."""
    if src_node in cache:
        return cache[src_node]
    if src_node.op == "placeholder":
        info = saved[src_node.name]
        block, axis = saved_fp8_grouping(info, src_node.meta["val"].shape)
        with b.graph.inserting_after(src_node):
            qc = b.call(
                qops.fp8_quantize_codes.default, (src_node, info.element, block, axis, False), src_node
            )
        with b.graph.inserting_after(qc):
            cache[src_node] = tuple(b.call(operator.getitem, (qc, i), src_node) for i in range(2))
        return cache[src_node]
    x, element, _, block, axis, stochastic, _ = src_node.args
    with b.graph.inserting_before(src_node):
        qc = b.call(qops.fp8_quantize_codes.default, (x, element, list(block), axis, stochastic), src_node)
        parts = tuple(b.call(operator.getitem, (qc, i), src_node) for i in range(2))
        value = b.call(qops.fp8_dequantize_codes.default, (*parts, src_node.meta["val"].dtype), src_node)
        value.meta.update({k: v for k, v in src_node.meta.items() if k != "val"})
    src_node.replace_all_uses_with(value)
    b.graph.erase_node(src_node)
    cache[src_node] = parts
    return parts


_FROM_SAVED_CODES = {
    qops.int_quantize_packed.default: _packed_quantizer_codes,
    qops.int_dequantize_packed.default: _dequantized_codes,
    qops.int_requantize.default: _requantized_codes,
}


def _bias_user(node: fx.Node) -> tuple[fx.Node, fx.Node] | None:
    """The ``add(gemm, bias)`` right after a forward GEMM whose bias is a 1-D [N] vector."""
    users = list(node.users)
    if len(users) != 1 or users[0].target is not aten.add.Tensor or users[0].args[0] is not node:
        return None
    add, bias = users[0], users[0].args[1]
    out, bv = node.meta["val"], getattr(bias, "meta", {}).get("val")
    if not isinstance(bv, torch.Tensor) or bv.ndim != 1 or bv.shape[0] != out.shape[-1]:
        return None
    if add.meta["val"].dtype != out.dtype or add.meta["val"].shape != out.shape:
        return None
    return add, bias


def _defined_before(bias: fx.Node, gemm: fx.Node, depth: int = 3) -> bool:
    """Make ``bias`` available at ``gemm``: True if it already is; else, if it is a pure op
    (a cast, a view) of values that are or can be made available there, move it (and such
    producers, up to ``depth`` deep) right before ``gemm``. Autocast casts the bias parameter
    where its first use is, which is after the GEMM that now needs it in its epilogue."""
    order = {n: i for i, n in enumerate(gemm.graph.nodes)}
    if order[bias] < order[gemm]:
        return True
    if depth == 0 or bias.op != "call_function" or bias.is_impure():
        return False
    inputs = bias.all_input_nodes
    if not all(_defined_before(i, gemm, depth - 1) for i in inputs):
        return False
    gemm.prepend(bias)
    return True


def fuse_triton_gemms(
    gm: fx.GraphModule,
    saved: dict[str, SavedQuantized] | None = None,
    kernel_quantized: set[str] | None = None,
) -> fx.GraphModule:
    """In place: GEMMs annotated ``triton-int8`` / ``cpu-int8`` / ``triton-fp8`` (by
    `annotate_gemm_kernels`) become ``scaled_int8_gemm`` / ``scaled_int8_gemm_cpu`` /
    ``scaled_fp8_gemm`` on codes. Returns ``gm``; graphs without such GEMMs are untouched.

    ``kernel_quantized`` collects the tags of forward quantizers moved onto the Triton quantizer;
    pass the same set for a model's forward and backward graphs, so backward rebuilds those
    operands with the same arithmetic (one call with both, as in the tests, needs none)."""
    saved = saved or {}
    kernel_quantized = set() if kernel_quantized is None else kernel_quantized
    targets = [n for n in gm.graph.nodes if n.meta.get(KERNEL_META, ("",))[0] in FUSED_KERNELS]
    requantized = [n for n in gm.graph.nodes if n.target is qops.int_requantize.default]
    if not targets and not any(n.args[6] in kernel_quantized for n in requantized):
        return gm
    builder, cache = _Builder(gm, kernel_quantized), {}
    # Follow every operand first: rewriting a quantizer changes the paths of later GEMMs.
    plans = []
    for node in targets:
        ops = gemm_operands(node)
        plans.append((node, ops, [find_source(ops.a), find_source(ops.b)]))
    for node, ops, srcs in plans:
        chains = [srcs[0].chain + ops.a_extra, srcs[1].chain]
        fp8 = node.meta[KERNEL_META][0] == KERNEL_FP8
        if fp8:
            parts = [_fp8_codes_for(s.node, builder, cache, saved) for s in srcs]
        else:
            parts = [_codes_for(s.node, builder, cache, saved) for s in srcs]
        forward = node.target in (qops.qmatmul.default, qops.qmatmul_rq.default)
        fused_bias = _bias_user(node) if forward else None
        out = node.meta["val"]
        with gm.graph.inserting_before(node):
            bias_arg = fused_bias[1] if fused_bias else None
            if bias_arg is not None and not _defined_before(bias_arg, node):
                fused_bias, bias_arg = None, None  # bias depends on later values: keep the add
            views = [
                encode_views(chain, p[0].meta["val"].ndim) for chain, p in zip(chains, parts, strict=True)
            ]
            args = (*parts[0], *parts[1], bias_arg, *views, list(out.shape), out.dtype)
            if fp8:
                fused = builder.call(qops.scaled_fp8_gemm.default, args, node)
            elif node.meta[KERNEL_META][0] == KERNEL_CPU:
                fused = builder.call(
                    qops.scaled_int8_gemm_cpu.default, (*args, *node.meta[BOUNDS_META]), node
                )
            else:
                fused = builder.call(qops.scaled_int8_gemm.default, args, node)
        fused.meta[KERNEL_META] = node.meta[KERNEL_META]
        if fused_bias:
            add = fused_bias[0]
            add.replace_all_uses_with(fused)
            gm.graph.erase_node(add)
        node.replace_all_uses_with(fused)
        gm.graph.erase_node(node)
    _requantize_as_forward(gm, builder, cache)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    return gm
