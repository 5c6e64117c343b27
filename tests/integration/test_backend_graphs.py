"""The backend's graphs: quantizers really sit in front of every GEMM, in forward and backward."""

from __future__ import annotations

import copy
import subprocess
import sys

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.passes import read_graph
from qcompile.testing.models import mlp

NO_FIRST_LAST = qcompile.preset("luq-int4").replace(keep_first_last=False)


def _capture_graphs(model, x, policy):
    """Compile with a wrapper that records the forward/backward ATen graphs the backend reads."""
    from qcompile.compiler import backend as backend_mod

    graphs = {}
    original = backend_mod._inner_compile

    def spy(gm, example_inputs, **kwargs):
        kind = "backward" if kwargs.get("is_backward") else "forward"
        graphs[kind] = copy.deepcopy(gm)
        return original(gm, example_inputs, **kwargs)

    backend_mod._inner_compile = spy
    try:  # AOTAutograd's cache off: a hit (a warm cache from an earlier run) skips the inner compile
        c = torch.compile(model, backend="fqt", options={"policy": policy})
        with torch._functorch.config.patch(enable_autograd_cache=False):
            c(x).sum().backward()
    finally:
        backend_mod._inner_compile = original
    return graphs


def test_backward_graph_has_gradient_quantizers_before_both_gemms():
    torch.manual_seed(0)
    graphs = _capture_graphs(mlp(), torch.randn(8, 16, requires_grad=True), NO_FIRST_LAST)
    facts = read_graph(graphs["backward"], "backward")
    roles = {}
    for (key, role), fact in facts.items():
        roles.setdefault(key, {})[role] = fact
    assert len(roles) == 3  # three linear layers
    for per_layer in roles.values():
        assert per_layer["grad_dgrad"].spec.format == "luq"
        assert per_layer["grad_dgrad"].spec.granularity == "per-sample"
        assert per_layer["grad_wgrad"].spec.format == "luq"
        assert per_layer["grad_wgrad"].spec.granularity == "per-channel"
        assert per_layer["grad_dgrad"].gemm.startswith("aten.mm")
    luq_nodes = [
        n for n in graphs["backward"].graph.nodes if n.target is torch.ops.qcompile.luq_quantize.default
    ]
    assert len(luq_nodes) == 6  # two independent draws (SCQ) per layer


def test_forward_graph_feeds_quantized_operands_to_every_gemm():
    torch.manual_seed(0)
    graphs = _capture_graphs(mlp(), torch.randn(8, 16), NO_FIRST_LAST)
    facts = read_graph(graphs["forward"], "forward")
    weights = [f for (k, r), f in facts.items() if r == "weight"]
    acts = [f for (k, r), f in facts.items() if r == "activation"]
    assert len(weights) == len(acts) == 3
    assert all(f.spec.format == "int" and f.spec.bits == 4 and f.spec.scaling == "sawb" for f in weights)
    assert all(f.spec.signed == "auto" for f in acts)


def test_shared_sample_preset_feeds_one_draw_to_both_gemms():
    torch.manual_seed(0)
    policy = qcompile.preset("luq").replace(keep_first_last=False)
    graphs = _capture_graphs(mlp(), torch.randn(8, 16), policy)
    luq_nodes = [
        n for n in graphs["backward"].graph.nodes if n.target is torch.ops.qcompile.luq_quantize.default
    ]
    assert len(luq_nodes) == 3  # one per layer
    facts = read_graph(graphs["backward"], "backward")
    wgrad = [f for (k, r), f in facts.items() if r == "grad_wgrad"]
    dgrad = [f for (k, r), f in facts.items() if r == "grad_dgrad"]
    assert len(wgrad) == 3 and len(dgrad) == 2  # the first layer's input needs no gradient
    assert all(f.shared_from == "grad_dgrad" and f.spec.format == "luq" for f in wgrad)
    assert all(f.shared_from is None for f in dgrad)


def test_smp_draws_are_read_back_from_the_compiled_backward():
    """SMP's ``stack(draws).mean(0)`` reaches the backward graph as ``cat → view → mean``; the plan
    must follow it to the two draws, not report dY at 32 bits (nor warn of a high-precision GEMM)."""
    import warnings

    torch.manual_seed(0)
    policy = qcompile.preset("luq-smp2").replace(keep_first_last=False)
    model = mlp()
    graphs = _capture_graphs(model, torch.randn(8, 16), policy)
    assert any(n.target is torch.ops.aten.cat.default for n in graphs["backward"].graph.nodes)
    facts = read_graph(graphs["backward"], "backward")
    wgrad = [f for (k, r), f in facts.items() if r == "grad_wgrad"]
    dgrad = [f for (k, r), f in facts.items() if r == "grad_dgrad"]
    assert len(wgrad) == 3 and len(dgrad) == 2
    assert all(f.spec.format == "luq" and f.spec.samples == 2 for f in wgrad + dgrad)
    assert all(f.shared_from == "grad_dgrad" for f in wgrad)
    torch._dynamo.reset()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.compile(mlp(), backend="fqt", options={"policy": "luq-smp2"})
        compiled(torch.randn(8, 16)).sum().backward()
    assert not [w for w in caught if issubclass(w.category, qcompile.HighPrecisionGemmWarning)]
    plan = qcompile.plan(compiled)
    middle = plan.row("2")
    assert middle.grad_dgrad.spec.samples == 2 and middle.grad_wgrad.shared_from == "grad_dgrad"
    assert plan.totals()["avg_bits_quantized"]["grad_dgrad"] == 8.0
    assert "smp2" in str(plan)
    # The averaged draws cannot feed the int8 kernel; the table says so, not a bare "inductor".
    assert "dgrad inductor (A: SMP: the mean of 2 draws is not one int8 code grid)" in middle.kernel_cell()
    assert middle.kernel_cell() in str(plan)


def test_plan_names_what_conv_backward_reads_after_the_channels_last_relayout():
    """Backward's conv operands rebuilt from codes are re-laid out channels-last
    (`match_forward_layout`: clone + as_strided); the plan still traces them to the codes."""
    from qcompile.testing.models import small_resnet

    torch.manual_seed(0)
    compiled = torch.compile(small_resnet(), backend="fqt")
    compiled(torch.randn(4, 3, 8, 8)).sum().backward()
    row = qcompile.plan(compiled).row("block1.conv1")
    assert "X̂ int4 packed as uint8" in row.saved and "Ŵ int4 requantized from W" in row.saved, row.saved


def test_a_cat_that_is_not_smp_stops_the_operand_trace():
    """Only a ``cat`` of draws of one quantizer is SMP; one that joins a quantized tensor with a
    plain one must not make the plan call the joined GEMM operand quantized."""
    from torch import fx

    from qcompile.passes.analysis.read_quantized_graph import trace_operand

    g = fx.Graph()
    x, other = g.placeholder("x"), g.placeholder("other")
    for n, v in ((x, torch.randn(4, 8)), (other, torch.randn(4, 8))):
        n.meta["val"] = v
    luq = torch.ops.qcompile.luq_quantize.default
    draws = [g.call_function(luq, (x, 4, [], i, "fc|grad_dgrad|k0")) for i in range(2)]
    smp = g.call_function(torch.ops.aten.cat.default, (draws,))
    mixed = g.call_function(torch.ops.aten.cat.default, ([draws[0], other],))
    assert [n.args[3] for n in trace_operand(smp).quantizers] == [0, 1]
    assert trace_operand(smp).tags == ["fc|grad_dgrad|k0"] * 2
    assert trace_operand(mixed).quantizers == [] and trace_operand(mixed).tags == []


def test_quantized_gradients_lie_on_the_luq_grid_of_each_sample():
    """With Ŵ = I exactly, dX = Q(dY)·Ŵ is the quantized dY: every row must be on its own LUQ grid
    {0, ±α_r·2^k}, α_r = max|dY_r|/64, and differ from the FP32 gradient."""
    torch.manual_seed(0)
    n = 16
    layer = nn.Linear(n, n, bias=False)
    with torch.no_grad():
        layer.weight.copy_(torch.eye(n))
    c = torch.compile(layer, backend="fqt", options={"policy": NO_FIRST_LAST})
    x = torch.rand(8, n, requires_grad=True)
    upstream = torch.randn(8, n) * torch.logspace(-3, 0, n)
    c(x).backward(upstream)
    dx = x.grad
    assert not torch.allclose(dx, upstream)
    alpha = upstream.abs().amax(1, keepdim=True) / 64
    k = torch.log2(dx.abs() / alpha)
    nonzero = dx != 0
    assert torch.allclose(k[nonzero], k[nonzero].round(), atol=1e-4)
    assert k[nonzero].round().min() >= 0 and k[nonzero].round().max() <= 6
    assert torch.allclose(dx.abs().amax(1), upstream.abs().amax(1))  # LUQ keeps the max exactly
    assert (torch.sign(dx[nonzero]) == torch.sign(upstream[nonzero])).all()


def test_forward_output_is_int4_sawb_of_the_inputs():
    torch.manual_seed(0)
    layer = nn.Linear(32, 8, bias=False)
    c = torch.compile(layer, backend="fqt", options={"policy": NO_FIRST_LAST})
    x = torch.randn(4, 32)
    from qcompile.runtime import int_quantize_reference

    expected = (
        int_quantize_reference(x, 4, "sawb", "auto") @ int_quantize_reference(layer.weight, 4, "sawb").t()
    )
    out = c(x)
    assert torch.allclose(out, expected, atol=1e-5)
    assert not torch.allclose(out, layer(x), atol=1e-3)


def test_fp32_preset_matches_inductor_exactly():
    torch.manual_seed(0)
    m1 = mlp()
    m2 = copy.deepcopy(m1)
    x = torch.randn(8, 16)
    a = torch.compile(m1, backend="fqt", options={"policy": "fp32"})
    b = torch.compile(m2, backend="inductor")
    ya, yb = a(x), b(x)
    ya.sum().backward()
    yb.sum().backward()
    assert torch.equal(ya, yb)
    for p, q in zip(m1.parameters(), m2.parameters(), strict=True):
        assert torch.equal(p.grad, q.grad)


def test_backend_resolves_in_a_fresh_interpreter_without_import():
    code = (
        "import torch\n"
        "m = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.ReLU(), torch.nn.Linear(8, 8), torch.nn.Linear(8, 2))\n"
        "c = torch.compile(m, backend='fqt')\n"
        "c(torch.randn(4, 8)).sum().backward()\n"
        "import sys\n"
        "print('qcompile' in sys.modules, m[2].weight.grad is not None)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "True True"


def test_bad_policy_surfaces_as_value_error():
    c = torch.compile(mlp(), backend="fqt", options={"policy": "nope"})
    with pytest.raises(Exception) as info:
        c(torch.randn(2, 16))
    cause = info.value
    while cause is not None and not isinstance(cause, ValueError):
        cause = getattr(cause, "inner_exception", None) or cause.__cause__ or cause.__context__
    assert isinstance(cause, qcompile.PolicyError)
    assert "luq-int4" in str(cause)
    with pytest.raises(ValueError, match="valid presets"):
        qcompile.plan(mlp(), torch.randn(2, 16), policy="nope")
