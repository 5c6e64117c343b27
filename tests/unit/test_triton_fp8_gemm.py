"""The FP8 path's pieces against their references: the codes (FP8 values and an FP32 scale) equal
``fp_quantize`` bit for bit, and the Triton FP8 GEMM (on CPU under ``TRITON_INTERPRET=1``, or
compiled on a GPU with ``QCOMPILE_TEST_DEVICE=cuda``: `tests/kernel_device.py`) equals the
float64 product of the same FP8 values.

Triton 3.9's interpreter runs ``tl.dot`` on FP8 operands itself (E4M3, E5M2 and mixed): it widens
them to float16, which holds every FP8 value exactly, and multiplies in float32, so no
interpreter-only upcast is needed in the kernel. FP32 accumulation rounds sums where int32 does
not: the exactness tests use values whose products and partial sums all fit FP32's 24 bits
(``_exact_codes``), and a full-range test bounds the error by the FP32 summation bound.
"""

from __future__ import annotations

import pytest

from tests.kernel_device import epilogue_with_bias_matches, kernels_testable, on_device

triton = pytest.importorskip("triton")

import torch  # noqa: E402

from qcompile.runtime import QUANTIZER_DECOMPOSITIONS  # noqa: E402
from qcompile.runtime.kernels import triton_fp8_gemm  # noqa: E402
from qcompile.runtime.kernels.triton_fp8_gemm import fp8_mm_reference  # noqa: E402
from qcompile.runtime.reference.block_scaled import (  # noqa: E402
    FP8_DTYPES,
    block_quantize_reference,
    fp8_codes_reference,
)
from qcompile.runtime.reference.view_chains import encode_views  # noqa: E402

fp8_mm = on_device(triton_fp8_gemm.fp8_mm)
q = torch.ops.qcompile
E4M3, E5M2 = torch.float8_e4m3fn, torch.float8_e5m2

_ok, _why = kernels_testable()
kernel_test = pytest.mark.skipif(not _ok, reason=_why)


def _input(shape, seed=0, dtype=torch.float32):
    """Wide dynamic range (FP8 subnormals included), an exact zero and a negative zero."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.exp(torch.randn(shape, generator=g) * 3)
    if x.numel() > 2:
        x.view(-1)[:2] = torch.tensor([0.0, -0.0])
    return x.to(dtype)


# (shape, block, axis): per row along the last / first / a middle axis, per tensor, 1-D, 0-d, empty.
CODE_LAYOUTS = [
    ((7, 33), [0], -1),
    ((7, 33), [0], 0),
    ((3, 5, 9), [0], 1),
    ((7, 33), [], -1),
    ((40,), [0], 0),
    ((), [], -1),
    ((5, 0), [0], -1),
]


@pytest.mark.parametrize("element", ["e4m3", "e5m2"])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("stochastic", [False, True])
@pytest.mark.parametrize("shape,block,axis", CODE_LAYOUTS)
def test_fp8_codes_times_scale_equal_fp_quantize_bit_for_bit(element, dtype, stochastic, shape, block, axis):
    x = _input(shape, seed=len(shape), dtype=dtype)
    u = torch.rand(shape, generator=torch.Generator().manual_seed(9)) if stochastic else None
    codes, scale = fp8_codes_reference(x, element, block, axis, stochastic, u)
    assert codes.dtype == FP8_DTYPES[element] and scale.dtype == torch.float32
    assert scale.ndim == x.ndim and codes.shape == x.shape
    want = block_quantize_reference(x, element, "max", block, axis, stochastic, u)
    got = q.fp8_dequantize_codes(codes, scale, dtype)
    assert got.dtype == want.dtype and torch.equal(got, want)
    assert torch.equal(got.view(torch.int16 if dtype == torch.bfloat16 else torch.int32),
                       want.view(torch.int16 if dtype == torch.bfloat16 else torch.int32))  # signed zeros too  # fmt: skip


def test_fp8_codes_of_non_finite_rows_are_nan_like_fp_quantize():
    x = _input((6, 20))
    x[1, 3], x[4, 0] = float("inf"), float("nan")
    codes, scale = fp8_codes_reference(x, "e4m3", [0], -1)
    got, want = codes.float() * scale, block_quantize_reference(x, "e4m3", "max", [0], -1)
    assert torch.equal(got.isnan(), want.isnan()) and got[[1, 4]].isnan().all()
    assert torch.equal(got.nan_to_num(), want.nan_to_num())


def test_fp8_codes_op_decomposition_draws_what_fp_quantize_draws():
    """The compiled graphs inline both ops with the same hash draws: under one seed, the FP8 path's
    stochastic codes give ``fp_quantize``'s value exactly."""
    x = _input((16, 24), seed=3)
    decomposed = QUANTIZER_DECOMPOSITIONS[q.fp8_quantize_codes.default]
    simulated = QUANTIZER_DECOMPOSITIONS[q.fp_quantize.default]
    for block, axis in (([0], -1), ([0], 0), ([], -1)):
        torch.manual_seed(5)
        codes, scale = decomposed(x, "e4m3", block, axis, True)
        torch.manual_seed(5)
        want = simulated(x, "e4m3", "max", block, axis, True, "t")
        assert torch.equal(codes.float() * scale, want)
        torch.manual_seed(6)
        assert not torch.equal(simulated(x, "e4m3", "max", block, axis, True, "t"), want)  # draws move


def test_fp8_codes_ops_pass_opcheck():
    """Fake kernels agree with the real ones on shapes, dtypes and strides. Only the fake-tensor
    check: opcheck's schema check compares FP8 tensors with ops CPU torch lacks for FP8 (mul)."""
    check = ("test_faketensor",)
    xt = _input((20, 17), seed=1).t()  # transposed input: contiguous outputs, as the fakes say
    torch.library.opcheck(q.fp8_quantize_codes.default, (xt, "e4m3", [0], -1, False), test_utils=check)
    torch.library.opcheck(
        q.fp8_quantize_codes.default, (_input((3, 5, 7)), "e5m2", [], 0, False), test_utils=check
    )
    codes, scale = q.fp8_quantize_codes(xt, "e4m3", [0], 0, False)  # [17, 20], one scale per column
    torch.library.opcheck(q.fp8_dequantize_codes.default, (codes, scale, torch.bfloat16), test_utils=check)
    # A = codesᵀ [20, 17] through a recorded transpose (rows scaled), B [17, 9] per column.
    b_codes, b_scale = q.fp8_quantize_codes(_input((17, 9), seed=2), "e5m2", [0], 0, False)
    views = encode_views([("t", None)], 2)
    args = (codes, scale, b_codes, b_scale, torch.randn(9), views, [], [20, 9], torch.float32)
    torch.library.opcheck(q.scaled_fp8_gemm.default, args, test_utils=check)
    a, b = (codes.float() * scale).t().double(), (b_codes.float() * b_scale).double()
    err = (q.scaled_fp8_gemm(*args).double() - (a @ b + args[4].double())).abs()
    assert (err <= 1e-6 * (a.abs() @ b.abs() + 1)).all()


def _exact_codes(shape, dtype, seed):
    """FP8 values ``±2^e·(1 + f)``, ``e`` in -2..1, and zeros: every product is a multiple of
    2^-10 below 16 in magnitude, so every FP32 partial sum of up to 1024 of them is exact and the
    kernel must equal the float64 product bit for bit, whatever its summation order."""
    g = torch.Generator().manual_seed(seed)
    mant = 3 if dtype == E4M3 else 2
    frac = torch.randint(0, 2**mant, shape, generator=g) / 2**mant
    e = torch.randint(-2, 2, shape, generator=g).float()
    sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
    v = sign * torch.exp2(e) * (1 + frac) * (torch.rand(shape, generator=g) > 0.1)  # ~10% zeros
    return v.to(dtype)


@kernel_test
@pytest.mark.parametrize("da,db", [(E4M3, E4M3), (E5M2, E5M2), (E4M3, E5M2)])
@pytest.mark.parametrize("m,n,k", [(37, 29, 80), (1, 17, 5), (33, 16, 130)])
def test_fp8_gemm_equals_the_float64_product(da, db, m, n, k):
    a, b = _exact_codes((m, k), da, 1), _exact_codes((k, n), db, 2)
    out = torch.full((m, n), float("nan"))  # poisoned: an element never written shows up
    got = fp8_mm(a, b, out=out)
    want = fp8_mm_reference(a, b)
    assert want.abs().max() > 0 and torch.equal(got, want)


@kernel_test
def test_fp8_gemm_training_layouts_use_strides_and_exact_epilogue():
    m, n, k = 23, 19, 37
    x, w, dy = _exact_codes((m, k), E4M3, 3), _exact_codes((n, k), E4M3, 4), _exact_codes((m, n), E5M2, 5)
    sx, sw, bias = torch.rand(m) + 0.1, torch.rand(n) + 0.1, torch.randn(n)
    y = fp8_mm(x, w.t(), sx, sw, bias)  # X·Wᵀ with W read through its strides
    assert epilogue_with_bias_matches(y, fp8_mm_reference, x, w.t(), sx, sw, bias)
    sim = (x.double() * sx[:, None].double()) @ (w.double() * sw[:, None].double()).t() + bias.double()
    assert torch.allclose(y.double(), sim, rtol=1e-6, atol=1e-6)
    s_dy, s_k = torch.rand(m) + 0.1, torch.tensor(0.37)  # per-row dY, per-tensor (0-d) W
    assert torch.equal(fp8_mm(dy, w, s_dy, s_k), fp8_mm_reference(dy, w, s_dy, s_k.expand(k)))
    s_n, s_xk = torch.rand(n) + 0.1, torch.rand(k) + 0.1  # wgrad dYᵀ·X without materialising dYᵀ
    dw = fp8_mm(dy.t(), x, s_n, s_xk)
    assert dw.shape == (n, k) and torch.equal(dw, fp8_mm_reference(dy.t(), x, s_n, s_xk))
    half = fp8_mm(x, w.t(), sx, sw, bias, out_dtype=torch.bfloat16)
    ref = fp8_mm_reference(x, w.t(), sx, sw, bias)
    # The interpreter truncates float32 -> bfloat16 (a GPU rounds to nearest): within one bf16 ulp.
    assert half.dtype == torch.bfloat16 and ((half.float() - ref).abs() <= ref.abs() * 2**-7).all()


@kernel_test
@pytest.mark.parametrize("k_major", [True, False])
def test_fp8_backward_layouts_give_the_same_result_with_operands_copied_k_major(k_major):
    """dgrad (W MN-major) and wgrad (both MN-major) with the operands copied K-major first (a
    GPU's default) or read through their strides: the float64 product's value bit for bit."""
    m, n, k = 23, 19, 37
    x, w, dy = _exact_codes((m, k), E4M3, 6), _exact_codes((n, k), E4M3, 7), _exact_codes((m, n), E5M2, 8)
    sm, sn, sk = torch.rand(m) + 0.1, torch.rand(n) + 0.1, torch.rand(k) + 0.1
    assert torch.equal(fp8_mm(dy, w, sm, sk, k_major=k_major), fp8_mm_reference(dy, w, sm, sk))
    assert torch.equal(fp8_mm(dy.t(), x, sn, sk, k_major=k_major), fp8_mm_reference(dy.t(), x, sn, sk))


@kernel_test
def test_fp8_gemm_on_full_range_codes_is_within_the_fp32_summation_bound():
    """Codes of real data (subnormals to 448): FP32 sums round, by at most ``K·2^-24·Σ|a||b|``
    in any order; the quantized operands' product, scales included, is the simulation's."""
    m, n, k = 19, 21, 200
    x, w = _input((m, k), seed=11), _input((n, k), seed=12)
    cx, sx = fp8_codes_reference(x, "e4m3", [0], -1)
    cw, sw = fp8_codes_reference(w, "e4m3", [0], -1)
    acc = fp8_mm(cx, cw.t())
    exact = cx.double() @ cw.double().t()
    bound = k * 2**-24 * (cx.double().abs() @ cw.double().abs().t())
    assert ((acc.double() - exact).abs() <= bound).all()
    # Against the float64 GEMM of fp_quantize's float32 values: besides the sums, each side
    # rounds a few products of codes and scales once (2^-24 each).
    y = fp8_mm(cx, cw.t(), sx.reshape(m), sw.reshape(n))
    sim = block_quantize_reference(x, "e4m3", "max", [0], -1).double()
    sim = sim @ block_quantize_reference(w, "e4m3", "max", [0], -1).double().t()
    scale = sx.double() * sw.double().reshape(1, n)
    abs_sum = cx.double().abs() @ cw.double().abs().t()
    assert ((y.double() - sim).abs() <= (bound + 2**-21 * abs_sum) * scale).all()


def test_fp8_gemm_rejects_int8_codes():
    with pytest.raises(TypeError, match="float8"):
        triton_fp8_gemm.fp8_mm(torch.zeros(16, 16, dtype=torch.int8), torch.zeros(16, 16, dtype=torch.int8))


@pytest.mark.parametrize("element", ["e4m3", "e5m2"])
@pytest.mark.parametrize("saved_dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("block,axis", [([0], -1), ([0], 0), ([], -1)])
def test_a_saved_fp8_value_recodes_to_its_own_codes(element, saved_dtype, block, axis):
    """A forward-saved float copy of an FP8 operand (float32, or bf16 under autocast), quantized
    again with round-to-nearest max scaling, gives back exactly its codes (subnormals included),
    with the scale ``max|x̂| / max_value``: what the fused backward reads for such an operand."""
    x = _input((24, 40), seed=21)
    x[3] = 0.0  # an all-zero row
    codes, scale = fp8_codes_reference(x, element, block, axis)
    saved = q.fp8_dequantize_codes(codes, scale, saved_dtype)
    codes2, scale2 = fp8_codes_reference(saved, element, block, axis)
    assert torch.equal(codes2.float(), codes.float())  # as values: a -0.0 code may come back as +0.0
    tol = 2**-22 if saved_dtype == torch.float32 else 2**-8
    assert ((scale2 - scale).abs() <= tol * scale).all()
