"""End-to-end: the LBT and 1-bit FQT presets train a small real model; the plan's bit totals."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qcompile
from qcompile.passes import SiteRecord
from qcompile.report.gemm_plan import _avg_bits
from qcompile.runtime.reference.aq import aq_storage_bits
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
        # AQ's measured spend (40 steps of real gradients) is its 1 bit of codes per dY element
        # plus each kept group's scale and zero point and a keep bit per group: dY is 256×64,
        # dgrad groups are its 256 rows (64 kept), wgrad groups its 64 columns (16 kept).
        for entry, groups, size in ((middle.grad_dgrad, 256, 64), (middle.grad_wgrad, 64, 256)):
            predicted = aq_storage_bits(groups // 4, groups, size, 4) / (groups * size)
            assert predicted > 1.05 and abs(entry.avg_bits - predicted) < 0.1 * predicted, (entry.avg_bits, predicted)
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
    assert _avg_bits(record, "grad_wgrad", parse_spec("aq4-channel"), None) is None  # no backward ran yet
