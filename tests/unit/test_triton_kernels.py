"""The Triton kernels against their PyTorch references, on CPU under ``TRITON_INTERPRET=1``, or
compiled on a GPU with ``QCOMPILE_TEST_DEVICE=cuda`` (`tests/kernel_device.py`).

Quantizers must match the references bit for bit given the same noise, and be unbiased with the
in-kernel Philox draw; the int8 GEMM must equal the exact integer product (computed in int64)
and the reference epilogue. Shapes are odd (never block multiples), inputs never all zero, and
outputs are poisoned first so an element a kernel forgets to write shows up.

``TRITON_INTERPRET`` is set before Triton is imported (the kernels are decorated as interpreted
functions at import) and stays set for the process: it only concerns Triton kernels, and
Inductor's CPU code generation does not read it.
"""

from __future__ import annotations

import pytest

from tests.kernel_device import epilogue_with_bias_matches, kernels_testable, on_device

triton = pytest.importorskip("triton")

import torch  # noqa: E402

from qcompile.runtime.kernels import (  # noqa: E402
    triton_int8_gemm,
    triton_int_quantize,
    triton_luq_quantize,
    triton_pack_int4,
    triton_reductions,
    triton_support,
)
from qcompile.runtime.kernels.triton_int8_gemm import int8_mm_reference  # noqa: E402
from qcompile.runtime.kernels.triton_pack_int4 import pack_reference, unpack_reference  # noqa: E402
from qcompile.runtime.reference.int_quant import int_quantize_reference  # noqa: E402
from qcompile.runtime.reference.luq import luq_quantize_reference  # noqa: E402

# The kernels as the tests call them: on CPU tensors, run where `tests/kernel_device.py` says.
int8_mm = on_device(triton_int8_gemm.int8_mm)
forward_gemm = on_device(triton_int8_gemm.forward_gemm)
dgrad_gemm = on_device(triton_int8_gemm.dgrad_gemm)
wgrad_gemm = on_device(triton_int8_gemm.wgrad_gemm)
int_quantize_codes = on_device(triton_int_quantize.int_quantize_codes)
luq_quantize_codes = on_device(triton_luq_quantize.luq_quantize_codes)
pack_codes = on_device(triton_pack_int4.pack_codes)
packed_mm = on_device(triton_pack_int4.packed_mm)
group_absmax_min = on_device(triton_reductions.group_absmax_min)
group_stats = on_device(triton_reductions.group_stats)

_ok, _why = kernels_testable()
pytestmark = pytest.mark.skipif(not _ok, reason=_why)

POISON = 99  # outside every code range (INT: -7..15, LUQ: -64..64)


PACKED_POISON = 0x5A  # a byte no test tensor packs to at the positions checked: nibbles 10 and 5


@pytest.fixture(autouse=True)
def _poisoned_code_buffers(monkeypatch):
    def poisoned(rows, cols, device):
        return torch.full((rows, cols), POISON, device=device, dtype=torch.int8)

    def poisoned_packed(rows, cols, device):
        return torch.full((rows, cols), PACKED_POISON, device=device, dtype=torch.uint8)

    monkeypatch.setattr(triton_support, "alloc_codes", poisoned)
    monkeypatch.setattr(triton_support, "alloc_packed", poisoned_packed)


def _input(shape, seed=0, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(shape, generator=g) * torch.logspace(-3, 1, shape[-1])  # wide dynamic range
    x.view(-1)[0] = 0.0  # an exact zero among non-zeros
    return x.to(dtype)


# (shape, reduce_dims, transpose the 2-D input first)
LAYOUTS = [
    ((37, 29), [], False),  # per-tensor
    ((37, 29), [1], False),  # per-row
    ((37, 29), [0], True),  # per-column of a transposed (non-contiguous) view
    ((3, 5, 11), [2], False),  # per-sample (kept dims lead)
    ((3, 5, 11), [0, 1], False),  # per-channel (last dim kept)
    ((3, 5, 11), [1], False),  # kept dims not a prefix: permuted
]


def _make(shape, transpose, seed=0, dtype=torch.float32):
    x = _input(shape[::-1] if transpose else shape, seed, dtype)
    return x.t() if transpose else x


@pytest.mark.parametrize("shape,dims,transpose", LAYOUTS)
@pytest.mark.parametrize(
    "scaling,signed,stochastic",
    [("sawb", "signed", False), ("max", "signed", True), ("max", "auto", False), ("sawb", "unsigned", True)],
)
def test_int_quantize_kernel_matches_reference_exactly(shape, dims, transpose, scaling, signed, stochastic):
    x = _make(shape, transpose)
    if signed == "auto" and len(shape) == 2:
        x = x.abs() if dims else x  # one all-non-negative group set (unsigned grid) and one signed
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(1))
    c = int_quantize_codes(x, 4, scaling, signed, dims, stochastic, noise=noise if stochastic else None)
    ref = int_quantize_reference(x, 4, scaling, signed, dims, stochastic, noise=noise)
    assert (c.codes != POISON).all()
    assert c.codes.abs().max() <= 15 and c.codes.dtype == torch.int8
    assert torch.equal(c.dequantize(), ref)


PACKED_LAYOUTS = LAYOUTS + [
    ((3, 2, 64), [1, 2], False),  # per-sample over two dims, whole 32-code blocks: packed in the kernel
    ((3, 5, 12), [1, 2], False),  # the same with rows shorter than a block: packed by a second pass
    ((3, 2, 40), [1, 2], False),  # several rows of a partial last block per view row: a second pass
    ((57,), [], False),  # 1-D, odd length: one row, a partial last block, packed in the kernel
    ((5, 40), [1], False),  # 2-D rows of 40: packed in the kernel
    ((4, 3, 4), [0], False),  # permuted, its view's row length equal to the last dim by chance
    ((2, 6, 6), [1], False),  # the same with a square trailing pair
]


@pytest.mark.parametrize("shape,dims,transpose", PACKED_LAYOUTS)
@pytest.mark.parametrize("kind", ["signed", "unsigned", "auto", "luq"])
def test_quantizers_output_packed_codes(shape, dims, transpose, kind):
    """``pack=True``: the quantizer also writes its codes two per byte along the last dim, in the
    format backward saves (`packing.pack_int4` for INT, LUQ's sign + exponent nibbles),
    for every grouping, odd lengths included, into poisoned buffers."""
    from qcompile.runtime.reference.packing import pack_int4, unpack_int4

    x = _make(shape, transpose)
    if kind == "luq":
        c = luq_quantize_codes(x, 4, dims, pack=True)
        want = pack_reference(c.codes.reshape(-1, shape[-1]), "luq")
        want = want.reshape(c.packed.shape)
    else:
        x = x.abs() if kind == "unsigned" else x
        c = int_quantize_codes(x, 4, "sawb", kind, dims, pack=True)
        want = pack_int4(c.codes)
        assert torch.equal(unpack_int4(c.packed, c.codes.shape[-1], c.top), c.codes)
    assert c.packed.dtype == torch.uint8 and c.packed.shape == want.shape
    assert torch.equal(c.packed, want)
    assert c.encoding == {"signed": "int", "unsigned": "uint"}.get(kind, kind)


@pytest.mark.parametrize("kind", ["signed", "unsigned", "luq"])
def test_packed_quantizer_output_feeds_the_packed_gemm(kind):
    """Quantize to packed codes, then `packed_mm` reads the nibbles: the same result as the int8
    GEMM on the unpacked codes (both exact integer products, same epilogue)."""
    a = _make((23, 37), False, seed=5)
    w = _make((19, 37), False, seed=6)
    if kind == "luq":
        ca = luq_quantize_codes(a, 4, [1], pack=True)
    else:
        ca = int_quantize_codes(a.abs() if kind == "unsigned" else a, 4, "max", kind, [1], pack=True)
    cw = int_quantize_codes(w, 4, "sawb", "signed", [1], pack=True)
    got = packed_mm(ca.packed_operand(), cw.packed_operand().t(), ca.scale.reshape(-1), cw.scale.reshape(-1))
    want = forward_gemm(ca.codes, cw.codes, ca.scale.reshape(-1), cw.scale.reshape(-1))
    assert torch.equal(got, want)
    with pytest.raises(ValueError, match="valid: int, uint, luq"):
        int_quantize_codes(a, 4, "sawb", "auto", [1], pack=True).packed_operand()


def test_int_quantize_kernel_bf16_input_and_given_clip():
    x = _input((19, 23), dtype=torch.bfloat16)
    c = int_quantize_codes(x, 4, "sawb", "signed", [1])
    assert torch.equal(c.dequantize(torch.bfloat16), int_quantize_reference(x, 4, "sawb", "signed", [1]))
    clip = torch.full((19, 1), 0.5)
    c = int_quantize_codes(x.float(), 4, "max", "signed", [1], clip=clip)
    assert torch.equal(c.clip, clip) and c.codes.abs().max() == 7  # clipped to the given range


@pytest.mark.parametrize("shape,dims,transpose", LAYOUTS)
def test_luq_kernel_matches_reference_exactly(shape, dims, transpose):
    g = _make(shape, transpose, seed=2)
    noise = torch.rand(shape, generator=torch.Generator().manual_seed(3))
    c = luq_quantize_codes(g, 4, dims, noise=noise)
    assert (c.codes != POISON).all()
    mags = c.codes.abs().unique().tolist()
    assert set(mags) <= {0, 1, 2, 4, 8, 16, 32, 64} and 64 in mags
    assert torch.equal(c.dequantize(), luq_quantize_reference(g, 4, dims, noise=noise))


def test_luq_kernel_edge_cases_match_reference():
    g = _input((5, 7))
    g[1] = 0.0  # all-zero group: zeros, never NaN
    g[3, 2] = float("nan")  # a NaN group: NaN propagates through α
    noise = torch.rand(5, 7, generator=torch.Generator().manual_seed(4))
    c = luq_quantize_codes(g, 4, [1], noise=noise)
    out, ref = c.dequantize(), luq_quantize_reference(g, 4, [1], noise=noise)
    assert torch.equal(out[1], torch.zeros(7)) and out[3].isnan().all() and ref[3].isnan().any()
    keep = [0, 1, 2, 4]
    assert torch.equal(out[keep], ref[keep])


def test_luq_kernel_philox_is_unbiased_reproducible_and_fresh():
    # 48 distinct magnitudes (from underflow to the top level), each repeated down 256 rows.
    col = torch.cat([torch.tensor([64.0, 48.0, 3.0, 0.3, -0.7, -5.5]), torch.linspace(-60, 60, 42)])
    g = col.repeat(256, 1)
    a = luq_quantize_codes(g, 4, [], seed=1234)
    b = luq_quantize_codes(g, 4, [], seed=1234)
    c = luq_quantize_codes(g, 4, [], seed=1235, offset=0)
    assert torch.equal(a.codes, b.codes) and not torch.equal(a.codes, c.codes)
    q = a.dequantize()
    mean, sd = q.mean(0), q.std(0)
    se = sd / 256**0.5
    z = (mean - col).abs() / se.clamp_min(1e-12)
    assert ((z < 5) | ((mean - col).abs() < 1e-5)).all(), z.max()
    # Codes sit on the LUQ grid and each element is one of its two neighbours.
    x = g.abs() / a.clip
    mag = a.codes.abs().float()
    lower = torch.where(x < 1, torch.zeros_like(x), torch.exp2(torch.floor(torch.log2(x.clamp_min(1)))))
    assert ((mag == lower) | (mag == torch.where(x < 1, torch.ones_like(x), 2 * lower))).all()


def test_philox_key_comes_from_torchs_generator_and_offset_shifts_the_stream():
    """Without an explicit seed the (seed, offset) pair is drawn from torch's generator: the same
    `torch.manual_seed` gives the same codes, the next call fresh ones. The offset is the Philox
    counter of element 0, so offset k reads the stream k elements further on."""
    g = torch.full((1, 300), 30.0)  # |g|/α = 30 rounds to 16 or 32 (p = 7/8): codes show the bits
    g[0, -1] = 64.0  # fixes α = 1
    torch.manual_seed(11)
    a = luq_quantize_codes(g, 4, [])
    b = luq_quantize_codes(g, 4, [])
    torch.manual_seed(11)
    a2 = luq_quantize_codes(g, 4, [])
    assert torch.equal(a.codes, a2.codes) and not torch.equal(a.codes, b.codes)
    assert set(a.codes[0, :-1].tolist()) == {16, 32}
    base = luq_quantize_codes(g, 4, [], seed=5, offset=0).codes[0]
    shifted = luq_quantize_codes(g, 4, [], seed=5, offset=7).codes[0]
    assert torch.equal(shifted[: 300 - 8], base[7:-1])
    torch.manual_seed(11)
    x = torch.linspace(-2.9, 3.1, 64).repeat(8, 1)
    i1 = int_quantize_codes(x, 4, "max", "signed", [], stochastic=True)
    torch.manual_seed(11)
    assert torch.equal(int_quantize_codes(x, 4, "max", "signed", [], stochastic=True).codes, i1.codes)
    assert not torch.equal(int_quantize_codes(x, 4, "max", "signed", [], stochastic=True).codes, i1.codes)


def test_int_kernel_philox_rounds_to_a_neighbour_unbiasedly():
    col = torch.linspace(-2.9, 3.1, 40)
    x = col.repeat(200, 1)
    c = int_quantize_codes(x, 4, "max", "signed", [], stochastic=True, seed=7)
    y = x / (c.clip / c.top)
    assert ((c.codes.float() == torch.floor(y)) | (c.codes.float() == torch.floor(y) + 1)).all()
    q = c.dequantize()
    se = q.std(0) / 200**0.5
    assert (((q.mean(0) - col).abs() < 5 * se) | ((q.mean(0) - col).abs() < 1e-5)).all()


def test_group_reduction_matches_torch_and_propagates_nan():
    x = _input((13, 21))
    for axis, dims in ((0, [1]), (1, [0]), (None, [])):
        amax, amin = group_absmax_min(triton_support.as_2d(x, dims))
        red = [1] if axis == 0 else [0] if axis == 1 else [0, 1]
        assert torch.equal(amax, x.abs().amax(red).reshape(-1)) and torch.equal(amin, x.amin(red).reshape(-1))
    x[4, 6] = float("nan")
    amax, _ = group_absmax_min(triton_support.as_2d(x, [1]))
    assert amax[4].isnan() and not amax[[0, 1, 2, 3, 5]].isnan().any()


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_sawb_moments_in_one_pass_give_the_references_clip(dtype):
    """Σ|x| and Σx² come out of the same read as max|x|, in float64: the sums agree with torch's
    to float64 rounding, and SAWB's clip (`sawb_clip`) equals `int_clip`'s bit for bit, in
    every grouping, over groups longer than one tile (several loop steps) and on a constant
    group (SAWB's estimate is negative there, so max|x| is the clip)."""
    from qcompile.runtime.reference.int_quant import int_clip

    x = _input((37, 301), seed=3, dtype=dtype)
    x[5] = 0.25  # a constant row
    for dims, transpose in (([1], False), ([0], False), ([], False), ([0], True), ([1], True)):
        xv = x.t() if transpose else x
        view = triton_support.as_2d(xv, dims)
        s = group_stats(view, moments=True)
        red = [0, 1] if not dims else dims
        xd = xv.double()
        assert torch.allclose(s.sum_abs, xd.abs().sum(red).reshape(-1), rtol=1e-12, atol=0)
        assert torch.allclose(s.sum_sq, (xd * xd).sum(red).reshape(-1), rtol=1e-12, atol=0)
        ref = int_clip(xv.float(), "sawb", dims).reshape(-1)
        assert torch.equal(triton_int_quantize.sawb_clip(s), ref)
    row_clip = triton_int_quantize.sawb_clip(group_stats(triton_support.as_2d(x, [1]), moments=True))
    assert row_clip[5] == 0.25  # fell back to max|x|


def _codes(shape, lo, hi, seed):
    c = torch.randint(lo, hi + 1, shape, generator=torch.Generator().manual_seed(seed), dtype=torch.int8)
    c.view(-1)[:3] = torch.tensor([hi, lo, 0], dtype=torch.int8)  # extremes present
    return c


@pytest.mark.parametrize("m,n,k", [(37, 29, 45), (1, 17, 5), (33, 3, 70)])
def test_int8_gemm_int32_accumulator_is_exact(m, n, k):
    a, b = _codes((m, k), -64, 64, 0), _codes((k, n), -7, 15, 1)
    out = torch.full((m, n), -(2**31) + 7, dtype=torch.int32)
    got = int8_mm(a, b, out=out)
    assert torch.equal(got, (a.long() @ b.long()).to(torch.int32))


def test_int8_gemm_training_layouts_use_strides_and_exact_epilogue():
    m, n, k = 23, 19, 37
    x, w, dy = _codes((m, k), -7, 7, 2), _codes((n, k), -7, 7, 3), _codes((m, n), -64, 64, 4)
    sx, sw, bias = torch.rand(m) + 0.1, torch.rand(n) + 0.1, torch.randn(n)
    y = forward_gemm(x, w, sx, sw, bias)  # X·Wᵀ with W read through its strides
    assert epilogue_with_bias_matches(y, int8_mm_reference, x, w.t(), sx, sw, bias)
    assert torch.allclose(y.double(), (x.double() * sx[:, None].double()) @ (w.double() * sw[:, None]).t()
                          + bias.double(), rtol=1e-5, atol=1e-5)  # fmt: skip
    s_dy, s_wk = torch.rand(m) + 0.1, torch.full((k,), 0.37)  # per-sample dY, per-tensor W
    dx = dgrad_gemm(dy, w, s_dy, s_wk)
    assert torch.equal(dx, int8_mm_reference(dy, w, s_dy, s_wk))
    s_dyc, s_xk = torch.rand(n) + 0.1, torch.rand(k) + 0.1  # per-channel dY, per-column X
    dw = wgrad_gemm(dy, x, s_dyc, s_xk)  # dYᵀ·X without materialising dYᵀ
    assert dw.shape == (n, k) and torch.equal(dw, int8_mm_reference(dy.t(), x, s_dyc, s_xk))
    assert not dw.isnan().any() and not dx.isnan().any()
    # Per-tensor scales given as one-element tensors (0-d and [1]) broadcast over the axis.
    s_x, s_w = torch.tensor(0.23), torch.tensor([1.7])
    y1 = forward_gemm(x, w, s_x, s_w)
    assert torch.equal(y1, int8_mm_reference(x, w.t(), s_x.expand(m), s_w.expand(n)))


@pytest.mark.parametrize("k_major", [True, False])
def test_int8_gemm_gives_the_same_result_with_operands_copied_k_major(k_major):
    """``k_major=True`` (a GPU's default) copies MN-major operands K-major before the launch,
    ``False`` reads them through their strides: the same numbers bit for bit, in every layout."""
    m, n, k = 21, 19, 37
    x, w, dy = _codes((m, k), -7, 7, 5), _codes((n, k), -7, 7, 6), _codes((m, n), -64, 64, 7)
    sm, sn, sk, bias = torch.rand(m) + 0.1, torch.rand(n) + 0.1, torch.rand(k) + 0.1, torch.randn(n)
    y = forward_gemm(x, w, sm, sn, bias, k_major=k_major)
    assert epilogue_with_bias_matches(y, int8_mm_reference, x, w.t(), sm, sn, bias)
    assert torch.equal(dgrad_gemm(dy, w, sm, sk, k_major=k_major), int8_mm_reference(dy, w, sm, sk))
    dw = wgrad_gemm(dy, x, sn, sk, k_major=k_major)
    assert torch.equal(dw, int8_mm_reference(dy.t(), x, sn, sk))
    assert torch.equal(int8_mm(dy.t(), x, k_major=k_major), int8_mm_reference(dy.t(), x))  # int32


def test_k_major_operands_copies_only_mn_major_operands():
    """Forward's operands (X, and Wᵀ as a view of W) are K-major already and are not copied;
    dgrad's W and both of wgrad's operands are, into K-major storage of the same values."""
    x, w, dy = _codes((8, 12), -7, 7, 8), _codes((5, 12), -7, 7, 9), _codes((8, 5), -64, 64, 10)
    k_major = triton_int8_gemm.k_major_operands
    a, b = k_major(x, w.t())
    assert a.data_ptr() == x.data_ptr() and b.data_ptr() == w.data_ptr()
    for a0, b0 in ((dy, w), (dy.t(), x)):  # dgrad dY·W, wgrad dYᵀ·X
        a, b = k_major(a0, b0)
        assert a.stride(1) == 1 and b.stride(0) == 1
        assert torch.equal(a, a0) and torch.equal(b, b0)
    assert b.data_ptr() != x.data_ptr() and a.data_ptr() != dy.data_ptr()
    one = torch.ones(3, 1, dtype=torch.int8)  # K = 1: every layout is K-major, nothing copied
    assert k_major(one, one.t())[0].data_ptr() == one.data_ptr()


def test_int8_gemm_poisoned_float_output_and_low_precision_cast():
    m, n, k = 21, 35, 18
    a, b = _codes((m, k), -64, 64, 5), _codes((n, k), -7, 7, 6)
    rs, cs = torch.rand(m) + 0.5, torch.rand(n) + 0.5
    out = torch.full((m, n), float("nan"))
    got = int8_mm(a, b.t(), rs, cs, out=out)
    assert torch.equal(got, int8_mm_reference(a, b.t(), rs, cs))
    half = int8_mm(a, b.t(), rs, cs, out_dtype=torch.bfloat16)
    ref = int8_mm_reference(a, b.t(), rs, cs)
    # The interpreter truncates float32 -> bfloat16 (a GPU rounds to nearest): within one bf16 ulp.
    assert half.dtype == torch.bfloat16 and ((half.float() - ref).abs() <= ref.abs() * 2**-7).all()


def test_quantize_then_gemm_equals_the_simulated_product():
    """Kernel codes + int8 GEMM = the float GEMM of the reference's fake-quantized tensors."""
    m, n, k = 17, 13, 40
    x, w = _input((m, k), 7), _input((n, k), 8)
    cx = int_quantize_codes(x, 4, "sawb", "signed", [1])  # per-sample X
    cw = int_quantize_codes(w, 4, "sawb", "signed", [1])  # per-channel W
    y = forward_gemm(cx.codes, cw.codes, cx.scale, cw.scale)
    sim = (
        int_quantize_reference(x, 4, "sawb", "signed", [1]).double()
        @ int_quantize_reference(w, 4, "sawb", "signed", [1]).double().t()
    )
    assert torch.allclose(y.double(), sim, rtol=1e-5, atol=1e-6 * sim.abs().max())


LUQ_CODES = torch.tensor([0, 1, 2, 4, 8, 16, 32, 64, -1, -2, -4, -8, -16, -32, -64])
ENCODING_VALUES = {"int": torch.arange(-7, 8), "uint": torch.arange(0, 16), "luq": LUQ_CODES}


def _sample_codes(encoding, shape, seed):
    vals = ENCODING_VALUES[encoding]
    idx = torch.randint(0, len(vals), shape, generator=torch.Generator().manual_seed(seed))
    c = vals[idx].to(torch.int8)
    c.view(-1)[: len(vals)] = vals.to(torch.int8)[: c.numel()]  # every code present
    return c


@pytest.mark.parametrize("encoding", ["int", "uint", "luq"])
def test_pack_kernel_matches_reference_and_round_trips(encoding):
    c = _sample_codes(encoding, (13, 21), 0)  # odd width: the last byte's high nibble is padding
    poisoned = torch.full((13, 11), 0xAB, dtype=torch.uint8)
    p = pack_codes(c, encoding, out=poisoned)
    assert torch.equal(p.data, pack_reference(c, encoding))
    assert torch.equal(unpack_reference(p.data, 21, encoding), c)
    pt = pack_codes(c.t(), encoding)  # a transposed (strided) input
    assert torch.equal(unpack_reference(pt.data, 13, encoding), c.t())


def test_packed_gemm_reads_nibbles_in_every_training_layout():
    m, n, k = 19, 23, 37
    x, w = _sample_codes("int", (m, k), 1), _sample_codes("int", (n, k), 2)
    dy = _sample_codes("luq", (m, n), 3)
    rs, cs, ck, bias = torch.rand(m) + 0.5, torch.rand(n) + 0.5, torch.rand(k) + 0.5, torch.randn(n)
    px, pw, pdy = pack_codes(x, "int"), pack_codes(w, "int"), pack_codes(dy, "luq")
    poisoned = torch.full((m, n), float("nan"))
    # forward X·Wᵀ: Wᵀ is W packed along K, read through swapped strides
    y = packed_mm(px, pw.t(), rs, cs, bias, out=poisoned)
    assert epilogue_with_bias_matches(y, int8_mm_reference, x, w.t(), rs, cs, bias)
    # dgrad dY·W: the same packed W, now packed along the GEMM's N axis
    assert torch.equal(packed_mm(pdy, pw, rs, ck), int8_mm_reference(dy, w, rs, ck))
    # wgrad dYᵀ·X: dYᵀ packed along its row axis, X packed along N; and a plain int8 operand mixed in
    assert torch.equal(packed_mm(pdy.t(), px, cs, ck), int8_mm_reference(dy.t(), x, cs, ck))
    assert torch.equal(packed_mm(dy.t(), px, cs, ck), int8_mm_reference(dy.t(), x, cs, ck))
