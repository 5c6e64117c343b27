"""Triton reduction pass of the quantizers: per row, per column or per tensor, in one read of ``x``.

* max|x| and min(x): the scale of a max-scaled INT quantizer and of LUQ is ``max|x|`` of its
  group (`scaling_groups.group_amax`); the ``signed="auto"`` grid also needs ``min(x)``. A max
  is independent of the reduction order, so these match the PyTorch reference bit for bit; NaN
  propagates (a group holding NaN reports NaN, as ``torch.amax`` does).
* with ``moments=True`` also ``Σ|x|`` and ``Σx²``, accumulated in float64 as the reference's SAWB
  statistics are (`int_quantize.int_clip`): ``x²`` of a float32 is exact in float64, so only the
  summation order differs from the reference, by far less than the float32 clip's rounding.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.runtime.kernels import triton_support
from qcompile.runtime.kernels.triton_support import QUANTIZE_WARPS, View2d

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - exercised only without the optional extra
    triton = None

if triton is not None:

    @triton.jit
    def _group_stats_kernel(
        x_ptr, amax_ptr, amin_ptr, sabs_ptr, ssq_ptr, G, E, s_g, s_e,
        MOMENTS: tl.constexpr, BLOCK_G: tl.constexpr, BLOCK_E: tl.constexpr,
    ):  # fmt: skip
        """One program reduces BLOCK_G groups (rows of the strided G × E view) over E."""
        pid = tl.program_id(0)
        offs_g = pid * BLOCK_G + tl.arange(0, BLOCK_G)
        g_mask = offs_g < G
        amax = tl.zeros((BLOCK_G,), dtype=tl.float32)
        amin = tl.full((BLOCK_G,), float("inf"), dtype=tl.float32)
        nan_seen = tl.zeros((BLOCK_G,), dtype=tl.int32)
        sabs = tl.zeros((BLOCK_G,), dtype=tl.float64)
        ssq = tl.zeros((BLOCK_G,), dtype=tl.float64)
        for e0 in range(0, E, BLOCK_E):
            offs_e = e0 + tl.arange(0, BLOCK_E)
            mask = g_mask[:, None] & (offs_e < E)[None, :]
            ptrs = x_ptr + offs_g[:, None].to(tl.int64) * s_g + offs_e[None, :].to(tl.int64) * s_e
            v = tl.load(ptrs, mask=mask, other=0.0).to(tl.float32)
            nan_seen = tl.maximum(nan_seen, tl.max((v != v).to(tl.int32), axis=1))
            amax = tl.maximum(amax, tl.max(tl.where(mask, tl.abs(v), 0.0), axis=1))
            amin = tl.minimum(amin, tl.min(tl.where(mask, v, float("inf")), axis=1))
            if MOMENTS:  # masked elements load as 0 and add nothing
                v64 = v.to(tl.float64)
                sabs += tl.sum(tl.abs(v64), axis=1)
                ssq += tl.sum(v64 * v64, axis=1)
        amax = tl.where(nan_seen > 0, float("nan"), amax)
        amin = tl.where(nan_seen > 0, float("nan"), amin)
        tl.store(amax_ptr + offs_g, amax, mask=g_mask)
        tl.store(amin_ptr + offs_g, amin, mask=g_mask)
        if MOMENTS:
            tl.store(sabs_ptr + offs_g, sabs, mask=g_mask)
            tl.store(ssq_ptr + offs_g, ssq, mask=g_mask)


@dataclass(frozen=True)
class GroupStats:
    """Per-group statistics of a `View2d` as vectors (length 1 per tensor): ``amax``/``amin``
    float32; ``sum_abs``/``sum_sq`` float64 (None unless asked for); ``count`` elements per group."""

    amax: torch.Tensor
    amin: torch.Tensor
    sum_abs: torch.Tensor | None
    sum_sq: torch.Tensor | None
    count: int


def group_stats(view: View2d, moments: bool = False) -> GroupStats:
    """max|x|, min x and, with ``moments``, Σ|x| and Σx² per group of ``view``, in one read."""
    x = view.x
    rows, cols = x.shape
    if view.axis == 1:  # per column: the groups run along dim 1
        g, e, s_g, s_e = cols, rows, x.stride(1), x.stride(0)
    else:  # per row, or per tensor as per row followed by a tiny second pass
        g, e, s_g, s_e = rows, cols, x.stride(0), x.stride(1)
    amax = torch.zeros(g, device=x.device, dtype=torch.float32)
    amin = torch.zeros(g, device=x.device, dtype=torch.float32)
    sums = [torch.zeros(g, device=x.device, dtype=torch.float64) for _ in range(2 if moments else 0)]
    if g and e:
        if not triton_support.gpu_tiles(x.device):
            block_g, block_e = 16, 32
        elif s_g < s_e:  # neighbouring groups are nearer in memory: load a wide row of groups
            block_g, block_e = 128, 32
        else:  # a group's elements are the nearer ones: load long runs of them
            block_g, block_e = 16, min(512, triton.next_power_of_2(e))
        sabs, ssq = sums if moments else (amax, amin)  # unused pointers without moments
        _group_stats_kernel[(triton.cdiv(g, block_g),)](
            x, amax, amin, sabs, ssq, g, e, s_g, s_e,
            MOMENTS=moments, BLOCK_G=block_g, BLOCK_E=block_e, num_warps=QUANTIZE_WARPS,
        )  # fmt: skip
    sum_abs, sum_sq = sums if moments else (None, None)
    if view.axis is None:
        # torch.amax propagates NaN like the reference's.
        amax, amin = amax.amax().reshape(1), amin.amin().reshape(1)
        if moments:
            sum_abs, sum_sq = sum_abs.sum().reshape(1), sum_sq.sum().reshape(1)
        return GroupStats(amax, amin, sum_abs, sum_sq, rows * cols)
    return GroupStats(amax, amin, sum_abs, sum_sq, e)


def group_absmax_min(view: View2d) -> tuple[torch.Tensor, torch.Tensor]:
    """(max|x|, min x) per group of a `View2d`, as float32 vectors (length 1 per tensor)."""
    stats = group_stats(view)
    return stats.amax, stats.amin
