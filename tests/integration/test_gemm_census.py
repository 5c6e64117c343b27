"""The plan sees every GEMM: over a corpus of real model code (the tests' nets, a conv net with
BatchNorm and residuals, ViT-style attention, ``nn.TransformerEncoderLayer``, HF GPT-2 and BERT,
checkpointed variants, an ``einsum``), the plan lists exactly the forward GEMMs that an
independent count of the model's ATen graph finds (AOTAutograd without qcompile), and every
model also compiles with dynamic batch sizes after an FP32 compile of the same class."""

from __future__ import annotations

import contextlib
import warnings

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.compiler.backend import graphs_only
from qcompile.testing.models import (
    EinsumMLP,
    QKVAttention,
    SubgraphBlockNet,
    mlp,
    small_resnet,
    tiny_bert,
    tiny_gpt2,
)
from tests.gemm_count import independent_gemm_count

CORPUS = {  # name: (model factory, batch size -> positional inputs)
    "mlp": (mlp, lambda b: (torch.randn(b, 16),)),
    "resnet": (small_resnet, lambda b: (torch.randn(b, 3, 8, 8),)),
    "checkpointed-blocks": (lambda: SubgraphBlockNet("checkpoint"), lambda b: (torch.randn(b, 16),)),
    "vit-attention": (QKVAttention, lambda b: (torch.randn(b, 8, 32),)),
    "transformer-layer": (
        lambda: nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
        lambda b: (torch.randn(b, 8, 32),),
    ),
    "gpt2-checkpointed": (lambda: tiny_gpt2(checkpointing=True), lambda b: (torch.randint(0, 64, (b, 8)),)),
    "bert": (tiny_bert, lambda b: (torch.randint(0, 64, (b, 8)),)),
    "einsum": (EinsumMLP, lambda b: (torch.randn(b, 16),)),
}


def _loss(out) -> torch.Tensor:
    out = getattr(out, "logits", out)
    return out.float().square().mean()


def _plan_gemms(plan: qcompile.Plan) -> int:
    return sum(row.calls for row in plan.rows)


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_plan_lists_exactly_the_gemms_of_the_aten_graph(name):
    make, inputs = CORPUS[name]
    torch.manual_seed(0)
    model = make().train()
    expected = independent_gemm_count(model, inputs(4))
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        plan = qcompile.plan(model, inputs(4))  # the fqt passes, one training step
    assert _plan_gemms(plan) == expected, str(plan)
    assert expected > 0
    shortfalls = [w for w in caught if issubclass(w.category, qcompile.HighPrecisionGemmWarning)]
    if name == "einsum":  # the one GEMM qcompile cannot rewrite: listed, and warned about once
        assert plan.row("<root>", "einsum").reason == "einsum is not supported by qcompile yet"
        assert len(shortfalls) == 1 and "einsum" in str(shortfalls[0].message)
    else:
        assert shortfalls == []


@pytest.mark.parametrize("name", sorted(CORPUS))
def test_dynamic_batch_sizes_after_an_fp32_compile_of_the_same_class(name):
    """FP32 `torch.compile` of the class first (its recompile marks the batch dynamic, so fqt
    starts dynamic, as with ``dynamic=True``), then fqt over three batch sizes: no crash, the
    plan still quantizes. The HF models run their graphs without Inductor's code generation
    (`graphs_only`), to keep the suite short."""
    make, inputs = CORPUS[name]
    torch.manual_seed(0)
    fp32 = torch.compile(make().train(), backend="aot_eager")
    for b in (4, 6):
        _loss(fp32(*inputs(b))).backward()
    model = make().train()
    compiled = torch.compile(model, backend="fqt")
    with graphs_only() if name in ("gpt2-checkpointed", "bert") else contextlib.nullcontext():
        for b in (4, 6, 3):
            _loss(compiled(*inputs(b))).backward()
            assert all(p.grad is None or torch.isfinite(p.grad).all() for p in model.parameters())
    rows = qcompile.plan(compiled).rows
    # (the einsum net's only quantizable layers are its first and last, kept FP32 by the policy)
    assert name == "einsum" or any(r.weight.ran and r.weight.spec.bits == 4 for r in rows)
    assert any(isinstance(s, str) for r in rows for shape in r.shapes for s in shape)  # a symbolic size
