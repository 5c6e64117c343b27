"""Block-scaled floating-point formats as pure PyTorch fake quantization: OCP Microscaling
(MXFP4, MXFP8; OCP MX v1.0), NVIDIA NVFP4 (E2M1 elements, E4M3 block scales, one FP32 tensor
scale) and FP8 with FP32 rowwise or tensorwise scales (as in torchao's float8 training).

Each block of elements shares one scale; the elements are minifloats (`minifloat`). The output is
``element · scale`` in the input's dtype, what a GEMM on the packed data would see. Everything is
elementwise ops plus one max per block over reshaped views, so Inductor fuses a quantizer into a
reduction and a pointwise loop.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
import torch.nn.functional as F

from qcompile.runtime.reference.minifloat import ElementFormat, element_format, round_to_element

SCALINGS = ("mx", "nv", "max")

_E4M3_MAX = 448.0  # largest E4M3 value: the NVFP4 block scale's range (OFP8 rev 1.0, Table 1)
_E8M0_EXP_RANGE = (-127, 127)  # E8M0 scales 2^-127 .. 2^127; 0xFF is NaN (OCP MX v1.0 §5.4.1)
_SCALE_BITS = {"mx": 8, "nv": 8, "max": 32}  # E8M0, E4M3, FP32


def block_quantize_reference(
    x: torch.Tensor,
    element: str,
    scaling: str,
    block: Sequence[int],
    axis: int = -1,
    stochastic: bool = False,
    noise: torch.Tensor | None = None,
) -> torch.Tensor:
    """Fake-quantize ``x`` to ``element`` minifloats with one scale per block (same shape, dtype).

    ``block`` says which elements share a scale:
      * ``[]``: the whole tensor (tensorwise);
      * ``[0]``: each row along ``axis``, the whole axis one block (FP8 rowwise, ``axis`` being the
        GEMM's contraction axis);
      * ``[n]``: runs of ``n`` consecutive elements along ``axis`` (MX: 32, NVFP4: 16); a shorter
        last run is its own block (zero padding does not change a max);
      * ``[r, c]``: ``r×c`` tiles over the last two dims (``axis`` ignored; partial tiles padded).
        Square tiles commute with transposition, ``Q(W).T == Q(W.T)``, so a weight quantized once
        serves both its forward GEMM and the transposed backward one (NVIDIA's 16×16 weight blocks,
        "Pretraining LLMs with NVFP4", arXiv:2509.25149).

    ``scaling``:
      * ``"mx"``: OCP MX v1.0 §6.3: shared scale ``X = 2^(floor(log2 amax) - emax_elem)``, an E8M0
        power of two (exponent clamped to [-127, 127], §5.4.1); elements ``round(x / X)``, values
        that still exceed the element's max saturating (the floor puts ``amax/X`` in
        ``[2^emax, 2^(emax+1))``, above e.g. 6 or 448).
      * ``"nv"``: NVFP4 (arXiv:2509.25149; NVIDIA's NVFP4 blog): FP32 tensor scale
        ``s_t = amax(x) / (max_elem · 448)`` and E4M3 block scales
        ``s_b = e4m3(amax_block / (max_elem · s_t))`` (round to nearest), so the largest block
        scale uses E4M3's full range; elements ``round(x / (s_b·s_t)) · s_b · s_t``. A block whose
        ``s_b`` rounds to 0 is zeros.
      * ``"max"``: FP32 scale ``amax_block / max_elem`` (torchao float8 rowwise/tensorwise).
    An all-zero block (for "nv": tensor) gives zeros. A block holding NaN or ±inf is all NaN (for
    "nv", one anywhere in the tensor makes the whole tensor NaN): MX v1.0 makes every
    element of a block with a NaN scale NaN (§5.2), and loss scaling must see the overflow.

    ``stochastic=True`` rounds the elements stochastically (scales stay round-to-nearest), with
    ``torch.rand_like`` unless ``noise`` (uniforms in [0, 1), shape of ``x``: a test hook) is given.
    """
    fmt = element_format(element)
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; choose one of {list(SCALINGS)}")
    block = _check_block(block, x.ndim)
    if noise is not None:
        if not stochastic:
            raise ValueError("noise is the stochastic rounding's randomness: pass stochastic=True with it")
        if noise.shape != x.shape:
            raise ValueError(
                f"noise has shape {tuple(noise.shape)}, expected the shape of x {tuple(x.shape)}"
            )
    if x.numel() == 0:
        return x.clone()
    if x.ndim == 0 and block:
        u = None if noise is None else noise.reshape(1)
        return block_quantize_reference(x.reshape(1), element, scaling, block, 0, stochastic, u).reshape(())

    xf = x.float()
    u = (torch.rand_like(xf) if noise is None else noise.float()) if stochastic else None
    xb, dims = _to_blocks(xf, block, axis)
    ub = None if u is None else _to_blocks(u, block, axis)[0]
    amax = xb.abs().amax(dim=dims, keepdim=True) if dims else xb.abs().amax()

    if scaling == "mx":
        q = _mx(xb, amax, fmt, element, ub)
    elif scaling == "nv":
        q = _nv(xb, amax, xf.abs().amax(), fmt, element, ub)
    else:
        codes, safe = _max_scaled_codes(xb, amax, fmt, element, ub)
        q = codes * safe
    q = torch.where(amax < float("inf"), q, float("nan"))  # False for NaN and inf
    return _from_blocks(q, block, axis, x.shape).to(x.dtype)


#: torch dtypes of the FP8 elements, for formats whose codes a GEMM reads directly (`fp8_codes_reference`).
FP8_DTYPES = {"e4m3": torch.float8_e4m3fn, "e5m2": torch.float8_e5m2}


def fp8_codes_reference(
    x: torch.Tensor,
    element: str,
    block: Sequence[int],
    axis: int = -1,
    stochastic: bool = False,
    noise: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """`block_quantize_reference` with ``"max"`` scaling per tensor (``block=[]``) or per row
    (``[0]``), split into what an FP8 GEMM reads: ``(codes, scale)``.

    ``codes`` is ``x``'s shape in ``torch.float8_e4m3fn`` / ``float8_e5m2``, ``scale`` the FP32
    ``amax / max_value`` in keepdim shape (1 along ``axis`` for rows, all 1 per tensor). Then
    ``(codes.float() * scale).to(x.dtype)`` equals `block_quantize_reference`'s output bit for
    bit, with the same ``noise``: the same float operations in the same order, and the element
    grid values (the rounding's output) are exactly FP8 values, so the cast to FP8 loses nothing.
    A non-finite row gives NaN codes, so the GEMM's rows come out NaN as the simulation's do.
    Only these two scalings keep the scale constant along ``axis`` (the GEMM's contraction):
    the scale can then move to the GEMM's epilogue, which MX and NVFP4 blocks do not allow."""
    if element not in FP8_DTYPES:
        raise ValueError(f"FP8 codes are e4m3 or e5m2 elements, not {element!r}")
    block = _check_block(block, x.ndim)
    if block not in ([], [0]):
        raise ValueError(f"FP8 codes take one scale per tensor ([]) or per row ([0]), not block {block}")
    if noise is not None and (not stochastic or noise.shape != x.shape):
        raise ValueError("noise is stochastic rounding's uniforms: pass stochastic=True and x's shape")
    fmt = element_format(element)
    xf = x.float()
    group = [1 if not block or d == axis % x.ndim else s for d, s in enumerate(x.shape)]
    if x.numel() == 0:
        return torch.empty(x.shape, dtype=FP8_DTYPES[element], device=x.device), xf.new_ones(group)
    u = (torch.rand_like(xf) if noise is None else noise.float()) if stochastic else None
    if block and x.ndim:
        amax = xf.abs().amax(dim=axis, keepdim=True)
    else:
        amax = xf.abs().amax().reshape(group)
    codes, safe = _max_scaled_codes(xf, amax, fmt, element, u)
    return codes.to(FP8_DTYPES[element]), safe


def _max_scaled_codes(
    x: torch.Tensor, amax: torch.Tensor, fmt: ElementFormat, element: str, noise: torch.Tensor | None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``"max"`` scaling, shared by `block_quantize_reference` and `fp8_codes_reference`: the
    element-grid codes of ``x / scale`` and the FP32 ``scale = amax / max_value`` (1 for an
    all-zero group). Codes of a group whose ``amax`` is NaN or inf are NaN."""
    safe = torch.where(amax > 0, amax / fmt.max_value, 1.0)
    codes = round_to_element(x / safe, element, noise)
    return torch.where(amax < float("inf"), codes, float("nan")), safe


def block_scale_bits(
    element: str, scaling: str, block: Sequence[int], shape: Sequence[int], axis: int = -1
) -> float:
    """Average storage bits per element of ``shape`` quantized like `block_quantize_reference`:
    element bits plus every scale's bits spread over the elements. Scales: E8M0 (8 bits) per block
    for "mx", E4M3 (8 bits) per block plus one FP32 (32 bits) per tensor for "nv", FP32 per block
    for "max". A partial block costs a whole scale. E.g. MXFP4 with 32-blocks: 4 + 8/32 = 4.25;
    NVFP4 with 16-blocks: 4.5 + 32/numel."""
    fmt = element_format(element)
    if scaling not in SCALINGS:
        raise ValueError(f"unknown scaling {scaling!r}; choose one of {list(SCALINGS)}")
    shape = [int(s) for s in shape]
    block = _check_block(block, len(shape))
    numel = math.prod(shape)
    if numel == 0:
        return float(fmt.bits)
    if not block:
        blocks = 1
    elif len(block) == 1:
        length = shape[axis] if shape else 1
        n = block[0] or length
        blocks = numel // length * math.ceil(length / n)
    else:
        rows, cols = shape[-2:]
        blocks = numel // (rows * cols) * math.ceil(rows / block[0]) * math.ceil(cols / block[1])
    scale_bits = blocks * _SCALE_BITS[scaling] + (32 if scaling == "nv" else 0)
    return fmt.bits + scale_bits / numel


def _mx(
    xb: torch.Tensor, amax: torch.Tensor, fmt: ElementFormat, element: str, noise: torch.Tensor | None
) -> torch.Tensor:
    """OCP MX v1.0 §6.3 with an exact ``floor(log2 amax)``: float32 ``log2`` rounds
    ``2^k·(1-2^-24)`` up to exactly ``k``, so the estimate is corrected against exact powers of
    two (``exp2`` of an integer is exact). Scaling multiplies by ``2^-exponent`` (at most
    ``2^127``, a normal float) rather than dividing by a scale that may be the subnormal
    ``2^-127``; both are exact, so the result is ``x / X`` bit for bit."""
    e = torch.floor(torch.log2(amax))
    e = torch.where(torch.exp2(e) > amax, e - 1, e)
    e = torch.where(torch.exp2(e + 1) <= amax, e + 1, e)
    e = torch.clamp(e - fmt.emax, *_E8M0_EXP_RANGE)
    e = torch.where(amax > 0, e, 0.0)  # all-zero block: any scale gives zeros; keep it finite
    return round_to_element(xb * torch.exp2(-e), element, noise) * torch.exp2(e)


def _nv(
    xb: torch.Tensor,
    amax: torch.Tensor,
    tensor_amax: torch.Tensor,
    fmt: ElementFormat,
    element: str,
    noise: torch.Tensor | None,
) -> torch.Tensor:
    """NVFP4's two-level scale. ``q · s_b`` is exact (few significant bits each), so the output is
    rounded once, by the final ``· s_t``. Non-finite tensors are masked here; a block with NaN or
    inf is masked by the caller."""
    s_t = tensor_amax / (fmt.max_value * _E4M3_MAX)
    s_t_safe = torch.where(s_t > 0, s_t, 1.0)  # amax(x) == 0: every s_b is 0, output zeros
    s_b = round_to_element(amax / (fmt.max_value * s_t_safe), "e4m3")
    scale = s_b * s_t
    safe = torch.where(scale > 0, scale, 1.0)  # s_b == 0: output q · 0 = zeros
    q = round_to_element(xb / safe, element, noise) * s_b * s_t
    return torch.where(tensor_amax < float("inf"), q, float("nan"))


def _check_block(block: Sequence[int], ndim: int) -> list[int]:
    """``block`` as a list after validation: ``[]``, ``[n >= 0]`` or ``[r > 0, c > 0]`` (2-D blocks
    need ``ndim >= 2``)."""
    out = [int(b) for b in block]
    ok = len(out) == 0 or (len(out) == 1 and out[0] >= 0) or (len(out) == 2 and min(out) > 0 and ndim >= 2)
    if not ok:
        raise ValueError(
            f"invalid block {list(block)} for a {ndim}-d tensor; choose [] (per tensor), [0] (per row "
            "along axis), [n > 0] (n consecutive elements along axis) or [r > 0, c > 0] (tiles over "
            "the last two dims of a tensor with ndim >= 2)"
        )
    return out


def _to_blocks(t: torch.Tensor, block: list[int], axis: int) -> tuple[torch.Tensor, tuple[int, ...]]:
    """``t`` zero-padded and reshaped so that each block spans the returned dims: 1-D blocks to
    ``(..., blocks, n)`` with ``axis`` moved last, 2-D to ``(..., R/r, r, C/c, c)``. Empty dims
    mean one block (the whole tensor, unchanged)."""
    if not block:
        return t, ()
    if len(block) == 1:
        t = t.movedim(axis, -1)
        length = t.shape[-1]
        n = block[0] or length
        t = F.pad(t, (0, -length % n))
        return t.reshape(*t.shape[:-1], -1, n), (-1,)
    r, c = block
    rows, cols = t.shape[-2:]
    t = F.pad(t, (0, -cols % c, 0, -rows % r))
    return t.reshape(*t.shape[:-2], t.shape[-2] // r, r, t.shape[-1] // c, c), (-3, -1)


def _from_blocks(t: torch.Tensor, block: list[int], axis: int, shape: torch.Size) -> torch.Tensor:
    """Inverse of `_to_blocks`: undo the reshape, crop the padding, restore ``axis``."""
    if not block:
        return t
    if len(block) == 1:
        t = t.reshape(*t.shape[:-2], -1)[..., : shape[axis]]
        return t.movedim(-1, axis)
    t = t.reshape(*t.shape[:-4], t.shape[-4] * t.shape[-3], t.shape[-2] * t.shape[-1])
    return t[..., : shape[-2], : shape[-1]]
