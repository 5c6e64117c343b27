"""Graph ops of the fused quantize → int8 GEMM path that `qcompile.passes.post_aot.fuse_int8_gemms` inserts.

    qcompile::quantize_codes(x, ...)      -> (codes int8, clip, top)   a quantizer, as codes
    qcompile::int_quantize_packed_codes(x, ...) -> (codes, packed, clip, hi) `int_quantize_packed`'s
                                             saved outputs plus the codes, in one quantizer pass
    qcompile::recover_codes(x̂, ...)       -> (codes int8, clip, top)   codes of a saved x̂
    qcompile::unpack_int4_codes(packed, hi, last) -> codes int8        codes a packed x̂ was saved as
    qcompile::int_requantize_codes(w, clip, hi, ...) -> codes int8     codes of a requantized ŵ
    qcompile::kernel_requantize_codes(w, clip, hi, ...) -> codes int8  the same, by the Triton
                                             quantizer (for a ŵ its forward quantized there)
    qcompile::dequantize_codes(c, clip, top, dtype) -> codes / top · clip (the quantizer's value)
    qcompile::scaled_int8_gemm(A codes, B codes, scales, views, bias) -> the GEMM's output

On CUDA (and on CPU under ``TRITON_INTERPRET=1``) they run the Triton kernels; otherwise a
PyTorch implementation of the same math, so a rewritten graph still runs anywhere. The GEMM
receives each operand's codes in the shape its quantizer produced plus the chain of views the
graph applied before the GEMM (`view_chains` records, an ``int[]``), so transposes stay strides and the per-group scales become
the row / column vectors of the epilogue without a copy of the operand.
"""

from __future__ import annotations

import torch

from qcompile.runtime.kernels.triton_support import kernels_can_run_on
from qcompile.runtime.ops.packed_codes import empty_saved_codes
from qcompile.runtime.reference.codes import (
    INT,
    LUQ,
    codes_group_shape,
    dequantize_codes_reference,
    int_requantize_codes_reference,
    packed_quantizer_codes,
    quantizer_codes,
    unpack_int4_codes_reference,
)
from qcompile.runtime.reference.packed_int import group_shape
from qcompile.runtime.reference.scaling_groups import normalize_dims
from qcompile.runtime.reference.view_chains import operand_2d


@torch.library.custom_op(
    "qcompile::quantize_codes", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def quantize_codes(
    x: torch.Tensor,
    kind: str,
    bits: int,
    scaling: str,
    signed: str,
    reduce_dims: list[int],
    stochastic: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The quantizer ``kind`` ("int": `int_quantize`'s arguments; "luq") as int8 codes and its
    per-group ``clip`` and ``top`` (keepdim shapes): ``codes / top · clip`` is its value."""
    if kernels_can_run_on(x.device):
        if kind == LUQ:
            from qcompile.runtime.kernels.triton_luq_quantize import luq_quantize_codes

            c = luq_quantize_codes(x, bits, reduce_dims)
        else:
            from qcompile.runtime.kernels.triton_int_quantize import int_quantize_codes

            c = int_quantize_codes(x, bits, scaling, signed, reduce_dims, stochastic)
        codes, clip, top = c.codes, c.clip, c.top
    else:
        codes, clip, top = quantizer_codes(x, kind, bits, scaling, signed, reduce_dims, stochastic)
    # Contiguous outputs whatever the input's strides, as the fake kernel promises.
    shape = codes_group_shape(x, reduce_dims)
    return (
        codes.contiguous(),
        clip.reshape(shape).contiguous().clone(),
        top.expand_as(clip).reshape(shape).clone(),
    )


@quantize_codes.register_fake
def _quantize_codes_fake(x, kind, bits, scaling, signed, reduce_dims, stochastic):
    shape = codes_group_shape(x, reduce_dims)
    return (
        torch.empty(x.shape, dtype=torch.int8, device=x.device),
        x.new_empty(shape, dtype=torch.float32),
        x.new_empty(shape, dtype=torch.float32),
    )


@torch.library.custom_op(
    "qcompile::int_quantize_packed_codes", mutates_args=(), tags=(torch.Tag.nondeterministic_seeded,)
)
def int_quantize_packed_codes(
    x: torch.Tensor,
    bits: int,
    scaling: str,
    signed: str,
    reduce_dims: list[int],
    stochastic: bool,
    pack: bool,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """The forward of a packed-and-fused operand: `int_quantize_packed`'s saved outputs (packed
    codes, clip, hi; same shapes and format) plus the int8 codes the fused GEMM reads, from one
    Triton quantizer pass that writes codes and nibbles together. It replaces the packed
    quantizer and the unpacking of its nibbles that the GEMM would otherwise read. With
    ``pack=False`` (a weight, which backward requantizes from itself) no nibbles are written
    and ``packed`` is empty (last dim 0)."""
    shape = list(x.shape)
    groups = group_shape(shape, reduce_dims)
    if kernels_can_run_on(x.device):
        from qcompile.runtime.kernels.triton_int_quantize import int_quantize_codes

        c = int_quantize_codes(x, bits, scaling, signed, reduce_dims, stochastic, pack=pack)
        codes, clip = c.codes, c.clip.reshape(groups)
        packed = c.packed if pack else x.new_empty([*shape[:-1], 0], dtype=torch.uint8)
        hi = c.top.reshape(groups) if signed == "auto" else c.top.reshape(-1)[0]
    else:
        codes, packed, clip, hi = packed_quantizer_codes(
            x, bits, scaling, signed, reduce_dims, stochastic, pack
        )
    return (
        codes.contiguous(),
        packed.contiguous(),
        clip.float().contiguous().clone(),
        hi.float().contiguous().clone(),
    )


@int_quantize_packed_codes.register_fake
def _int_quantize_packed_codes_fake(x, bits, scaling, signed, reduce_dims, stochastic, pack):
    packed, clip, hi = empty_saved_codes(x, signed, reduce_dims)
    if not pack:
        packed = packed.new_empty([*packed.shape[:-1], 0])
    return torch.empty(x.shape, dtype=torch.int8, device=x.device), packed, clip, hi


@torch.library.custom_op("qcompile::recover_codes", mutates_args=())
def recover_codes(
    xhat: torch.Tensor, bits: int, signed: str, reduce_dims: list[int]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Codes of an already INT-quantized (round-to-nearest) tensor ``x̂ = q / top · clip``.

    Exact: such a group always holds a code ``±top`` (its max element rounds, or clips, to the
    top level), so ``max|x̂| = clip`` bit for bit and max-scaled rounding returns ``q``. A bf16
    copy of ``x̂`` (autocast) still gives ``q`` (relative error 2^-8 ≪ 1/(2·15)), with the scale
    of the rounded clip. With ``signed="auto"`` a non-negative group may sit on either grid: the
    reading (unsigned 0..15 or signed 0..7) that leaves the smaller rounding residual wins; the
    two agree exactly where both fit (codes only 0 and top)."""
    first = "auto" if signed == "auto" else signed
    codes, clip, top = quantize_codes(xhat, INT, bits, "max", first, reduce_dims, False)
    if signed == "auto":
        dims = normalize_dims(reduce_dims, xhat.ndim) or list(range(xhat.ndim))
        x = xhat.float()

        def residual(levels: float) -> torch.Tensor:
            scale = torch.where(clip == 0, torch.ones_like(clip), clip / levels)
            y = x / scale
            r = (y - torch.round(y)).abs()
            return r.amax(dim=dims, keepdim=True) if xhat.ndim else r

        signed_top = float(2 ** (bits - 1) - 1)
        use_signed = (top > signed_top) & (residual(signed_top) < residual(float(2**bits - 1)))
        if bool(use_signed.any()):
            c2, _, t2 = quantize_codes(xhat, INT, bits, "max", "signed", reduce_dims, False)
            codes = torch.where(use_signed, c2, codes)
            top = torch.where(use_signed, t2, top)
    return codes.contiguous(), clip, top.contiguous()


@recover_codes.register_fake
def _recover_codes_fake(xhat, bits, signed, reduce_dims):
    return _quantize_codes_fake(xhat, INT, bits, "max", signed, reduce_dims, False)


@torch.library.custom_op("qcompile::unpack_int4_codes", mutates_args=())
def unpack_int4_codes(packed: torch.Tensor, hi: torch.Tensor, last: int) -> torch.Tensor:
    """The int8 codes of an ``X̂`` saved packed (`int_quantize_packed`): the fused GEMM reads
    these with ``clip / hi`` as its scale, so the backward never rebuilds the float ``X̂`` and
    the forward saves half a byte per element instead of a float. ``hi`` is the saved top code
    (per group for ``signed="auto"``): a nibble above it is negative (`unpack_int4`)."""
    return unpack_int4_codes_reference(packed, hi, last).contiguous()


@unpack_int4_codes.register_fake
def _unpack_int4_codes_fake(packed, hi, last):
    return packed.new_empty([*packed.shape[:-1], last], dtype=torch.int8)


@torch.library.custom_op("qcompile::int_requantize_codes", mutates_args=())
def int_requantize_codes(
    x: torch.Tensor, clip: torch.Tensor, hi: torch.Tensor, bits: int, signed: str
) -> torch.Tensor:
    """The int8 codes `int_requantize` rebuilds ``Ŵ`` from (``W`` and its saved clip, with the
    forward's float operations): the fused dgrad GEMM reads them with ``clip / hi`` as its scale."""
    return int_requantize_codes_reference(x, clip, hi, bits, signed).contiguous()


@int_requantize_codes.register_fake
def _int_requantize_codes_fake(x, clip, hi, bits, signed):
    return torch.empty(x.shape, dtype=torch.int8, device=x.device)


@torch.library.custom_op("qcompile::kernel_requantize_codes", mutates_args=())
def kernel_requantize_codes(
    x: torch.Tensor, clip: torch.Tensor, hi: torch.Tensor, bits: int, signed: str
) -> torch.Tensor:
    """`int_requantize_codes` computed by the Triton quantizer with the saved clip: the very
    arithmetic of the forward's Triton quantizer (same scale, same ``div_rn``), so the backward's
    ``Ŵ`` codes equal the forward's bit for bit. The Inductor form of the same math can differ on
    a GPU, where Inductor divides approximately and by constants through a reciprocal. The
    groups are read from ``clip``'s keepdim shape (0-d: per tensor)."""
    if kernels_can_run_on(x.device):
        from qcompile.runtime.kernels.triton_int_quantize import int_quantize_codes

        dims = [d for d in range(x.ndim) if clip.shape[d] == 1] if clip.ndim else []
        return int_quantize_codes(x, bits, "max", signed, dims, clip=clip).codes.contiguous()
    return int_requantize_codes_reference(x, clip, hi, bits, signed).contiguous()


kernel_requantize_codes.register_fake(_int_requantize_codes_fake)  # the same output, another arithmetic


@torch.library.custom_op("qcompile::dequantize_codes", mutates_args=())
def dequantize_codes(
    codes: torch.Tensor, clip: torch.Tensor, top: torch.Tensor, dtype: torch.dtype
) -> torch.Tensor:
    """``codes / top · clip``: bit for bit the value of the quantizer that produced the codes."""
    return dequantize_codes_reference(codes, clip, top, dtype).contiguous()


@dequantize_codes.register_fake
def _dequantize_codes_fake(codes, clip, top, dtype):
    return torch.empty(codes.shape, dtype=dtype, device=codes.device)


# The arguments of the fused GEMM ops, `scaled_int8_gemm` and `scaled_int8_gemm_cpu` (which adds
# the code bounds): each operand's codes and keepdim scales, the optional bias of the epilogue,
# each operand's views (`view_chains` records, ending in 2-D ``[M, K]`` and ``[K, N]``), and the
# shape and dtype of the output.
SCALED_GEMM_ARGS = (
    "Tensor a_codes, Tensor a_clip, Tensor a_top, Tensor b_codes, Tensor b_clip, Tensor b_top, Tensor? bias, "
    "int[] a_views, int[] b_views, int[] out_shape, ScalarType out_dtype"
)


@torch.library.custom_op(
    "qcompile::scaled_int8_gemm", mutates_args=(), schema=f"({SCALED_GEMM_ARGS}) -> Tensor"
)
def scaled_int8_gemm(
    a_codes: torch.Tensor,
    a_clip: torch.Tensor,
    a_top: torch.Tensor,
    b_codes: torch.Tensor,
    b_clip: torch.Tensor,
    b_top: torch.Tensor,
    bias: torch.Tensor | None,
    a_views: list[int],
    b_views: list[int],
    out_shape: list[int],
    out_dtype: torch.dtype,
) -> torch.Tensor:
    """``Q(A)·Q(B) (+ bias)`` of two quantized operands given as codes, with the int8 Triton GEMM
    (int32 accumulation, scales and bias in the epilogue). The views are those the graph
    applied between each quantizer and the GEMM, ending in 2-D ``[M, K]`` and ``[K, N]``."""
    a, rs = operand_2d(a_codes, a_clip, a_top, a_views, 0)
    b, cs = operand_2d(b_codes, b_clip, b_top, b_views, 1)
    if kernels_can_run_on(a.device):
        from qcompile.runtime.kernels.triton_int8_gemm import int8_mm

        out = int8_mm(a, b, rs, cs, bias, out_dtype)
    else:
        acc = a.double() @ b.double()  # exact for the int8 products of any practical K
        out = acc.float() * rs.float()[:, None] * cs.float()[None, :]
        out = (out + bias.float()[None, :] if bias is not None else out).to(out_dtype)
    return out.reshape(out_shape)


def scaled_gemm_fake(a_codes: torch.Tensor, *args: object) -> torch.Tensor:
    """Fake kernel of both fused GEMM ops: an ``out_shape`` tensor of ``out_dtype`` (the 10th and
    11th of `SCALED_GEMM_ARGS`, whatever follows them)."""
    out_shape, out_dtype = args[8], args[9]
    return torch.empty(out_shape, dtype=out_dtype, device=a_codes.device)


scaled_int8_gemm.register_fake(scaled_gemm_fake)
