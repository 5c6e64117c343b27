"""Triton kernel of the INT quantizer (`int_quantize.int_quantize_reference`): int8 codes + scales.

Same math as the reference (ALGORITHMS.md "Forward quantizers", LUQ paper §4 forward path):
``s = clip / qmax`` (1 for an all-zero group), ``q = clamp(round(x / s), qmin, qmax)``, or
``floor(x / s + u)`` with stochastic rounding. Instead of the dequantized ``q·s`` it writes the
integer codes ``q`` (−7..7 signed, 0..15 unsigned: exact in int8) and the per-group ``clip`` and
``qmax``, so a GEMM can run on the codes and apply ``clip/qmax`` in its epilogue.

The clip comes from one Triton reduction pass over ``x`` (`group_stats`): max|x| (and min x for
the ``auto`` grid), plus ``Σ|x|`` and ``Σx²`` in float64 for SAWB (`sawb_clip`), so a quantizer
reads ``x`` twice in all. max is exact; SAWB's float64 sums differ from the reference's only in
summation order, far below the float32 clip's rounding. A ``clip`` may also be given.

Random bits: ``noise`` (same shape as ``x``, in [0, 1)) is the test hook that makes the kernel
reproduce the reference exactly; without it the kernel draws ``tl.rand`` (Philox) keyed by a
``(seed, offset)`` pair drawn on the device from torch's generator (`philox_key`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch

from . import triton_support
from .int_quantize import SAWB_C1, SAWB_C2
from .triton_reductions import GroupStats, group_stats
from .triton_support import QUANTIZE_WARPS, as_2d, philox_key
from .triton_tiles import tile_grid, tile_of_program

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

SCALE_PER_ROW, SCALE_PER_COL, SCALE_PER_TENSOR = 0, 1, 2

if triton is not None:

    @triton.jit
    def _group_index(offs_r, offs_c, SCALE_AXIS: tl.constexpr):
        if SCALE_AXIS == 0:
            return offs_r[:, None] + 0 * offs_c[None, :]
        elif SCALE_AXIS == 1:
            return 0 * offs_r[:, None] + offs_c[None, :]
        else:
            return 0 * offs_r[:, None] + 0 * offs_c[None, :]

    @triton.jit
    def round_half_even(y):
        """torch.round (ties to even) from exact float steps: ``y - floor(y)`` is exact."""
        f = tl.floor(y)
        d = y - f
        odd = (f - 2.0 * tl.floor(f * 0.5)) != 0.0
        up = (d > 0.5) | ((d == 0.5) & odd)
        return tl.where(up, f + 1.0, f)

    @triton.jit
    def _int_quantize_kernel(
        x_ptr, codes_ptr, scale_ptr, lo_ptr, hi_ptr, noise_ptr, key_ptr,
        R, C, s_r, s_c, n_r, n_c,
        SCALE_AXIS: tl.constexpr, STOCHASTIC: tl.constexpr, USE_NOISE: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        pid_r, pid_c = tile_of_program(C, BLOCK_C)
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (offs_r < R)[:, None] & (offs_c < C)[None, :]
        r64 = offs_r[:, None].to(tl.int64)
        c64 = offs_c[None, :].to(tl.int64)
        x = tl.load(x_ptr + r64 * s_r + c64 * s_c, mask=mask, other=0.0).to(tl.float32)
        gi = _group_index(offs_r, offs_c, SCALE_AXIS)
        scale = tl.load(scale_ptr + gi, mask=mask, other=1.0)
        lo = tl.load(lo_ptr + gi, mask=mask, other=0.0)
        hi = tl.load(hi_ptr + gi, mask=mask, other=0.0)
        y = tl.math.div_rn(x, scale)
        if STOCHASTIC:
            if USE_NOISE:
                u = tl.load(noise_ptr + r64 * n_r + c64 * n_c, mask=mask, other=0.0).to(tl.float32)
            else:
                seed = tl.load(key_ptr)
                u = tl.rand(seed, (r64 * C + c64 + tl.load(key_ptr + 1)).to(tl.int32))
            q = tl.floor(y + u)
        else:
            q = round_half_even(y)
        q = tl.minimum(tl.maximum(q, lo), hi)
        q = tl.where(q != q, 0.0, q)  # NaN input: code 0 (its group's NaN scale carries the NaN)
        tl.store(codes_ptr + r64 * C + c64, q.to(tl.int8), mask=mask)


@dataclass(frozen=True)
class Codes:
    """Integer codes of a quantized tensor and its scales, dequantized as ``codes / top * clip``
    (exactly the reference's value). ``clip`` and ``top`` have the group's keepdim shape."""

    codes: torch.Tensor
    clip: torch.Tensor
    top: torch.Tensor

    @property
    def scale(self) -> torch.Tensor:
        """``clip / top``: the factor a GEMM epilogue applies per group."""
        return self.clip / self.top

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.codes.float() / self.top * self.clip).to(dtype)


def sawb_clip(stats: GroupStats) -> torch.Tensor:
    """SAWB's clip from a group's float64 moments, as `int_quantize.int_clip` computes it
    (ALGORITHMS.md, INT4 SAWB step 1: ``c1·sqrt(E[x²]) − c2·E|x|``, max|x| where that is <= 0
    or above max|x|)."""
    n = float(max(stats.count, 1))
    sawb = (SAWB_C1 * (stats.sum_sq / n).sqrt() - SAWB_C2 * (stats.sum_abs / n)).float()
    return torch.where((sawb <= 0) | (sawb > stats.amax), stats.amax, sawb)


def _launch_quantize(view, scale, lo, hi, noise, stochastic: bool, key: torch.Tensor | None) -> torch.Tensor:
    x = view.x
    rows, cols = x.shape
    codes = triton_support.alloc_codes(rows, cols, x.device)
    if rows * cols == 0:
        return codes
    axis = {0: SCALE_PER_ROW, 1: SCALE_PER_COL, None: SCALE_PER_TENSOR}[view.axis]
    use_noise = noise is not None
    n2 = noise if use_noise else x
    block_r, block_c = (32, 128) if triton_support.gpu_tiles(x.device) else (16, 32)
    grid = tile_grid(rows, cols, block_r, block_c)
    _int_quantize_kernel[grid](
        x, codes, scale, lo, hi, n2, scale if key is None else key,
        rows, cols, x.stride(0), x.stride(1), n2.stride(0), n2.stride(1),
        SCALE_AXIS=axis, STOCHASTIC=stochastic, USE_NOISE=use_noise, BLOCK_R=block_r, BLOCK_C=block_c,
        num_warps=QUANTIZE_WARPS,
    )  # fmt: skip
    return codes


def _noise_2d(noise: torch.Tensor | None, x: torch.Tensor, reduce_dims: Sequence[int]) -> torch.Tensor | None:
    if noise is None:
        return None
    return as_2d(noise.float(), reduce_dims).x


def int_quantize_codes(
    x: torch.Tensor,
    bits: int = 4,
    scaling: str = "sawb",
    signed: str = "signed",
    reduce_dims: Sequence[int] = (),
    stochastic: bool = False,
    noise: torch.Tensor | None = None,
    clip: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
) -> Codes:
    """INT quantization of ``x`` to int8 codes with the Triton kernel (CUDA, or CPU under
    ``TRITON_INTERPRET=1``). ``Codes.dequantize()`` equals `int_quantize_reference` bit for bit
    given the same ``noise``; with ``noise=None`` stochastic rounding draws Philox bits keyed by
    ``seed`` and ``offset`` (by default both drawn from torch's generator, `philox_key`).
    ``clip`` (group keepdim shape) overrides the computed clip. ``bits`` <= 7 so the codes fit int8."""
    if bits > 7:
        raise ValueError(f"int_quantize_codes: codes must fit int8, got bits={bits} (valid: 1..7)")
    if scaling not in ("max", "sawb"):
        raise ValueError(f"int_quantize_codes: unknown scaling {scaling!r}; valid: max, sawb")
    view = as_2d(x, reduce_dims)
    stats = None
    if clip is None or signed == "auto":
        stats = group_stats(view, moments=clip is None and scaling == "sawb")
    if clip is not None:
        clip_vec = clip.float().reshape(-1)
    elif scaling == "max":
        clip_vec = stats.amax
    else:
        clip_vec = sawb_clip(stats)
    if signed == "auto":
        unsigned = stats.amin >= 0
        hi = torch.where(unsigned, float(2**bits - 1), float(2 ** (bits - 1) - 1))
        lo = torch.where(unsigned, 0.0, -hi)
    else:
        top = 2 ** (bits - 1) - 1 if signed == "signed" else 2**bits - 1
        hi = torch.full_like(clip_vec, float(top))
        lo = torch.zeros_like(hi) if signed == "unsigned" else -hi
    hi = hi.expand_as(clip_vec).contiguous()
    lo = lo.expand_as(clip_vec).contiguous()
    scale = clip_vec / hi
    scale = torch.where(scale == 0, torch.ones_like(scale), scale).contiguous()
    key = philox_key(x.device, seed, offset) if stochastic and noise is None else None
    codes = _launch_quantize(view, scale, lo, hi, _noise_2d(noise, x, reduce_dims), stochastic, key)
    return Codes(view.back(codes), clip_vec.reshape(view.group_shape), hi.reshape(view.group_shape))
