"""Find every matmul-class call in a Dynamo (torch-level) graph and normalise its operands.

One job: describe, not rewrite. `GemmSite` says which op it is, which operand is the layer's
weight (a parameter), the module path it belongs to, and why it cannot be quantized if so.
"""

from __future__ import annotations

import operator
import re
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import fx

from qcompile.passes.analysis.subgraphs import higher_order_call

_LINEAR = {torch._C._nn.linear, F.linear}
_CONV = {
    torch.conv1d: ("conv1d", 1, False),
    torch.conv2d: ("conv2d", 2, False),
    torch.conv3d: ("conv3d", 3, False),
    torch.conv_transpose1d: ("conv_transpose1d", 1, True),
    torch.conv_transpose2d: ("conv_transpose2d", 2, True),
    torch.conv_transpose3d: ("conv_transpose3d", 3, True),
}
_MATMUL_FUNCS = {torch.matmul: "matmul", operator.matmul: "matmul", torch.mm: "mm", torch.bmm: "bmm"}
_MATMUL_METHODS = {"matmul": "matmul", "__matmul__": "matmul", "mm": "mm", "bmm": "bmm"}
_ADD_FUNCS = {torch.addmm: "addmm", torch.baddbmm: "baddbmm"}
_ADD_METHODS = {"addmm": "addmm", "baddbmm": "baddbmm"}
_SDPA = {F.scaled_dot_product_attention}
# GEMM-like calls qcompile does not rewrite: they stay high precision and are listed in the plan.
_UNSUPPORTED_FUNCS = {
    torch.einsum: "einsum",
    torch.tensordot: "tensordot",
    F.bilinear: "bilinear",
    torch.addbmm: "addbmm",
    torch.addmv: "addmv",
    torch.mv: "mv",
    torch.chain_matmul: "chain_matmul",
    torch.linalg.multi_dot: "multi_dot",
    torch.inner: "inner",
    F.multi_head_attention_forward: "multi_head_attention",
    torch._native_multi_head_attention: "native_multi_head_attention",
    torch._transformer_encoder_layer_fwd: "transformer_encoder_layer_fwd",
}
_UNSUPPORTED_REASONS = {
    "multi_head_attention": "nn.MultiheadAttention's fused forward is opaque to qcompile; its projections "
    "and attention stay high precision",
    "native_multi_head_attention": "nn.MultiheadAttention's inference fast path (one fused kernel) stays "
    "high precision",
    "transformer_encoder_layer_fwd": "nn.TransformerEncoderLayer's inference fast path (one fused kernel) "
    "stays high precision",
}
_UNSUPPORTED_METHODS = {"mv": "mv", "addbmm": "addbmm", "addmv": "addmv"}
_VIEW_METHODS = {"t", "transpose", "permute", "view", "reshape", "contiguous", "mT", "T", "expand", "to"}
_VIEW_FUNCS = {torch.t, torch.transpose, torch.permute, torch.reshape}


@dataclass
class GemmSite:
    """One matmul-class call. For ``attention`` sites ``a, b, extra`` are q, k, v."""

    node: fx.Node
    op: str
    layer: str
    a: Any = None
    b: Any = None
    bias: Any = None
    b_is_weight: bool = False
    a_is_weight: bool = False
    conv: dict[str, Any] | None = None
    scalars: dict[str, Any] = field(default_factory=dict)
    extra: dict[str, Any] = field(default_factory=dict)
    unsupported: str | None = None
    owner: fx.GraphModule | None = None  # the graph holding the call (a HOP's body for nested sites)
    region: str | None = None  # the higher-order op it runs under, e.g. "tag_activation_checkpoint"
    calls: int = 1  # how many higher-order op calls run this body (nested compile regions share one)

    @property
    def has_weight(self) -> bool:
        return self.a_is_weight or self.b_is_weight

    def shapes(self) -> list[list[int | str]]:
        return [shape_of(n) for n in (self.a, self.b) if isinstance(n, fx.Node)]


def layer_name(node: fx.Node) -> str:
    """Module path of a Dynamo node (``layer1.0.conv1``) from ``meta["nn_module_stack"]``."""
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return "<root>"
    path = list(stack.values())[-1][0]
    path = re.sub(r"^L\['[^']*'\]", "", path)
    path = re.sub(r"\._modules\['([^']*)'\]", r".\1", path)
    path = re.sub(r"\[(\d+)\]", r".\1", path)
    path = re.sub(r"\['([^']*)'\]", r".\1", path)
    return path.strip(".") or "<root>"


def _source_path(source_name: str) -> list[str]:
    """``L['self']._modules['attn']._parameters['in_proj_weight']`` → ``['attn', 'in_proj_weight']``."""
    return re.findall(r"_(?:modules|parameters)\['([^']*)'\]", source_name)


def weight_layer_name(weight: Any, fallback: str) -> str:
    """Module path of the parameter a GEMM reads, when it is deeper than the calling module's
    (MultiheadAttention calls ``linear`` on ``out_proj.weight`` and ``in_proj_weight`` itself)."""
    node = weight
    while isinstance(node, fx.Node) and (
        (node.op == "placeholder" and OUTER_META in node.meta)
        or (node.op != "placeholder" and node.args and isinstance(node.args[0], fx.Node))
    ):
        node = node.meta[OUTER_META] if node.op == "placeholder" else node.args[0]
    grapharg = node.meta.get("grapharg") if isinstance(node, fx.Node) else None
    source = getattr(getattr(grapharg, "source", None), "name", None)
    if not isinstance(source, str):
        return fallback
    source = source() if callable(source) else source
    parts = _source_path(source)
    if not parts:
        return fallback
    owner = ".".join(parts[:-1])
    if parts[-1] != "weight":
        name = parts[-1].removesuffix("_weight")
        owner = f"{owner}.{name}" if owner else name
    if fallback in ("<root>", "") or (owner.startswith(fallback) and owner != fallback):
        return owner
    return fallback


def example_value(n: Any) -> torch.Tensor | None:
    if isinstance(n, fx.Node):
        v = n.meta.get("example_value", n.meta.get("val"))
        return v if isinstance(v, torch.Tensor) else None
    return None


def shape_of(n: Any) -> list[int | str]:
    v = example_value(n)
    return [] if v is None else [int(s) if isinstance(s, int) else str(s) for s in v.shape]


def rank_of(n: Any) -> int | None:
    v = example_value(n)
    return None if v is None else v.ndim


def is_parameter(n: Any, gm: fx.GraphModule | None = None) -> bool:
    """Whether a graph value is (a view of) an ``nn.Parameter`` of the compiled model."""
    if not isinstance(n, fx.Node):
        return False
    if n.op == "placeholder":
        if OUTER_META in n.meta:  # a higher-order op's body input: what the caller passes
            return is_parameter(n.meta[OUTER_META], n.meta.get(OUTER_GM_META))
        grapharg = n.meta.get("grapharg")
        return isinstance(getattr(grapharg, "example", None), torch.nn.Parameter)
    if n.op == "get_attr" and gm is not None:
        try:
            return isinstance(gm.get_parameter(str(n.target)), torch.nn.Parameter)
        except AttributeError:
            return False
    if n.op == "call_method" and n.target in _VIEW_METHODS:
        return is_parameter(n.args[0], gm)
    if n.op == "call_function" and (n.target in _VIEW_FUNCS or n.target is getattr):
        return is_parameter(n.args[0], gm)
    return False


def _arg(node: fx.Node, index: int, name: str, default: Any = None) -> Any:
    if len(node.args) > index:
        return node.args[index]
    return node.kwargs.get(name, default)


def _tuple(value: Any, dims: int) -> list[int] | None:
    if isinstance(value, int):
        return [value] * dims
    if isinstance(value, (tuple, list)) and all(isinstance(v, int) for v in value):
        return list(value) if len(value) == dims else [value[0]] * dims if len(value) == 1 else None
    return None


def _conv_site(node: fx.Node, op: str, dims: int, transposed: bool, gm: fx.GraphModule) -> GemmSite:
    x, w, bias = _arg(node, 0, "input"), _arg(node, 1, "weight"), _arg(node, 2, "bias")
    site = GemmSite(node, op, layer_name(node), a=x, b=w, bias=bias, b_is_weight=is_parameter(w, gm))
    if transposed:
        raw = dict(stride=_arg(node, 3, "stride", 1), padding=_arg(node, 4, "padding", 0),
                   output_padding=_arg(node, 5, "output_padding", 0), groups=_arg(node, 6, "groups", 1),
                   dilation=_arg(node, 7, "dilation", 1))  # fmt: skip
    else:
        raw = dict(stride=_arg(node, 3, "stride", 1), padding=_arg(node, 4, "padding", 0),
                   dilation=_arg(node, 5, "dilation", 1), groups=_arg(node, 6, "groups", 1), output_padding=0)  # fmt: skip
    conv = {k: _tuple(raw[k], dims) for k in ("stride", "dilation", "output_padding")}
    padding = raw["padding"]
    if isinstance(padding, str):
        conv["padding"] = _string_padding(padding, w, conv["dilation"], dims)
        if conv["padding"] is None:
            site.unsupported = f"padding={padding!r} would need asymmetric padding"
    else:
        conv["padding"] = _tuple(padding, dims)
    conv["groups"] = raw["groups"] if isinstance(raw["groups"], int) else None
    conv["transposed"] = transposed
    if site.unsupported is None and any(v is None for v in conv.values()):
        site.unsupported = "conv arguments that are not static integers"
    if site.unsupported is None and rank_of(x) != dims + 2:
        site.unsupported = "unbatched conv input"
    site.conv = conv
    return site


def _string_padding(mode: str, w: Any, dilation: list[int] | None, dims: int) -> list[int] | None:
    if mode == "valid":
        return [0] * dims
    shape = shape_of(w)
    if dilation is None or len(shape) != dims + 2 or not all(isinstance(k, int) for k in shape[2:]):
        return None
    totals = [d * (k - 1) for d, k in zip(dilation, shape[2:], strict=True)]  # type: ignore[operator]
    if any(t % 2 for t in totals):
        return None
    return [t // 2 for t in totals]


def classify(node: fx.Node, gm: fx.GraphModule) -> GemmSite | None:
    """A `GemmSite` for a matmul-class node, else None."""
    target = node.target
    is_fn = node.op == "call_function"
    is_method = node.op == "call_method"
    layer = layer_name(node)
    if is_fn and target in _LINEAR:
        x, w, bias = _arg(node, 0, "input"), _arg(node, 1, "weight"), _arg(node, 2, "bias")
        site = GemmSite(node, "linear", layer, a=x, b=w, bias=bias, b_is_weight=is_parameter(w, gm))
        if site.b_is_weight:
            site.layer = weight_layer_name(w, layer)
        if rank_of(x) is None or rank_of(x) < 2:
            site.unsupported = "1-D input to linear"
        return site
    if is_fn and target in _CONV:
        return _conv_site(node, *_CONV[target], gm=gm)
    kind = _MATMUL_FUNCS.get(target) if is_fn else _MATMUL_METHODS.get(target) if is_method else None  # type: ignore[arg-type]
    if kind:
        a, b = (
            node.args[0],
            node.args[1] if len(node.args) > 1 else node.kwargs.get("other", node.kwargs.get("mat2")),
        )
        site = GemmSite(
            node, kind, layer, a=a, b=b, a_is_weight=is_parameter(a, gm), b_is_weight=is_parameter(b, gm)
        )
        if (rank_of(a) or 0) < 2 or (rank_of(b) or 0) < 2:
            site.unsupported = "matmul with a 1-D operand (a matrix-vector product)"
        return site
    kind = _ADD_FUNCS.get(target) if is_fn else _ADD_METHODS.get(target) if is_method else None  # type: ignore[arg-type]
    if kind:
        bias, a, b = (
            node.args[0],
            _arg(node, 1, "mat1" if kind == "addmm" else "batch1"),
            _arg(node, 2, "mat2" if kind == "addmm" else "batch2"),
        )
        site = GemmSite(node, kind, layer, a=a, b=b, bias=bias, a_is_weight=is_parameter(a, gm),
                        b_is_weight=is_parameter(b, gm),
                        scalars={"beta": node.kwargs.get("beta", 1), "alpha": node.kwargs.get("alpha", 1)})  # fmt: skip
        if not all(isinstance(v, (int, float)) for v in site.scalars.values()):
            site.unsupported = "non-constant beta/alpha"
        return site
    if is_fn and target in _SDPA:
        site = GemmSite(node, "attention", layer, a=_arg(node, 0, "query"), b=_arg(node, 1, "key"))
        site.extra = {
            "value": _arg(node, 2, "value"),
            "attn_mask": _arg(node, 3, "attn_mask"),
            "dropout_p": _arg(node, 4, "dropout_p", 0.0),
            "is_causal": _arg(node, 5, "is_causal", False),
            "scale": node.kwargs.get("scale"),
            "enable_gqa": node.kwargs.get("enable_gqa", False),
        }
        if not isinstance(site.extra["dropout_p"], (int, float)) or not isinstance(
            site.extra["is_causal"], bool
        ):
            site.unsupported = "attention with non-constant dropout_p / is_causal"
        return site
    unsupported = (
        _UNSUPPORTED_FUNCS.get(target) if is_fn else _UNSUPPORTED_METHODS.get(target) if is_method else None
    )  # type: ignore[arg-type]
    if unsupported:
        args = [a for a in node.args if isinstance(a, fx.Node)]
        return GemmSite(node, unsupported, layer, a=args[0] if args else None, b=args[1] if len(args) > 1 else None,
                        unsupported=_UNSUPPORTED_REASONS.get(unsupported, f"{unsupported} is not supported by qcompile yet"))  # fmt: skip
    return None


def find_gemm_sites(gm: fx.GraphModule) -> list[GemmSite]:
    """All matmul-class sites of a Dynamo graph, in graph (execution) order, including those
    inside the bodies of higher-order ops (activation checkpointing, nested compile regions,
    ``torch.cond`` branches): a GEMM in a subgraph is a GEMM the model runs."""
    sites: list[GemmSite] = []
    _collect_sites(gm, None, sites, {})
    return sites


def _collect_sites(
    gm: fx.GraphModule, region: str | None, sites: list[GemmSite], seen: dict[int, list[GemmSite]]
) -> None:
    for node in gm.graph.nodes:
        if (site := classify(node, gm)) is not None:
            site.owner, site.region = gm, region
            sites.append(site)
            continue
        for body, hop, supported in higher_order_bodies(node, gm):
            if id(body) in seen:  # one body called again (a nested compile region): one site each
                for inner in seen[id(body)]:
                    inner.calls += 1
                continue
            before = len(sites)
            _collect_sites(body, hop, sites, seen)
            seen[id(body)] = sites[before:]
            if not supported:
                for inner in sites[before:]:
                    inner.unsupported = inner.unsupported or (
                        f"inside torch.ops.higher_order.{hop}, which qcompile does not rewrite"
                    )


# Higher-order ops whose bodies run once per call with the call's operands as their inputs, in
# order: qcompile rewrites GEMMs inside them as it does at top level (AOTAutograd traces through
# checkpointing, autocast and grad-mode wrappers; cond and invoke_subgraph carry their bodies on).
REWRITTEN_HOPS = frozenset(
    {
        "tag_activation_checkpoint",
        "wrap",
        "wrap_with_autocast",
        "wrap_with_set_grad_enabled",
        "invoke_subgraph",
        "cond",
    }
)
OUTER_META = "qcompile_outer_value"  # on a body placeholder: the operand the call passes in
OUTER_GM_META = "qcompile_outer_module"


def higher_order_bodies(node: fx.Node, gm: fx.GraphModule) -> list[tuple[fx.GraphModule, str, bool]]:
    """(body, op name, rewritten?) for every subgraph a higher-order op call carries. For the
    ops in `REWRITTEN_HOPS` each body placeholder is linked to the operand the call passes
    (``meta[OUTER_META]``) so that a parameter reached through the body is still a weight."""
    call = higher_order_call(node, gm)
    if call is None:
        return []
    supported = call.op in REWRITTEN_HOPS
    if supported:
        for body in call.bodies:
            pairs = call.body_inputs(body)
            if pairs is None:
                supported = False
                continue
            for holder, outer in pairs:
                holder.meta = dict(holder.meta)  # Dynamo may share one meta dict with the caller's node
                holder.meta[OUTER_META] = outer
                holder.meta[OUTER_GM_META] = gm
    return [(body, call.op, supported) for body in call.bodies]
