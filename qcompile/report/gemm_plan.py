"""`qcompile.plan`: what every GEMM of a compiled model runs at, read from its compiled graphs.

Each row is one matmul-class call site. Its four operand columns come from the quantizer
nodes found in front of the GEMMs of the forward and backward graphs AOTAutograd produced
(`qcompile.passes.read_graph`), not from the policy: if a quantizer were missing from a graph,
the plan would say ``fp32`` there.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tabulate import tabulate

from qcompile.compiler.compiled_graphs import CompiledGraph, graphs_for
from qcompile.passes import OperandFact, SavedTensor, SiteRecord
from qcompile.passes.analysis.read_quantized_graph import REPLAYED
from qcompile.policy.config import ROLES
from qcompile.runtime.quant_tag import QuantTag
from qcompile.runtime.quantizer_state import QuantizerState, measured_bits
from qcompile.runtime.reference.block_scaled import block_scale_bits
from qcompile.runtime.spec import QuantSpec, parse_spec

_GRAN_SHORT = {"per-tensor": "tensor", "per-sample": "sample", "per-channel": "channel"}
#: The storage format of each FP scaling's scales, as the plan names it.
FP_SCALE_FORMATS = {"mx": "e8m0 scale", "nv": "e4m3×fp32 scale", "max": "fp32 scale"}


def spec_cell(spec: QuantSpec) -> str:
    """``int4 sawb rdn tensor``, ``luq4 sample``, ``fp4 nv16x16 e4m3×fp32 scale rdn``, ``fp32``."""
    if not spec.is_quantized:
        return "fp32"
    if spec.format == "fp":
        label = "fp4" if spec.element == "e2m1" else spec.label.replace("-", " ")
        rounding = "sr" if spec.rounding == "stochastic" else "rdn"
        return f"{label} {spec.block_label} {FP_SCALE_FORMATS[spec.scaling]} {rounding}"
    parts = [spec.label if spec.signed != "auto" else f"{spec.label}±"]
    if spec.format == "int":
        parts += [spec.scaling, "sr" if spec.rounding == "stochastic" else "rdn"]
    parts.append(_GRAN_SHORT[spec.granularity])
    if spec.pruning == "topk":
        parts.append("topk")
    if spec.samples > 1:
        parts.append(f"smp{spec.samples}")
    return " ".join(parts)


@dataclass
class RoleEntry:
    """One operand role of one site as the graphs ran it; ``ran`` False when no GEMM needed it."""

    ran: bool
    spec: QuantSpec | None = None
    gemm: str = ""
    shared_from: str | None = None
    note: str = ""
    kernel: str = ""
    avg_bits: float | None = None  # bits per element actually used (AQ measured, SMP counted N×)
    elements: int | None = None  # elements of this operand at the compiled shape
    hadamard: int = 0  # block of the random Hadamard transform in front of its quantizer (0: none)

    @property
    def bits(self) -> int | None:
        if not self.ran or self.spec is None:
            return None
        return self.spec.bits if self.spec.is_quantized else 32

    def cell(self) -> str:
        if not self.ran:
            return self.note or "—"
        text = spec_cell(self.spec) if self.spec else "fp32"
        if self.hadamard:
            text += f" had{self.hadamard}"
        return f"{text} (= {self.shared_from.removeprefix('grad_')})" if self.shared_from else text

    def to_json(self) -> dict[str, Any] | None:
        if not self.ran:
            return None
        spec = self.spec or QuantSpec()
        return {
            "spec": spec.to_string(), "format": spec.format, "bits": self.bits, "scaling": spec.scaling,
            "granularity": spec.granularity, "rounding": spec.rounding, "signed": spec.signed,
            "samples": spec.samples, "pruning": spec.pruning, "gemm": self.gemm,
            "shared_from": self.shared_from, "avg_bits": self.avg_bits, "elements": self.elements,
            "kernel": self.kernel, "element": spec.element or None,
            "block": list(spec.block) if spec.format == "fp" else None,
            "scale_format": FP_SCALE_FORMATS[spec.scaling].removesuffix(" scale") if spec.format == "fp" else None,
            "hadamard": self.hadamard or None,
        }  # fmt: skip


@dataclass
class PlanRow:
    graph: str
    layer: str
    op: str
    shapes: list[list[int | str]]
    flops: int | None
    weight: RoleEntry
    activation: RoleEntry
    grad_dgrad: RoleEntry
    grad_wgrad: RoleEntry
    saved: str = ""
    reason: str = ""
    state: str = ""
    saved_bytes: int = 0
    saved_fp32_bytes: int = 0
    replayed: bool = False  # the forward GEMM runs again in backward, to recompute its output
    region: str | None = None  # the higher-order op the GEMM runs under, e.g. checkpointing
    calls: int = 1  # calls of one shared body (a nested compile region) this row stands for

    def roles(self) -> dict[str, RoleEntry]:
        return {r: getattr(self, r) for r in ROLES}

    def kernels(self) -> dict[str, str]:
        """The kernel each GEMM of this site ran (forward, dgrad, wgrad), read from the graphs."""
        out = {}
        for gemm, entry in (
            ("forward", self.activation),
            ("dgrad", self.grad_dgrad),
            ("wgrad", self.grad_wgrad),
        ):
            if entry.ran and entry.kernel:
                out[gemm] = entry.kernel
        return out

    def kernel_cell(self) -> str:
        """``cpu-int8`` when every GEMM ran on one kernel, else ``fwd cpu-int8, dgrad inductor
        (why not), ...``; a GEMM that stayed a float simulation says why, in the table too."""
        kernels = self.kernels()
        if len(set(kernels.values())) <= 1:
            return next(iter(kernels.values()), "")
        return ", ".join(f"{'fwd' if g == 'forward' else g} {k}" for g, k in kernels.items())

    def to_json(self) -> dict[str, Any]:
        out = {
            "graph": self.graph,
            "layer": self.layer,
            "op": self.op,
            "shapes": self.shapes,
            "flops": self.flops,
        }
        out.update({r: e.to_json() for r, e in self.roles().items()})
        out.update(saved_for_backward=self.saved, reason=self.reason, kernels=self.kernels(), state=self.state,
                   saved_bytes=self.saved_bytes, saved_fp32_bytes=self.saved_fp32_bytes,
                   gemm_replayed_in_backward=self.replayed, region=self.region, calls=self.calls)  # fmt: skip
        return out


@dataclass
class Plan:
    """Per-op bit-width plan of every graph compiled so far for a model."""

    rows: list[PlanRow] = field(default_factory=list)
    policies: list[str] = field(default_factory=list)
    graphs: list[str] = field(default_factory=list)
    saved: list[SavedTensor] = field(default_factory=list)

    def memory(self) -> dict[str, Any]:
        """Bytes the compiled forwards save for backward (read from the backward graphs' inputs),
        and what FP32 training would save for the same values. Graph inputs and parameters are
        counted apart: they are held anyway."""
        held = [t for t in self.saved if t.kind != "input"]
        saved, fp32 = sum(t.bytes for t in held), sum(t.fp32_bytes for t in held)
        by_kind: dict[str, int] = {}
        for t in held:
            by_kind[t.kind] = by_kind.get(t.kind, 0) + t.bytes
        return {
            "saved_bytes": saved,
            "saved_fp32_bytes": fp32,
            "saved_ratio": saved / fp32 if fp32 else None,
            "saved_by_kind": by_kind,
            "saved_inputs_bytes": sum(t.bytes for t in self.saved if t.kind == "input"),
            "saved_outside_gemm_sites_bytes": sum(t.bytes for t in held if t.site is None),
            "recomputed_tensors": sum(t.kind == "recomputed" for t in held),
            "recomputed_fp32_bytes": sum(t.fp32_bytes for t in held if t.kind == "recomputed"),
            "replayed_gemms": sum(r.replayed for r in self.rows),
        }

    def _aq_unmeasured(self) -> bool:
        """Whether an AQ operand has no measured spend yet (left out of the bit averages)."""
        return any(
            e.ran and e.avg_bits is None and e.spec is not None and e.spec.format == "aq"
            for r in self.rows
            for e in r.roles().values()
        )

    def totals(self) -> dict[str, Any]:
        """Share of matmul FLOPs whose GEMM ran with both operands at <= 4 bits (SMP counted N×)."""
        fwd = fwd_low = bwd = bwd_low = 0
        for r in self.rows:
            if r.flops is None:
                continue
            fwd += r.flops
            if _low(r.activation) and _low(r.weight):
                fwd_low += r.flops
            for grad, other in ((r.grad_dgrad, r.weight), (r.grad_wgrad, r.activation)):
                if grad.ran:
                    n = grad.spec.samples if grad.spec else 1
                    bwd += n * r.flops
                    if _low(grad) and _low(other):
                        bwd_low += n * r.flops
        # Bits per element, weighted by element count: over every operand that ran, and over the
        # quantized ones only (what the low-bit GEMMs themselves spend).
        sums = {k: {role: [0.0, 0] for role in ROLES} for k in ("all", "quantized")}
        for r in self.rows:
            for role, e in r.roles().items():
                if e.ran and e.avg_bits is not None and e.elements:
                    kinds = ("all", "quantized") if e.spec is not None and e.spec.is_quantized else ("all",)
                    for kind in kinds:
                        sums[kind][role][0] += e.avg_bits * e.elements
                        sums[kind][role][1] += e.elements
        avg = {k: {role: (b / n if n else None) for role, (b, n) in v.items()} for k, v in sums.items()}
        return {
            "avg_bits": avg["all"],
            "avg_bits_quantized": avg["quantized"],
            "gemms": len(self.rows),
            "quantized_gemms": sum(any(_low(e) for e in r.roles().values()) for r in self.rows),
            "forward_flops": fwd,
            "forward_low_bit_share": fwd_low / fwd if fwd else 0.0,
            "backward_flops": bwd,
            "backward_low_bit_share": bwd_low / bwd if bwd else 0.0,
        }

    def kernel_counts(self) -> dict[str, int]:
        """How many GEMMs ran on each kernel (a site's forward, dgrad and wgrad counted apart):
        ``cpu-int8`` / ``triton-int8`` (integer GEMMs) or ``inductor`` (float)."""
        counts: dict[str, int] = {}
        for r in self.rows:
            for kernel in r.kernels().values():
                name = kernel.split(" (")[0]
                counts[name] = counts.get(name, 0) + 1
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {"policies": self.policies, "graphs": self.graphs, "rows": [r.to_json() for r in self.rows],
                "totals": self.totals(), "memory": self.memory(), "kernel_counts": self.kernel_counts(),
                "saved_tensors": [t.to_json() for t in self.saved]}  # fmt: skip

    def to_json(self, indent: int | None = 2) -> str:
        return json.dumps(self.to_dict(), indent=indent)

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self):
        return iter(self.rows)

    def row(self, layer: str, op: str | None = None) -> PlanRow:
        """The first row of ``layer`` (and ``op``); KeyError naming the layers otherwise."""
        for r in self.rows:
            if r.layer == layer and (op is None or r.op == op):
                return r
        raise KeyError(f"no plan row for layer {layer!r}; layers: {sorted({r.layer for r in self.rows})}")

    def __str__(self) -> str:
        headers = [
            "layer",
            "op",
            "shapes",
            "weight",
            "activation",
            "dY→dgrad",
            "dY→wgrad",
            "saved for bwd",
            "bytes (fp32)",
            "kernel",
            "note",
        ]
        table = [
            [r.layer, r.op, " × ".join("[" + ",".join(map(str, s)) + "]" for s in r.shapes),
             r.weight.cell(), r.activation.cell(), r.grad_dgrad.cell(), r.grad_wgrad.cell(), r.saved,
             f"{_size(r.saved_bytes)} ({_size(r.saved_fp32_bytes)})", r.kernel_cell(), r.reason]
            for r in self.rows
        ]  # fmt: skip
        if any(r.state for r in self.rows):
            headers.append("state")
            for line, r in zip(table, self.rows, strict=True):
                line.append(r.state)
        t = self.totals()
        names = {"weight": "W", "activation": "X", "grad_dgrad": "dY→dgrad", "grad_wgrad": "dY→wgrad"}
        bits = ", ".join(f"{names[k]} {v:.2f}" for k, v in t["avg_bits"].items() if v is not None)
        qbits = ", ".join(f"{names[k]} {v:.2f}" for k, v in t["avg_bits_quantized"].items() if v is not None)
        summary = (
            f"policy: {', '.join(self.policies) or '-'} | graphs: {', '.join(self.graphs) or '-'}\n"
            f"{t['quantized_gemms']}/{t['gemms']} GEMM sites quantized; matmul FLOPs at <=4 bits: "
            f"forward {t['forward_low_bit_share']:.1%}, "
            + (
                f"backward {t['backward_low_bit_share']:.1%}"
                if t["backward_flops"]
                else "backward: none compiled (inference only)"
            )
            + (f"\naverage bits per element: {bits}" if bits else "")
            + (" (AQ operands: measured once a backward has run)" if self._aq_unmeasured() else "")
            + (f" (quantized operands only: {qbits})" if qbits else "")
        )
        counts = self.kernel_counts()
        if counts:
            summary += "\nGEMMs by kernel: " + ", ".join(f"{k} {n}" for k, n in sorted(counts.items()))
            if "cpu-int8" in counts:
                from qcompile.runtime.kernels.cpu_int8_gemm import cpu_int8_kernel

                summary += " (CPU integer kernel: {} — {})".format(*cpu_int8_kernel())
        m = self.memory()
        if self.saved:
            summary += (
                f"\nsaved for backward: {_size(m['saved_bytes'])} (FP32 would save {_size(m['saved_fp32_bytes'])}, "
                f"{m['saved_ratio']:.1%}); {_size(m['saved_outside_gemm_sites_bytes'])} of it outside GEMM sites "
                f"(masks, normalisation statistics); inputs and parameters held anyway: "
                f"{_size(m['saved_inputs_bytes'])}"
                + (
                    f"\nrecomputed in backward instead of saved: {_count(m['recomputed_tensors'], 'tensor')} "
                    f"({_size(m['recomputed_fp32_bytes'])} as FP32), replaying "
                    f"{_count(m['replayed_gemms'], 'forward GEMM')}"
                    if m["recomputed_tensors"]
                    else ""
                )
                if m["saved_fp32_bytes"]
                else f"\nsaved for backward: {_size(m['saved_bytes'])}"
            )
        return tabulate(table, headers=headers, tablefmt="simple") + "\n" + summary

    def __repr__(self) -> str:
        return f"Plan({len(self.rows)} rows, policies={self.policies})"


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}" + ("" if n == 1 else "s")


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB"):
        if n < 1024 or unit == "MiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} GiB"


def _low(entry: RoleEntry) -> bool:
    return entry.ran and entry.spec is not None and entry.spec.is_quantized and entry.spec.bits <= 4


def _shape(record: SiteRecord, role: str) -> list[int] | None:
    """The operand's shape at the compiled size (dY has the output's), None when symbolic."""
    shape = {"activation": record.shapes[0] if record.shapes else None,
             "weight": record.shapes[1] if len(record.shapes) > 1 else None}.get(role, record.extra.get("out_shape"))  # fmt: skip
    if not shape or not all(isinstance(s, int) for s in shape):
        return None
    return shape  # type: ignore[return-value]


def _elements(record: SiteRecord, role: str) -> int | None:
    shape = _shape(record, role)
    return None if shape is None else math.prod(shape)


def _avg_bits(record: SiteRecord, role: str, spec: QuantSpec, shared_from: str | None) -> float | None:
    """Bits per element this operand really cost: AQ's measured spend (kept codes, their groups'
    scales and zero points, the keep mask; None until a backward has run), SMP's N draws, 32 for
    high precision."""
    if not spec.is_quantized:
        return 32.0
    if spec.format == "aq":
        found = measured_bits(QuantTag(record.layer, shared_from or role, record.key).encode())
        return None if found is None else found[0]
    if spec.format == "fp":
        shape = _shape(record, role)
        if shape is None:
            return None
        # Scales along the forward contraction (the last axis) for X and W, along N for dgrad's dY
        # (the last axis) and along the tokens for wgrad's dY (the first): their overheads differ
        # only by partial blocks.
        axis = 0 if role == "grad_wgrad" else -1
        return block_scale_bits(spec.element, spec.scaling, spec.block, shape, axis)
    return float(spec.bits * spec.samples)


def _entry(graph: CompiledGraph, record: SiteRecord, role: str) -> RoleEntry:
    entry = _raw_entry(graph, record, role)
    if entry.ran:
        entry.avg_bits = _avg_bits(record, role, entry.spec or QuantSpec(), entry.shared_from)
        entry.elements = _elements(record, role)
    return entry


def _state_cell(graph: CompiledGraph, record: SiteRecord) -> str:
    """``γ=0.712 (clipped 0.01%)`` (LBT) and ``W clip=0.31`` (learned clips) for each stateful
    quantizer of the site, read live."""
    slots = record.extra.get("state_slots") or {}
    state = graph.state
    if not slots or not isinstance(state, QuantizerState):
        return ""
    cells = []
    for role, name in slots.items():
        if role in ("weight", "activation"):
            label = "W" if role == "weight" else "X"
            cells.append(f"{label} clip={float(state.clip(name).detach()):.3g}")
            continue
        gamma = float(state.gamma(name))
        clipped = state.last_clipped.get(name)
        text = f"γ={gamma:.3f}"
        if clipped is not None and clipped == clipped:
            text += f" (clipped {clipped:.3%})"
        grads = [r for r in slots if r.startswith("grad_")]
        cells.append(text if len(grads) == 1 else f"{role.removeprefix('grad_')} {text}")
    return "; ".join(cells)


def _raw_entry(graph: CompiledGraph, record: SiteRecord, role: str) -> RoleEntry:
    fact: OperandFact | None = graph.facts.get((record.key, role))
    if fact is not None:
        return RoleEntry(True, fact.spec, fact.gemm, fact.shared_from, kernel=fact.kernel, hadamard=fact.hadamard)
    backward_role = role.startswith("grad_")
    if not record.rewritten:
        if backward_role and "backward" not in graph.compiled:
            return RoleEntry(False, note="— (no backward)")
        return RoleEntry(True, QuantSpec(), "not rewritten")
    if backward_role:
        if "backward" not in graph.compiled:
            return RoleEntry(False, note="— (no backward)")
        return RoleEntry(False, note="— (no grad)")
    return RoleEntry(False, note="(not compiled)")


def _saved(graph: CompiledGraph, record: SiteRecord) -> str:
    items: list[str] = []
    for role in ("grad_dgrad", "grad_wgrad"):
        fact = graph.facts.get((record.key, role))
        for item in fact.saved if fact else []:
            name, _, dtype = item.partition(":")
            if name == "recomputed":
                text = f"{dtype} recomputed"
            elif name in ("packed", "requantized"):
                saved_role, _, rebuilt = dtype.partition(":")
                fact_op = graph.facts.get((record.key, saved_role))
                label = fact_op.spec.label if fact_op else "int4"
                hat, plain = ("Ŵ", "W") if saved_role == "weight" else ("X̂", "X")
                how = "packed as uint8" if name == "packed" else f"requantized from {plain}"
                text = f"{hat} {label} {how} → {rebuilt}"
            elif name == "requantized_along":
                saved_role, _, rest = dtype.partition(":")
                spec_text, _, had = rest.partition(":")
                plain = "W" if saved_role == "weight" else "X"
                axis = "N" if role == "grad_dgrad" else "M"
                had_text = f" had{had}" if had not in ("", "0") else ""
                text = f"{plain} requantized along {axis}: {spec_cell(parse_spec(spec_text))}{had_text}"
            elif name == "replayed":
                text = f"{'W' if role == 'grad_dgrad' else 'X'} {dtype} recomputed from codes"
            elif name in graph.forward_roles:
                _, saved_role, spec = graph.forward_roles[name]
                text = f"{'Ŵ' if saved_role == 'weight' else 'X̂'} {spec.label} as {dtype}"
            else:
                text = f"{'W' if role == 'grad_dgrad' else 'X'} {dtype}"
            if text not in items:
                items.append(text)
    if (record.key, REPLAYED) in graph.facts:
        items.append("Y recomputed in bwd (GEMM replayed)")
    return ", ".join(items)


def _attribute_saved(graph: CompiledGraph) -> dict[str, list[SavedTensor]]:
    """Saved tensors per site key: packed / unpacked operands by their tag, other tensors (FP32
    operands of high-precision sites) by the backward GEMMs that read them."""
    by_site: dict[str, list[SavedTensor]] = {}
    readers: dict[str, str] = {}
    for (key, role), fact in graph.facts.items():
        if role in ("grad_dgrad", "grad_wgrad"):
            for item in fact.saved:
                readers.setdefault(item.partition(":")[0], key)
    for t in graph.saved:
        if t.site is None and t.kind != "input" and t.name in readers:
            t.site = readers[t.name]
        if t.site is not None and t.kind != "input":
            by_site.setdefault(t.site, []).append(t)
    return by_site


def plan_from_graphs(graphs: Sequence[CompiledGraph]) -> Plan:
    p = Plan()
    for g in graphs:
        p.saved.extend(g.saved)
        per_site = _attribute_saved(g)
        if g.policy.name not in p.policies:
            p.policies.append(g.policy.name)
        gid = g.records[0].key.split("s")[0] if g.records else "g?"
        p.graphs.append(f"{gid}:{'+'.join(dict.fromkeys(g.compiled)) or 'not compiled'}")
        for rec in g.records:
            p.rows.append(PlanRow(
                graph=rec.key, layer=rec.layer, op=rec.op, shapes=rec.shapes, flops=rec.flops,
                weight=_entry(g, rec, "weight"), activation=_entry(g, rec, "activation"),
                grad_dgrad=_entry(g, rec, "grad_dgrad"), grad_wgrad=_entry(g, rec, "grad_wgrad"),
                saved=_saved(g, rec), reason=_reason(rec), state=_state_cell(g, rec),
                saved_bytes=sum(t.bytes for t in per_site.get(rec.key, [])),
                saved_fp32_bytes=sum(t.fp32_bytes for t in per_site.get(rec.key, [])),
                replayed=(rec.key, REPLAYED) in g.facts, region=rec.extra.get("region"),
                calls=rec.extra.get("calls", 1),
            ))  # fmt: skip
    return p


# How the plan names the higher-order ops a GEMM can run under.
REGION_NAMES = {
    "tag_activation_checkpoint": "activation checkpointing",
    "invoke_subgraph": "nested compile region",
    "cond": "torch.cond branch",
}


def _reason(rec: SiteRecord) -> str:
    """The site's reasons, then the region it runs in (``under activation checkpointing``)."""
    reasons = list(rec.reasons)
    region = rec.extra.get("region")
    if region is not None:
        calls = rec.extra.get("calls", 1)
        shared = f" (one body, {calls} calls)" if calls > 1 else ""
        reasons.append(f"under {REGION_NAMES.get(region, 'torch.ops.higher_order.' + region)}{shared}")
    return "; ".join(reasons)


def _unwrap(model: Any) -> Any:
    return getattr(model, "_orig_mod", model)


def plan(
    model: Any = None,
    example_inputs: Any = None,
    policy: Any = None,
    kernels: str | None = None,
) -> Plan:
    """The plan of a model compiled with ``backend="fqt"``.

    ``qcompile.plan(cmodel)``: every graph compiled so far for ``cmodel`` (run it once first).
    ``qcompile.plan(model, example_inputs, policy=...)``: plan without training: compiles a deep
    copy of the model, runs one forward and backward on ``example_inputs`` (a tensor or a tuple)
    and reports its graphs; ``model`` and its gradients are left untouched. ``kernels`` is the
    backend option of the same name (``"auto"``, ``"int8"``, ``"reference"``).
    ``qcompile.plan()``: every graph compiled in this process.
    """
    if example_inputs is None:
        if kernels is not None:
            raise ValueError(
                "kernels= needs example_inputs= (a plan of an already compiled model reads its graphs)"
            )
        if policy is not None:
            raise ValueError(
                "policy= needs example_inputs= (a plan of an already compiled model reads its graphs)"
            )
        graphs = graphs_for(_unwrap(model) if model is not None else None)
        if not graphs:
            raise ValueError(
                "no graph compiled with backend='fqt' for this model yet: run it once, or pass example_inputs "
                "to plan it without training"
            )
        return plan_from_graphs(graphs)
    # Here, not at the top: the backend's import hooks Dynamo, which `import qcompile` must not do.
    from qcompile.compiler.probe import compile_and_step
    from qcompile.policy.files import resolve_policy

    if policy is not None:
        policy = resolve_policy(policy)  # a bad policy fails here, as a ValueError, not inside Dynamo
    base = _unwrap(model)
    if not isinstance(base, torch.nn.Module):
        raise TypeError(f"plan with example_inputs needs an nn.Module, got {type(base).__name__}")
    previous = graphs_for(base)
    if policy is None:
        policy = previous[-1].policy if previous else None
    if kernels is None:
        kernels = previous[-1].kernels if previous else "auto"
    from qcompile.passes import KERNEL_MODES
    from qcompile.policy.config import PolicyError

    if kernels not in KERNEL_MODES:  # here, as a ValueError, not wrapped inside Dynamo's error
        raise PolicyError(f"unknown kernels={kernels!r}; valid choices: {KERNEL_MODES}")
    options = {"kernels": kernels} if policy is None else {"policy": policy, "kernels": kernels}
    inputs = example_inputs if isinstance(example_inputs, (tuple, list)) else (example_inputs,)
    shadow = compile_and_step(base, inputs, options, grad=torch.is_grad_enabled())
    return plan_from_graphs(graphs_for(shadow))
