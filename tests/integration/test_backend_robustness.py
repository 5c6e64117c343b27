"""Odd inputs and usage: batch 1, empty batches, views, autocast, dynamic shapes, breaks, plans."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.compiler.compiled_graphs import graphs_for
from qcompile.testing.models import mlp

ALL_QUANTIZED = qcompile.preset("luq-int4").replace(keep_first_last=False)


def _compiled(model, policy=ALL_QUANTIZED, **kwargs):
    return torch.compile(model, backend="fqt", options={"policy": policy}, **kwargs)


def test_batch_size_one_and_non_contiguous_3d_inputs():
    torch.manual_seed(0)
    m = mlp()
    c = _compiled(m)
    c(torch.randn(1, 16)).sum().backward()
    x = torch.randn(16, 5, 3).permute(2, 1, 0)  # [3, 5, 16], non-contiguous
    assert not x.is_contiguous()
    out = c(x)
    assert out.shape == (3, 5, 4)
    out.sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m.parameters())


def test_tied_embedding_and_output_projection_without_bias():
    class TiedLM(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Embedding(20, 16)
            self.mid = nn.Linear(16, 16, bias=False)
            self.out = nn.Linear(16, 20, bias=False)
            self.out.weight = self.embed.weight

        def forward(self, ids):
            return self.out(torch.relu(self.mid(self.embed(ids))))

    torch.manual_seed(0)
    m = TiedLM()
    c = _compiled(m)
    c(torch.randint(0, 20, (2, 6))).sum().backward()
    assert m.embed.weight.grad is not None and torch.isfinite(m.embed.weight.grad).all()
    plan = qcompile.plan(c)
    assert plan.row("out").weight.spec.bits == 4


def test_zero_gradient_gives_zeros_and_nan_gradient_propagates():
    torch.manual_seed(0)
    m = mlp()
    c = _compiled(m)
    x = torch.randn(4, 16, requires_grad=True)
    c(x).backward(torch.zeros(4, 4))
    assert torch.equal(x.grad, torch.zeros_like(x))
    assert all(torch.equal(p.grad, torch.zeros_like(p)) for p in m.parameters())
    x.grad = None
    upstream = torch.randn(4, 4)
    upstream[1, 2] = float("nan")
    c(x).backward(upstream)
    assert torch.isnan(x.grad).any()
    assert torch.isnan(m[0].weight.grad).any()


def test_empty_batch():
    m = mlp()
    c = _compiled(m)
    out = c(torch.randn(0, 16))
    assert out.shape == (0, 4)
    out.sum().backward()


def test_autocast_bf16_runs_gemms_in_bf16():
    torch.manual_seed(0)
    m = mlp()
    c = _compiled(m)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = c(torch.randn(4, 16))
    assert out.dtype == torch.bfloat16
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in m.parameters())
    assert "bfloat16" in qcompile.plan(c).row("2").saved


def test_autocast_fp16_runs_gemms_in_fp16():
    """fp16 autocast goes through the same dynamic autocast rule on CPU as on CUDA."""
    torch.manual_seed(0)
    m = mlp()
    c = _compiled(m)
    with torch.autocast("cpu", dtype=torch.float16):
        out = c(torch.randn(4, 16))
    assert out.dtype == torch.float16
    out.float().sum().backward()
    assert all(p.grad.dtype == torch.float32 and torch.isfinite(p.grad).all() for p in m.parameters())
    assert "float16" in qcompile.plan(c).row("2").saved


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_autocast_fp16_with_grad_scaler():
    torch.manual_seed(0)
    m = mlp().cuda()
    c = _compiled(m)
    opt = torch.optim.SGD(m.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cuda")
    with torch.autocast("cuda", dtype=torch.float16):
        out = c(torch.randn(8, 16, device="cuda"))
    assert out.dtype == torch.float16
    scaler.scale(out.float().pow(2).sum()).backward()
    scaler.step(opt)
    scaler.update()
    assert all(torch.isfinite(p).all() for p in m.parameters())
    assert "float16" in qcompile.plan(c).row("2").saved


def test_dynamic_batch_compiles_once():
    torch.manual_seed(0)
    m = mlp()
    c = _compiled(m, dynamic=True)
    for batch in (4, 7, 9, 16):
        c(torch.randn(batch, 16)).sum().backward()
    assert len(graphs_for(m)) == 1


def test_inference_only_plan_has_forward_quantizers_only():
    m = mlp()
    c = _compiled(m)
    with torch.no_grad():
        c(torch.randn(4, 16))
    plan = qcompile.plan(c)
    row = plan.row("2")
    assert row.weight.spec.bits == 4 and not row.grad_dgrad.ran
    assert "inference only" in str(plan)


def test_graph_breaks_each_subgraph_is_quantized_and_planned():
    class Broken(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = mlp(), mlp(inputs=4)

        def forward(self, x):
            y = self.a(x)
            torch._dynamo.graph_break()
            return self.b(y)

    m = Broken()
    c = _compiled(m)
    c(torch.randn(4, 16)).sum().backward()
    plan = qcompile.plan(c)
    assert len(plan.graphs) == 2
    assert {r.layer for r in plan if r.weight.spec and r.weight.spec.bits == 4} >= {"a.0", "b.0"}


def test_matmul_family_ops_are_rewritten():
    class Ops(nn.Module):
        def __init__(self):
            super().__init__()
            self.w = nn.Parameter(torch.randn(8, 8))
            self.bias = nn.Parameter(torch.randn(8))

        def forward(self, x, b):
            y = torch.addmm(self.bias, x, self.w, beta=0.5, alpha=2.0)
            y = self.w @ y.t()  # weight on the left
            z = torch.bmm(b, b.transpose(1, 2))
            z = torch.baddbmm(z, z, z)
            e = torch.einsum("ij,kj->ik", y, y)
            return y.sum() + z.sum() + e.sum()

    torch.manual_seed(0)
    m = Ops()
    c = _compiled(m)
    x, b = torch.randn(4, 8), torch.randn(2, 3, 5, requires_grad=True)
    c(x, b).backward()
    plan = qcompile.plan(c)
    ops = [r.op for r in plan]
    assert ops == ["addmm", "matmul", "bmm", "baddbmm", "einsum"]
    assert all(r.activation.spec.bits == 4 for r in plan.rows[:4])
    assert "not supported" in plan.row("<root>", "einsum").reason
    assert torch.isfinite(m.w.grad).all() and torch.isfinite(b.grad).all()


def test_plan_json_and_planning_without_training_leaves_model_untouched():
    from qcompile.testing.models import SmallResNet

    torch.manual_seed(0)
    m = SmallResNet()
    before = {k: v.clone() for k, v in m.state_dict().items()}
    plan = qcompile.plan(m, torch.randn(2, 3, 8, 8), policy="luq")
    assert all(p.grad is None for p in m.parameters())
    assert all(torch.equal(v, before[k]) for k, v in m.state_dict().items())
    data = json.loads(plan.to_json())
    row = next(r for r in data["rows"] if r["layer"] == "block1.conv1")
    assert {"layer", "op", "weight", "activation", "grad_dgrad", "grad_wgrad"} <= row.keys()
    assert row["grad_wgrad"]["format"] == "luq" and row["grad_wgrad"]["shared_from"] == "grad_dgrad"
    assert data["rows"][0]["reason"].startswith("first GEMM layer")
    assert 0 < data["totals"]["forward_low_bit_share"] < 1


def test_cli_plan_prints_the_table(capsys):
    from qcompile.cli import main

    assert main(["plan", "qcompile.testing.models:mlp", "--input-shape", "4,16"]) == 0
    out = capsys.readouterr().out
    assert "int4" in out and "luq4" in out and "keep_first_last" in out
    with pytest.raises(SystemExit):
        main(["plan", "qcompile.testing.models:nope", "--input-shape", "4,16"])


def test_multihead_attention_is_traced_into_without_changing_numerics():
    import copy

    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    ref = copy.deepcopy(mha)
    x = torch.randn(2, 5, 16)
    fp32 = torch.compile(mha, backend="fqt", options={"policy": "fp32"})
    torch.testing.assert_close(fp32(x, x, x)[0], ref(x, x, x)[0])
    torch._dynamo.reset()
    q = torch.compile(copy.deepcopy(ref), backend="fqt", options={"policy": ALL_QUANTIZED})
    out, weights = q(x, x, x)  # need_weights=True: the bmm path
    out.sum().backward()
    plan = qcompile.plan(q)
    assert [r.op for r in plan] == ["linear", "bmm", "bmm", "linear"]
    assert [r.layer for r in plan][::3] == ["in_proj", "out_proj"]
    assert all(r.weight.spec.bits == 4 and r.grad_wgrad.spec.format == "luq" for r in plan)
    assert torch.allclose(weights.sum(-1), torch.ones(2, 5), atol=1e-5)


def test_multihead_attention_in_eval_is_traced_not_fast_pathed():
    mha = nn.MultiheadAttention(16, 2, batch_first=True).eval()
    c = _compiled(mha)
    x = torch.randn(2, 5, 16)
    with torch.no_grad():
        c(x, x, x)
    plan = qcompile.plan(c)
    assert [r.op for r in plan] == ["linear", "bmm", "bmm", "linear"]
    assert all(not r.grad_dgrad.ran for r in plan)


def test_fused_fast_path_calls_are_listed_as_high_precision():
    """A hand-built graph calling the fused inference kernels: listed with the reason, untouched."""
    from torch import fx

    from qcompile.passes import find_gemm_sites

    g = fx.Graph()
    x = g.placeholder("x")
    out = g.call_function(torch._native_multi_head_attention, (x, x, x, 16, 2, x, x, x, x))
    g.output(out)
    sites = find_gemm_sites(fx.GraphModule(torch.nn.Module(), g))
    assert len(sites) == 1 and "fast path" in sites[0].unsupported


def test_dynamic_sequence_length_through_attention_compiles_once():
    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.qkv, self.out = nn.Linear(16, 48), nn.Linear(16, 16)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = (z.view(b, t, 2, 8).transpose(1, 2) for z in self.qkv(x).split(16, -1))
            a = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
            return self.out(a.transpose(1, 2).reshape(b, t, 16))

    torch.manual_seed(0)
    m = Attn()
    c = _compiled(m, dynamic=True)
    for t in (5, 9, 13):
        out = c(torch.randn(2, t, 16))
        assert out.shape == (2, t, 16)
        out.sum().backward()
    assert len(graphs_for(m)) == 1
    assert qcompile.plan(c).row("<root>", "attention.qk").grad_dgrad.spec.format == "luq"


def test_in_place_ops_in_the_model():
    class InPlace(nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = nn.Linear(16, 16), nn.Linear(16, 4)

        def forward(self, x):
            h = self.a(x) * 2.0
            h += 1.0
            h.mul_(0.5)
            h.relu_()  # last: relu_ saves its output for backward (legal in eager too)
            return self.b(h)

    torch.manual_seed(0)
    m = InPlace()
    ref = InPlace()
    ref.load_state_dict(m.state_dict())
    c = torch.compile(m, backend="fqt", options={"policy": "fp32"})
    x = torch.randn(4, 16)
    torch.testing.assert_close(c(x), ref(x))
    m2 = InPlace()
    c2 = _compiled(m2)
    c2(x).sum().backward()
    assert all(torch.isfinite(p.grad).all() for p in m2.parameters())


def test_policy_attention_spec_quantizes_p_per_row_in_the_compiled_graph():
    """``Policy.attention`` reaches both attention GEMMs of a compiled SDPA: the output equals the
    reference built from per-row INT4 codes of q, kᵀ, P and v, and the plan reads it back."""
    from qcompile.runtime.reference.int_quant import int_quantize_reference

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(()))  # the plan finds a model's graphs by its parameters

        def forward(self, q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True) * self.gain

    torch.manual_seed(0)
    q, k, v = (torch.randn(2, 2, 8, 4) for _ in range(3))
    policy = qcompile.preset("luq-int4").replace(attention="int4-max-auto-sample", keep_first_last=False)
    c = _compiled(Attn(), policy)
    out = c(q, k, v)

    def quant(x, dims):
        return int_quantize_reference(x, 4, "max", "auto", dims)

    scores = quant(q, [-1]) @ quant(k.transpose(-2, -1), [-2]) / 2.0  # 1/sqrt(head dim 4)
    scores = scores.masked_fill(torch.ones(8, 8, dtype=torch.bool).triu(1), float("-inf"))
    expected = quant(scores.softmax(-1), [-1]) @ quant(v, [-2])
    torch.testing.assert_close(out, expected, atol=1e-5, rtol=1e-5)
    per_tensor = _compiled(Attn(), policy.replace(attention=None))(q, k, v)
    assert (per_tensor - expected).abs().max() > 1e-2  # the field changed what ran
    plan = qcompile.plan(c)
    for op in ("attention.qk", "attention.pv"):
        spec = plan.row("<root>", op).activation.spec
        assert spec.granularity == "per-sample" and spec.scaling == "max" and spec.bits == 4
