"""Read back, from a compiled forward or backward ATen graph, what every GEMM operand ran at.

This is what the plan reports: not the policy's request but the quantizer nodes that really
feed each GEMM. An operand is traced upstream through views, casts, SMP averaging and layer
markers to the quantizer (or placeholder) it comes from; quantizer tags name the layer.
"""

from __future__ import annotations

import operator
from dataclasses import dataclass, field

import torch
from torch import fx

from qcompile.passes.fx_utils import GEMM_TARGETS, is_smp_draws
from qcompile.passes.graph_meta import RECOMPUTE_META
from qcompile.passes.post_aot.gemm_kernel_choice import INT8_KERNELS, KERNEL_META, kernel_label
from qcompile.runtime.quant_tag import QuantTag
from qcompile.runtime.reference.scaling_groups import granularity_of
from qcompile.runtime.spec import FP_ELEMENTS, QuantSpec

aten = torch.ops.aten
qops = torch.ops.qcompile

QUANTIZER_TARGETS = {
    qops.int_quantize.default, qops.luq_quantize.default, qops.lbt_quantize.default, qops.aq_quantize.default,
    qops.learned_clip_quantize.default, qops.int_quantize_packed.default, qops.fp_quantize.default,
}  # fmt: skip
QUANTIZED_GEMMS = {qops.qmatmul.default, qops.qconv.default, qops.qmatmul_rq.default}
_TRANSPARENT = {
    aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.t.default,
    aten.transpose.int, aten.permute.default, aten.expand.default, aten.clone.default,
    aten.alias.default, aten._to_copy.default, aten.unsqueeze.default, aten.squeeze.dim,
    aten.squeeze.default, aten.stack.default, aten.mean.dim, aten.div.Tensor, aten.div.Scalar,
    aten.add.Tensor, aten.select.int, aten.slice.Tensor, aten.contiguous.default, aten.as_strided.default,
    torch.ops.prims.convert_element_type.default, qops.mark_layer.default,
}  # fmt: skip
GRADIENT_ROLES = ("grad_dgrad", "grad_wgrad")
REPLAYED = "replayed"  # fact key (site, REPLAYED): the site's forward GEMM runs again in backward


@dataclass
class OperandFact:
    """What one operand of one GEMM ran at, as found in a graph."""

    spec: QuantSpec
    gemm: str
    graph: str
    shared_from: str | None = None
    saved: list[str] = field(default_factory=list)
    dtype: str = ""
    kernel: str = ""
    hadamard: int = 0  # block of the random Hadamard transform this operand went through (0: none)


def parse_tag(tag: str) -> tuple[str, str, str]:
    """``"<layer>|<role>|<site key>[#draw]"`` → (layer, role, key); a string that is not a tag
    reads as (itself, "", "")."""
    if not QuantTag.is_tag(tag):
        return tag, "", ""
    t = QuantTag.parse(tag)
    return t.layer, t.role, t.key


def _tensor_inputs(node: fx.Node) -> list[fx.Node]:
    out: list[fx.Node] = []
    for a in node.args:
        if isinstance(a, fx.Node):
            out.append(a)
        elif isinstance(a, (list, tuple)):
            out.extend(x for x in a if isinstance(x, fx.Node))
    return out


@dataclass
class _Trace:
    tags: list[str] = field(default_factory=list)
    quantizers: list[fx.Node] = field(default_factory=list)
    placeholders: list[fx.Node] = field(default_factory=list)
    packed: list[fx.Node] = field(default_factory=list)  # int_dequantize_packed: X̂ / Ŵ from codes
    requantized: list[fx.Node] = field(default_factory=list)  # int_requantize: Ŵ from W and its clip
    recomputed: list[fx.Node] = field(default_factory=list)  # a forward value backward recomputes
    hadamard: list[fx.Node] = field(default_factory=list)  # qcompile::hadamard transforms on the way


def trace_operand(node: fx.Node) -> _Trace:
    """Walk upstream from a GEMM operand to its quantizers, tags and graph inputs."""
    t = _Trace()
    stack, seen = [node], set()
    while stack:
        n = stack.pop()
        if n in seen:
            continue
        seen.add(n)
        if n.op == "placeholder":
            if isinstance(n.meta.get("val"), torch.Tensor):  # not a symbolic size read by a view
                t.placeholders.append(n)
        elif n.op != "call_function":
            continue
        elif n.target in QUANTIZER_TARGETS:
            t.quantizers.append(n)
            t.tags.append(n.args[-1])
            t.hadamard.extend(_hadamard_behind(n.args[0]))
        elif n.target is qops.int_dequantize_packed.default:
            t.packed.append(n)
        elif n.target is qops.int_requantize.default:
            t.requantized.append(n)
        elif n.target is qops.hadamard.default:
            t.hadamard.extend(_hadamard_behind(n))
            stack.append(n.args[0])
        elif RECOMPUTE_META in n.meta and n.target not in _TRANSPARENT:
            t.recomputed.append(n)
        elif n.target is operator.getitem and getattr(n.args[0], "target", None) in QUANTIZER_TARGETS:
            stack.append(n.args[0])
        elif is_smp_draws(n, QUANTIZER_TARGETS):
            stack.extend(reversed(_tensor_inputs(n)))
        elif n.target in _TRANSPARENT:
            if n.target is qops.mark_layer.default:
                t.tags.append(n.args[1])
            stack.extend(reversed(_tensor_inputs(n)))
    return t


def _hadamard_behind(node: object) -> list[fx.Node]:
    """The forward Hadamard transform a quantizer's input comes from, through views and casts
    (an inverse transform belongs to a gradient flowing back, not to this operand)."""
    while isinstance(node, fx.Node) and node.op == "call_function":
        if node.target is qops.hadamard.default:
            return [] if node.args[4] else [node]
        if node.target not in _TRANSPARENT or node.target is qops.mark_layer.default:
            return []
        node = node.args[0]
    return []


def _requantized_along(q: fx.Node) -> bool:
    """A backward quantizer of a forward operand along the backward GEMM's own axis (a block
    format, or after a Hadamard), as `qmatmul_rq`'s backward makes them."""
    return q.target is qops.fp_quantize.default or bool(_hadamard_behind(q.args[0]))


def _source_behind(node: object) -> fx.Node | None:
    """The graph input a backward requantization reads (through views, casts and a Hadamard):
    the high-precision tensor forward saved for it."""
    while isinstance(node, fx.Node) and node.op == "call_function":
        if node.target not in _TRANSPARENT and node.target is not qops.hadamard.default:
            return None
        node = node.args[0]
    return node if isinstance(node, fx.Node) and node.op == "placeholder" else None


def describe_quantizers(nodes: list[fx.Node], role: str) -> QuantSpec:
    """The `QuantSpec` a group of quantizer nodes implements (SMP draws counted as samples)."""
    n = nodes[0]
    val = n.meta.get("val")
    ndim = val.ndim if isinstance(val, torch.Tensor) else len(n.args[0].meta["val"].shape)
    if n.target is qops.fp_quantize.default:
        _, element, scaling, block, _, stochastic, _ = n.args
        return fp_spec(element, scaling, block, stochastic)
    if n.target is qops.learned_clip_quantize.default:
        _, bits, signed, _, _ = n.args  # x, bits, signed, α, tag
        return QuantSpec("int", bits, "learned", "per-tensor", "nearest", signed, 1)
    if n.target is qops.lbt_quantize.default:
        _, bits, dims, _ = n.args
        return QuantSpec("lbt", bits, "max", granularity_of(dims, ndim, role), "stochastic", "signed", 1)
    if n.target is qops.aq_quantize.default:
        _, bits, dims, pruning, _ = n.args
        return QuantSpec(
            "aq", bits, "max", granularity_of(dims, ndim, role), "stochastic", "signed", 1, pruning
        )
    if n.target is qops.luq_quantize.default:
        _, bits, dims, _, _ = n.args
        return QuantSpec(
            "luq", bits, "max", granularity_of(dims, ndim, role), "stochastic", "signed", len(nodes)
        )
    _, bits, scaling, signed, dims, stochastic, _ = n.args
    return QuantSpec("int", bits, scaling, granularity_of(dims, ndim, role), "stochastic" if stochastic else "nearest",
                     signed, len(nodes))  # fmt: skip


def fp_spec(element: str, scaling: str, block: list[int], stochastic: bool) -> QuantSpec:
    """The `QuantSpec` of an ``fp_quantize`` call's arguments."""
    block = tuple(block)
    granularity = {(): "per-tensor", (0,): "per-row"}.get(block, "per-block")
    return QuantSpec(
        "fp", FP_ELEMENTS[element], scaling, granularity, "stochastic" if stochastic else "nearest",
        element=element, block=block,
    )  # fmt: skip


def _hadamard_block(transforms: list[fx.Node]) -> int:
    return int(transforms[0].args[3]) if transforms else 0


def _dtype(node: fx.Node) -> str:
    val = node.meta.get("val")
    return str(val.dtype).removeprefix("torch.") if isinstance(val, torch.Tensor) else ""


def read_graph(gm: fx.GraphModule, graph: str) -> dict[tuple[str, str], OperandFact]:
    """Facts keyed by (site key, role) for every tagged GEMM operand of ``gm``.

    ``graph`` is ``"forward"``, ``"backward"`` or ``"inference"``.
    """
    facts: dict[tuple[str, str], OperandFact] = {}
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in GEMM_TARGETS:
            continue
        gemm = str(node.target).removesuffix(".default")
        kernel = kernel_label(node.meta.get(KERNEL_META))
        operands = [a for a in node.args[:2] if isinstance(a, fx.Node)]
        if node.target in QUANTIZED_GEMMS:
            _, _, key = parse_tag(node.args[-1])
            # A forward GEMM in a backward graph is a replay (`recompute_from_codes`, or the
            # recomputation of a region the user checkpoints): its operands were read in forward.
            if RECOMPUTE_META in node.meta or graph == "backward":
                facts[(key, REPLAYED)] = OperandFact(QuantSpec(), gemm, graph, kernel=kernel)
                continue
            for role, operand in zip(("activation", "weight"), operands, strict=False):
                tr = trace_operand(operand)
                quant = [q for q in tr.quantizers if parse_tag(q.args[-1])[1] == role] or tr.quantizers
                spec = describe_quantizers(quant, role) if quant else QuantSpec()
                facts[(key, role)] = OperandFact(
                    spec, gemm, graph, dtype=_dtype(operand), kernel=kernel, hadamard=_hadamard_block(tr.hadamard)
                )
            continue
        if node.target is aten.convolution_backward.default:
            operands = [node.args[0], node.args[1], node.args[2]]
        traces = [(o, trace_operand(o)) for o in operands]
        # A fused GEMM (`fuse_triton_gemms`) reads the saved codes themselves, not a float rebuilt.
        rebuilt = "int8 codes" if kernel in INT8_KERNELS else ""
        for operand, tr in traces:
            grad_tags = [parse_tag(tag) for tag in tr.tags if parse_tag(tag)[1] in GRADIENT_ROLES]
            if not grad_tags:
                continue
            _, role, key = grad_tags[0]
            quant = tr.quantizers
            spec = describe_quantizers(quant, role) if quant else QuantSpec()
            shared = None
            if quant and parse_tag(quant[0].args[-1])[1] != role:
                shared = parse_tag(quant[0].args[-1])[1]
            others = [q for o2, tr2 in traces if o2 is not operand for q in tr2.quantizers]
            along = [q for q in others if _requantized_along(q)]
            saved = (
                [f"{p.name}:{_dtype(p)}" for o2, tr2 in traces if o2 is not operand for p in tr2.placeholders]
                + [f"recomputed:{parse_tag(q.args[-1])[1]}" for q in others if q not in along]
                + [
                    f"requantized_along:{parse_tag(q.args[-1])[1]}:{describe_quantizers([q], role).to_string()}"
                    f":{_hadamard_block(_hadamard_behind(q.args[0]))}"
                    for q in along
                ]
                + [f"{p.name}:{_dtype(p)}" for q in along if (p := _source_behind(q.args[0])) is not None]
                + [
                    f"packed:{parse_tag(d.args[-1])[1]}:{rebuilt or str(d.args[6]).removeprefix('torch.')}"
                    for o2, tr2 in traces
                    if o2 is not operand
                    for d in tr2.packed
                ]
                + [
                    f"requantized:{parse_tag(d.args[-1])[1]}:{rebuilt or str(d.args[5]).removeprefix('torch.')}"
                    for o2, tr2 in traces
                    if o2 is not operand
                    for d in tr2.requantized
                ]
                + [f"replayed:{_dtype(r)}" for o2, tr2 in traces if o2 is not operand for r in tr2.recomputed]
            )
            facts[(key, role)] = OperandFact(
                spec, gemm, graph, shared_from=shared, saved=saved, dtype=_dtype(operand), kernel=kernel,
                hadamard=_hadamard_block(tr.hadamard),
            )  # fmt: skip
    return facts


def forward_tensor_roles(gm: fx.GraphModule) -> dict[str, tuple[str, str, QuantSpec]]:
    """Forward node name → (site key, role, spec) for quantizer outputs, to name saved tensors."""
    out = {}
    for node in gm.graph.nodes:
        if node.op != "call_function":
            continue
        first_output = node.target is operator.getitem and node.args[1] == 0
        if node.target not in QUANTIZER_TARGETS | _TRANSPARENT and not first_output:
            continue
        quantizers = trace_operand(node).quantizers
        if quantizers:
            _, role, key = parse_tag(quantizers[0].args[-1])
            out[node.name] = (key, role, describe_quantizers(quantizers[:1], role))
    return out


def quantized_graph_inputs(gm: fx.GraphModule) -> set[tuple[str, str]]:
    """(site key, role) of forward quantizers whose input is a graph input (a parameter, or the batch) seen
    through views and casts: FP32 training would save such a tensor at no extra memory."""
    out = set()
    for node in gm.graph.nodes:
        if node.op == "call_function" and node.target in QUANTIZER_TARGETS:
            src = node.args[0]
            while isinstance(src, fx.Node) and src.op == "call_function" and src.target in _TRANSPARENT:
                src = src.args[0]
            if isinstance(src, fx.Node) and src.op == "placeholder":
                _, role, key = parse_tag(node.args[-1])
                out.add((key, role))
    return out
