"""Graph fuzzing: random small models built from linear / conv / matmul / bmm / SDPA / norm /
activation / residual / view pieces, random widths, fp32 or bf16 autocast, random frozen layers
and input gradients, random policies (some invalid). Checked for each: bad policies raise a
`ValueError`, nothing else raises; every GEMM is in the plan; gradients are finite; the ``fp32``
policy computes exactly what ``torch.compile``'s default backend computes.

The suite runs a few seeded examples (about a minute on 2 cores): the quantized policies' graphs
run eagerly (`graphs_only`), so no Inductor code generation. ``QCOMPILE_FUZZ_EXAMPLES=200 pytest
tests/test_graph_fuzz.py`` is the long profile.
"""

from __future__ import annotations

import contextlib
import copy
import os

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.compiler.backend import graphs_only
from tests.gemm_count import independent_gemm_count

PIECES = ("linear", "matmul", "bmm", "sdpa", "conv", "norm", "act", "residual", "view")
POLICIES = ("luq-int4", "fp32", "luq", "luq-smp2", "lbt-int4", "aq1-int4", "not-a-policy")
EXAMPLES = int(os.environ.get("QCOMPILE_FUZZ_EXAMPLES", "8"))


class Piece(nn.Module):
    """One building block on a ``[batch, tokens, width]`` tensor; ``out`` is its output width."""

    def __init__(self, kind: str, width: int, out: int) -> None:
        super().__init__()
        self.kind, self.out = kind, out
        if kind in ("linear", "residual"):
            self.layer = nn.Linear(width, out if kind == "linear" else width)
        elif kind == "matmul":
            self.weight = nn.Parameter(torch.randn(width, out) / width**0.5)
        elif kind == "conv":
            self.layer = nn.Conv1d(width, out, 3, padding=1)
        elif kind == "norm":
            self.layer = nn.LayerNorm(width)
        if kind not in ("linear", "matmul", "conv"):
            self.out = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        k = self.kind
        if k in ("linear", "norm"):
            return self.layer(x)
        if k == "residual":
            return x + self.layer(F.gelu(x))
        if k == "matmul":
            return x @ self.weight
        if k == "conv":
            return self.layer(x.transpose(1, 2)).transpose(1, 2)
        if k == "bmm":
            return torch.softmax(x @ x.transpose(-1, -2) / x.shape[-1] ** 0.5, -1) @ x
        if k == "sdpa":
            b, t, d = x.shape
            heads = 2 if d % 2 == 0 else 1
            q = x.view(b, t, heads, d // heads).transpose(1, 2)
            return F.scaled_dot_product_attention(q, q, q, is_causal=True).transpose(1, 2).reshape(b, t, d)
        if k == "act":
            return F.silu(x)
        return x.permute(0, 2, 1).contiguous().permute(0, 2, 1).reshape(x.shape)  # view


@st.composite
def models(draw):
    widths = st.sampled_from((4, 6, 8, 12))
    width = first = draw(widths)
    pieces = []
    for kind in draw(st.lists(st.sampled_from(PIECES), min_size=1, max_size=5)):
        piece = Piece(kind, width, draw(widths))
        pieces.append(piece)
        width = piece.out
    model = nn.Sequential(*pieces, nn.Linear(width, 3))
    for p in model.parameters():
        if draw(st.integers(0, 9)) == 0:
            p.requires_grad_(False)
    batch, tokens = draw(st.integers(1, 3)), draw(st.integers(2, 5))
    return model, (batch, tokens, first)


def _run(model: nn.Module, x: torch.Tensor, autocast: bool, backend, options=None):
    context = torch.autocast("cpu", torch.bfloat16) if autocast else contextlib.nullcontext()
    compiled = torch.compile(model, backend=backend, options=options)
    with context:
        out = compiled(x)
    if out.requires_grad:  # everything frozen and an input without grad: a forward only
        out.float().square().mean().backward()
    return compiled, out


# No shrinking: each example compiles, so shrinking would take minutes; the failing one is printed.
@settings(max_examples=EXAMPLES, deadline=None, derandomize=True, suppress_health_check=list(HealthCheck),
          phases=(Phase.explicit, Phase.generate), print_blob=True)  # fmt: skip
@given(
    built=models(),
    policy=st.sampled_from(POLICIES),
    autocast=st.booleans(),
    input_grad=st.booleans(),
)
def test_random_models_never_crash_and_every_gemm_is_planned(built, policy, autocast, input_grad):
    model, shape = built
    torch.manual_seed(0)
    x = torch.randn(*shape, requires_grad=input_grad)
    torch._dynamo.reset()
    if policy == "not-a-policy":
        with pytest.raises(Exception) as info:
            _run(model, x, autocast, "fqt", {"policy": policy})
        chain = [info.value, getattr(info.value, "inner_exception", None), info.value.__cause__]
        assert any(isinstance(e, ValueError) and "valid" in str(e) for e in chain), repr(info.value)
        return
    expected = independent_gemm_count(model, (x.detach(),))
    subject = copy.deepcopy(model)
    # fp32 runs Inductor for real (compared with Inductor below); the others run their graphs eagerly.
    with graphs_only() if policy != "fp32" else contextlib.nullcontext():
        compiled, out = _run(subject, x, autocast, "fqt", {"policy": policy})
    plan = qcompile.plan(compiled)
    assert sum(r.calls for r in plan.rows) == expected, str(plan)
    assert torch.isfinite(out.float()).all()
    assert all(torch.isfinite(p.grad).all() for p in subject.parameters() if p.grad is not None)
    if policy == "fp32":  # nothing quantized: exactly what torch.compile's default backend computes
        torch._dynamo.reset()
        reference = copy.deepcopy(model)
        _, ref_out = _run(reference, x, autocast, "inductor")
        assert torch.equal(out, ref_out)
        for p, q in zip(subject.parameters(), reference.parameters(), strict=True):
            assert (p.grad is None) == (q.grad is None)
            assert p.grad is None or torch.equal(p.grad, q.grad)
