"""The rewrite that makes a Dynamo graph train quantized: `insert_fqt_quantizers`.

For every matmul-class site the policy quantizes, the call is replaced in place by forward
``qcompile::int_quantize`` nodes on its operands and a ``qcompile::qmatmul`` / ``qcompile::qconv``
whose autograd formula quantizes dY before each backward GEMM. AOTAutograd then traces those
formulas, so the backward graph holds explicit gradient quantizers (docs/how-it-works.md).
Sites the policy keeps in high precision, and sites qcompile cannot handle, are left untouched
and recorded with the reason.
"""

from __future__ import annotations

import itertools
import math
import operator
from dataclasses import dataclass, field

import torch
from torch import fx

from qcompile.passes.analysis.gemm_sites import GemmSite, example_value, find_gemm_sites, rank_of, shape_of
from qcompile.passes.fx_utils import size_hint
from qcompile.passes.pre_aot.attention_gemms import quantized_attention
from qcompile.policy.config import LayerDecision, Policy
from qcompile.runtime import SHARED, QuantSpec, requant_gemm
from qcompile.runtime.quant_tag import encode_tag


def _hinted(n) -> list[int | str]:
    """Sizes of a value, symbolic sizes replaced by the size the graph was compiled for."""
    v = example_value(n)
    if v is None:
        return []
    out: list[int | str] = []
    for s in v.shape:
        if isinstance(s, int):
            out.append(s)
            continue
        hint = size_hint(s)
        out.append(hint if hint is not None else str(s))
    return out


_graph_ids = itertools.count()
int_quantize = torch.ops.qcompile.int_quantize.default
learned_clip_quantize = torch.ops.qcompile.learned_clip_quantize.unbound  # α is passed in at binding
qmatmul = torch.ops.qcompile.qmatmul.default
qconv = torch.ops.qcompile.qconv.default


@dataclass
class SiteRecord:
    """What the rewrite decided for one site; the plan joins it with what the graphs ran."""

    key: str
    layer: str
    op: str
    shapes: list[list[int | str]]
    flops: int | None
    decision: LayerDecision | None
    reasons: tuple[str, ...] = ()
    rewritten: bool = False
    extra: dict = field(default_factory=dict)


def _numel(shape: list[int | str]) -> int | None:
    if not all(isinstance(s, int) for s in shape):
        return None
    return math.prod(shape)  # type: ignore[arg-type]


def site_flops(site: GemmSite, part: str | None = None) -> int | None:
    """Multiply-add FLOPs (2·M·N·K) of one forward GEMM, at the shapes it was compiled for."""
    if site.op == "attention":
        q, k, v = _hinted(site.a), _hinted(site.b), _hinted(site.extra["value"])
        if not (q and k and v):
            return None
        n = _numel(q[:-1] + [k[-2]])
        d = q[-1] if part == "qk" else v[-1]
        return None if n is None or not isinstance(d, int) else 2 * n * d
    out = _hinted(site.node)
    n_out = _numel(out)
    if n_out is None:
        return None
    if site.conv is not None:
        w = _hinted(site.b)
        per = _numel(w[1:])
        if per is None:
            return None
        if site.conv["transposed"]:
            n_in = _numel(_hinted(site.a))
            return None if n_in is None else 2 * n_in * per
        return 2 * n_out * per
    a = _hinted(site.a)
    k = a[-1] if a else None
    return 2 * n_out * k if isinstance(k, int) else None


def _spec_args(spec: QuantSpec) -> tuple:
    return spec.bits, spec.scaling, spec.signed


class _Rewriter:
    def __init__(self, gm: fx.GraphModule, site: GemmSite, decision: LayerDecision, key: str):
        self.graph = gm.graph
        self.site = site
        self.d = decision
        self.key = key
        self.layer = site.layer
        self.meta = {
            k: v
            for k, v in site.node.meta.items()
            if k in ("nn_module_stack", "stack_trace", "source_fn_stack")
        }

    def call(self, target, args, kwargs=None) -> fx.Node:
        node = self.graph.call_function(target, tuple(args), kwargs or {})
        node.meta.update(self.meta)
        return node

    def tag(self, role: str) -> str:
        return encode_tag(self.layer, role, self.key)

    def quantize(self, value: fx.Node, spec: QuantSpec, reduce_dims: list[int], role: str) -> fx.Node:
        if not spec.is_quantized:
            return value
        if spec.scaling == "learned":  # LBT's learned clip: one trainable α per layer and role
            return self.call(learned_clip_quantize, (value, spec.bits, spec.signed, self.tag(role)))
        args = (value, *_spec_args(spec), reduce_dims, spec.rounding == "stochastic", self.tag(role))
        return self.call(int_quantize, args)

    def grad_specs(self) -> tuple[str, str]:
        grad_b = SHARED if self.d.share_gradient_sample else self.d.grad_wgrad.to_string()
        return self.d.grad_dgrad.to_string(), grad_b

    def activation_dims(self, value: fx.Node, right: bool, conv: bool = False) -> list[int]:
        if self.d.activation.granularity == "per-tensor":
            return []
        r = rank_of(value) or 2
        if conv:
            return list(range(1, r))
        return [r - 2] if right else [r - 1]

    def weight_dims(self, value: fx.Node, keep: int) -> list[int]:
        if self.d.weight.granularity == "per-tensor":
            return []
        r = rank_of(value) or 2
        keep %= r
        return [d for d in range(r) if d != keep]

    def operand(self, value: fx.Node, is_weight: bool, right: bool, weight_keep: int) -> fx.Node:
        """Quantize an operand of ``a @ b``: weights with the weight spec, activations with the
        activation spec (a parameter-free right operand, e.g. attention's v, counts as one)."""
        if is_weight:
            return self.quantize(value, self.d.weight, self.weight_dims(value, weight_keep), "weight")
        spec = self.d.activation
        return self.quantize(
            value, spec, self.activation_dims(value, right), "weight" if right else "activation"
        )

    def qmatmul(self, a: fx.Node, b: fx.Node) -> fx.Node:
        return self.call(qmatmul, (a, b, *self.grad_specs(), self.tag("gemm")))

    def requant_gemm(self, a: fx.Node, b: fx.Node, b_spec: QuantSpec) -> fx.Node:
        """``a @ b`` through `requant_gemm`: operands quantized along the contraction (block
        formats, Hadamard), backward requantizing them along its own contraction axes."""
        had = self.d.hadamard.to_string() if self.d.hadamard is not None else ""
        specs = (self.d.activation.to_string(), b_spec.to_string(), *self.grad_specs())
        return self.call(requant_gemm, (a, b, *specs, had, self.tag("gemm")))

    def add_bias(self, out: fx.Node, bias: fx.Node) -> fx.Node:
        """``out + bias`` in the GEMM's dtype, as autocast's fused linear/conv would give."""
        cast = self.graph.call_method("type_as", (bias, out))
        cast.meta.update(self.meta)
        return self.call(operator.add, (out, cast))

    def rewrite(self) -> fx.Node:
        s = self.site
        op = s.op
        if op == "linear" and self.d.requantizes:
            b_spec = self.d.weight if s.b_is_weight else self.d.activation
            out = self.requant_gemm(s.a, self.call(torch.t, (s.b,)), b_spec)
            return self.add_bias(out, s.bias) if s.bias is not None else out
        if op == "linear":
            xq = self.operand(s.a, False, False, 0)
            wq = (
                self.operand(s.b, s.b_is_weight, True, 0)
                if s.b_is_weight
                else self.quantize(
                    s.b,
                    self.d.activation,
                    [] if self.d.activation.granularity == "per-tensor" else [1],
                    "weight",
                )
            )
            out = self.qmatmul(xq, self.call(torch.t, (wq,)))
            return self.add_bias(out, s.bias) if s.bias is not None else out
        if s.conv is not None:
            c = s.conv
            xq = self.quantize(
                s.a, self.d.activation, self.activation_dims(s.a, False, conv=True), "activation"
            )
            wq = self.quantize(
                s.b, self.d.weight, self.weight_dims(s.b, 1 if c["transposed"] else 0), "weight"
            )
            out = self.call(qconv, (xq, wq, c["stride"], c["padding"], c["dilation"], c["transposed"],
                                    c["output_padding"], c["groups"], *self.grad_specs(), self.tag("gemm")))  # fmt: skip
            if s.bias is None:
                return out
            bias = self.call(torch.reshape, (s.bias, (1, -1) + (1,) * (len(c["stride"]))))
            return self.add_bias(out, bias)
        # matmul family: canonicalise "weight on the left" (W @ x) to (xᵀ Wᵀ)ᵀ so the weight is b.
        a, b = s.a, s.b
        transposed = s.a_is_weight and not s.b_is_weight
        if transposed:
            a, b = self.call(torch.transpose, (b, -2, -1)), self.call(torch.transpose, (a, -2, -1))
        b_weight = s.b_is_weight or s.a_is_weight
        if self.d.requantizes:
            out = self.requant_gemm(a, b, self.d.weight if b_weight else self.d.activation)
        else:
            out = self.qmatmul(self.operand(a, False, False, -1), self.operand(b, b_weight, True, -1))
        if transposed:
            out = self.call(torch.transpose, (out, -2, -1))
        if op in ("addmm", "baddbmm"):
            beta, alpha = s.scalars["beta"], s.scalars["alpha"]
            if alpha != 1:
                out = self.call(operator.mul, (out, alpha))
            bias = s.bias if beta == 1 else self.call(operator.mul, (s.bias, beta))
            out = self.add_bias(out, bias)
        return out


def _attention_specs(d: LayerDecision) -> tuple[str, str, str, str, str]:
    grad_b = SHARED if d.share_gradient_sample else d.grad_wgrad.to_string()
    act = d.activation.to_string()
    had = d.hadamard.to_string() if d.hadamard is not None else ""
    return act, act, d.grad_dgrad.to_string(), grad_b, had


def _rewrite_attention(
    gm: fx.GraphModule, site: GemmSite, qk: LayerDecision, pv: LayerDecision, keys: tuple[str, str]
) -> fx.Node:
    e = site.extra
    node = site.node
    with gm.graph.inserting_before(node):
        new = gm.graph.call_function(
            quantized_attention,
            (site.a, site.b, e["value"], e["attn_mask"], float(e["dropout_p"]), e["is_causal"], e["scale"], bool(e["enable_gqa"])),
            {"qk": _attention_specs(qk), "pv": _attention_specs(pv),
             "qk_tag": f"{site.layer}|gemm|{keys[0]}", "pv_tag": f"{site.layer}|gemm|{keys[1]}"},
        )  # fmt: skip
    new.meta.update(node.meta)
    node.replace_all_uses_with(new)
    gm.graph.erase_node(node)
    return new


def insert_fqt_quantizers(gm: fx.GraphModule, policy: Policy) -> list[SiteRecord]:
    """Rewrite ``gm`` in place per ``policy``; return one `SiteRecord` per GEMM (two for attention).

    Keys (``g<graph>s<n>``) are unique per process so plans of several graphs never collide.
    """
    graph_id = next(_graph_ids)
    sites = find_gemm_sites(gm)
    weighted = [s for s in sites if s.has_weight and s.unsupported is None]
    positions: dict[int, str] = {}
    if weighted:
        positions[id(weighted[-1].node)] = "last"
        positions[id(weighted[0].node)] = "first"
    records: list[SiteRecord] = []
    counter = itertools.count()
    replaced: dict[fx.Node, fx.Node] = {}
    for site in sites:
        _remap_operands(site, replaced)
        owner = site.owner or gm
        if site.op == "attention":
            records.extend(_handle_attention(owner, site, policy, graph_id, counter, replaced))
            _note_region(records[-2:], site)
            continue
        key = f"g{graph_id}s{next(counter)}"
        record = SiteRecord(key, site.layer, site.op, site.shapes(), site_flops(site), None)
        record.extra["out_shape"] = _hinted(site.node)
        records.append(record)
        _note_region([record], site)
        if site.unsupported is not None:
            record.reasons = (site.unsupported,)
            continue
        decision = policy.decide(site.layer, site.op, positions.get(id(site.node)))
        if decision.requantizes and site.conv is not None and decision.any_quantized:
            record.reasons = (CONV_REQUANT_REASON,)  # left as it is, like an unsupported op: warned
            continue
        record.decision, record.reasons = decision, decision.reasons
        if policy.is_high_precision:
            continue  # leave the graph exactly as Inductor would see it
        # High-precision sites are rewritten too (with no quantizers) so that their backward
        # GEMMs can be found in the compiled graphs and the plan's totals are read, not guessed.
        rewriter = _Rewriter(owner, site, decision, key)
        with owner.graph.inserting_before(site.node):
            out = rewriter.rewrite()
        out.meta.update({k: v for k, v in site.node.meta.items() if k != "example_value"})
        if example_value(site.node) is not None:
            out.meta["example_value"] = example_value(site.node)
        site.node.replace_all_uses_with(out)
        owner.graph.erase_node(site.node)
        replaced[site.node] = out
        record.rewritten = True
    for owner in {id(s.owner or gm): s.owner or gm for s in sites}.values():
        owner.graph.lint()
        owner.recompile()
    return records


CONV_REQUANT_REASON = (
    "convolution under a block-scaled FP format or a Hadamard transform: not supported yet (its "
    "backward would requantize along N·H·W); runs in high precision"
)


def _note_region(records: list[SiteRecord], site: GemmSite) -> None:
    """Say in the plan which higher-order op a nested GEMM runs under (e.g. checkpointing), and
    count a body that several calls share once per call in the FLOPs."""
    if site.region is not None:
        for record in records:
            record.extra["region"] = site.region
            if site.calls > 1:
                record.extra["calls"] = site.calls
                record.flops = None if record.flops is None else record.flops * site.calls


def _remap_operands(site: GemmSite, replaced: dict[fx.Node, fx.Node]) -> None:
    """Operands found before earlier sites were rewritten may name erased nodes: follow them."""

    def remap(value):
        while isinstance(value, fx.Node) and value in replaced:
            value = replaced[value]
        return value

    site.a, site.b, site.bias = remap(site.a), remap(site.b), remap(site.bias)
    site.extra = {k: remap(v) for k, v in site.extra.items()}


def _handle_attention(
    gm, site: GemmSite, policy: Policy, graph_id: int, counter, replaced
) -> list[SiteRecord]:
    keys = (f"g{graph_id}s{next(counter)}", f"g{graph_id}s{next(counter)}")
    v = site.extra["value"]
    q_shape, k_shape, v_shape = shape_of(site.a), shape_of(site.b), shape_of(v)
    records = [
        SiteRecord(keys[0], site.layer, "attention.qk", [q_shape, k_shape], site_flops(site, "qk"), None),
        SiteRecord(
            keys[1],
            site.layer,
            "attention.pv",
            [q_shape[:-1] + k_shape[-2:-1], v_shape],
            site_flops(site, "pv"),
            None,
        ),
    ]
    records[0].extra["out_shape"] = q_shape[:-1] + k_shape[-2:-1]
    records[1].extra["out_shape"] = q_shape[:-1] + v_shape[-1:]
    if site.unsupported is not None:
        for r in records:
            r.reasons = (site.unsupported,)
        return records
    decisions = [policy.decide(site.layer, r.op) for r in records]
    for r, d in zip(records, decisions, strict=True):
        r.decision, r.reasons = d, d.reasons
    if not any(d.any_quantized for d in decisions):
        return records
    replaced[site.node] = _rewrite_attention(gm, site, decisions[0], decisions[1], keys)
    for r in records:
        r.rewritten = True
    return records
