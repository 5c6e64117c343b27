"""End-to-end: the LBT and 1-bit FQT presets train a small real model; the plan's bit totals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qcompile
from qcompile.passes import SiteRecord
from qcompile.report.gemm_plan import _avg_bits
from qcompile.runtime.spec import parse_spec
from qcompile.testing.models import mlp

pytestmark = pytest.mark.slow


def _task():
    gen = torch.Generator().manual_seed(0)
    templates = torch.randn(4, 16, generator=gen) * 2
    labels = torch.randint(0, 4, (256,), generator=gen)
    return templates[labels] + 0.5 * torch.randn(256, 16, generator=gen), labels


@pytest.mark.parametrize("preset", ["lbt-int4", "lbt-int4-learned", "aq1-int4", "aq1"])
def test_preset_trains_and_loss_falls(preset):
    torch.manual_seed(0)
    x, y = _task()
    model = mlp(width=64)
    compiled = torch.compile(model, backend="fqt", options={"policy": preset})
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for step in range(40):
        loss = F.cross_entropy(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        if step == 0 and preset == "lbt-int4-learned":  # the clips exist once the model compiled
            clips = qcompile.state_of(model).clips()
            opt.add_param_group({"params": list(qcompile.state_of(model).parameters())})
        opt.step()
        losses.append(loss.item())
    start, end = losses[0], sum(losses[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(losses)))
    assert end < 0.5 * start, (preset, start, end)
    plan = qcompile.plan(compiled)
    middle = plan.row("2")  # first and last GEMM stay high precision (keep_first_last)
    bits = plan.totals()["avg_bits"]
    if preset.startswith("aq1"):
        assert middle.grad_dgrad.spec.format == middle.grad_wgrad.spec.format == "aq"
        # AQ really spends about 1 bit per dY element (measured, 40 steps of real gradients)
        assert 0.8 < middle.grad_dgrad.avg_bits < 1.2 and 0.8 < middle.grad_wgrad.avg_bits < 1.2
        assert "average bits per element" in str(plan)
    if preset == "aq1":
        assert middle.weight.spec.bits == middle.activation.spec.bits == 1
    if preset == "lbt-int4-learned":
        assert middle.weight.spec.scaling == middle.activation.spec.scaling == "learned"
        assert set(clips) == {"2/weight", "2/activation"} and "W clip=" in middle.state
        now = qcompile.state_of(model).clips()
        assert any(now[k] != clips[k] for k in clips)  # learned: the optimizer moved them
    if preset.startswith("lbt-int4"):
        assert middle.grad_dgrad.spec.format == "lbt" and middle.grad_wgrad.shared_from == "grad_dgrad"
        assert "γ=" in middle.state
    if preset == "lbt-int4":
        assert bits["grad_dgrad"] < 32  # the high-precision first/last layers count at 32
        assert plan.totals()["avg_bits_quantized"]["grad_dgrad"] == 4.0


def test_bits_accounting_counts_smp_samples_and_high_precision():
    record = SiteRecord("g0s0", "fc", "linear", [[4, 8], [2, 8]], 128, None)
    assert _avg_bits(record, "grad_dgrad", parse_spec("luq4-smp2"), None) == 8.0
    assert _avg_bits(record, "weight", parse_spec("int4"), None) == 4.0
    assert _avg_bits(record, "activation", parse_spec("fp32"), None) == 32.0
    assert _avg_bits(record, "grad_wgrad", parse_spec("aq4-channel"), None) == 1.0  # budget before a run
