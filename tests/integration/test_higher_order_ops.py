"""GEMMs inside higher-order ops (activation checkpointing, selective checkpointing, nested
compile regions, torch.cond) are quantized by policy, shown in the plan, and train exactly as the
same model without the op: the checkpointed recomputation replays the forward's quantized
values bit for bit."""

from __future__ import annotations

import contextlib
import copy

import pytest
import torch

import qcompile
from qcompile.compiler.backend import graphs_only
from qcompile.testing.models import SubgraphBlockNet, tiny_bert, tiny_gpt2

MODES = ("checkpoint", "selective", "nested", "cond")
QUANTIZED_BLOCK_LAYERS = {f"blocks.{i}.fc{j}" for i in range(2) for j in (1, 2)}
REGION = {
    "checkpoint": "activation checkpointing",
    "selective": "activation checkpointing",
    "nested": "nested compile region",
    "cond": "torch.cond branch",
}


def _step(model, x, **options):
    compiled = torch.compile(model, backend="fqt", options=options or None)
    torch.manual_seed(1)  # the gradient quantizers' draws
    loss = compiled(x).square().mean()
    loss.backward()
    return compiled, loss.detach(), [p.grad.clone() for p in model.parameters()]


@pytest.fixture(scope="module")
def reference():
    """The same blocks without a higher-order op: (model, input, loss, grads)."""
    torch.manual_seed(0)
    model = SubgraphBlockNet("plain")
    x = torch.randn(8, 16)
    _, loss, grads = _step(copy.deepcopy(model), x)
    return model, x, loss, grads


@pytest.mark.parametrize("mode", MODES)
def test_blocks_inside_higher_order_ops_are_quantized_and_bit_identical(mode, reference):
    model, x, loss, grads = reference
    subject = copy.deepcopy(model)
    subject.mode = mode
    compiled, got_loss, got = _step(subject, x)
    assert torch.equal(got_loss, loss)
    assert all(torch.equal(a, b) for a, b in zip(got, grads, strict=True))
    plan = qcompile.plan(compiled)
    rows = {r.layer: r for r in plan.rows}
    # A nested compile region is one body for every call: one row, named by its first call.
    expected = {"blocks.0.fc1", "blocks.0.fc2"} if mode == "nested" else QUANTIZED_BLOCK_LAYERS
    assert set(rows) == expected | {"inp", "head"}
    for layer in expected:
        row = rows[layer]
        assert row.calls == (2 if mode == "nested" else 1)
        assert row.weight.spec.bits == 4 and row.activation.spec.bits == 4
        assert row.grad_dgrad.spec.format == "luq" and row.grad_wgrad.spec.format == "luq"
        assert row.region is not None and REGION[mode] in row.reason
    assert rows["inp"].region is None and "first GEMM layer" in rows["inp"].reason


def test_gradients_differ_from_fp32_inductor_under_checkpointing(reference):
    """The failure this replaces: checkpointed blocks trained bit-identically to FP32."""
    model, x, _, _ = reference
    subject = copy.deepcopy(model)
    subject.mode = "checkpoint"
    plain = copy.deepcopy(subject)
    _, _, quantized = _step(subject, x)
    torch.compile(plain)(x).square().mean().backward()
    fc1 = [n for n, _ in model.named_parameters()].index("blocks.0.fc1.weight")
    rel = (quantized[fc1] - plain.blocks[0].fc1.weight.grad).norm() / plain.blocks[0].fc1.weight.grad.norm()
    assert 0.01 < rel < 1.0  # 4-bit error: visible, not a different model


def test_checkpointed_blocks_save_nothing_but_their_inputs(reference):
    model, x, _, _ = reference
    subject = copy.deepcopy(model)
    subject.mode = "checkpoint"
    compiled, _, _ = _step(subject, x)
    plan = qcompile.plan(compiled)
    for layer in QUANTIZED_BLOCK_LAYERS:
        row = plan.row(layer)
        assert row.saved_bytes == 0, (layer, row.saved)
        assert "recomputed" in row.saved
    saved = [t for t in plan.saved if t.kind != "input"]
    # Per block input: the 8x32 float32 activation; the head saves its X; nothing else.
    assert sum(t.bytes for t in saved) <= (len(model.blocks) + 1) * 8 * 32 * 4


def test_a_stochastic_forward_quantizer_is_saved_not_replayed(reference):
    """A replay would draw a new seed: stochastic forward quantizers in checkpointed regions keep
    their output (packed), and training stays bit-identical to the unchecked model."""
    model, x, _, _ = reference
    policy = qcompile.preset("luq-int4").replace(activation="int4-sr")
    results = []
    for mode in ("plain", "checkpoint"):
        subject = copy.deepcopy(model)
        subject.mode = mode
        torch.manual_seed(5)
        compiled = torch.compile(subject, backend="fqt", options={"policy": policy})
        compiled(x).square().mean().backward()
        results.append([p.grad for p in subject.parameters()])
    assert all(torch.equal(a, b) for a, b in zip(*results, strict=True))
    row = qcompile.plan(compiled).row("blocks.0.fc1")
    assert row.activation.spec.rounding == "stochastic"
    assert "packed" in row.saved and row.saved_bytes > 0


@pytest.mark.parametrize("make", [tiny_gpt2, tiny_bert], ids=["gpt2", "bert"])
@pytest.mark.parametrize("compiled_by", ["graphs_only", "inductor"])
def test_hugging_face_gradient_checkpointing_trains_exactly_as_without_it(make, compiled_by):
    """``model.gradient_checkpointing_enable()``: the same loss and gradients as the model without
    it, bit for bit, run by Inductor (the slow set) and with the graphs run eagerly (`graphs_only`,
    the quick suite). The two draw different random bits (Inductor's seeded ops, or ``aten``
    draws: `passes/post_aot/inductor_random.py`), and in both the draws must not depend on how
    Dynamo split the model: HF BERT's checkpointing adds a graph break before its head.
    ``keep_first_last`` is decided per graph, so every layer is quantized here to compare like
    with like."""
    torch.manual_seed(0)
    plain = make()
    ids = torch.randint(0, 64, (2, 8))
    results = []
    for checkpointing in (False, True):
        model = copy.deepcopy(plain)
        if checkpointing:
            model.gradient_checkpointing_enable()
        policy = qcompile.preset("luq-int4").replace(keep_first_last=False)
        compiled = torch.compile(model, backend="fqt", options={"policy": policy})
        torch.manual_seed(1)
        with graphs_only() if compiled_by == "graphs_only" else contextlib.nullcontext():
            loss = compiled(ids).logits.float().square().mean()
            loss.backward()
        results.append((loss.detach(), [p.grad for p in model.parameters() if p.grad is not None]))
    (loss_a, grads_a), (loss_b, grads_b) = results
    assert torch.equal(loss_a, loss_b)
    assert len(grads_a) == len(grads_b) and all(
        torch.equal(a, b) for a, b in zip(grads_a, grads_b, strict=True)
    )
    rows = qcompile.plan(compiled).rows
    assert any("activation checkpointing" in r.reason and r.weight.spec.bits == 4 for r in rows)
