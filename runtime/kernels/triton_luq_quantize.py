"""Triton kernel of LUQ (`luq_quantize.luq_quantize_reference`): int8 codes ``sign·2^k`` + α.

LUQ, Chmiel et al. ICLR 2023, Eq. 10 (stochastic underflow) and Eq. 12 (logarithmic stochastic
rounding) with ``α = max|g| / 2^(levels-1)``: with ``x = |g|/α`` the output is ``α`` with
probability ``x`` below 1, else ``f·α`` or ``2f·α`` (``f = 2^⌊log2 x⌋``) with probability
``(x - f)/f`` of rounding up. The codes ``sign·q``, ``q ∈ {0, 1, 2, ..., 64}`` for 4 bits, are
exact in int8; ``code · α`` is exactly the reference's value. One uniform ``u`` per element.

``noise`` (shape of ``g``, in [0, 1)) is the test hook that reproduces the reference bit for bit;
without it the kernel draws ``tl.rand`` (Philox) at counter ``offset + flat index`` under
``seed``, the pair drawn on the device from torch's generator (`philox_key`) unless given.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from qcompile.runtime.kernels import triton_support
from qcompile.runtime.kernels.triton_int_quantize import (
    SCALE_PER_COL,
    SCALE_PER_ROW,
    SCALE_PER_TENSOR,
    Codes,
    alloc_packed,
    group_index,
    packed_of,
    packs_in_kernel,
)
from qcompile.runtime.kernels.triton_reductions import group_absmax_min
from qcompile.runtime.kernels.triton_support import QUANTIZE_WARPS, as_2d, philox_key
from qcompile.runtime.kernels.triton_tiles import tile_grid, tile_of_program
from qcompile.runtime.reference.luq import luq_levels
from qcompile.runtime.reference.packing import packed_size

try:
    import triton
    import triton.language as tl

    from qcompile.runtime.kernels.triton_pack_int4 import store_packed_tile
except ImportError:  # pragma: no cover
    triton = None

if triton is not None:

    @triton.jit
    def _luq_quantize_kernel(
        g_ptr, codes_ptr, packed_ptr, alpha_ptr, noise_ptr, key_ptr,
        R, C, P, s_r, s_c, n_r, n_c,
        SCALE_AXIS: tl.constexpr, USE_NOISE: tl.constexpr, PACK: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        pid_r, pid_c = tile_of_program(C, BLOCK_C)
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (offs_r < R)[:, None] & (offs_c < C)[None, :]
        r64 = offs_r[:, None].to(tl.int64)
        c64 = offs_c[None, :].to(tl.int64)
        g = tl.load(g_ptr + r64 * s_r + c64 * s_c, mask=mask, other=0.0).to(tl.float32)
        alpha = tl.load(alpha_ptr + group_index(offs_r, offs_c, SCALE_AXIS), mask=mask, other=1.0)
        x = tl.math.div_rn(tl.abs(g), alpha)
        if USE_NOISE:
            u = tl.load(noise_ptr + r64 * n_r + c64 * n_c, mask=mask, other=0.0).to(tl.float32)
        else:
            seed = tl.load(key_ptr)
            u = tl.rand(seed, (r64 * C + c64 + tl.load(key_ptr + 1)).to(tl.int32))
        # f = 2^floor(log2 x) for x >= 1: keep only the exponent bits of the float (as the reference).
        f = (tl.maximum(x, 1.0).to(tl.int32, bitcast=True) & 0x7F800000).to(tl.float32, bitcast=True)
        log_rounded = tl.where(u * f < x - f, 2.0 * f, f)
        underflow = (u < x).to(tl.float32)
        q = tl.where(x < 1.0, underflow, log_rounded)
        q = tl.where(x != x, 0.0, q)  # non-finite group: code 0, its NaN α carries the NaN
        code = tl.where(g > 0, q, tl.where(g < 0, -q, 0.0))
        tl.store(codes_ptr + r64 * C + c64, code.to(tl.int8), mask=mask)
        if PACK:  # LUQ's 4-bit code: sign + exponent index (`triton_pack_int4`, "luq")
            store_packed_tile(packed_ptr, code.to(tl.int32), offs_r, pid_c, R, P, 2, BLOCK_R, BLOCK_C)


def luq_quantize_codes(
    g: torch.Tensor,
    bits: int = 4,
    reduce_dims: Sequence[int] = (),
    noise: torch.Tensor | None = None,
    seed: int | None = None,
    offset: int = 0,
    pack: bool = False,
) -> Codes:
    """LUQ of ``g`` to int8 codes with the Triton kernel (CUDA, or CPU under
    ``TRITON_INTERPRET=1``). ``Codes.dequantize()`` equals `luq_quantize_reference` bit for bit
    given the same ``noise`` (``top`` is 1, ``clip`` is α); otherwise Philox bits keyed by
    ``seed`` and ``offset`` (by default both drawn from torch's generator, `philox_key`).
    ``bits`` <= 4 so ``2^(levels-1)`` fits int8. ``pack=True`` (4 bits) also returns the codes
    packed two per byte in LUQ's sign + exponent encoding (`Codes.packed`)."""
    if pack and bits != 4:
        raise ValueError(f"luq_quantize_codes: pack=True packs 4-bit codes, got bits={bits} (valid: 4)")
    if bits > 4:
        raise ValueError(
            f"luq_quantize_codes: codes 2^(2^(bits-1)-2) must fit int8, got bits={bits} (valid: 2..4)"
        )
    view = as_2d(g, reduce_dims)
    amax, _ = group_absmax_min(view)
    alpha = amax / float(2 ** (luq_levels(bits) - 1))
    alpha = torch.where(alpha == 0, torch.ones_like(alpha), alpha).contiguous()
    rows, cols = view.x.shape
    codes = triton_support.alloc_codes(rows, cols, g.device)
    in_kernel = pack and packs_in_kernel(g, reduce_dims, view)
    packed = alloc_packed(rows, cols, g.device) if in_kernel else None
    if rows * cols:
        n2 = as_2d(noise.float(), reduce_dims).x if noise is not None else view.x
        key = philox_key(g.device, seed, offset) if noise is None else alpha  # alpha: unused pointer
        block_r, block_c = (32, 128) if triton_support.gpu_tiles(g.device) else (16, 32)
        grid = tile_grid(rows, cols, block_r, block_c)
        axis = {0: SCALE_PER_ROW, 1: SCALE_PER_COL, None: SCALE_PER_TENSOR}[view.axis]
        _luq_quantize_kernel[grid](
            view.x, codes, codes if packed is None else packed, alpha, n2, key,
            rows, cols, packed_size(cols, 2), view.x.stride(0), view.x.stride(1), n2.stride(0), n2.stride(1),
            SCALE_AXIS=axis, USE_NOISE=noise is not None, PACK=in_kernel, BLOCK_R=block_r, BLOCK_C=block_c,
            num_warps=QUANTIZE_WARPS,
        )  # fmt: skip
    shape = view.group_shape
    codes = view.back(codes)
    return Codes(
        codes,
        alpha.reshape(shape),
        torch.ones_like(alpha).reshape(shape),
        packed_of(codes, packed, g, "luq") if pack else None,
        "luq" if pack else None,
    )
