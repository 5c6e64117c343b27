"""No silent high precision: GEMM operands the policy asked to quantize that the graphs run in
high precision, found after each compile and reported (a warning, or an error under
``options={"strict": True}``).

The policy's own choices (``keep_first_last``, rules, ``fp32`` specs) are what the user asked
for and are never reported. What is reported: a GEMM qcompile cannot rewrite (an ``einsum``,
``nn.MultiheadAttention``'s fused path, a body of a higher-order op it does not enter, a conv
with symbolic arguments, ...) and any operand that the compiled graph shows unquantized although
the policy's decision for it quantizes. The check reads the same facts as `qcompile.plan`: what
the forward and backward ATen graphs really run.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

from qcompile.compiler.compiled_graphs import CompiledGraph

FORWARD_ROLES = ("weight", "activation")
BACKWARD_ROLES = ("grad_dgrad", "grad_wgrad")


class HighPrecisionGemmError(RuntimeError):
    """Raised under ``strict=True`` when a GEMM the policy quantizes runs in high precision."""


class HighPrecisionGemmWarning(UserWarning):
    """Warned (once per compiled graph) when a GEMM the policy quantizes runs in high precision."""


@dataclass(frozen=True)
class Shortfall:
    """One GEMM operand the policy quantizes that runs in high precision, and why."""

    layer: str
    op: str
    roles: tuple[str, ...]
    reason: str

    def __str__(self) -> str:
        return f"{self.layer} ({self.op}) {'/'.join(self.roles)}: {self.reason}"


def shortfalls(graph: CompiledGraph, kind: str) -> list[Shortfall]:
    """The shortfalls of the ``kind`` (``forward``, ``backward`` or ``inference``) graph of
    ``graph``, read from its facts (so call it after the graph's facts were added)."""
    roles = BACKWARD_ROLES if kind == "backward" else FORWARD_ROLES
    out: list[Shortfall] = []
    for rec in graph.records:
        decision = rec.decision
        if decision is None:  # an unsupported site: what the policy would have done with it
            decision = graph.policy.decide(rec.layer, rec.op)
        wanted = [r for r in roles if getattr(decision, r).is_quantized]
        if not wanted:
            continue
        if not rec.rewritten:
            if kind == "backward" or graph.policy.is_high_precision:
                continue  # reported once, with the forward; a high-precision policy asks nothing
            out.append(Shortfall(rec.layer, rec.op, tuple(wanted), "; ".join(rec.reasons) or "not rewritten"))
            continue
        missed = []
        for role in wanted:
            fact = graph.facts.get((rec.key, role))
            if fact is not None and not fact.spec.is_quantized:
                missed.append(role)
        if missed:
            out.append(Shortfall(rec.layer, rec.op, tuple(missed), "the compiled graph runs it unquantized"))
    return out


def report_shortfalls(graph: CompiledGraph, kind: str, strict: bool) -> None:
    """Raise `HighPrecisionGemmError` (``strict``) or warn once per graph about ``kind``'s
    shortfalls; silent when there are none."""
    found = shortfalls(graph, kind)
    if not found:
        return
    lines = "\n".join(f"  {s}" for s in found)
    message = (
        f"policy {graph.policy.name!r} asks to quantize {len(found)} GEMM site(s) of this {kind} graph "
        f"that run in high precision:\n{lines}\n"
        "Use rules to keep them in high precision on purpose, or see qcompile.plan(model)."
    )
    if strict:
        raise HighPrecisionGemmError("qcompile strict mode: " + message)
    if not graph.warned:
        graph.warned = True
        warnings.warn("qcompile: " + message, HighPrecisionGemmWarning, stacklevel=2)
