"""FP8 GEMMs routed to the Triton FP8 kernel (``triton-fp8``): the decision, the rewrite, and a
compiled training step.

Without a GPU, CUDA is simulated as for the int8 kernels (`test_fuse_triton_gemms.py`): the
decision is tested as a function and on graphs traced with fake CUDA tensors, and the rewrite
runs for real on CPU by admitting "cpu" as a fusion device with compute capability 9.0, so the
fused graph runs the kernel under ``TRITON_INTERPRET=1`` and is compared with the simulation.
"""

from __future__ import annotations

import copy
import importlib
import os

import pytest

# isort: off
import tests.kernel_device  # noqa: F401  (sets TRITON_INTERPRET before Triton is imported)
# isort: on

import torch  # noqa: E402
from torch._subclasses.fake_tensor import FakeTensorMode  # noqa: E402
from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

import qcompile  # noqa: E402
from qcompile.passes.post_aot.fuse_int8_gemms import fuse_triton_gemms  # noqa: E402
from qcompile.passes.post_aot.gemm_kernel_choice import (  # noqa: E402
    FP_SIMULATED,
    KERNEL_FP8,
    KERNEL_INDUCTOR,
    KERNEL_TRITON,
    OperandCheck,
    annotate_gemm_kernels,
    choose_gemm_kernel,
    device_capability,
)

choice = importlib.import_module("qcompile.passes.post_aot.gemm_kernel_choice")
q = torch.ops.qcompile
ROW = OperandCheck("quantizer", "fp", 8, element="e4m3", block="row")
ROW_E5M2 = OperandCheck("quantizer", "fp", 8, element="e5m2", block="row", stochastic=True)
TENSOR = OperandCheck("quantizer", "fp", 8, element="e4m3", block="tensor")
MX32 = OperandCheck("quantizer", "fp", 8, element="e4m3", block="mx32")
NVFP4 = OperandCheck("quantizer", "fp", 4, element="e2m1", block="nv16")
INT4 = OperandCheck("quantizer", "int", 4)
NEEDS_89 = "FP8 simulated in float32 (FP8 tensor cores need compute capability 8.9, {})"


@pytest.mark.parametrize(
    "kw,expect",
    [
        ({}, (KERNEL_FP8, "")),
        ({"capability": (8, 9)}, (KERNEL_FP8, "")),
        ({"a": ROW_E5M2, "b": TENSOR}, (KERNEL_FP8, "")),  # mixed E5M2 x E4M3, stochastic rounding
        ({"capability": (8, 0)}, (KERNEL_INDUCTOR, NEEDS_89.format("found 8.0"))),
        ({"device": "cpu"}, (KERNEL_INDUCTOR, FP_SIMULATED)),
        ({"device": "cpu", "kernels": "int8"}, (KERNEL_INDUCTOR, FP_SIMULATED)),
        ({"kernels": "reference"}, (KERNEL_INDUCTOR, "kernels='reference'")),
        ({"a": MX32, "b": MX32}, (KERNEL_INDUCTOR,
         "FP8 simulated in float32 (block scales vary along the contraction (mx32))")),
        ({"a": NVFP4, "b": NVFP4}, (KERNEL_INDUCTOR, "FP4 simulated in float32 (no FP4 GEMM kernel yet)")),
        ({"a": INT4}, (KERNEL_INDUCTOR, "A is int4, the other operand FP")),
        ({"b": OperandCheck("none")}, (KERNEL_INDUCTOR, "B is not quantized")),
        # saved by the forward as a float: re-coded from that copy, unless stochastically rounded
        ({"a": OperandCheck("saved", "fp", 8, element="e4m3", block="row")}, (KERNEL_FP8, "")),
        ({"a": OperandCheck("saved", "fp", 8, stochastic=True, element="e5m2", block="row")}, (KERNEL_INDUCTOR,
         "FP8 simulated in float32 (A saved by the forward with stochastic rounding: its codes cannot be re-coded)")),
        ({"a": OperandCheck("saved", "fp", 8, element="e4m3", block="row", why_not="saved as torch.float16, "
                            "which may not hold its FP8 values")},
         (KERNEL_INDUCTOR, "FP8 simulated in float32 (A: saved as torch.float16, which may not hold its FP8 values)")),
        ({"b": OperandCheck("quantizer", "fp", 8, element="e4m3", block="row",
                            scale_varies_on_contracted_axis=True)},
         (KERNEL_INDUCTOR, "FP8 simulated in float32 (B: its scale varies along the contracted axis)")),
        ({"k": 8}, (KERNEL_INDUCTOR, "a GEMM dim below 16 (64x8x32)")),
        ({"triton_ok": False}, (KERNEL_INDUCTOR, "triton not installed")),
        ({"dtype": torch.int32}, (KERNEL_INDUCTOR, "output dtype torch.int32")),
    ],
)  # fmt: skip
def test_choose_gemm_kernel_for_fp8_operands(kw, expect):
    args = {"device": "cuda", "dtype": torch.bfloat16, "m": 64, "n": 32, "k": 128, "a": ROW, "b": ROW,
            "triton_ok": True, "capability": (9, 0), **kw}  # fmt: skip
    assert choose_gemm_kernel(**args) == expect


def test_device_capability_is_cudas_only():
    assert device_capability("cpu") is None
    if not torch.cuda.is_available():
        assert device_capability("cuda") is None  # a graph traced for CUDA here: no FP8 routing
        assert choose_gemm_kernel("cuda", torch.float32, 64, 64, 64, ROW, ROW, True)[1] == NEEDS_89.format(
            "no CUDA device"
        )


def _training_gemms(x, w, dy, element, block):
    """Forward, dgrad and wgrad of one linear layer as the fqt backend's graphs have them for a
    block-scaled FP policy: each GEMM's operands quantized along that GEMM's contraction."""

    def fp(t, axis, role, elem=element):
        return q.fp_quantize(t, elem, "mx" if block != [0] else "max", block, axis, False, f"l|{role}|s0")

    wt = w.t()
    y = q.qmatmul_rq(fp(x, -1, "activation"), fp(wt, -2, "weight"), x, wt, "", "", "", "", "", "l|gemm|s0")
    g_dgrad = fp(dy, -1, "grad_dgrad", "e5m2" if block == [0] else element)  # along N
    dx = torch.mm(g_dgrad, fp(wt, -1, "weight").t())  # Wᵀ quantized along N, read transposed
    dw = torch.mm(fp(x, 0, "activation").t(), fp(dy, 0, "grad_wgrad")).t()  # both along M
    return y, dx, dw


def _layer_inputs(seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """X [33, 40], W [24, 40] and dY [33, 24] of one linear layer: no dimension a tile multiple."""
    g = torch.Generator().manual_seed(seed)
    return (
        torch.randn(33, 40, generator=g),
        torch.randn(24, 40, generator=g),
        torch.randn(33, 24, generator=g),
    )


def _trace(device, element, block):
    with FakeTensorMode():
        x, w, dy = (torch.randn(s, device=device) for s in ((33, 40), (24, 40), (33, 24)))
        return make_fx(lambda *a: _training_gemms(*a, element, block))(x, w, dy)


def _tensors(val) -> list[torch.Tensor]:
    return list(val) if isinstance(val, (tuple, list)) else [val]


@pytest.fixture
def sm90(monkeypatch):
    """A GPU with FP8 tensor cores (compute capability 9.0) as far as the decision can tell."""
    monkeypatch.setattr(choice, "device_capability", lambda device: (9, 0))


def test_annotation_and_rewrite_on_fake_cuda_graphs(sm90):
    gm = _trace("cuda", "e4m3", [0])
    decisions = annotate_gemm_kernels(gm, triton_ok=True)
    assert sorted(decisions.values()) == [(KERNEL_FP8, "")] * 3  # forward, dgrad, wgrad
    fuse_triton_gemms(gm)
    targets = [n.target for n in gm.graph.nodes]
    assert targets.count(q.scaled_fp8_gemm.default) == 3 and targets.count(q.fp8_quantize_codes.default) == 6
    assert q.fp_quantize.default not in targets and q.qmatmul_rq.default not in targets
    vals = [v for n in gm.graph.nodes if n.op == "call_function" for v in _tensors(n.meta["val"])]
    assert all(v.device.type == "cuda" for v in vals) and {torch.float8_e4m3fn, torch.float8_e5m2} <= {
        v.dtype for v in vals
    }
    # MXFP8: scales along the contraction; the same graph on the CPU: simulated.
    mx = annotate_gemm_kernels(_trace("cuda", "e4m3", [32]), triton_ok=True)
    assert set(mx.values()) == {(KERNEL_INDUCTOR, "FP8 simulated in float32 (block scales vary along the "
                                                  "contraction (mx32))")}  # fmt: skip
    cpu = annotate_gemm_kernels(_trace("cpu", "e4m3", [0]), triton_ok=True)
    assert set(cpu.values()) == {(KERNEL_INDUCTOR, FP_SIMULATED)}


@pytest.fixture
def fuse_on_cpu(monkeypatch, sm90):
    pytest.importorskip("triton")
    if os.environ.get("TRITON_INTERPRET") != "1":
        pytest.skip("the fused CPU path runs Triton's interpreter")
    monkeypatch.setattr(choice, "FUSE_ON_DEVICES", ("cuda", "cpu"))


def test_fused_graph_runs_the_kernel_and_matches_the_simulation(fuse_on_cpu):
    x, w, dy = _layer_inputs(seed=0)
    ref = _training_gemms(x, w, dy, "e4m3", [0])
    gm = make_fx(lambda *a: _training_gemms(*a, "e4m3", [0]), tracing_mode="fake")(x, w, dy)
    annotate_gemm_kernels(gm)
    fuse_triton_gemms(gm)
    assert sum(n.target is q.scaled_fp8_gemm.default for n in gm.graph.nodes) == 3
    for got, want in zip(gm(x, w, dy), ref, strict=True):
        assert (got - want).abs().max() <= 1e-6 * want.abs().max()


def _mlp():
    torch.manual_seed(0)
    return torch.nn.Sequential(
        torch.nn.Linear(16, 32),
        torch.nn.ReLU(),
        torch.nn.Linear(32, 48),
        torch.nn.ReLU(),
        torch.nn.Linear(48, 16),
    )


@pytest.mark.parametrize("grads", ["fp8-e4m3-row", "fp8-e5m2-row-sr"])
def test_backend_routes_fp8_gemms_and_matches_the_simulated_step(fuse_on_cpu, monkeypatch, grads):
    """fp8-rowwise on a Linear MLP: every GEMM of a layer whose operands the backward quantizes
    itself runs on ``triton-fp8`` (in the interpreter), and the step equals the simulated
    (Inductor) step to float32 rounding. With stochastic E5M2 gradients the two paths draw the
    same random bits (both inline the same hash under the same seeds), and E5M2 x E4M3 GEMMs mix
    formats."""
    policy = qcompile.preset("fp8-rowwise").replace(keep_first_last=False, grad_dgrad=grads, grad_wgrad=grads)
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))

    def step(model):
        torch.manual_seed(3)
        cm = torch.compile(model, backend="fqt", options={"policy": policy})
        out = cm(x)
        out.square().sum().backward()
        return out, [p.grad for p in model.parameters()], qcompile.plan(cm)

    fused_model = _mlp()
    plain_model = copy.deepcopy(fused_model)
    out_f, grads_f, plan_f = step(fused_model)
    monkeypatch.setattr(choice, "FUSE_ON_DEVICES", ("cuda",))
    torch._dynamo.reset()
    out_p, grads_p, plan_p = step(plain_model)
    every = {"forward": KERNEL_FP8, "dgrad": KERNEL_FP8, "wgrad": KERNEL_FP8}
    assert plan_f.row("2").kernels() == every and plan_f.row("4").kernels() == every
    # The first layer (no dgrad): its wgrad reads X requantized along M in the forward (X is the
    # graph's input) and saved as float32, re-coded in backward.
    assert plan_f.row("0").kernels() == {"forward": KERNEL_FP8, "wgrad": KERNEL_FP8}
    assert plan_f.kernel_counts() == {KERNEL_FP8: 8}
    assert plan_p.kernel_counts() == {KERNEL_INDUCTOR: 8}
    assert plan_p.row("2").kernel_cell() == f"{KERNEL_INDUCTOR} ({FP_SIMULATED})"
    assert (out_f - out_p).abs().max() <= 1e-6 * out_p.abs().max()
    for gf, gp in zip(grads_f, grads_p, strict=True):
        assert (gf - gp).norm() <= 1e-6 * gp.norm()


def test_int8_routing_is_unchanged_beside_fp8(fuse_on_cpu):
    """An INT4 policy still goes to the int8 kernel with FP8 admitted."""
    assert choose_gemm_kernel("cuda", torch.float32, 64, 32, 64, INT4, INT4, True)[0] == KERNEL_TRITON


def test_bf16_autocast_recodes_the_saved_weight_and_stays_close(fuse_on_cpu, monkeypatch):
    """Under bf16 autocast the partitioner requantizes Ŵ for dgrad in the forward (from the bf16
    copy of W) and saves it as bf16: dgrad re-codes that copy (exact codes, the bf16-rounded
    scale), so every GEMM still runs on FP8 codes. The fused step differs from the simulated one
    (whose float GEMMs read bf16-rounded values) by bf16 rounding, which a few FP8 roundings
    downstream turn into whole steps: the gradients are compared as a whole (measured: <= 2%)."""
    x = torch.randn(2, 9, 16, generator=torch.Generator().manual_seed(1))

    def step(model):
        cm = torch.compile(model, backend="fqt", options={"policy": "fp8-rowwise"})
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = cm(x)
        out.float().square().sum().backward()
        return out.float(), [p.grad for p in model.parameters()], qcompile.plan(cm)

    fused_model = _mlp()
    plain_model = copy.deepcopy(fused_model)
    out_f, grads_f, plan_f = step(fused_model)
    monkeypatch.setattr(choice, "FUSE_ON_DEVICES", ("cuda",))
    torch._dynamo.reset()
    out_p, grads_p, _ = step(plain_model)
    assert plan_f.row("2").kernels() == {"forward": KERNEL_FP8, "dgrad": KERNEL_FP8, "wgrad": KERNEL_FP8}
    assert "Ŵ fp8-e4m3 as bfloat16" in plan_f.row("2").saved
    assert (out_f - out_p).norm() <= 0.02 * out_p.norm()
    for gf, gp in zip(grads_f, grads_p, strict=True):
        assert (gf - gp).norm() <= 0.05 * gp.norm()
