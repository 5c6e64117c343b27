"""Stateful quantizers (LBT's γ per layer): state_dict names, resume, recompilation, the plan."""

from __future__ import annotations

import io

import torch

import qcompile
from qcompile.testing.models import mlp
from qcompile.testing.training_loop import train_steps

POLICY = qcompile.preset("lbt-int4").replace(keep_first_last=False)
GAMMA_KEYS = {
    "qcompile_state.lbt_gamma/0/grad_dgrad",
    "qcompile_state.lbt_gamma/2/grad_dgrad",
    "qcompile_state.lbt_gamma/4/grad_dgrad",
}


def _data():
    gen = torch.Generator().manual_seed(0)
    # 256 x 64 = 16384 dY elements in the hidden layers: enough to see the target (≥ 1/6.7e-5)
    return torch.randn(256, 16, generator=gen), torch.randint(0, 4, (256,), generator=gen)


def _train(model, steps, opt, x, y):
    c = torch.compile(model, backend="fqt", options={"policy": POLICY})
    return train_steps(c, opt, x, y, steps), c


def test_gamma_in_state_dict_resume_bit_for_bit_and_recompilation():
    torch.manual_seed(0)
    x, y = _data()
    model = mlp(width=64)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    _, compiled = _train(model, 2, opt, x, y)  # no attach_state: the backend finds the model

    sd = model.state_dict()
    assert GAMMA_KEYS <= set(sd)
    gammas = qcompile.state_of(model).gammas()
    assert gammas["2/grad_dgrad"] < 1.0  # initialised on the first batch, moved since
    assert gammas["4/grad_dgrad"] == 1.0  # 256 x 4 dY: too small to see the target (guard)
    assert int(sd["qcompile_state.lbt_updates/2/grad_dgrad"]) == 2
    # The plan shows the live γ of every layer.
    plan = qcompile.plan(compiled)
    assert f"γ={gammas['2/grad_dgrad']:.3f}" in plan.row("2").state
    assert "γ=" in str(plan)

    buf = io.BytesIO()
    torch.save({"model": sd, "opt": opt.state_dict(), "rng": torch.get_rng_state()}, buf)
    continued, _ = _train(model, 3, opt, x, y)
    final = qcompile.state_of(model).gammas()

    buf.seek(0)
    ckpt = torch.load(buf)
    torch._dynamo.reset()
    fresh = mlp(width=64)
    qcompile.attach_state(fresh)  # gives the checkpoint's γ somewhere to go before compiling
    fresh.load_state_dict(ckpt["model"])  # strict: every key has a home
    assert qcompile.state_of(fresh).gammas() == gammas
    fresh_opt = torch.optim.SGD(fresh.parameters(), lr=0.1, momentum=0.9)
    fresh_opt.load_state_dict(ckpt["opt"])
    torch.set_rng_state(ckpt["rng"])
    resumed, _ = _train(fresh, 3, fresh_opt, x, y)
    assert resumed == continued
    assert qcompile.state_of(fresh).gammas() == final

    # Recompilation (a cleared cache, a new torch.compile) keeps the state and its names.
    torch._dynamo.reset()
    _train(fresh, 1, fresh_opt, x, y)
    after = fresh.state_dict()
    assert GAMMA_KEYS <= set(after)
    assert int(after["qcompile_state.lbt_updates/2/grad_dgrad"]) == 6
    assert abs(float(after["qcompile_state.lbt_gamma/2/grad_dgrad"]) - final["2/grad_dgrad"]) <= 1e-3 + 1e-12


def test_state_round_trip():
    model = mlp(width=8)
    state = qcompile.attach_state(model)
    assert qcompile.attach_state(model) is state  # idempotent
    state.ensure_lbt("layer/grad_dgrad")
    state.gamma("layer/grad_dgrad").fill_(0.25)
    other = mlp(width=8)
    qcompile.attach_state(other)
    other.load_state_dict(model.state_dict())
    assert qcompile.state_of(other).gammas() == {"layer/grad_dgrad": 0.25}
    assert int(other.state_dict()["qcompile_state.lbt_updates/layer/grad_dgrad"]) == 0
