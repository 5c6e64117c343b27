"""Minifloat element formats (FP4 E2M1, FP8 E4M3 and E5M2) and rounding onto their grids, as pure
PyTorch: the element half of the block-scaled formats in `block_scaled` (MXFP4/MXFP8, NVFP4, FP8).

Values stay float32 on the element's grid (fake quantization): bit packing is a separate concern,
and keeping the arithmetic in float32 lets the same code run eagerly, under Inductor and as the
oracle of the fused kernels.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class ElementFormat:
    """A sign-magnitude minifloat: 1 sign bit, ``exponent_bits``, ``mantissa_bits``, an exponent
    ``bias``, and the largest finite magnitude (which is below the all-ones code for E4M3,
    whose top code is NaN, and for E5M2, whose top exponent is inf/NaN)."""

    name: str
    exponent_bits: int
    mantissa_bits: int
    bias: int
    max_value: float

    @property
    def bits(self) -> int:
        """Storage bits of one element."""
        return 1 + self.exponent_bits + self.mantissa_bits

    @property
    def emax(self) -> int:
        """Exponent of ``max_value``'s leading bit (2 for E2M1, 8 for E4M3, 15 for E5M2): the
        ``emax_elem`` that the MX shared scale subtracts (OCP MX v1.0 §6.3)."""
        return math.frexp(self.max_value)[1] - 1

    @property
    def min_normal_exponent(self) -> int:
        """Exponent of the smallest normal (``1 - bias``); below it the grid is subnormal, with
        the same spacing as the lowest normal binade."""
        return 1 - self.bias


# OCP MX v1.0 §5.3.3 (FP4 E2M1: bias 1, no inf/NaN, max 6) and the OCP 8-bit floating point
# spec (OFP8) rev 1.0, Table 1, as adopted by MX v1.0 §5.3.1: E4M3 bias 7, max 448 (S.1111.111 is
# NaN, no inf; torch.float8_e4m3fn), E5M2 bias 15, max 57344 (IEEE-like inf/NaN; torch.float8_e5m2).
ELEMENT_FORMATS: dict[str, ElementFormat] = {
    "e2m1": ElementFormat("e2m1", exponent_bits=2, mantissa_bits=1, bias=1, max_value=6.0),
    "e4m3": ElementFormat("e4m3", exponent_bits=4, mantissa_bits=3, bias=7, max_value=448.0),
    "e5m2": ElementFormat("e5m2", exponent_bits=5, mantissa_bits=2, bias=15, max_value=57344.0),
}


def element_format(element: str) -> ElementFormat:
    """The `ElementFormat` called ``element``; a ValueError names the valid choices."""
    fmt = ELEMENT_FORMATS.get(element)
    if fmt is None:
        raise ValueError(f"unknown element format {element!r}; choose one of {sorted(ELEMENT_FORMATS)}")
    return fmt


def round_to_element(x: torch.Tensor, element: str, noise: torch.Tensor | None = None) -> torch.Tensor:
    """``x`` rounded onto the grid of ``element`` (normals and subnormals), as float32.

    Finite magnitudes above ``max_value`` saturate to ``±max_value``: the OFP8 spec's
    saturating ("satfinite") conversion, which MX v1.0 §6.3 allows for elements that overflow
    after scaling. ``noise=None`` rounds to nearest, ties to even mantissa (the IEEE default, so
    it equals ``x.to(torch.float8_e4m3fn).float()`` and the ``float8_e5m2`` cast for every
    in-range value). With ``noise`` (uniforms in [0, 1), the shape of ``x``) it rounds
    stochastically, ``floor(|x|/ulp + noise)·ulp`` with the sign of ``x``: up with probability
    equal to the distance from the lower neighbour in ulps, so ``E[q] = x`` below ``max_value``.

    NaN stays NaN and ±inf becomes NaN, never ``±max_value``: a block quantizer must keep an
    overflow visible to loss scaling rather than clip it into a plausible number.

    The grid spacing ``ulp`` comes from a chain of compares against the binade boundaries (at
    most 30, for E5M2) rather than ``floor(log2|x|)``: float32 ``log2`` rounds ``2^k·(1-2^-24)``
    up to exactly ``k``, which would pick the wrong binade, and the compares are exact and fuse
    into one vectorised Inductor loop. ``|x|/ulp`` is exact (``ulp`` is a power of two).
    """
    fmt = element_format(element)
    if noise is not None and noise.shape != x.shape:
        raise ValueError(f"noise has shape {tuple(noise.shape)}, expected the shape of x {tuple(x.shape)}")
    xf = x.float()
    a = xf.abs()
    ulp = _grid_spacing(a, fmt)
    y = a / ulp
    steps = torch.round(y) if noise is None else torch.floor(y + noise.float())
    q = torch.clamp(steps * ulp, max=fmt.max_value)
    q = torch.where(a == float("inf"), float("nan"), q)
    return torch.sign(xf) * q


def _grid_spacing(a: torch.Tensor, fmt: ElementFormat) -> torch.Tensor:
    """Grid step at magnitude ``a``: ``2^(e - mantissa_bits)`` with ``e`` the binade of ``a``,
    clamped to ``[min_normal_exponent, emax]`` (subnormals share the lowest normal binade's step;
    values past ``max_value`` keep the top binade's step and saturate afterwards)."""
    m = fmt.mantissa_bits
    lo = fmt.min_normal_exponent
    ulp = torch.full_like(a, 2.0 ** (lo - m))
    for e in range(lo + 1, fmt.emax + 1):
        ulp = torch.where(a >= 2.0**e, 2.0 ** (e - m), ulp)
    return ulp
