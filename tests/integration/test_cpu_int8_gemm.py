"""The CPU integer GEMM path (`cpu-int8`): the kernel against its float64 definition, the kernel
decision, and compiled training on the integer kernels against the float simulation."""

from __future__ import annotations

import copy
import importlib

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

import qcompile
from qcompile.passes.post_aot.gemm_kernel_choice import (
    KERNEL_CPU,
    KERNEL_INDUCTOR,
    OperandCheck,
    choose_gemm_kernel,
    code_bound,
)
from qcompile.runtime.kernels.cpu_int8_gemm import (
    avx2_int8_mm,
    avx2_kernel_available,
    cpu_int8_kernel,
    cpu_int8_mm_reference,
    float32_epilogue_is_exact,
    int_mm_scaled,
    saturation_free_steps,
    scale_int32_fma,
)

gemm_module = importlib.import_module("qcompile.runtime.kernels.cpu_int8_gemm")
HAS_AVX2_KERNEL = cpu_int8_kernel()[0] == "avx2-maddubs"
needs_avx2 = pytest.mark.skipif(not avx2_kernel_available(), reason="this CPU cannot run the AVX2 kernel")
INT4 = OperandCheck("quantizer", "int", 4)
UINT4 = OperandCheck("quantizer", "int", 4, signed="auto")
LUQ4 = OperandCheck("quantizer", "luq", 4, stochastic=True)


def _codes(shape, bound, gen, layout="n"):
    """Random int8 codes in [-bound, bound], never all zero, in a row- or column-major layout."""
    c = torch.randint(-bound, bound + 1, shape, generator=gen, dtype=torch.int8)
    c.view(-1)[0] = bound  # the extreme code is always present
    return c if layout == "n" else c.t().contiguous().t()


@needs_avx2
@pytest.mark.parametrize("la,lb", [("n", "n"), ("t", "n"), ("n", "t"), ("t", "t")])
@pytest.mark.parametrize("mkn", [(1, 1, 1), (5, 7, 3), (17, 33, 31), (64, 300, 96), (130, 64, 48)])
@pytest.mark.parametrize("bounds", [(7, 7), (15, 64), (64, 15), (64, 64), (127, 64)])
def test_avx2_kernel_equals_the_float64_product(la, lb, mkn, bounds):
    """Every layout the three training GEMMs use, sizes off every blocking (M % 4, K % 4,
    N % 16), and code bounds up to the largest the kernel accepts (extreme codes present):
    equal to the float64 product of the same codes and scales rounded once."""
    m, k, n = mkn
    gen = torch.Generator().manual_seed(m * 1000 + k * 10 + n)
    a, b = _codes((m, k), bounds[0], gen, la), _codes((k, n), bounds[1], gen, lb)
    rs, cs = torch.rand(m, generator=gen) + 0.1, torch.rand(n, generator=gen) * 1e-3 + 1e-4
    got = avx2_int8_mm(a, b, rs, cs, *bounds)
    assert torch.equal(got, cpu_int8_mm_reference(a, b, rs, cs))


@needs_avx2
def test_avx2_kernel_worst_case_codes_do_not_saturate():
    """All codes at their bounds (the largest int16 partial sums the kernel forms): still exact."""
    for ab, bb in ((64, 64), (127, 64), (15, 64), (63, 63)):
        assert saturation_free_steps(ab, bb) >= 1
        for sa, sb in ((1, 1), (-1, 1), (-1, -1)):
            a = torch.full((8, 256), sa * ab, dtype=torch.int8)
            b = torch.full((256, 32), sb * bb, dtype=torch.int8)
            ones_m, ones_n = torch.ones(8), torch.ones(32)
            assert torch.equal(
                avx2_int8_mm(a, b, ones_m, ones_n, ab, bb), cpu_int8_mm_reference(a, b, ones_m, ones_n)
            )
    assert saturation_free_steps(127, 127) == 0  # refused, not computed wrong
    with pytest.raises(ValueError, match="saturate"):
        avx2_int8_mm(torch.ones(2, 4, dtype=torch.int8), torch.ones(4, 2, dtype=torch.int8), torch.ones(2),
                     torch.ones(2), 127, 127)  # fmt: skip


def test_int_mm_path_equals_the_float64_product():
    """The VNNI path (``aten._int_mm``) with the same epilogue; exact here too (slow on AVX2)."""
    gen = torch.Generator().manual_seed(3)
    a, b = _codes((32, 64), 64, gen), _codes((64, 24), 15, gen, "t")
    rs, cs = torch.rand(32, generator=gen), torch.rand(24, generator=gen)
    assert torch.equal(int_mm_scaled(a, b, rs, cs), cpu_int8_mm_reference(a, b, rs, cs))


def test_compiled_float32_epilogue_is_the_float64_product():
    """`scale_int32_fma` as Inductor compiles it (the backend's epilogue where sums fit float32)
    against the float64 epilogue: at most one ulp apart, and only at near-ties; the plain float32
    product (two roundings) is not, which shows the fused multiply-adds are really there."""
    gen = torch.Generator().manual_seed(6)
    acc = torch.randint(-(1 << 24) + 1, 1 << 24, (512, 512), generator=gen, dtype=torch.int32)
    r = torch.rand(512, generator=gen) * 10.0 ** torch.randint(-6, 3, (512,), generator=gen)
    c = torch.rand(512, generator=gen) * 10.0 ** torch.randint(-6, 3, (512,), generator=gen)
    exact = (acc.double() * r.double()[:, None] * c.double()[None, :]).float()
    got = torch.compile(scale_int32_fma, backend="inductor", fullgraph=True)(acc, r, c)
    ulps = (got.view(torch.int32) - exact.view(torch.int32)).abs()
    assert int(ulps.max()) <= 1 and int((ulps > 0).sum()) <= 3  # expected ~0.03 of 262,144
    naive = acc.float() * r[:, None] * c[None, :]
    assert (naive != exact).float().mean() > 0.05
    # a power-of-two column scale: r·c exact, the result correctly rounded everywhere
    got = torch.compile(scale_int32_fma, backend="inductor", fullgraph=True)(acc, r, torch.full((512,), 0.25))
    assert torch.equal(got, (acc.double() * r.double()[:, None] * 0.25).float())


def test_float32_epilogue_only_where_sums_fit_float32():
    assert float32_epilogue_is_exact(64, 7, 1024)  # LUQ x INT4, K = 1024: |sum| <= 458,752
    assert not float32_epilogue_is_exact(127, 127, 2048)  # 33M > 2^24: the float64 epilogue


def test_op_opcheck_and_reference_fallback(monkeypatch):
    gen = torch.Generator().manual_seed(4)
    a, b = _codes((9, 20), 64, gen), _codes((20, 11), 7, gen)
    rs, cs = torch.rand(9, generator=gen), torch.rand(11, generator=gen)
    torch.library.opcheck(torch.ops.qcompile.cpu_int8_mm, (a, b, rs, cs, 64, 7))
    monkeypatch.setattr(gemm_module, "cpu_int8_kernel", lambda: ("", "none here"))
    assert torch.equal(
        torch.ops.qcompile.cpu_int8_mm(a, b, rs, cs, 64, 7), cpu_int8_mm_reference(a, b, rs, cs)
    )


def test_code_bounds_of_each_quantizer():
    assert code_bound(LUQ4) == 64  # sign * 2^k, k = 0..6
    assert code_bound(INT4) == 7 and code_bound(UINT4) == 15
    assert code_bound(OperandCheck("quantizer", "int", 7, signed="unsigned")) == 127


@pytest.mark.parametrize(
    "kw,expect",
    [
        ({"kernels": "int8"}, (KERNEL_CPU, "")),
        ({}, (KERNEL_INDUCTOR, "too small for int8 to gain (64x128x32)")),
        ({"m": 512, "n": 512, "k": 512}, (KERNEL_CPU, "")),
        ({"kernels": "reference", "m": 512, "n": 512, "k": 512}, (KERNEL_INDUCTOR, "kernels='reference'")),
        ({"kernels": "int8", "m": "s0"}, (KERNEL_INDUCTOR, "dynamic shape")),
        ({"kernels": "int8", "a": OperandCheck("none")}, (KERNEL_INDUCTOR, "A is not quantized")),
        ({"kernels": "int8", "b": OperandCheck("quantizer", "int", 7, signed="unsigned"),
          "a": OperandCheck("quantizer", "int", 7, signed="unsigned")},
         (KERNEL_INDUCTOR, "codes up to 127 x 127 saturate the AVX2 kernel")),
        ({"kernels": "int8", "dtype": torch.int32}, (KERNEL_INDUCTOR, "output dtype torch.int32")),
    ],
)  # fmt: skip
def test_cpu_kernel_decision(kw, expect, monkeypatch):
    monkeypatch.setattr(gemm_module, "cpu_int8_kernel", lambda: ("avx2-maddubs", "AVX2"))
    args = {"device": "cpu", "dtype": torch.float32, "m": 64, "n": 32, "k": 128, "a": LUQ4, "b": UINT4, **kw}
    assert choose_gemm_kernel(**args) == expect


def test_cpu_decision_says_why_without_an_integer_kernel(monkeypatch):
    monkeypatch.setattr(
        gemm_module, "cpu_int8_kernel", lambda: ("", "no int8 dot-product instructions (DEFAULT)")
    )
    assert choose_gemm_kernel("cpu", torch.float32, 512, 512, 512, LUQ4, INT4, kernels="int8") == (
        KERNEL_INDUCTOR, "no int8 dot-product instructions (DEFAULT)")  # fmt: skip
    with pytest.raises(ValueError, match="valid choices"):
        choose_gemm_kernel("cpu", torch.float32, 512, 512, 512, LUQ4, INT4, kernels="fast")


def test_bad_kernels_option_names_the_choices():
    cm = torch.compile(nn.Linear(4, 4), backend="fqt", options={"kernels": "fastest"})
    with pytest.raises(Exception, match="valid choices"):
        cm(torch.randn(2, 4))


# ------------------------------------------------------------------------ compiled training


def _count_kernel_calls(monkeypatch) -> list[tuple[int, int, int]]:
    """Record the (M, K, N) of every integer GEMM the compiled graphs run, on whichever path this
    CPU's kernel decision takes: the AVX2 kernel (called by `cpu_int8_mm`), ``aten._int_mm`` with
    VNNI (an extern call in Inductor's generated code, looked up at run time), or the reference."""
    calls: list[tuple[int, int, int]] = []
    kernel = cpu_int8_kernel()[0]
    if kernel == "int-mm":
        from torch._inductor.select_algorithm import extern_kernels

        owner, path = extern_kernels, "_int_mm"
    else:
        owner, path = gemm_module, "avx2_int8_mm" if kernel == "avx2-maddubs" else "cpu_int8_mm_reference"
    real = getattr(owner, path)

    def spy(a, b, *rest, **kw):
        calls.append((a.shape[0], a.shape[1], b.shape[1]))
        return real(a, b, *rest, **kw)

    monkeypatch.setattr(owner, path, spy)
    return calls


def _step(model, x, loss_fn, kernels, policy="luq-int4", seed=1):
    cm = torch.compile(model, backend="fqt", options={"policy": policy, "kernels": kernels})
    torch.manual_seed(seed)
    loss = loss_fn(cm(x))
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    return loss.detach(), grads, qcompile.plan(cm)


def _compare(model, x, loss_fn, monkeypatch, policy="luq-int4"):
    """One step with every qualifying GEMM on the integer kernel and one on the float simulation,
    from the same weights and seed: same loss, gradients equal to float32 rounding (a code drawn
    differently anywhere would move them by far more).

    Biases get small random values first. At initialisation the projection biases of attention
    (``nn.MultiheadAttention``, GPT-2's ``c_attn``) are zero, so the integer kernel's exact
    products are exact multiples of one scale, and a max-scaled quantizer downstream (the
    default's per-row attention operands) meets exact rounding ties; the float simulation's
    own rounding error breaks those ties either way, so the two paths would draw different
    codes from inputs that differ by an ulp (a property of the simulation, not of the kernel)."""
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("bias"):
                param.copy_(0.02 * torch.randn(param.shape, generator=gen))
    ref_loss, ref_grads, _ = _step(copy.deepcopy(model), x, loss_fn, "reference", policy)
    torch._dynamo.reset()
    calls = _count_kernel_calls(monkeypatch)
    loss, grads, plan = _step(copy.deepcopy(model), x, loss_fn, "int8", policy)
    torch.testing.assert_close(loss, ref_loss, rtol=1e-6, atol=1e-6)
    assert torch.isfinite(grads).all()
    assert (grads - ref_grads).norm() <= 1e-5 * ref_grads.norm(), (
        grads - ref_grads
    ).norm() / ref_grads.norm()
    return plan, calls


ALL_INT8 = {"forward": KERNEL_CPU, "dgrad": KERNEL_CPU, "wgrad": KERNEL_CPU}


def test_mlp_trains_on_the_integer_kernels_with_the_reference_numbers(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(24, 48), nn.ReLU(), nn.Linear(48, 40), nn.GELU(), nn.Linear(40, 36),
                          nn.ReLU(), nn.Linear(36, 5))  # fmt: skip
    x, y = torch.randn(20, 24), torch.randint(0, 5, (20,))
    plan, calls = _compare(model, x, lambda out: F.cross_entropy(out, y), monkeypatch)
    for layer in ("2", "4"):
        assert plan.row(layer).kernels() == ALL_INT8
        assert "int8 codes" in plan.row(layer).saved
    assert plan.row("0").kernels()["forward"].startswith("inductor")  # keep_first_last: FP32
    # forward (2) + dgrad and wgrad (2 each) of the two quantized layers, in one step; the
    # replayed forward GEMM (recomputation) runs on the kernel too.
    assert sorted(calls).count((20, 48, 40)) >= 1 and len(calls) >= 6


def test_transformer_block_on_the_integer_kernels(monkeypatch):
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(16, 32), nn.TransformerEncoderLayer(32, 4, 64, dropout=0.0, batch_first=True),
                          nn.Linear(32, 16))  # fmt: skip
    x = torch.randn(3, 12, 16)
    plan, calls = _compare(model, x, lambda out: out.square().mean(), monkeypatch)
    assert plan.row("1.linear1").kernels() == ALL_INT8
    assert plan.row("1.linear2").kernels() == ALL_INT8
    assert calls


@pytest.mark.slow
def test_hf_gpt2_on_the_integer_kernels(monkeypatch):
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2, attn_pdrop=0,
                                  resid_pdrop=0, embd_pdrop=0, bos_token_id=0, eos_token_id=0)  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg)
    x = torch.randint(0, 64, (2, 16))
    plan, calls = _compare(model, x, lambda out: F.cross_entropy(out.logits.flatten(0, 1), x.flatten()),
                           monkeypatch)  # fmt: skip
    kernels = {(r.layer, r.op): r.kernels() for r in plan}
    for layer in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj"):
        assert kernels[(f"transformer.h.1.{layer}", "addmm")] == ALL_INT8
    assert kernels[("transformer.h.0.attn", "attention.qk")]["forward"].startswith("inductor")
    assert calls


def test_auto_keeps_small_gemms_on_the_float_path_and_says_so():
    model = nn.Sequential(nn.Linear(8, 16), nn.ReLU(), nn.Linear(16, 16), nn.ReLU(), nn.Linear(16, 4))
    cm = torch.compile(model, backend="fqt")
    cm(torch.randn(4, 8)).sum().backward()
    kernels = qcompile.plan(cm).row("2").kernels()
    if HAS_AVX2_KERNEL or cpu_int8_kernel()[0]:
        assert kernels["forward"] == "inductor (too small for int8 to gain (4x16x16))"
    else:
        assert kernels["forward"] == f"inductor ({cpu_int8_kernel()[1]})"
