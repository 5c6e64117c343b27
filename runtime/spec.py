"""The quantizer vocabulary: which format, how many bits, how the scale is chosen.

`QuantSpec` is shared by the policy layer (which spec each operand role gets) and the runtime
(which op runs it). It has a compact string form (``"int4"``, ``"luq4"``, ``"int8-max-sr"``) that
users type in policies and that the runtime ops carry in the graph, so what the compiled graph
holds can be read back into the plan unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

FORMATS = ("none", "int", "luq", "lbt", "aq", "fp")
SCALINGS = ("sawb", "max", "mean", "learned", "mx", "nv")
GRANULARITIES = ("per-tensor", "per-sample", "per-channel", "per-row", "per-block")
ROUNDINGS = ("nearest", "stochastic")
SIGNS = ("signed", "unsigned", "auto")
PRUNINGS = ("none", "range", "topk")
INT_BITS = range(1, 9)
LUQ_BITS = range(2, 6)
LBT_BITS = range(2, 9)
AQ_BITS = range(2, 9)
MAX_SAMPLES = 16
#: Element formats of the block-scaled FP family (``format="fp"``) and their total bits.
FP_ELEMENTS = {"e2m1": 4, "e4m3": 8, "e5m2": 8}
#: Block lengths a ``mx<n>`` / ``nv<n>`` suffix may name (powers of two).
FP_BLOCKS = (8, 16, 32, 64, 128)

#: Named specs accepted wherever a spec is expected; see `parse_spec` for the grammar.
NAMED_SPECS = (
    "fp32",
    "int4",
    "int4-max",
    "uint4",
    "int4-sr",
    "int8",
    "int8-sr",
    "luq4",
    "luq4-smp2",
    "int1",
    "lbt4",
    "aq4-sample",
    "aq4-channel",
    "aq4-topk-sample",
    "fp4-mx32",
    "fp4-nv16",
    "fp4-nv16x16",
    "fp4-nv16-sr",
    "fp8-e4m3-mx32",
    "fp8-e4m3-row",
    "fp8-e5m2-row",
    "fp8-e4m3-tensor",
)


@dataclass(frozen=True)
class QuantSpec:
    """How one GEMM operand is quantized.

    format: ``"none"`` (high precision), ``"int"`` (uniform fixed point; 1 bit is binary,
        ``sign(x)·mean|x|``), ``"luq"`` (logarithmic unbiased, FP4 [1,3,0] for 4 bits; always
        stochastic), ``"lbt"`` (INT with stochastic rounding and the adaptive clip ``γ·max|g|``
        of Kim et al., γ per layer kept as model state; gradients only) or ``"aq"`` (1-bit FQT's
        activation-gradient pruning + per-group asymmetric stochastic rounding, Gao et al.;
        gradients only; ``bits`` per kept element, ``1/bits`` of the groups kept on average) or
        ``"fp"`` (a block-scaled floating-point format: MXFP4/MXFP8 of the OCP Microscaling
        spec v1.0, NVIDIA's NVFP4, FP8 with one scale per row or tensor; see ``element``,
        ``scaling`` and ``block``). Its scales run along each GEMM's contraction axis, so a
        GEMM's backward requantizes its forward operands along the other axis.
    bits: bit width including sign (INT 1-8, LUQ 2-5, LBT and AQ 2-8).
    scaling: INT clip choice: ``"sawb"`` (4-bit only, coefficients of the SAWB fit), ``"max"``
        ``"mean"`` (binary only: the XNOR-Net scale ``mean|x|``) or ``"learned"`` (LBT's forward:
        one trainable clip per layer and role, per tensor, round-to-nearest; forward roles only).
    granularity: where one scale applies: ``"per-tensor"``, ``"per-sample"`` (one per row of the
        GEMM's M dimension: per image for convs, per token for sequence inputs) or
        ``"per-channel"`` (one per output channel). A scale must be constant along the GEMM's
        contraction axis, so each operand role allows only some of these (see `qcompile.Policy`).
    rounding: ``"nearest"`` or ``"stochastic"`` (INT only; LUQ is stochastic by definition).
    signed: ``"signed"`` (levels -(2^(b-1)-1)..2^(b-1)-1), ``"unsigned"`` (0..2^b-1) or
        ``"auto"`` (unsigned for groups with no negative value, e.g. after ReLU; decided on the
        data, branch-free, every step).
    samples: SMP, the number of independent gradient samples averaged (LUQ §5.1); variance / N,
        GEMM cost x N.
    element: FP only: ``"e2m1"`` (FP4: ±{0, 0.5, 1, 1.5, 2, 3, 4, 6}), ``"e4m3"`` (OCP FP8,
        max 448) or ``"e5m2"`` (max 57344).
    block: FP only: ``()`` one scale per tensor, ``(0,)`` one per row along the contraction
        axis, ``(n,)`` one per ``n`` consecutive elements along it, ``(n, n)`` one per n×n tile
        (NVFP4 weights, so that W and Wᵀ quantize alike). FP scalings: ``"mx"`` (E8M0 power-of-two
        block scale, OCP MX v1.0), ``"nv"`` (E4M3 block scale times one FP32 tensor scale, NVFP4)
        and ``"max"`` (FP32 ``amax / max_value``, FP8 row/tensor).
    pruning: AQ only: ``"range"`` (keep group i with probability ∝ its range, rescale by 1/p:
        unbiased, the paper) or ``"topk"`` (keep the n/bits groups of largest max|g|, no
        rescale: the released code, biased). ``"none"`` for every other format.
    """

    format: str = "none"
    bits: int = 32
    scaling: str = "max"
    granularity: str = "per-tensor"
    rounding: str = "nearest"
    signed: str = "signed"
    samples: int = 1
    pruning: str = "none"
    element: str = ""
    block: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        if isinstance(self.block, list):
            object.__setattr__(self, "block", tuple(self.block))
        _check_choice("format", self.format, FORMATS)
        _check_choice("scaling", self.scaling, SCALINGS)
        _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_choice("signed", self.signed, SIGNS)
        _check_choice("pruning", self.pruning, PRUNINGS)
        if not isinstance(self.bits, int) or isinstance(self.bits, bool):
            raise ValueError(f"bits must be an int, got {self.bits!r}")
        if not isinstance(self.samples, int) or not 1 <= self.samples <= MAX_SAMPLES:
            raise ValueError(f"samples must be an int in 1..{MAX_SAMPLES}, got {self.samples!r}")
        if self.format == "none":
            defaults = {f.name: f.default for f in fields(self)}
            if any(getattr(self, k) != v for k, v in defaults.items()):
                raise ValueError(
                    "format 'none' is high precision and takes no other fields (use QuantSpec())"
                )
            return
        if self.format == "fp":
            self._check_fp()
            return
        if self.element or self.block:
            raise ValueError(f"element and block apply to format 'fp' only, not {self.format!r}")
        if self.scaling in ("mx", "nv") or self.granularity in ("per-row", "per-block"):
            raise ValueError(
                f"scaling {self.scaling!r} / granularity {self.granularity!r} belong to the block-scaled "
                f"FP formats (format 'fp'); valid for {self.format!r}: scalings sawb, max, mean, learned; "
                "granularities per-tensor, per-sample, per-channel"
            )
        if (self.format == "aq") != (self.pruning != "none"):
            raise ValueError(
                f"pruning {self.pruning!r} does not fit format {self.format!r}: AQ needs 'range' or "
                "'topk', every other format 'none'"
            )
        if self.format == "int":
            if self.bits not in INT_BITS:
                raise ValueError(f"INT supports bits {INT_BITS.start}..{INT_BITS.stop - 1}, got {self.bits}")
            if self.scaling == "sawb" and self.bits != 4:
                raise ValueError(
                    "SAWB coefficients (12.1, 12.2) are fitted for 4 bits only; "
                    f"use scaling='max' for {self.bits} bits (valid scalings: {SCALINGS})"
                )
            if self.scaling == "learned" and (
                self.bits == 1 or self.rounding != "nearest" or self.granularity != "per-tensor"
            ):
                raise ValueError("a learned clip is one per layer: per-tensor, round-to-nearest, 2..8 bits")
            if (self.bits == 1) != (self.scaling == "mean"):
                raise ValueError(
                    "binary (1-bit INT) uses and only it uses scaling='mean' (sign(x)·mean|x|, XNOR-Net)"
                )
            if self.bits == 1 and self.rounding != "nearest":
                raise ValueError("binary (1-bit INT) is sign(x)·mean|x|: round-to-nearest")
        if self.format in ("lbt", "aq"):
            allowed = LBT_BITS if self.format == "lbt" else AQ_BITS
            name = self.format.upper()
            if self.bits not in allowed:
                raise ValueError(f"{name} supports bits {allowed.start}..{allowed.stop - 1}, got {self.bits}")
            if self.rounding != "stochastic" or self.scaling != "max" or self.signed != "signed":
                raise ValueError(
                    f"{name} rounds stochastically on a max-derived grid: rounding='stochastic', "
                    "scaling='max', signed='signed'"
                )
            if self.samples != 1:
                raise ValueError(
                    f"{name} takes one sample per step (samples=1): its state/budget is per draw"
                )
        if self.format == "luq":
            if self.bits not in LUQ_BITS:
                raise ValueError(f"LUQ supports bits {LUQ_BITS.start}..{LUQ_BITS.stop - 1}, got {self.bits}")
            if self.rounding != "stochastic":
                raise ValueError(
                    "LUQ is unbiased only with stochastic rounding; rounding must be 'stochastic'"
                )
            if self.signed != "signed":
                raise ValueError("LUQ is sign-magnitude; signed must be 'signed'")
            if self.scaling != "max":
                raise ValueError("LUQ scales by max|g| (α = max|g|/2^(levels-1)); scaling must be 'max'")

    def _check_fp(self) -> None:
        if self.element not in FP_ELEMENTS:
            raise ValueError(f"unknown FP element {self.element!r}; valid choices: {', '.join(FP_ELEMENTS)}")
        if self.bits != FP_ELEMENTS[self.element]:
            valid = [e for e, b in FP_ELEMENTS.items() if b == self.bits]
            raise ValueError(
                f"element {self.element} has {FP_ELEMENTS[self.element]} bits, not {self.bits}; valid for "
                f"{self.bits} bits: {', '.join(valid) or 'none (FP formats are 4 or 8 bits)'}"
            )
        if self.samples != 1 or self.pruning != "none" or self.signed != "signed":
            raise ValueError("FP formats are sign-magnitude, one sample, no pruning")
        if not all(isinstance(b, int) and not isinstance(b, bool) and b >= 0 for b in self.block):
            raise ValueError(f"block must be a tuple of non-negative ints, got {self.block!r}")
        expected = {(): "per-tensor", (0,): "per-row"}.get(self.block, "per-block")
        if self.granularity != expected:
            raise ValueError(f"block {self.block!r} is granularity {expected!r}, not {self.granularity!r}")
        if expected == "per-block" and (
            len(self.block) > 2 or len(set(self.block)) != 1 or self.block[0] not in FP_BLOCKS
        ):
            raise ValueError(f"FP blocks are (n,) or (n, n) with n in {FP_BLOCKS}, got {self.block!r}")
        if self.scaling in ("mx", "nv") and expected != "per-block":
            raise ValueError(f"scaling {self.scaling!r} is a block scale: give a block (mx32, nv16, ...)")
        if self.scaling == "nv" and self.element != "e2m1":
            raise ValueError("NVFP4 scaling ('nv': E4M3 block scale × FP32 tensor scale) is for e2m1 elements")
        if self.scaling == "max" and expected == "per-block":
            raise ValueError("FP blocks take an 'mx' or 'nv' scale; 'max' (FP32) scales are per row or tensor")
        if self.scaling not in ("mx", "nv", "max"):
            raise ValueError(f"FP formats scale by 'mx', 'nv' or 'max', not {self.scaling!r}")

    @property
    def block_label(self) -> str:
        """``mx32``, ``nv16x16``, ``row`` or ``tensor`` for FP formats; empty otherwise."""
        if self.format != "fp":
            return ""
        if self.granularity != "per-block":
            return self.granularity.removeprefix("per-")
        return self.scaling + "x".join(str(b) for b in self.block)

    @property
    def is_quantized(self) -> bool:
        return self.format != "none"

    @property
    def label(self) -> str:
        """Short human name, e.g. ``int4`` or ``luq4``, ``fp`` for high precision."""
        if self.format == "none":
            return "fp"
        prefix = "uint" if self.format == "int" and self.signed == "unsigned" else self.format
        if self.format == "fp" and self.bits == 8:
            return f"fp8-{self.element}"
        return f"{prefix}{self.bits}"

    @property
    def is_stateful(self) -> bool:
        """True for quantizers that carry state across steps (LBT's γ per layer)."""
        return self.format == "lbt" or self.scaling == "learned"

    def to_string(self) -> str:
        """Canonical string form; `parse_spec(spec.to_string()) == spec`."""
        if self.format == "none":
            return "fp32"
        parts = [self.label]
        if self.format == "fp":
            parts.append(self.block_label)
            if self.rounding == "stochastic":
                parts.append("sr")
            return "-".join(parts)
        if self.format == "int" and self.bits > 1:
            parts.append(self.scaling)
            parts.append("sr" if self.rounding == "stochastic" else "rdn")
        if self.format == "int" and self.signed == "auto":
            parts.append("auto")
        if self.pruning == "topk":
            parts.append("topk")
        parts.append(self.granularity.removeprefix("per-"))
        if self.samples > 1:
            parts.append(f"smp{self.samples}")
        return "-".join(parts)

    def with_(self, **changes: object) -> QuantSpec:
        """A copy with some fields changed (validated), like `dataclasses.replace`."""
        unknown = set(changes) - {f.name for f in fields(self)}
        if unknown:
            raise ValueError(
                f"unknown QuantSpec field(s) {sorted(unknown)}; valid: {[f.name for f in fields(self)]}"
            )
        return replace(self, **changes)


def _check_choice(name: str, value: object, choices: tuple[str, ...]) -> None:
    if value not in choices:
        raise ValueError(f"unknown {name} {value!r}; valid choices: {', '.join(choices)}")


_BASE = re.compile(r"^(int|uint|luq|lbt|aq)(\d+)$")
_SUFFIX = {
    "sawb": {"scaling": "sawb"},
    "max": {"scaling": "max"},
    "sr": {"rounding": "stochastic"},
    "rdn": {"rounding": "nearest"},
    "auto": {"signed": "auto"},
    "learned": {"scaling": "learned"},
    "tensor": {"granularity": "per-tensor"},
    "sample": {"granularity": "per-sample"},
    "channel": {"granularity": "per-channel"},
    "topk": {"pruning": "topk"},
}


def parse_spec(text: str | QuantSpec) -> QuantSpec:
    """Parse a spec string such as ``"int4"``, ``"uint4"``, ``"int8-max-sr-channel"``, ``"luq4-smp2"``.

    Block-scaled FP formats: ``fp4-mx32`` (MXFP4), ``fp4-nv16`` / ``fp4-nv16x16`` (NVFP4, 1×16 or
    16×16 blocks), ``fp8-e4m3-mx32`` (MXFP8), ``fp8-e4m3-row`` / ``fp8-e5m2-tensor`` (FP8 with
    FP32 scales), each with an optional ``-sr`` (stochastic rounding).

    Grammar: ``fp32 | none | (int|uint|luq|lbt|aq)<bits>[-suffix]*`` with suffixes ``sawb``/``max``
    (scaling), ``sr``/``rdn`` (rounding), ``auto`` (sign from data), ``tensor``/``sample``/
    ``channel`` (granularity), ``smp<N>`` (SMP samples), ``topk`` (AQ's biased released-code
    pruning). ``int4`` defaults to SAWB and round-to-nearest, ``int1`` is binary, other INT
    widths use max scaling; LUQ, LBT and AQ are always stochastic.
    """
    if isinstance(text, QuantSpec):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a quantizer spec must be a string or QuantSpec, got {type(text).__name__}")
    raw = text.strip().lower()
    if raw in ("fp32", "none", "fp", "high"):
        return QuantSpec()
    head, *suffixes = raw.split("-")
    if head in ("fp4", "fp8"):
        return _parse_fp(text, int(head[2:]), suffixes)
    m = _BASE.match(head)
    if not m:
        raise ValueError(
            f"unknown quantizer spec {text!r}; valid: fp32, int<b>, uint<b>, luq<b>, lbt<b>, aq<b>, fp4, fp8 with optional "
            f"suffixes {sorted(_SUFFIX) + ['smp<N>']}, e.g. {', '.join(NAMED_SPECS)}"
        )
    kind, bits = m.group(1), int(m.group(2))
    fields_: dict[str, object] = {"bits": bits}
    if kind in ("luq", "lbt"):
        fields_.update(format=kind, rounding="stochastic", scaling="max")
    elif kind == "aq":
        fields_.update(format="aq", rounding="stochastic", scaling="max", pruning="range")
    else:
        fields_.update(format="int", scaling={4: "sawb", 1: "mean"}.get(bits, "max"))
        fields_["signed"] = "unsigned" if kind == "uint" else "signed"
    for suffix in suffixes:
        if suffix in _SUFFIX:
            fields_.update(_SUFFIX[suffix])
        elif re.fullmatch(r"smp\d+", suffix):
            fields_["samples"] = int(suffix[3:])
        else:
            raise ValueError(
                f"unknown suffix {suffix!r} in quantizer spec {text!r}; "
                f"valid suffixes: {sorted(_SUFFIX) + ['smp<N>']}"
            )
    return QuantSpec(**fields_)  # type: ignore[arg-type]


_FP_BLOCK = re.compile(r"^(mx|nv)(\d+)(?:x(\d+))?$")


def _parse_fp(text: str, bits: int, suffixes: list[str]) -> QuantSpec:
    """``fp4[-e2m1][-mx32|-nv16|-nv16x16|-row|-tensor][-sr|-rdn]``,
    ``fp8[-e4m3|-e5m2][-mx32|-row|-tensor][-sr|-rdn]``. Defaults: fp4 is MXFP4 (e2m1, mx32), fp8
    is E4M3 with one FP32 scale per row."""
    fields_: dict[str, object] = {"format": "fp", "bits": bits, "element": "e2m1" if bits == 4 else "e4m3"}
    block: dict[str, object] = (
        {"scaling": "mx", "granularity": "per-block", "block": (32,)}
        if bits == 4
        else {"scaling": "max", "granularity": "per-row", "block": (0,)}
    )
    valid = "e2m1, e4m3, e5m2, mx<n>, nv<n>, nv<n>x<n>, row, tensor, sr, rdn"
    for suffix in suffixes:
        m = _FP_BLOCK.match(suffix)
        if suffix in FP_ELEMENTS:
            fields_["element"] = suffix
        elif m:
            n = int(m.group(2))
            if m.group(3) is not None and int(m.group(3)) != n:
                raise ValueError(f"2-D blocks are square (nv16x16), got {suffix!r} in {text!r}")
            shape = (n, n) if m.group(3) else (n,)
            block = {"scaling": m.group(1), "granularity": "per-block", "block": shape}
        elif suffix in ("row", "tensor"):
            block = {"scaling": "max", "granularity": f"per-{suffix}", "block": (0,) if suffix == "row" else ()}
        elif suffix in ("sr", "rdn"):
            fields_["rounding"] = "stochastic" if suffix == "sr" else "nearest"
        else:
            raise ValueError(f"unknown suffix {suffix!r} in FP spec {text!r}; valid suffixes: {valid}")
    fields_.update(block)
    return QuantSpec(**fields_)  # type: ignore[arg-type]


HIGH_PRECISION = QuantSpec()


HADAMARD_GEMMS = ("forward", "dgrad", "wgrad")
HADAMARD_SIGNS = ("random", "fixed")
HADAMARD_BLOCKS = (2, 4, 8, 16, 32, 64, 128, 256)


@dataclass(frozen=True)
class HadamardSpec:
    """A random Hadamard transform in front of some of each layer's three GEMMs.

    Both operands of a chosen GEMM are multiplied along its contraction axis by the same
    block-diagonal orthogonal ``H·diag(s)/√block`` (Sylvester ``H``, random signs ``s``), so the
    product is unchanged and only the quantization error changes: outliers are spread over the
    block, which helps block-scaled formats most (NVIDIA's NVFP4 recipe: 16×16 on the inputs of
    the weight-gradient GEMM; QuaRot/Quartet: on every GEMM).

    gemms: which GEMMs (``forward``: ``X·Wᵀ`` along K; ``dgrad``: ``dY·W`` along N; ``wgrad``:
        ``dYᵀ·X`` along the tokens M).
    block: the transform size, a power of two; a GEMM whose contraction length it does not
        divide runs without it (the plan shows which ran with one).
    signs: ``random`` (a fresh sign vector per GEMM call, from torch's generator) or ``fixed``
        (one sign vector for the whole run).
    """

    gemms: tuple[str, ...] = ("wgrad",)
    block: int = 16
    signs: str = "random"

    def __post_init__(self) -> None:
        gemms = tuple(self.gemms) if isinstance(self.gemms, (list, tuple)) else None
        if not gemms or any(g not in HADAMARD_GEMMS for g in gemms):
            raise ValueError(f"Hadamard gemms must be a non-empty subset of {HADAMARD_GEMMS}, got {self.gemms!r}")
        object.__setattr__(self, "gemms", tuple(g for g in HADAMARD_GEMMS if g in gemms))
        if self.block not in HADAMARD_BLOCKS:
            raise ValueError(f"Hadamard block must be one of {HADAMARD_BLOCKS}, got {self.block!r}")
        _check_choice("Hadamard signs", self.signs, HADAMARD_SIGNS)

    def applies_to(self, gemm: str) -> bool:
        return gemm in self.gemms

    def to_string(self) -> str:
        """``had16-wgrad``, ``had32-all-fixed``; `parse_hadamard` reads it back."""
        gemms = "all" if self.gemms == HADAMARD_GEMMS else "-".join(self.gemms)
        return f"had{self.block}-{gemms}" + ("-fixed" if self.signs == "fixed" else "")


def parse_hadamard(text: str | HadamardSpec) -> HadamardSpec:
    """Parse ``had<block>-<gemm>[-<gemm>...][-fixed|-random]`` with gemms ``forward``, ``dgrad``,
    ``wgrad`` or ``all``, e.g. ``"had16-wgrad"`` (NVFP4's recipe) or ``"had32-all"``."""
    if isinstance(text, HadamardSpec):
        return text
    if not isinstance(text, str):
        raise ValueError(f"a Hadamard spec must be a string or HadamardSpec, got {type(text).__name__}")
    head, *parts = text.strip().lower().split("-")
    m = re.fullmatch(r"had(\d+)", head)
    if not m or not parts:
        raise ValueError(
            f"unknown Hadamard spec {text!r}; valid: had<block>-<gemms>[-fixed], block in {HADAMARD_BLOCKS}, "
            f"gemms from {HADAMARD_GEMMS} or 'all', e.g. had16-wgrad, had32-all"
        )
    gemms: list[str] = []
    signs = "random"
    for p in parts:
        if p in HADAMARD_SIGNS:
            signs = p
        elif p == "all":
            gemms.extend(HADAMARD_GEMMS)
        elif p in HADAMARD_GEMMS:
            gemms.append(p)
        else:
            raise ValueError(
                f"unknown part {p!r} of Hadamard spec {text!r}; valid: {HADAMARD_GEMMS + ('all',) + HADAMARD_SIGNS}"
            )
    return HadamardSpec(tuple(gemms), int(m.group(1)), signs)
