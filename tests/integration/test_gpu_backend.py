"""The ``fqt`` backend on a CUDA GPU: quantized GEMMs run the Triton int8 kernels, and a training
step matches the same step with every GEMM left to Inductor.

Skipped without CUDA (CI). A session lent a GPU runs it through `benchmarks/gpu_session.sh`;
the CPU tests cover the same path under Triton's interpreter (`tests/test_fuse_triton_gemms.py`).
"""

from __future__ import annotations

import copy
import importlib

import pytest
import torch

import qcompile
from qcompile import Policy
from qcompile.testing.training_loop import train_steps

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
choice = importlib.import_module("qcompile.passes.post_aot.gemm_kernel_choice")
TRITON = choice.KERNEL_TRITON


def _mlp() -> torch.nn.Sequential:
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(64, 256), torch.nn.ReLU(), torch.nn.Linear(256, 256), torch.nn.ReLU(),
        torch.nn.Linear(256, 256), torch.nn.ReLU(), torch.nn.Linear(256, 32),
    ).cuda()  # fmt: skip


def _step(model, policy, x, autocast: bool):
    cm = torch.compile(model, backend="fqt", options={"policy": policy})
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        out = cm(x)
    out.float().square().sum().backward()
    return out.float(), [p.grad.float() for p in model.parameters()], qcompile.plan(cm)


def _assert_steps_agree(out_f, grads_f, out_p, grads_p, autocast: bool, grad_tol_autocast: float):
    """The fused step against the simulated one: norms of the differences over the simulated
    norms, 1e-3 in FP32; under autocast 5 % for the output and ``grad_tol_autocast`` for each
    gradient (see the tests for why and what was measured)."""
    out_tol, grad_tol = (0.05, grad_tol_autocast) if autocast else (1e-3, 1e-3)
    assert (out_f - out_p).norm() <= out_tol * out_p.norm()
    for gf, gp in zip(grads_f, grads_p, strict=True):
        assert (gf - gp).norm() <= grad_tol * gp.norm()


@pytest.mark.parametrize("autocast", [False, True])
def test_fused_step_matches_the_inductor_step(autocast, monkeypatch):
    """Deterministic INT4 gradients, so both paths quantize the same values: in FP32 the fused
    step's output and gradients equal Inductor's up to float rounding of the scales (exact int8
    products against float GEMMs of the dequantized values). Under bf16 autocast the simulated
    path rounds each dequantized operand and its output to bf16 and the fused path only its
    output: those bf16 roundings move values across INT4 rounding boundaries, each such code is
    off by a whole step, and the steps compound through the backward of four layers. Measured on
    an H200: outputs within 5 %, gradients 24 % apart (norm of the difference over the norm), so
    under autocast the bound catches wrong scales, layouts or casts (differences of order 100 %),
    not rounding."""
    policy = Policy(name="int4-grads", grad_dgrad="int4", grad_wgrad="int4")
    x = torch.randn(4, 32, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    fused_model = _mlp()
    plain_model = copy.deepcopy(fused_model)
    out_f, grads_f, plan_f = _step(fused_model, policy, x, autocast)
    monkeypatch.setattr(choice, "FUSE_ON_DEVICES", ())
    torch._dynamo.reset()
    out_p, grads_p, plan_p = _step(plain_model, policy, x, autocast)
    for layer in ("2", "4"):
        assert plan_f.row(layer).kernels() == {"forward": TRITON, "dgrad": TRITON, "wgrad": TRITON}
        assert "→ int8 codes" in plan_f.row(layer).saved
        assert plan_p.row(layer).kernels()["forward"].startswith("inductor")
    assert plan_f.memory()["saved_bytes"] == plan_p.memory()["saved_bytes"]
    _assert_steps_agree(out_f, grads_f, out_p, grads_p, autocast, grad_tol_autocast=0.35)


def test_default_policy_trains_with_the_kernels():
    """The default ``luq-int4`` policy (LUQ gradients, Philox draws in the kernels) learns a small
    regression with Adam as FP32 does: on CPU (Inductor path) the loss fell to 0.091 of its start
    in 30 steps, against 0.077 for FP32; here it must fall below 0.25."""
    model = _mlp()
    cm = torch.compile(model, backend="fqt")
    opt = torch.optim.Adam(model.parameters(), lr=2e-3)
    g = torch.Generator("cuda").manual_seed(2)
    x = torch.randn(256, 64, device="cuda", generator=g)
    losses = train_steps(cm, opt, x, x[:, :32] * 0.5, 30, torch.nn.functional.mse_loss)
    assert all(k == TRITON for k in qcompile.plan(cm).row("2").kernels().values())
    assert losses[-1] < 0.25 * losses[0], losses


@pytest.mark.parametrize("autocast", [False, True])
def test_fp8_rowwise_step_runs_the_fp8_kernel_and_matches_the_inductor_step(autocast, monkeypatch):
    """``fp8-rowwise`` on a GPU with FP8 tensor cores: the hidden layers' three GEMMs run the Triton
    FP8 kernel (FP8 codes and FP32 row scales), and the step equals the simulated one (the same
    codes in Inductor's float GEMM) up to float rounding of the sums and scales; under bf16
    autocast up to bf16 roundings that move FP8 codes (H200: gradients 7 % apart)."""
    if torch.cuda.get_device_capability() < choice.FP8_MIN_CAPABILITY:
        pytest.skip("needs FP8 tensor cores (compute capability 8.9)")
    policy = qcompile.preset("fp8-rowwise")
    x = torch.randn(4, 32, 64, device="cuda", generator=torch.Generator("cuda").manual_seed(1))
    fused_model = _mlp()
    plain_model = copy.deepcopy(fused_model)
    out_f, grads_f, plan_f = _step(fused_model, policy, x, autocast)
    monkeypatch.setattr(choice, "FUSE_ON_DEVICES", ())
    torch._dynamo.reset()
    out_p, grads_p, plan_p = _step(plain_model, policy, x, autocast)
    fp8 = choice.KERNEL_FP8
    for layer in ("2", "4"):
        assert plan_f.row(layer).kernels() == {"forward": fp8, "dgrad": fp8, "wgrad": fp8}
        assert plan_p.row(layer).kernels()["forward"].startswith("inductor")
    _assert_steps_agree(out_f, grads_f, out_p, grads_p, autocast, grad_tol_autocast=0.15)
