"""The quantizer vocabulary: which format, how many bits, how the scale is chosen.

`QuantSpec` is shared by the policy layer (which spec each operand role gets) and the runtime
(which op runs it). It has a compact string form (``"int4"``, ``"luq4"``, ``"int8-max-sr"``) that
users type in policies and that the runtime ops carry in the graph, so what the compiled graph
holds can be read back into the plan unchanged.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, fields, replace

FORMATS = ("none", "int", "luq")
SCALINGS = ("sawb", "max")
GRANULARITIES = ("per-tensor", "per-sample", "per-channel")
ROUNDINGS = ("nearest", "stochastic")
SIGNS = ("signed", "unsigned", "auto")
INT_BITS = range(2, 9)
LUQ_BITS = range(2, 6)
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
)


@dataclass(frozen=True)
class QuantSpec:
    """How one GEMM operand is quantized.

    format: ``"none"`` (high precision), ``"int"`` (uniform fixed point) or ``"luq"``
        (logarithmic unbiased, FP4 [1,3,0] for 4 bits; always stochastic).
    bits: bit width including sign (INT 2-8, LUQ 2-5).
    scaling: INT clip choice: ``"sawb"`` (4-bit only, coefficients of the SAWB fit) or ``"max"``.
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
    """

    format: str = "none"
    bits: int = 32
    scaling: str = "max"
    granularity: str = "per-tensor"
    rounding: str = "nearest"
    signed: str = "signed"
    samples: int = 1

    def __post_init__(self) -> None:
        _check_choice("format", self.format, FORMATS)
        _check_choice("scaling", self.scaling, SCALINGS)
        _check_choice("granularity", self.granularity, GRANULARITIES)
        _check_choice("rounding", self.rounding, ROUNDINGS)
        _check_choice("signed", self.signed, SIGNS)
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
        if self.format == "int":
            if self.bits not in INT_BITS:
                raise ValueError(f"INT supports bits {INT_BITS.start}..{INT_BITS.stop - 1}, got {self.bits}")
            if self.scaling == "sawb" and self.bits != 4:
                raise ValueError(
                    "SAWB coefficients (12.1, 12.2) are fitted for 4 bits only; "
                    f"use scaling='max' for {self.bits} bits (valid scalings: {SCALINGS})"
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

    def to_string(self) -> str:
        """Canonical string form; `parse_spec(spec.to_string()) == spec`."""
        if self.format == "none":
            return "fp32"
        parts = [self.label]
        if self.format == "int":
            parts.append(self.scaling)
            parts.append("sr" if self.rounding == "stochastic" else "rdn")
            if self.signed == "auto":
                parts.append("auto")
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


_BASE = re.compile(r"^(int|uint|luq)(\d+)$")
_SUFFIX = {
    "sawb": {"scaling": "sawb"},
    "max": {"scaling": "max"},
    "sr": {"rounding": "stochastic"},
    "rdn": {"rounding": "nearest"},
    "auto": {"signed": "auto"},
    "tensor": {"granularity": "per-tensor"},
    "sample": {"granularity": "per-sample"},
    "channel": {"granularity": "per-channel"},
}


def parse_spec(text: str | QuantSpec) -> QuantSpec:
    """Parse a spec string such as ``"int4"``, ``"uint4"``, ``"int8-max-sr-channel"``, ``"luq4-smp2"``.

    Grammar: ``fp32 | none | (int|uint|luq)<bits>[-suffix]*`` with suffixes ``sawb``/``max``
    (scaling), ``sr``/``rdn`` (rounding), ``auto`` (sign from data), ``tensor``/``sample``/
    ``channel`` (granularity), ``smp<N>`` (SMP samples). ``int4`` defaults to SAWB and
    round-to-nearest, other INT widths to max scaling; LUQ is always stochastic.
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
            f"unknown quantizer spec {text!r}; valid: fp32, int<b>, uint<b>, luq<b> with optional "
            f"suffixes {sorted(_SUFFIX) + ['smp<N>']}, e.g. {', '.join(NAMED_SPECS)}"
        )
    kind, bits = m.group(1), int(m.group(2))
    fields_: dict[str, object] = {"bits": bits}
    if kind == "luq":
        fields_.update(format="luq", rounding="stochastic", scaling="max")
    else:
        fields_.update(format="int", scaling="sawb" if bits == 4 else "max")
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
