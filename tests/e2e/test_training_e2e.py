"""End-to-end: real model code trains under backend="fqt" and its loss falls like FP32's."""

from __future__ import annotations

import copy

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qcompile
from qcompile.testing.models import SmallResNet

pytestmark = pytest.mark.slow


def _train(model, batches, loss_fn, policy, steps, lr):
    """Train ``steps`` Adam steps; ``policy=None`` is the eager FP32 reference (the fp32 preset's
    equality with Inductor is tested in test_backend_graphs; one compile per test keeps CI fast)."""
    torch.manual_seed(1)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    compiled = model if policy is None else torch.compile(model, backend="fqt", options={"policy": policy})
    losses = []
    for step in range(steps):
        x, y = batches[step % len(batches)]
        loss = loss_fn(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    return losses, compiled


def _compare(model, batches, loss_fn, steps=30, lr=3e-3):
    fp, _ = _train(copy.deepcopy(model), batches, loss_fn, None, steps, lr)
    q, compiled = _train(model, batches, loss_fn, "luq-int4", steps, lr)
    start, fp_end, q_end = fp[0], sum(fp[-5:]) / 5, sum(q[-5:]) / 5
    assert all(torch.isfinite(torch.tensor(q)))
    assert q_end < 0.6 * start, (start, q_end)
    # Falls like FP32: closes most of FP32's improvement.
    assert (start - q_end) > 0.6 * (start - fp_end), (start, fp_end, q_end)
    plan = qcompile.plan(compiled)
    assert plan.totals()["quantized_gemms"] >= 1
    return plan


def test_conv_net_with_batchnorm_and_residuals_trains():
    torch.manual_seed(0)
    templates = torch.randn(4, 3, 8, 8)
    labels = torch.randint(0, 4, (4, 32))
    batches = [(templates[y] + 0.5 * torch.randn(32, 3, 8, 8), y) for y in labels]
    plan = _compare(SmallResNet(classes=4), batches, F.cross_entropy)
    assert plan.row("block1.conv1").grad_wgrad.spec.granularity == "per-channel"


def test_transformer_encoder_layer_trains():
    torch.manual_seed(0)

    class Classifier(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = nn.Linear(8, 32)
            self.encoder = nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True)
            self.head = nn.Linear(32, 3)

        def forward(self, x):
            return self.head(self.encoder(self.embed(x)).mean(1))

    centers = torch.randn(3, 8)
    batches = []
    for _ in range(4):
        y = torch.randint(0, 3, (16,))
        batches.append((centers[y][:, None, :] + 0.5 * torch.randn(16, 6, 8), y))
    plan = _compare(Classifier(), batches, F.cross_entropy)
    assert plan.row("encoder.linear1").weight.spec.bits == 4
    # nn.MultiheadAttention is traced into: its projections and both attention GEMMs are quantized.
    assert plan.row("encoder.self_attn.in_proj").weight.spec.bits == 4
    assert plan.row("encoder.self_attn.out_proj").grad_wgrad.spec.format == "luq"
    assert plan.row("encoder.self_attn", "attention.qk").grad_dgrad.spec.format == "luq"


def test_hugging_face_gpt2_from_config_trains():
    transformers = pytest.importorskip("transformers")
    cfg = transformers.GPT2Config(n_layer=1, n_head=2, n_embd=32, vocab_size=16, n_positions=16,
                                  bos_token_id=0, eos_token_id=0)  # fmt: skip
    torch.manual_seed(0)
    model = transformers.GPT2LMHeadModel(cfg)
    starts = torch.randint(0, 16, (4, 8, 1))
    batches = [((s + torch.arange(12)) % 16, None) for s in starts]  # count upwards mod 16: learnable

    def lm_loss(out, _):
        return out.loss

    class Wrapped(nn.Module):
        def __init__(self, m):
            super().__init__()
            self.m = m

        def forward(self, ids):
            return self.m(input_ids=ids, labels=ids)

    plan = _compare(Wrapped(model), batches, lm_loss, steps=30, lr=3e-3)
    # Dynamo names HF submodules from the traced frame's root (the GPT-2 model).
    qk = plan.row("transformer.h.0.attn", "attention.qk")
    assert qk.activation.spec.bits == 4 and qk.grad_dgrad.spec.format == "luq"
