"""FNT (LUQ §5.2): the high-precision fine-tuning phase and its LR schedule."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import qcompile
from qcompile import Rule
from qcompile.testing.models import mlp


def test_fnt_policy_keeps_only_the_weight_quantizer():
    base = qcompile.preset("luq").replace(
        rules=(Rule(layer="head", weight="int8", grad_dgrad="fp32"), Rule(layer="x", activation="int8"))
    )
    p = qcompile.fnt_policy(base)
    assert p.weight == base.weight
    assert not (p.activation.is_quantized or p.grad_dgrad.is_quantized or p.grad_wgrad.is_quantized)
    assert p.share_gradient_sample is False and p.name == "luq+fnt"
    assert len(p.rules) == 1 and p.rules[0].weight == qcompile.parse_spec("int8")
    assert p.rules[0].grad_dgrad is None
    assert qcompile.fnt_policy("lbt-int4").grad_dgrad == qcompile.QuantSpec()


def test_fnt_lr_shape():
    T, start, base = 10, 0.01, 0.1
    lrs = [qcompile.fnt_lr(t, T, start, base) for t in range(T + 1)]
    assert lrs[0] == start and lrs[5] == pytest.approx(base) and lrs[10] == 0.0
    assert all(a < b for a, b in zip(lrs[:5], lrs[1:6], strict=True))  # ramps up over T/2
    assert all(a > b for a, b in zip(lrs[5:10], lrs[6:], strict=True))  # then down to 0
    with pytest.raises(ValueError):
        qcompile.fnt_lr(0, 1, start, base)


def test_fnt_switches_a_compiled_model_and_schedules_the_lr():
    torch.manual_seed(0)
    model = mlp()
    x, y = torch.randn(64, 16), torch.randint(0, 4, (64,))
    policy = qcompile.preset("luq-int4").replace(keep_first_last=False)
    compiled = torch.compile(model, backend="fqt", options={"policy": policy})
    opt = torch.optim.SGD(model.parameters(), lr=0.02)
    F.cross_entropy(compiled(x), y).backward()
    opt.step()

    fine = qcompile.fnt(compiled)  # the policy the model was compiled with, FNT'd
    sched = qcompile.fnt_scheduler(opt, total_steps=4, base_lr=0.1)
    lrs, losses = [], []
    for _ in range(4):
        loss = F.cross_entropy(fine(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        sched.step()
        lrs.append(opt.param_groups[0]["lr"])
        losses.append(loss.item())
    assert lrs == pytest.approx([0.06, 0.1, 0.05, 0.0])
    assert losses[-1] < losses[0]
    plan = qcompile.plan(fine)
    assert plan.policies[-1] == "luq-int4+fnt"
    for row in plan.rows[-3:]:  # the FNT graph (compiled last): W INT4, everything else FP32
        assert row.weight.spec.bits == 4
        assert not row.activation.spec.is_quantized
        assert row.grad_wgrad.spec is None or not row.grad_wgrad.spec.is_quantized
