"""Block-scaled FP formats and Hadamard transforms in the backend: compiled GEMMs equal the
reference product of the same quantized operands (forward, dgrad, wgrad, each along its own
contraction axis), the presets train, and the plan reads back what ran."""

from __future__ import annotations

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.passes.post_aot.gemm_kernel_choice import FP_SIMULATED
from qcompile.policy.config import PolicyError
from qcompile.runtime.ops.block_formats import FIXED_SIGNS_SEED
from qcompile.runtime.reference.block_scaled import block_quantize_reference
from qcompile.runtime.reference.hadamard import hadamard_reference, random_signs_reference
from qcompile.testing.models import mlp, small_resnet

BLOCK_PRESETS = ("nvfp4", "mxfp4", "mxfp8", "fp8-rowwise")


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


def _linear_step(policy: qcompile.Policy, seed: int = 0):
    """One compiled forward/backward of a Linear(64 → 48) (N=48: a partial 32-block along N)."""
    torch.manual_seed(seed)
    layer = nn.Linear(64, 48)
    x = torch.randn(32, 64, requires_grad=True)
    dy = torch.randn(32, 48)
    compiled = torch.compile(layer, backend="fqt", options={"policy": policy.replace(keep_first_last=False)})
    out = compiled(x)
    out.backward(dy)
    return layer, x, dy, out, compiled


def _q(t: torch.Tensor, spec: str, axis: int) -> torch.Tensor:
    s = qcompile.runtime.parse_spec(spec)
    return block_quantize_reference(t, s.element, s.scaling, s.block, axis)


@pytest.mark.parametrize("spec", ["fp8-e4m3-mx32", "fp8-e4m3-row", "fp4-nv16"])
def test_three_gemms_equal_the_reference_product_along_their_own_axes(spec):
    """Y = Q_K(X)·Q_K(W)ᵀ, dX = Q_N(dY)·Q_N(W), dW = Q_M(dY)ᵀ·Q_M(X): each operand requantized
    from the FP32 tensor with blocks along that GEMM's contraction (round-to-nearest: exact)."""
    policy = qcompile.Policy(weight=spec, activation=spec, grad_dgrad=spec, grad_wgrad=spec)
    layer, x, dy, out, _ = _linear_step(policy)
    w, xd = layer.weight.detach(), x.detach()
    ref_out = _q(xd, spec, -1) @ _q(w, spec, -1).T + layer.bias.detach()
    ref_dx = _q(dy, spec, -1) @ _q(w, spec, 0)
    ref_dw = _q(dy, spec, 0).T @ _q(xd, spec, 0)
    assert _rel(out.detach(), ref_out) < 1e-6
    assert _rel(x.grad, ref_dx) < 1e-6
    assert _rel(layer.weight.grad, ref_dw) < 1e-6
    # ... and not the forward's operands reused (that would be a different, wrong product).
    reused_dw = _q(dy, spec, 0).T @ _q(xd, spec, -1)
    assert _rel(reused_dw, ref_dw) > 1e-3


def test_nvfp4_weights_2d_blocks_and_fixed_hadamard_on_wgrad_match_the_reference():
    """NVFP4's recipe, made deterministic (round-to-nearest gradients): 16×16 weight blocks make
    the dgrad's requantized W equal the forward's; the wgrad operands pass the fixed 16-point
    Hadamard along the tokens M first."""
    policy = qcompile.Policy(
        weight="fp4-nv16x16", activation="fp4-nv16", grad_dgrad="fp4-nv16", grad_wgrad="fp4-nv16",
        hadamard="had16-wgrad-fixed",
    )  # fmt: skip
    layer, x, dy, out, compiled = _linear_step(policy)
    w, xd = layer.weight.detach(), x.detach()
    assert torch.equal(_q(w, "fp4-nv16x16", 0), _q(w, "fp4-nv16x16", -1))
    signs = random_signs_reference(16, FIXED_SIGNS_SEED)
    hx, hdy = hadamard_reference(xd, 0, 16, signs), hadamard_reference(dy, 0, 16, signs)
    ref_dw = _q(hdy, "fp4-nv16", 0).T @ _q(hx, "fp4-nv16", 0)
    assert _rel(layer.weight.grad, ref_dw) < 1e-6
    assert _rel(x.grad, _q(dy, "fp4-nv16", -1) @ _q(w, "fp4-nv16x16", 0)) < 1e-6
    row = qcompile.plan(compiled).rows[0]
    assert row.grad_wgrad.hadamard == 16 and row.grad_dgrad.hadamard == 0
    assert "X requantized along M: fp4 nv16 e4m3×fp32 scale rdn had16" in row.saved
    assert "W requantized along N: fp4 nv16x16" in row.saved


def test_forward_hadamard_gradients_flow_through_its_transpose():
    """had16 on the forward GEMM (fixed signs, FP8 rows, deterministic): Y = Q(x·R)·Q(W·R)ᵀ; the
    backward GEMMs requantize the rotated operands along N and M, and autograd applies Rᵀ to
    their results, exactly."""
    spec = "fp8-e4m3-row"
    policy = qcompile.Policy(weight=spec, activation=spec, grad_dgrad=spec, grad_wgrad=spec, hadamard="had16-forward-fixed")
    layer, x, dy, out, _ = _linear_step(policy)
    signs = random_signs_reference(16, FIXED_SIGNS_SEED)
    rot = lambda t: hadamard_reference(t, -1, 16, signs)  # noqa: E731
    back = lambda t: hadamard_reference(t, -1, 16, signs, inverse=True)  # noqa: E731
    xr, wr = rot(x.detach()), rot(layer.weight.detach())
    assert _rel(out.detach(), _q(xr, spec, -1) @ _q(wr, spec, -1).T + layer.bias.detach()) < 1e-6
    assert _rel(x.grad, back(_q(dy, spec, -1) @ _q(wr, spec, 0))) < 1e-6
    assert _rel(layer.weight.grad, back(_q(dy, spec, 0).T @ _q(xr, spec, 0))) < 1e-6


def test_hadamard_leaves_the_product_unchanged_up_to_quantization():
    """had16 on every GEMM with FP8 row scales: the gradients stay within FP8's error of FP32,
    and differ from the same policy without the transform (the transform really ran)."""
    base = qcompile.preset("fp8-rowwise")
    _, x0, _, out0, _ = _linear_step(base.replace(keep_first_last=False))
    layer, x1, dy, out1, compiled = _linear_step(base.replace(hadamard="had16-all"))
    ref = nn.Linear(64, 48)
    ref.load_state_dict(layer.state_dict())
    xr = x1.detach().clone().requires_grad_()
    ref(xr).backward(dy)
    assert _rel(x1.grad, xr.grad) < 0.08 and _rel(out1.detach(), ref(xr).detach()) < 0.08
    assert not torch.equal(x0.grad, x1.grad)
    cells = [e.cell() for e in qcompile.plan(compiled).rows[0].roles().values()]
    assert all("had16" in c for c in cells), cells


@pytest.fixture(scope="module")
def preset_runs():
    """Each block-format preset on the same 4-layer MLP for 3 steps, and FP32's gradients."""
    runs = {}
    for name in ("fp32", *BLOCK_PRESETS):
        torch.manual_seed(0)
        model = mlp(width=64, depth=3, inputs=32, classes=8)
        compiled = torch.compile(model, backend="fqt", options={"policy": qcompile.preset(name)})
        opt = torch.optim.SGD(model.parameters(), lr=0.05)
        gen = torch.Generator().manual_seed(1)
        losses, first_grads = [], None
        for _ in range(3):
            x, y = torch.randn(32, 32, generator=gen), torch.randint(0, 8, (32,), generator=gen)
            loss = nn.functional.cross_entropy(compiled(x), y)
            opt.zero_grad()
            loss.backward()
            if first_grads is None:
                first_grads = [p.grad.clone() for p in model.parameters()]
            opt.step()
            losses.append(loss.item())
        runs[name] = (compiled, losses, first_grads)
    return runs


@pytest.mark.parametrize("name", BLOCK_PRESETS)
def test_presets_train_and_their_gradients_differ_from_fp32_as_the_format_predicts(preset_runs, name):
    compiled, losses, grads = preset_runs[name]
    _, fp32_losses, fp32_grads = preset_runs["fp32"]
    assert all(torch.isfinite(torch.tensor(losses))) and losses[-1] < losses[0] + 0.05
    # The hidden layer's weight gradient. Its relative error is several times one element's
    # (at initialisation the batch's terms of dW largely cancel), so the bounds are wide; the
    # per-GEMM tests above pin the values exactly, `test_fp8_errs_below_fp4` the ordering.
    err = _rel(grads[2], fp32_grads[2])
    low, high = (0.01, 0.4) if "8" in name else (0.1, 1.2)
    assert low < err < high, err
    plan = qcompile.plan(compiled)
    hidden = [r for r in plan.rows if not r.reason]
    assert hidden and all(r.weight.spec.format == "fp" for r in hidden)
    # forward, dgrad and wgrad: one float GEMM each, all for the same reason (one cell)
    assert all(r.kernel_cell() == f"inductor ({FP_SIMULATED})" for r in hidden)
    assert all("requantized along" in r.saved for r in hidden)


def test_fp8_errs_below_fp4(preset_runs):
    """E4M3 keeps 3 mantissa bits, E2M1 one: FP8's gradient error is a fraction of FP4's."""
    fp32 = preset_runs["fp32"][2]
    err = {n: _rel(preset_runs[n][2][2], fp32[2]) for n in BLOCK_PRESETS}
    assert max(err["mxfp8"], err["fp8-rowwise"]) < 0.6 * min(err["mxfp4"], err["nvfp4"]), err


def test_plan_cells_and_bits_name_format_block_scale_and_hadamard(preset_runs):
    plan = qcompile.plan(preset_runs["nvfp4"][0])
    row = next(r for r in plan.rows if not r.reason)
    assert row.weight.cell() == "fp4 nv16x16 e4m3×fp32 scale rdn"
    assert row.activation.cell() == "fp4 nv16 e4m3×fp32 scale rdn"
    assert row.grad_wgrad.cell() == "fp4 nv16 e4m3×fp32 scale sr had16"
    n = row.activation.elements
    assert row.activation.avg_bits == pytest.approx(4.5 + 32 / n)
    assert row.weight.avg_bits == pytest.approx(4 + 8 / 256 + 32 / row.weight.elements)
    entry = row.to_json()["grad_wgrad"]
    assert entry["element"] == "e2m1" and entry["block"] == [16] and entry["hadamard"] == 16
    mx = next(r for r in qcompile.plan(preset_runs["mxfp4"][0]).rows if not r.reason)
    assert mx.activation.avg_bits == pytest.approx(4.25)
    assert mx.weight.cell() == "fp4 mx32 e8m0 scale rdn"


def test_convolutions_stay_high_precision_and_say_why():
    """Not supported yet: left unquantized like an unsupported op, with the reason in the plan and
    the high-precision warning (never silent)."""
    torch.manual_seed(0)
    model = small_resnet()
    compiled = torch.compile(model, backend="fqt", options={"policy": "nvfp4"})
    with pytest.warns(qcompile.HighPrecisionGemmWarning, match="not supported yet"):
        compiled(torch.randn(2, 3, 16, 16)).sum().backward()
    rows = qcompile.plan(compiled).rows
    convs = [r for r in rows if r.op.startswith("conv")]
    assert convs and all("not supported yet" in r.reason for r in convs if "keep_first_last" not in r.reason)
    assert all(r.weight.spec is None or not r.weight.spec.is_quantized for r in convs)


def test_attention_in_a_block_format_runs_batched_requantizing_gemms():
    """Attention's q·kᵀ and p·v (batched GEMMs) in MXFP4 when the policy asks for it."""
    from qcompile.testing.models import QKVAttention

    torch.manual_seed(0)
    model = QKVAttention(32, 2)
    policy = qcompile.preset("mxfp4").replace(rules=(), attention="fp4-mx32", keep_first_last=False)
    compiled = torch.compile(model, backend="fqt", options={"policy": policy})
    x = torch.randn(2, 32, 32, requires_grad=True)
    compiled(x).square().mean().backward()
    assert torch.isfinite(x.grad).all() and x.grad.abs().sum() > 0
    attn = [r for r in qcompile.plan(compiled).rows if r.op.startswith("attention")]
    assert len(attn) == 2
    for r in attn:
        assert r.activation.cell() == "fp4 mx32 e8m0 scale rdn"
        assert r.grad_wgrad.cell() == "fp4 mx32 e8m0 scale sr"


def test_plan_without_training_runs_hadamard_attention_graphs_eagerly():
    """`qcompile.plan(model, example_inputs)` runs the decomposed graphs eagerly (no Inductor):
    a Hadamard along an axis other than the last (in attention's backward) leaves a permuted
    view where the op's fake was contiguous, and a later ``view`` of the backward graph failed
    (a char GPT with ``luq-int4`` + ``had16-forward``, d=128) until `views_to_reshapes`."""
    from qcompile.testing.benchmark_models import Block

    torch.manual_seed(0)
    model = Block(64, 2)  # head dim 32: the transform applies to q·kᵀ and p·v too
    policy = qcompile.preset("luq-int4").replace(hadamard="had16-forward", keep_first_last=False)
    x = torch.randn(2, 32, 64)
    rows = qcompile.plan(model, x, policy=policy).rows
    attn = [r for r in rows if r.op.startswith("attention")]
    assert len(attn) == 2 and all(r.activation.hadamard == 16 for r in attn)
    assert model.qkv.weight.grad is None  # the model itself is untouched


def test_policy_rejects_what_block_formats_cannot_do():
    with pytest.raises(PolicyError, match="learned clip"):
        qcompile.Policy(weight="int4-learned", grad_dgrad="fp4-mx32")
    with pytest.raises(PolicyError, match="share_gradient_sample"):
        qcompile.Policy(grad_dgrad="luq4", grad_wgrad="luq4", share_gradient_sample=True, hadamard="had16-wgrad")
    with pytest.raises(PolicyError, match="valid: had<block>"):
        qcompile.Policy(hadamard="hadamard16")
    with pytest.raises(PolicyError, match="valid"):
        qcompile.Policy(weight="fp4-nv16-e4m3")


def test_block_formats_under_activation_checkpointing_and_a_new_batch_size():
    """A checkpointed layer (the checkpoint's RNG wrapper checks the ops' output strides against
    their fakes; round-to-nearest FP quantizers are unwrapped like INT ones) trains, recompiles for
    a new batch size and is planned quantized, its region named."""
    from torch.utils.checkpoint import checkpoint

    class Net(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.a, self.b, self.c = nn.Linear(32, 64), nn.Linear(64, 64), nn.Linear(64, 8)

        def forward(self, x):
            h = checkpoint(lambda t: torch.relu(self.b(t)), torch.relu(self.a(x)), use_reentrant=False)
            return self.c(h)

    torch.manual_seed(0)
    compiled = torch.compile(Net(), backend="fqt", options={"policy": qcompile.preset("nvfp4").replace(keep_first_last=False)})
    for batch in (32, 48):
        compiled(torch.randn(batch, 32)).sum().backward()
    rows = [r for r in qcompile.plan(compiled).rows if r.layer == "b"]
    assert rows and all(r.region == "tag_activation_checkpoint" and r.weight.spec.format == "fp" for r in rows)
    assert all(r.grad_wgrad.cell() == "fp4 nv16 e4m3×fp32 scale sr had16" for r in rows)
