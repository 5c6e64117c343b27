"""Triton int8 GEMM with int32 accumulation and the quantizers' scales in the epilogue.

INT4 forward codes (−7..7, 0..15) and LUQ gradient codes (``sign·2^k``, ``|code| <= 64``) are
exact in int8, so ``Q(A)·Q(B) = diag(sa) · (codes_A · codes_B) · diag(sb)`` is computed exactly
on int8 tensor cores when each operand's scale lives on the axis its GEMM does not contract
(the SCQ split: per-sample dY for dgrad, per-channel dY for wgrad). The epilogue computes
``(acc · sa[m]) · sb[n] (+ bias[n])`` in float32 and casts to the output dtype.

The three training GEMMs differ only in strides, so transposes are never materialised:
    forward  Y  = X · Wᵀ   `forward_gemm`  (A = X [M,K],  B = Wᵀ: W [N,K] read column-wise)
    dgrad    dX = dY · W   `dgrad_gemm`    (A = dY [M,N], B = W [N,K])
    wgrad    dW = dYᵀ · X  `wgrad_gemm`    (A = dYᵀ: dY [M,N] read column-wise, B = X [M,K])
Reference: `int8_mm_reference`.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from qcompile.runtime.kernels import triton_support

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None


def int8_mm_reference(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """The kernel's math in PyTorch: the exact integer product (int64), then the epilogue in the
    kernel's order. Without scales it returns the int32 accumulator."""
    acc = (a.long() @ b.long()).to(torch.int32)
    if row_scale is None:
        return acc
    out = acc.float() * row_scale.float()[:, None] * col_scale.float()[None, :]
    if bias is not None:
        out = out + bias.float()[None, :]
    return out.to(out_dtype)


if triton is not None:

    def gemm_autotune_configs() -> list:
        """The GEMMs' autotuning list (BLOCK_M, BLOCK_N, BLOCK_K, stages, warps), checked for
        spills and shared memory on sm_90 by `benchmarks/gpu_compile_report.py`."""
        cfg = []
        for bm, bn, bk, stages, warps in [
            (128, 256, 128, 3, 8), (256, 128, 128, 3, 8), (128, 128, 128, 4, 8), (128, 128, 64, 4, 4),
            (128, 64, 128, 4, 4), (64, 128, 128, 4, 4), (64, 64, 64, 4, 4), (32, 64, 64, 4, 4),
        ]:  # fmt: skip
            cfg.append(
                triton.Config(
                    {"BLOCK_M": bm, "BLOCK_N": bn, "BLOCK_K": bk, "GROUP_M": 8},
                    num_stages=stages,
                    num_warps=warps,
                )  # fmt: skip
            )
        return cfg

    @triton.jit
    def _int8_mm_kernel(
        a_ptr, b_ptr, c_ptr, rs_ptr, cs_ptr, bias_ptr,
        M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
        HAS_SCALES: tl.constexpr, HAS_BIAS: tl.constexpr,
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
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            k_ok = (k0 + offs_k) < K
            a = tl.load(a_ptrs, mask=(offs_m < M)[:, None] & k_ok[None, :], other=0)
            b = tl.load(b_ptrs, mask=k_ok[:, None] & (offs_n < N)[None, :], other=0)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
            a_ptrs += BLOCK_K * s_ak
            b_ptrs += BLOCK_K * s_bk
        c_mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * s_cm + offs_n[None, :].to(tl.int64) * s_cn
        if HAS_SCALES:
            rs = tl.load(rs_ptr + offs_m, mask=offs_m < M, other=0.0)
            cs = tl.load(cs_ptr + offs_n, mask=offs_n < N, other=0.0)
            out = acc.to(tl.float32) * rs[:, None] * cs[None, :]
            if HAS_BIAS:
                out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
            tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=c_mask)
        else:
            tl.store(c_ptrs, acc, mask=c_mask)

    # Strides in the key: the forward, dgrad and wgrad layouts of one shape tune separately.
    _int8_mm_autotuned = triton.autotune(
        configs=gemm_autotune_configs(), key=["M", "N", "K", "s_am", "s_ak", "s_bk", "s_bn", "HAS_BIAS"]
    )(_int8_mm_kernel)


def vector_of(s: torch.Tensor | None, n: int) -> torch.Tensor | None:
    """A float32 contiguous length-``n`` scale (a per-tensor scale broadcasts)."""
    if s is None:
        return None
    return (
        s.float().reshape(-1).expand(n).contiguous() if s.numel() == 1 else s.float().reshape(n).contiguous()
    )


@dataclass(frozen=True)
class GemmLaunch:
    """What `prepare_scaled_gemm` leaves a launcher: the output, and the kernel's arguments (None
    when the output is already complete: an empty GEMM, or K = 0 computed by the reference)."""

    c: torch.Tensor
    args: tuple | None
    has_scales: bool


def k_major_operands(a: torch.Tensor, b: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``A[M,K]`` and ``B[K,N]`` with K the contiguous axis of both, copied only where it is not.

    Why: Hopper's warpgroup MMA reads 8-bit operands from shared memory K-major only (MN-major,
    "transposed", operands are a 16-bit feature; cuBLASLt's TN-only rule for FP8 is the same
    limit). Read through MN-major strides, the backward layouts ran at 0.37–0.42× (dgrad, W read
    along its rows) and 0.14–0.15× (wgrad, both operands) of BF16 on an H200, against 1.39–1.55×
    for the K-major forward; a copy of 1-byte codes costs a small fraction of such a GEMM."""
    if a.stride(1) != 1 and a.shape[1] > 1:
        a = a.contiguous()
    if b.stride(0) != 1 and b.shape[0] > 1:
        b = b.t().contiguous().t()
    return a, b


def prepare_scaled_gemm(
    name: str,
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None,
    col_scale: torch.Tensor | None,
    bias: torch.Tensor | None,
    out_dtype: torch.dtype,
    out: torch.Tensor | None,
    acc_dtype: torch.dtype,
    reference: Callable[..., torch.Tensor],
    k_major: bool | None = None,
) -> GemmLaunch:
    """The checks, output and argument list the int8 and FP8 GEMM kernels share (same signature,
    same epilogue): shapes that multiply, both scales or none (a bias only with scales), the output
    in ``out_dtype`` (``acc_dtype`` without scales), per-tensor scales broadcast to vectors, and
    the operands made K-major first (`k_major_operands`) when ``k_major`` is true; ``None``
    means on a GPU (`triton_support.gpu_tiles`), not under the interpreter, where strides cost
    nothing."""
    if a.ndim != 2 or b.ndim != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"{name}: shapes {tuple(a.shape)} and {tuple(b.shape)} do not multiply")
    if (row_scale is None) != (col_scale is None) or (bias is not None and row_scale is None):
        raise ValueError(f"{name}: give both scales (and a bias only with scales), or none")
    m, k = a.shape
    n = b.shape[1]
    has_scales = row_scale is not None
    dtype = out_dtype if has_scales else acc_dtype
    c = torch.empty((m, n), device=a.device, dtype=dtype) if out is None else out
    if m == 0 or n == 0:
        return GemmLaunch(c, None, has_scales)
    if k == 0:
        return GemmLaunch(c.copy_(reference(a, b, row_scale, col_scale, bias, dtype)), None, has_scales)
    copy_k_major = triton_support.gpu_tiles(a.device) if k_major is None else k_major
    if copy_k_major:
        a, b = k_major_operands(a, b)
    rs, cs = vector_of(row_scale, m), vector_of(col_scale, n)
    bias_v = bias.reshape(n).contiguous() if bias is not None else None
    dummy = c
    args = (
        a, b, c, rs if has_scales else dummy, cs if has_scales else dummy, bias_v if bias_v is not None else dummy,
        m, n, k, a.stride(0), a.stride(1), b.stride(0), b.stride(1), c.stride(0), c.stride(1),
    )  # fmt: skip
    return GemmLaunch(c, args, has_scales)


def int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor | None = None,
    col_scale: torch.Tensor | None = None,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
    k_major: bool | None = None,
) -> torch.Tensor:
    """``C[M,N] = diag(row_scale) · (A[M,K] · B[K,N]) · diag(col_scale) (+ bias)`` on int8 codes of
    any strides (int32 accumulation). Without scales: the int32 product itself. ``out`` may be
    given (tests poison it to catch unwritten elements). ``k_major``: copy MN-major operands
    K-major before the launch (`prepare_scaled_gemm`; default: on a GPU); False reads them
    through their strides."""
    if a.dtype != torch.int8 or b.dtype != torch.int8:
        raise TypeError(f"int8_mm takes int8 codes, got {a.dtype} and {b.dtype}")
    launch = prepare_scaled_gemm(
        "int8_mm", a, b, row_scale, col_scale, bias, out_dtype, out, torch.int32, int8_mm_reference, k_major
    )
    if launch.args is None:
        return launch.c
    m, n = launch.c.shape
    flags = {"HAS_SCALES": launch.has_scales, "HAS_BIAS": bias is not None}
    if not triton_support.gpu_tiles(a.device):
        bm, bn, bk = 16, 16, 16
        grid = (triton.cdiv(m, bm) * triton.cdiv(n, bn),)
        _int8_mm_kernel[grid](*launch.args, **flags, BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, GROUP_M=4)
    else:

        def grid(meta):
            return (triton.cdiv(m, meta["BLOCK_M"]) * triton.cdiv(n, meta["BLOCK_N"]),)

        _int8_mm_autotuned[grid](*launch.args, **flags)
    return launch.c


def forward_gemm(x, w, x_scale, w_scale, bias=None, out_dtype=torch.float32, k_major=None):
    """``Y = X·Wᵀ`` from X codes [M,K] (per-row or per-tensor scale) and W codes [N,K] (per-output-
    channel or per-tensor scale); Wᵀ is read through its strides (already K-major)."""
    return int8_mm(x, w.t(), x_scale, w_scale, bias, out_dtype, k_major=k_major)


def dgrad_gemm(dy, w, dy_scale, w_scale, out_dtype=torch.float32, k_major=None):
    """``dX = dY·W`` from dY codes [M,N] (per-sample scale) and W codes [N,K] (per-tensor scale,
    or per-input-channel: the axis dgrad does not contract). W is MN-major here: on a GPU it is
    copied K-major first unless ``k_major=False``."""
    return int8_mm(dy, w, dy_scale, w_scale, None, out_dtype, k_major=k_major)


def wgrad_gemm(dy, x, dy_scale, x_scale, out_dtype=torch.float32, k_major=None):
    """``dW = dYᵀ·X`` from dY codes [M,N] (per-channel scale: length N) and X codes [M,K]
    (per-tensor, or per-column scale of length K); dYᵀ is a strided view. Both operands are
    MN-major here: on a GPU they are copied K-major first unless ``k_major=False``."""
    return int8_mm(dy.t(), x, dy_scale, x_scale, None, out_dtype, k_major=k_major)
