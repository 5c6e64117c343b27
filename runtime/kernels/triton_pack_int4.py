"""4-bit codes packed two per byte, and the int8 GEMM reading them (unpacked in registers).

Encodings of one nibble (`ENCODINGS`):
  * ``"int"``: two's complement, −8..7 (INT4 signed codes −7..7);
  * ``"uint"``: 0..15 (INT4 unsigned codes, e.g. after ReLU);
  * ``"luq"``: sign bit + 3-bit exponent index: 0 is zero, ``e`` is ``2^(e-1)`` — LUQ's 4-bit
    codes ``{0, ±1, ±2, ..., ±64}`` exactly (FP4 [1,3,0] of the LUQ paper).
The layout is `packing.pack_int4`'s, blocks of 32 codes in 16 bytes: code ``16k + i`` of a block sits
in nibble ``k`` (0 low, 1 high) of the block's byte ``i`` (a row shorter than 32 is one block of
``ceil(n/2)`` bytes; a partial last block is padded with zero nibbles). A `Packed` operand may be packed along either
axis of the 2-D view a GEMM reads, so one packed ``W`` serves both ``X·Wᵀ`` (packed along K) and
``dY·W`` (packed along N), through strides. References: `pack_reference`, `unpack_reference`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from qcompile.runtime.kernels import triton_support
from qcompile.runtime.kernels.triton_tiles import tile_grid, tile_of_program
from qcompile.runtime.reference.packing import (
    block_bytes,
    pack_fields,
    packed_size,
    unpack_fields,
)

try:
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover
    triton = None

ENCODINGS = {"int": 0, "uint": 1, "luq": 2}


def _encode_reference(codes: torch.Tensor, encoding: str) -> torch.Tensor:
    c = codes.to(torch.int32)
    if encoding == "int":
        return c & 0xF
    if encoding == "uint":
        return c
    mag = c.abs()
    e = torch.where(mag == 0, torch.zeros_like(mag), torch.log2(mag.clamp_min(1).float()).round().int() + 1)
    return e | torch.where(c < 0, 8, 0)


def _decode_reference(nib: torch.Tensor, encoding: str) -> torch.Tensor:
    if encoding == "int":
        return ((nib ^ 8) - 8).to(torch.int8)
    if encoding == "uint":
        return nib.to(torch.int8)
    e = nib & 7
    mag = torch.where(e == 0, torch.zeros_like(e), torch.ones_like(e) << (e - 1).clamp_min(0))
    return torch.where(nib >= 8, -mag, mag).to(torch.int8)


def pack_reference(codes: torch.Tensor, encoding: str = "int") -> torch.Tensor:
    """Pack a 2-D int8 code tensor along its last dim: uint8 ``[rows, packed_size(cols, 2)]``."""
    return pack_fields(_encode_reference(codes, encoding), 4)


def unpack_reference(packed: torch.Tensor, cols: int, encoding: str = "int") -> torch.Tensor:
    return _decode_reference(unpack_fields(packed, cols, 4), encoding)


@dataclass(frozen=True)
class Packed:
    """A 2-D operand of logical shape ``shape`` stored packed along ``axis`` in ``data`` (uint8,
    any strides; the block layout along ``axis``: ``data[i, byte(j)]`` for axis 1,
    ``data[byte(i), j]`` for axis 0)."""

    data: torch.Tensor
    shape: tuple[int, int]
    axis: int
    encoding: str

    def t(self) -> Packed:
        """The transposed operand: strides swap, nothing moves."""
        return Packed(self.data.t(), (self.shape[1], self.shape[0]), 1 - self.axis, self.encoding)


if triton is not None:

    @triton.jit
    def _encode(c, ENC: tl.constexpr):
        c = c.to(tl.int32)
        if ENC == 0:
            nib = c & 0xF
        elif ENC == 1:
            nib = c
        else:
            mag = tl.abs(c)
            # log2 of a power of two, exactly: the float's exponent field.
            e = (mag.to(tl.float32).to(tl.int32, bitcast=True) >> 23) - 126
            nib = tl.where(mag == 0, 0, e) | tl.where(c < 0, 8, 0)
        return nib

    @triton.jit
    def _decode(nib, ENC: tl.constexpr):
        if ENC == 0:
            code = (nib ^ 8) - 8
        elif ENC == 1:
            code = nib
        else:
            e = nib & 7
            mag = tl.where(e == 0, 0, 1 << tl.maximum(e - 1, 0))
            code = tl.where(nib >= 8, -mag, mag)
        return code.to(tl.int8)

    @triton.jit
    def store_packed_tile(p_ptr, codes, offs_r, pid_c, R, P, ENC: tl.constexpr, BLOCK_R: tl.constexpr,
                          BLOCK_C: tl.constexpr):  # fmt: skip
        """Store a quantizer's ``BLOCK_R × BLOCK_C`` tile of codes (column tile ``pid_c``) packed
        two per byte along its columns into the row-major ``R × P`` bytes at ``p_ptr``, so a
        quantizer writes its packed codes in the same pass. For rows of at least 32 codes
        (`packs_in_kernel`: 16-byte blocks), ``BLOCK_C`` a multiple of 32, so a tile holds whole
        blocks. Columns past the tensor's end hold code 0 (masked loads): zero nibbles."""
        blocks = tl.reshape(codes.to(tl.int32), (BLOCK_R, BLOCK_C // 32, 2, 16))
        lo, hi = tl.split(tl.reshape(tl.permute(blocks, (0, 1, 3, 2)), (BLOCK_R, BLOCK_C // 2, 2)))
        byte = _encode(lo, ENC) | (_encode(hi, ENC) << 4)
        offs_p = pid_c * (BLOCK_C // 2) + tl.arange(0, BLOCK_C // 2)
        mask = (offs_r < R)[:, None] & (offs_p < P)[None, :]
        tl.store(p_ptr + offs_r[:, None].to(tl.int64) * P + offs_p[None, :], byte.to(tl.uint8), mask=mask)

    @triton.jit
    def _pack_kernel(c_ptr, p_ptr, R, C, s_r, s_c, P, L, ENC: tl.constexpr, BLOCK_R: tl.constexpr,
                     BLOCK_P: tl.constexpr):  # fmt: skip
        """Byte ``p`` of a row holds codes ``(p // L)·2L + p % L`` (low) and that ``+ L`` (high)."""
        pid_r, pid_p = tile_of_program(P, BLOCK_P)
        offs_r = pid_r * BLOCK_R + tl.arange(0, BLOCK_R)
        offs_p = pid_p * BLOCK_P + tl.arange(0, BLOCK_P)
        r_ok = (offs_r < R)[:, None]
        base = c_ptr + offs_r[:, None].to(tl.int64) * s_r
        lo_col = (offs_p[None, :] // L) * (2 * L) + offs_p[None, :] % L
        lo = tl.load(base + lo_col * s_c, mask=r_ok & (lo_col < C), other=0)
        hi = tl.load(base + (lo_col + L) * s_c, mask=r_ok & (lo_col + L < C), other=0)
        byte = _encode(lo, ENC) | (_encode(hi, ENC) << 4)
        mask = r_ok & (offs_p < P)[None, :]
        tl.store(p_ptr + offs_r[:, None].to(tl.int64) * P + offs_p[None, :], byte.to(tl.uint8), mask=mask)

    @triton.jit
    def _packed_index(offs, L: tl.constexpr):
        """(byte, shift) of codes ``offs`` in the block layout with ``L`` bytes per block (a
        constexpr: 16 from 32 codes on, so shifts and masks, not divisions, and no registers
        spilled in the 128×128 GEMM; sm_90 report)."""
        return (offs // (2 * L)) * L + offs % L, 4 * ((offs // L) % 2)

    @triton.jit
    def _load_operand(ptr, offs_i, offs_j, n_i, n_j, s_i, s_j, PACK: tl.constexpr, ENC: tl.constexpr,
                      L: tl.constexpr):  # fmt: skip
        """A tile of a 2-D operand (n_i x n_j); PACK: -1 plain int8, 0/1 packed along that axis in
        blocks of ``L`` bytes."""
        # Every branch returns and nothing follows the chain: Triton 3.6 lost the names bound in
        # the nested branches after an early return (NameError compiling PACK == 0 on an H200).
        mask = (offs_i < n_i)[:, None] & (offs_j < n_j)[None, :]
        if PACK == -1:
            return tl.load(
                ptr + offs_i[:, None].to(tl.int64) * s_i + offs_j[None, :] * s_j, mask=mask, other=0
            )
        elif PACK == 1:
            byte_j, shift_j = _packed_index(offs_j, L)
            byte = tl.load(
                ptr + offs_i[:, None].to(tl.int64) * s_i + byte_j[None, :] * s_j, mask=mask, other=0
            )
            return _decode_nibbles(byte, shift_j[None, :], mask, ENC)
        else:
            byte_i, shift_i = _packed_index(offs_i, L)
            byte = tl.load(
                ptr + byte_i[:, None].to(tl.int64) * s_i + offs_j[None, :] * s_j, mask=mask, other=0
            )
            return _decode_nibbles(byte, shift_i[:, None], mask, ENC)

    @triton.jit
    def _decode_nibbles(byte, shift, mask, ENC: tl.constexpr):
        """int8 codes from the nibbles of ``byte`` at bit offsets ``shift``; 0 outside ``mask``."""
        nib = (byte.to(tl.int32) >> shift) & 0xF
        return tl.where(mask, _decode(nib, ENC), 0).to(tl.int8)

    @triton.jit
    def _packed_mm_kernel(
        a_ptr, b_ptr, c_ptr, rs_ptr, cs_ptr, bias_ptr,
        M, N, K, s_am, s_ak, s_bk, s_bn, s_cm, s_cn,
        A_PACK: tl.constexpr, A_ENC: tl.constexpr, A_L: tl.constexpr, B_PACK: tl.constexpr, B_ENC: tl.constexpr,
        B_L: tl.constexpr,
        HAS_BIAS: tl.constexpr, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    ):  # fmt: skip
        pid_m = tl.program_id(0)
        pid_n = tl.program_id(1)
        offs_m = pid_m * BLOCK_M + tl.arange(0, BLOCK_M)
        offs_n = pid_n * BLOCK_N + tl.arange(0, BLOCK_N)
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.int32)
        for k0 in range(0, K, BLOCK_K):
            offs_k = k0 + tl.arange(0, BLOCK_K)
            a = _load_operand(a_ptr, offs_m, offs_k, M, K, s_am, s_ak, A_PACK, A_ENC, A_L)
            b = _load_operand(b_ptr, offs_k, offs_n, K, N, s_bk, s_bn, B_PACK, B_ENC, B_L)
            acc = tl.dot(a, b, acc, out_dtype=tl.int32)
        rs = tl.load(rs_ptr + offs_m, mask=offs_m < M, other=0.0)
        cs = tl.load(cs_ptr + offs_n, mask=offs_n < N, other=0.0)
        out = acc.to(tl.float32) * rs[:, None] * cs[None, :]
        if HAS_BIAS:
            out = out + tl.load(bias_ptr + offs_n, mask=offs_n < N, other=0.0).to(tl.float32)[None, :]
        c_mask = (offs_m < M)[:, None] & (offs_n < N)[None, :]
        c_ptrs = c_ptr + offs_m[:, None].to(tl.int64) * s_cm + offs_n[None, :].to(tl.int64) * s_cn
        tl.store(c_ptrs, out.to(c_ptr.dtype.element_ty), mask=c_mask)


def pack_codes(codes: torch.Tensor, encoding: str = "int", out: torch.Tensor | None = None) -> Packed:
    """Pack 2-D int8 codes (any strides) along their last dim with the Triton kernel."""
    if encoding not in ENCODINGS:
        raise ValueError(f"pack_codes: unknown encoding {encoding!r}; valid: {', '.join(ENCODINGS)}")
    rows, cols = codes.shape
    p = packed_size(cols, 2)
    data = torch.empty((rows, p), device=codes.device, dtype=torch.uint8) if out is None else out
    if rows and cols:
        block_r, block_p = (32, 64) if triton_support.gpu_tiles(codes.device) else (16, 16)
        grid = tile_grid(rows, p, block_r, block_p)
        block = block_bytes(cols, 2)
        _pack_kernel[grid](codes, data, rows, cols, codes.stride(0), codes.stride(1), p, block,
                           ENC=ENCODINGS[encoding], BLOCK_R=block_r, BLOCK_P=block_p)  # fmt: skip
    return Packed(data, (rows, cols), 1, encoding)


def _block_of(x: torch.Tensor | Packed) -> int:
    """Bytes per block along the packed axis of ``x`` (1 for an unpacked operand: unused)."""
    return block_bytes(x.shape[x.axis], 2) if isinstance(x, Packed) else 1


def _operand(x: torch.Tensor | Packed):
    if isinstance(x, Packed):
        return x.data, x.shape, x.axis, ENCODINGS[x.encoding]
    return x, tuple(x.shape), -1, 0


def packed_mm(
    a: torch.Tensor | Packed,
    b: torch.Tensor | Packed,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    bias: torch.Tensor | None = None,
    out_dtype: torch.dtype = torch.float32,
    out: torch.Tensor | None = None,
) -> torch.Tensor:
    """`int8_mm` whose operands may be `Packed` 4-bit codes (unpacked in registers, never in
    memory): ``diag(row_scale) · (A·B) · diag(col_scale) (+ bias)``."""
    from qcompile.runtime.kernels.triton_int8_gemm import vector_of

    a_data, (m, k), a_pack, a_enc = _operand(a)
    b_data, (k2, n), b_pack, b_enc = _operand(b)
    if k != k2:
        raise ValueError(f"packed_mm: shapes {(m, k)} and {(k2, n)} do not multiply")
    c = torch.empty((m, n), device=a_data.device, dtype=out_dtype) if out is None else out
    if m == 0 or n == 0:
        return c
    if k == 0:
        return c.copy_(torch.zeros(m, n, device=c.device) + (bias.float() if bias is not None else 0.0))
    rs, cs = vector_of(row_scale, m), vector_of(col_scale, n)
    bias_v = bias.reshape(n).contiguous() if bias is not None else c
    # GPU: 8 warps. At 4 warps the 128x128 int32 accumulator plus the nibble decoding took all
    # 255 registers and spilled to the stack on sm_90 (`benchmarks/gpu_compile_report.py`).
    bm, bn, bk, warps = (128, 128, 64, 8) if triton_support.gpu_tiles(a_data.device) else (16, 16, 16, 4)
    grid = (triton.cdiv(m, bm), triton.cdiv(n, bn))
    _packed_mm_kernel[grid](
        a_data, b_data, c, rs, cs, bias_v, m, n, k,
        a_data.stride(0), a_data.stride(1), b_data.stride(0), b_data.stride(1), c.stride(0), c.stride(1),
        A_PACK=a_pack, A_ENC=a_enc, A_L=_block_of(a), B_PACK=b_pack, B_ENC=b_enc, B_L=_block_of(b),
        HAS_BIAS=bias is not None,
        BLOCK_M=bm, BLOCK_N=bn, BLOCK_K=bk, num_warps=warps,
    )  # fmt: skip
    return c
