"""Triton kernel of the INT quantizer (`int_quantize.int_quantize_reference`): int8 codes + scales.

Same math as the reference (docs/algorithms.md "Forward quantizers", LUQ paper §4 forward path):
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

from qcompile.runtime.kernels import triton_support
from qcompile.runtime.kernels.triton_pack_int4 import Packed
from qcompile.runtime.kernels.triton_reductions import GroupStats, group_stats
from qcompile.runtime.kernels.triton_support import QUANTIZE_WARPS, View2d, as_2d, philox_key
from qcompile.runtime.kernels.triton_tiles import tile_grid, tile_of_program
from qcompile.runtime.reference.int_quant import sawb_clip_from_moments
from qcompile.runtime.reference.packing import BLOCK_BYTES, packed_size
from qcompile.runtime.reference.scaling_groups import normalize_dims

try:
    import triton
    import triton.language as tl

    from qcompile.runtime.kernels.triton_pack_int4 import store_packed_tile
except ImportError:  # pragma: no cover
    triton = None

SCALE_PER_ROW, SCALE_PER_COL, SCALE_PER_TENSOR = 0, 1, 2

if triton is not None:

    @triton.jit
    def group_index(offs_r, offs_c, SCALE_AXIS: tl.constexpr):
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
        x_ptr, codes_ptr, packed_ptr, scale_ptr, lo_ptr, hi_ptr, noise_ptr, key_ptr,
        R, C, P, s_r, s_c, n_r, n_c,
        SCALE_AXIS: tl.constexpr, STOCHASTIC: tl.constexpr, USE_NOISE: tl.constexpr, PACK: tl.constexpr,
        BLOCK_R: tl.constexpr, BLOCK_C: tl.constexpr,
    ):  # fmt: skip
        pid_r, pid_c = tile_of_program(C, BLOCK_C)
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_c = pid_c * BLOCK_C + tl.arange(0, BLOCK_C)
        mask = (offs_r < R)[:, None] & (offs_c < C)[None, :]
        r64 = offs_r[:, None].to(tl.int64)
        c64 = offs_c[None, :].to(tl.int64)
        x = tl.load(x_ptr + r64 * s_r + c64 * s_c, mask=mask, other=0.0).to(tl.float32)
        gi = group_index(offs_r, offs_c, SCALE_AXIS)
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
        if PACK:  # nibble = code & 0xF, the saved format (`packing.pack_int4`) for every grid
            store_packed_tile(packed_ptr, q.to(tl.int32), offs_r, pid_c, R, P, 0, BLOCK_R, BLOCK_C)


@dataclass(frozen=True)
class Codes:
    """Integer codes of a quantized tensor and its scales, dequantized as ``codes / top * clip``
    (exactly the reference's value). ``clip`` and ``top`` have the group's keepdim shape.

    With ``pack=True`` the quantizer also returns ``packed``: the codes two per byte along the
    last dimension (uint8 ``[..., packed_size(last, 2)]``, `packing.pack_int4`'s blocks), the format
    backward saves (`packing.pack_int4`: nibble ``code & 0xF``; LUQ: sign + exponent index,
    `triton_pack_int4`). ``encoding`` says how to read the nibbles back: ``"int"``, ``"uint"``,
    ``"luq"``, or ``"auto"`` (per group, with ``top``: `packing.unpack_int4`)."""

    codes: torch.Tensor
    clip: torch.Tensor
    top: torch.Tensor
    packed: torch.Tensor | None = None
    encoding: str | None = None

    def packed_operand(self) -> Packed:
        """``packed`` of a 2-D tensor as a `Packed` GEMM operand for `packed_mm` (which decodes
        one fixed encoding: not ``"auto"``)."""
        if self.packed is None or self.codes.ndim != 2:
            raise ValueError("packed_operand: needs 2-D codes quantized with pack=True")
        if self.encoding not in ("int", "uint", "luq"):
            raise ValueError(
                f"packed_operand: encoding {self.encoding!r} has no fixed nibble decoding; "
                "valid: int, uint, luq (signed / unsigned INT, LUQ)"
            )
        return Packed(self.packed, tuple(self.codes.shape), 1, self.encoding)

    @property
    def scale(self) -> torch.Tensor:
        """``clip / top``: the factor a GEMM epilogue applies per group."""
        return self.clip / self.top

    def dequantize(self, dtype: torch.dtype = torch.float32) -> torch.Tensor:
        return (self.codes.float() / self.top * self.clip).to(dtype)


def sawb_clip(stats: GroupStats) -> torch.Tensor:
    """SAWB's clip from the reduction's float64 moments, as `int_quantize.int_clip` computes it
    from the reference's means (`sawb_clip_from_moments`)."""
    n = float(max(stats.count, 1))
    return sawb_clip_from_moments(stats.sum_sq / n, stats.sum_abs / n, stats.amax)


def packs_in_kernel(x: torch.Tensor, reduce_dims: Sequence[int], view: View2d) -> bool:
    """Whether a quantizer kernel's 2-D view (`as_2d`) packs along ``x``'s last dimension, so its
    packed output is ``x``'s packed codes row for row. The view's rows must be ``x``'s last-dim
    rows laid end to end: a 1-D or 2-D ``x`` (the view is ``x``), per tensor and per channel of
    the last dim (rows of one last-dim row each), and per sample (kept dims leading); a permuted
    view (other groupings) packs along another dim. And the kernel stores whole 16-byte blocks
    (`store_packed_tile`): a view row of one last-dim row of at least 32 codes, or of several
    whose length is a multiple of 32 (no block straddles two). Otherwise a second pass packs."""
    last = x.shape[-1] if x.ndim else 0
    block = 2 * BLOCK_BYTES
    whole_blocks = last % block == 0 or (view.x.shape[-1] == last and last >= block)
    if x.ndim <= 2:
        return x.ndim >= 1 and last >= block and view.x.shape[-1] == last
    dims = normalize_dims(reduce_dims, x.ndim)
    kept = [d for d in range(x.ndim) if d not in dims] if dims else []
    if not dims or kept == [x.ndim - 1] or kept == list(range(len(kept))):
        return last > 0 and whole_blocks
    return False


def packed_of(
    codes2d: torch.Tensor, packed2d: torch.Tensor | None, x: torch.Tensor, encoding: str
) -> torch.Tensor:
    """The codes of ``x`` packed along its last dim: the kernel's own packed output when it
    packed along that dim (`packs_in_kernel`), else one pass of `pack_codes` over the codes."""
    from qcompile.runtime.kernels.triton_pack_int4 import pack_codes

    last = x.shape[-1]
    if packed2d is None:
        packed2d = pack_codes(codes2d.reshape(-1, last), "int" if encoding != "luq" else "luq").data
    return packed2d.reshape(*x.shape[:-1], packed_size(last, 2))


def alloc_packed(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """The uint8 buffer a quantizer kernel packs ``rows × cols`` codes into (tests poison it)."""
    return triton_support.alloc_packed(rows, packed_size(cols, 2), device)


def _launch_quantize(
    view, scale, lo, hi, noise, stochastic: bool, key: torch.Tensor | None, pack: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    x = view.x
    rows, cols = x.shape
    codes = triton_support.alloc_codes(rows, cols, x.device)
    packed = alloc_packed(rows, cols, x.device) if pack else None
    if rows * cols == 0:
        return codes, packed
    axis = {0: SCALE_PER_ROW, 1: SCALE_PER_COL, None: SCALE_PER_TENSOR}[view.axis]
    use_noise = noise is not None
    n2 = noise if use_noise else x
    block_r, block_c = (32, 128) if triton_support.gpu_tiles(x.device) else (16, 32)
    grid = tile_grid(rows, cols, block_r, block_c)
    _int_quantize_kernel[grid](
        x, codes, codes if packed is None else packed, scale, lo, hi, n2, scale if key is None else key,
        rows, cols, packed_size(cols, 2), x.stride(0), x.stride(1), n2.stride(0), n2.stride(1),
        SCALE_AXIS=axis, STOCHASTIC=stochastic, USE_NOISE=use_noise, PACK=pack, BLOCK_R=block_r,
        BLOCK_C=block_c, num_warps=QUANTIZE_WARPS,
    )  # fmt: skip
    return codes, packed


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
    pack: bool = False,
) -> Codes:
    """INT quantization of ``x`` to int8 codes with the Triton kernel (CUDA, or CPU under
    ``TRITON_INTERPRET=1``). ``Codes.dequantize()`` equals `int_quantize_reference` bit for bit
    given the same ``noise``; with ``noise=None`` stochastic rounding draws Philox bits keyed by
    ``seed`` and ``offset`` (by default both drawn from torch's generator, `philox_key`).
    ``clip`` (group keepdim shape) overrides the computed clip. ``bits`` <= 7 so the codes fit int8.
    ``pack=True`` (4 bits) also returns the codes packed two per byte (`Codes.packed`), written
    by the same kernel when its view allows (`packs_in_kernel`)."""
    if pack and bits > 4:
        raise ValueError(f"int_quantize_codes: pack=True packs 4-bit codes, got bits={bits} (valid: 2..4)")
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
    in_kernel = pack and packs_in_kernel(x, reduce_dims, view)
    codes, packed = _launch_quantize(
        view, scale, lo, hi, _noise_2d(noise, x, reduce_dims), stochastic, key, in_kernel
    )
    codes = view.back(codes)
    encoding = {"signed": "int", "unsigned": "uint"}.get(signed, "auto")
    return Codes(
        codes,
        clip_vec.reshape(view.group_shape),
        hi.reshape(view.group_shape),
        packed_of(codes, packed, x, encoding) if pack else None,
        encoding if pack else None,
    )
