"""Triton FP8 GEMM: FP8 operands on the tensor cores, FP32 accumulation, the scales in the epilogue.

FP8 with one FP32 scale per row (or per tensor) along the contraction (`fp8_codes_reference`:
torchao's float8 rowwise/tensorwise recipes, the ``fp8-rowwise`` preset) gives
``Q(A)·Q(B) = diag(sa) · (codes_A · codes_B) · diag(sb)``: the scales leave the sum, so the
product of the FP8 codes runs as one ``tl.dot`` on the tensor cores (FP8 ones from compute
capability 8.9, Ada and Hopper, or FP16 ones on the widened codes: see Accumulation) and the epilogue computes ``(acc · sa[m]) · sb[n] (+ bias[n])`` in FP32 and casts to the
output dtype, as `triton_int8_gemm` does for int8 codes. A and B may each be E4M3 or E5M2
(``tl.dot`` takes any pair; the tensor cores have mixed E4M3 × E5M2 instructions).

Accumulation. Products of FP8 values are exact in FP32 (at most 8 significant bits), but their
sums are rounded, unlike the int8 path's integers. On Hopper, ``wgmma`` adds FP8 products in a
reduced-precision accumulator unless the partial sums are moved into FP32 regularly; Triton's
sm_90 default never does. ``max_num_imprecise_acc=0`` (the default here) asks for exact FP32
sums; Triton 3.9 then builds the dot for sm_90 as FP16 MMAs on the FP8 values widened in
registers (exact: FP16 holds every FP8 value), not FP8 ``wgmma``. Measured on an H200: exact, but
0.39-0.62x BF16 ``torch.mm``; Triton's default runs FP8 ``wgmma`` at 1.68x BF16 with a median
relative error of 3e-4 to 1.4e-3 (docs/kernels.md, `benchmarks/gpu_fp8_gemm.py`).

Transposes are never materialised: A and B are read through their strides, so the forward
``X·Wᵀ``, dgrad ``dY·W`` and wgrad ``dYᵀ·X`` are three stride patterns of one kernel.
Reference: `fp8_mm_reference` (the float64 product of the same FP8 values, then the epilogue).
"""

from __future__ import annotations

import torch

from qcompile.runtime.kernels import triton_support
from qcompile.runtime.kernels.triton_int8_gemm import gemm_autotune_configs, prepare_scaled_gemm, vector_of

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

FP8_DTYPES = (torch.float8_e4m3fn, torch.float8_e5m2)


def fp8_mm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The kernel's math in PyTorch: the product of the FP8 values in float64 (exact while the
    sums' exponent span fits 53 bits: every product has at most 8 significant bits), rounded
    once to FP32, then the epilogue in the kernel's order. Without scales, the FP32 product."""
    acc = (a.double() @ b.double()).float()
    if row_scale is None:
        return acc
    m, n = acc.shape
    out = acc * vector_of(row_scale, m)[:, None] * vector_of(col_scale, n)[None, :]
    if bias is not None:
        out = out + bias.float()[None, :]
    return out.to(out_dtype)


if triton is not None:

    @triton.jit
    def _fp8_mm_kernel(
        a_ptr, b_ptr, c_ptr, rs_ptr, cs_ptr, bias_ptr,
        M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
        HAS_SCALES: tl.constexpr, HAS_BIAS: tl.constexpr, IMPRECISE_ACC: tl.constexpr,
        BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr, GROUP_M: tl.constexpr,
    ):  # fmt: skip
        pid = tl.program_id(0)
        grid_m = tl.cdiv(M, BLOCK_M)
        grid_n = tl.cdiv(N, BLOCK_N)
        # Grouped launch order: GROUP_M row-blocks share the B tiles they read (L2 reuse).
        width = GROUP_M * grid_n
        group_id = pid // width
        first_m = group_id * GROUP_M
        group_size = tl.minimum(grid_m - first_m, GROUP_M)
        pid_m = first_m + (pid % width) % group_size
        pid_n = (pid % width) // group_size
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        offs_k = tl.arange(0, BLOCK_K)
        a_ptrs = a_ptr + offs_m[:, None].to(tl.int64) * s_am + offs_k[None, :] * s_ak
        b_ptrs = b_ptr + offs_k[:, None] * s_bk + offs_n[None, :].to(tl.int64) * s_bn
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + offs_k) < K
            # Masked elements load as +0.0 in either FP8 format (bits 0x00).
            a = tl.load(a_ptrs, mask=(offs_m < M)[:, None] & k_ok[None, :], other=0.0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & (offs_n < N)[None, :], other=0.0)
            # IMPRECISE_ACC = 0: every wgmma's partial sum goes into the FP32 accumulator (see the
            # module docstring).
            acc = tl.dot(a, b, acc, out_dtype=tl.float32, max_num_imprecise_acc=IMPRECISE_ACC)
            a_ptrs += BLOCK_K * s_ak
            b_ptrs += BLOCK_K * s_bk
        c_mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * s_cm + offs_n[None, :].to(tl.int64) * s_cn
        if HAS_SCALES:
            rs = tl.load(rs_ptr + offs_m, mask=offs_m < M, other=0.0)
            cs = tl.load(cs_ptr + offs_n, mask=offs_n < N, other=0.0)
            out = acc * rs[:, None] * cs[None, :]
            if HAS_BIAS:
                out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
            tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=c_mask)
        else:
            tl.store(c_ptrs, acc, mask=c_mask)

    # The int8 GEMM's tiles (FP8 operands take the same bytes; every BLOCK_K is a multiple of the
    # 32 an FP8 wgmma contracts) less those that spill on sm_90 in the exact-accumulation build
    # (`benchmarks/gpu_compile_report.py`: 128x256 and 256x128 in every layout, 16-232 bytes;
    # 128x128x64 in dgrad, 16 bytes).
    _SPILLING_TILES = {(128, 256, 128), (256, 128, 128), (128, 128, 64)}
    _fp8_mm_autotuned = triton.autotune(
        configs=[
            c
            for c in gemm_autotune_configs()
            if (c.kwargs["BLOCK_M"], c.kwargs["BLOCK_N"], c.kwargs["BLOCK_K"]) not in _SPILLING_TILES
        ],
        key=["M", "N", "K", "s_am", "s_ak", "s_bk", "s_bn", "HAS_BIAS", "IMPRECISE_ACC"],
    )(_fp8_mm_kernel)


def fp8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    max_num_imprecise_acc: int | None = 0,
    k_major: bool | None = None,
) -> torch.Tensor:
    """``C[M,N] = diag(row_scale) · (A[M,K] · B[K,N]) · diag(col_scale) (+ bias)`` on FP8 codes
    (E4M3 or E5M2, each operand either) of any strides, FP32 accumulation. Scales are per row of
    A / column of B, or one element (per tensor). Without scales: the FP32 product itself.
    ``out`` may be given (tests poison it to catch unwritten elements). ``max_num_imprecise_acc``
    is ``tl.dot``'s: how many products Hopper's tensor cores may add in their reduced-precision
    accumulator before the sum moves to FP32 (0, the default: every instruction's; larger values
    trade accuracy for speed, measured by `benchmarks/gpu_fp8_gemm.py`; at most the tile's
    BLOCK_K, 64; None: Triton's default, which on sm_90 never moves them). ``k_major``: copy
    MN-major operands K-major before the launch (`prepare_scaled_gemm`; default: on a GPU)."""
    if a.dtype not in FP8_DTYPES or b.dtype not in FP8_DTYPES:
        raise TypeError(f"fp8_mm takes float8_e4m3fn / float8_e5m2 codes, got {a.dtype} and {b.dtype}")
    launch = prepare_scaled_gemm(
        "fp8_mm", a, b, row_scale, col_scale, bias, out_dtype, out, torch.float32, fp8_mm_reference, k_major
    )
    if launch.args is None:
        return launch.c
    m, n = launch.c.shape
    flags = {
        "HAS_SCALES": launch.has_scales,
        "HAS_BIAS": bias is not None,
        "IMPRECISE_ACC": max_num_imprecise_acc,
    }
    if not triton_support.gpu_tiles(a.device):
        bm, bn, bk = 16, 16, 32
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
        _fp8_mm_kernel[grid](*launch.args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=4)
    else:

        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

        _fp8_mm_autotuned[grid](*launch.args, **flags)
    return launch.c
