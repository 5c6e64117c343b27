"""The quantizer vocabulary: which format, how many bits, how the scale is chosen.

`QuantSpec` is shared by the policy layer (which spec each operand role gets) and the runtime
(which op runs it). It has a compact string form (``"int4"``, ``"luq4"``, ``"int8-max-sr"``) that
users type in policies and that the runtime ops carry in the graph, so what the compiled graph
holds can be read back into the plan unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

FORMATS = ("none", "int", "luq", "lbt", "aq")
SCALINGS = ("sawb", "max", "mean", "learned")
GRANULARITIES = ("per-tensor", "per-sample", "per-channel")
ROUNDINGS = ("nearest", "stochastic")
SIGNS = ("signed", "unsigned", "auto")
PRUNINGS = ("none", "range", "topk")
INT_BITS = range(1, 9)
LUQ_BITS = range(2, 6)
LBT_BITS = range(2, 9)
AQ_BITS = range(2, 9)
MAX_SAMPLES = 16

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
)


@dataclass(frozen=True)
class QuantSpec:
    """How one GEMM operand is quantized.

    format: ``"none"`` (high precision), ``"int"`` (uniform fixed point; 1 bit is binary,
        ``sign(x)·mean|x|``), ``"luq"`` (logarithmic unbiased, FP4 [1,3,0] for 4 bits; always
        stochastic), ``"lbt"`` (INT with stochastic rounding and the adaptive clip ``γ·max|g|``
        of Kim et al., γ per layer kept as model state; gradients only) or ``"aq"`` (1-bit FQT's
        activation-gradient pruning + per-group asymmetric stochastic rounding, Gao et al.;
        gradients only; ``bits`` per kept element, ``1/bits`` of the groups kept on average).
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

    def __post_init__(self) -> None:
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

    @property
    def is_quantized(self) -> bool:
        return self.format != "none"

    @property
    def label(self) -> str:
        """Short human name, e.g. ``int4`` or ``luq4``, ``fp`` for high precision."""
        if self.format == "none":
            return "fp"
        prefix = "uint" if self.format == "int" and self.signed == "unsigned" else self.format
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
    m = _BASE.match(head)
    if not m:
        raise ValueError(
            f"unknown quantizer spec {text!r}; valid: fp32, int<b>, uint<b>, luq<b>, lbt<b>, aq<b> with optional "
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


HIGH_PRECISION = QuantSpec()
