"""Quantization policies: which quantizer each GEMM operand role gets, per layer.

A `Policy` holds one `QuantSpec` per operand role of a layer's three GEMMs:

=============  =========================================  ==============================
role           operand                                    granularities that factor out
=============  =========================================  ==============================
weight         W in the forward (and, saved, in dgrad)    per-tensor, per-channel
activation     X in the forward (and, saved, in wgrad)    per-tensor, per-sample
grad_dgrad     dY in ``dX = dY·W``                         per-tensor, per-sample
grad_wgrad     dY in ``dW = dYᵀ·X``                        per-tensor, per-channel
=============  =========================================  ==============================

A scale can leave a low-bit GEMM only if it is constant along the contraction axis; that is
the whole idea of SCQ and the reason for the table. Rules override specs per module path or op.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import functools
from dataclasses import dataclass, field, fields

from qcompile.runtime.spec import HIGH_PRECISION, HadamardSpec, QuantSpec, parse_hadamard, parse_spec

ROLES = ("weight", "activation", "grad_dgrad", "grad_wgrad")
RECOMPUTE_CHOICES = ("gemm", "pointwise", "none")
ROLE_FORMATS = {
    "weight": ("none", "int", "fp"),
    "activation": ("none", "int", "fp"),
    "grad_dgrad": ("none", "int", "luq", "lbt", "aq", "fp"),
    "grad_wgrad": ("none", "int", "luq", "lbt", "aq", "fp"),
}
ROLE_GRANULARITIES = {
    "weight": ("per-tensor", "per-channel"),
    "activation": ("per-tensor", "per-sample"),
    "grad_dgrad": ("per-tensor", "per-sample"),
    "grad_wgrad": ("per-tensor", "per-channel"),
}
OP_KINDS = (
    "linear", "addmm", "mm", "bmm", "matmul", "baddbmm",
    "conv1d", "conv2d", "conv3d", "conv_transpose1d", "conv_transpose2d", "conv_transpose3d",
    "attention.qk", "attention.pv",
)  # fmt: skip


class PolicyError(ValueError):
    """A policy, rule or quantizer spec that cannot be honoured; the message names valid choices."""


def role_spec(role: str, value: object) -> QuantSpec:
    """``value`` parsed as the quantizer of operand ``role``, or a `PolicyError` naming the role
    and, for a spec the role cannot take, the ones it can (shared by policies and policy files,
    so both reject the same values with the same words)."""
    try:
        spec = parse_spec(value)  # type: ignore[arg-type]
    except ValueError as e:
        raise PolicyError(f"{role}: {e}") from None
    if spec.format not in ROLE_FORMATS[role]:
        raise PolicyError(
            f"{role}: format {spec.format!r} is not allowed; valid formats for {role}: {ROLE_FORMATS[role]}"
        )
    # A block-scaled FP spec places its scales along whichever GEMM axis is contracted (the
    # forward's K, and backward requantizes along N or M), so every role can take it.
    if spec.is_quantized and spec.format != "fp" and spec.granularity not in ROLE_GRANULARITIES[role]:
        raise PolicyError(
            f"{role}: granularity {spec.granularity!r} cannot be factored out of its GEMM "
            f"(the scale would vary along the contraction axis); valid: {ROLE_GRANULARITIES[role]}"
        )
    if spec.scaling == "learned" and role not in ("weight", "activation"):
        raise PolicyError(f"{role}: a learned clip is a forward quantizer (weight, activation)")
    if spec.samples > 1 and role in ("weight", "activation"):
        raise PolicyError(f"{role}: samples (SMP) applies to gradient roles only")
    return spec


def attention_spec(value: object) -> QuantSpec:
    """``value`` parsed as the spec of attention's GEMM operands (`Policy.attention`): an
    activation spec without a learned clip (attention has no layer to hold one)."""
    try:
        spec = role_spec("activation", value)
    except PolicyError as e:
        raise PolicyError(f"attention ({e})") from None
    if spec.scaling == "learned":
        raise PolicyError("attention: a learned clip needs a layer to hold it; valid scalings: sawb, max")
    return spec


def _strict_init(cls):
    """Unknown keyword fields raise `PolicyError` naming the valid fields (not a bare TypeError)."""
    dc_init = cls.__init__
    names = [f.name for f in fields(cls)]

    @functools.wraps(dc_init)
    def __init__(self, *args, **kwargs):
        unknown = sorted(set(kwargs) - set(names))
        if unknown:
            raise PolicyError(f"unknown {cls.__name__} field(s) {unknown}; valid fields: {names}")
        dc_init(self, *args, **kwargs)

    cls.__init__ = __init__
    return cls


@_strict_init
@dataclass(frozen=True)
class Rule:
    """Override some roles for layers whose module path matches ``layer`` and whose op kind
    matches ``op`` (both `fnmatch` globs, e.g. ``layer="head"``, ``op="attention.*"``).

    Unset roles keep what the policy gave. Later rules win over earlier ones.
    """

    layer: str = "*"
    op: str = "*"
    weight: QuantSpec | str | None = None
    activation: QuantSpec | str | None = None
    grad_dgrad: QuantSpec | str | None = None
    grad_wgrad: QuantSpec | str | None = None
    reason: str = ""

    def __post_init__(self) -> None:
        for role in ROLES:
            value = getattr(self, role)
            if value is not None:
                object.__setattr__(self, role, role_spec(role, value))
        if all(getattr(self, r) is None for r in ROLES):
            raise PolicyError(
                f"rule for layer={self.layer!r} op={self.op!r} overrides no role; set one of {ROLES}"
            )
        if not isinstance(self.layer, str) or not isinstance(self.op, str):
            raise PolicyError("rule layer and op must be glob strings")

    @classmethod
    def high_precision(cls, layer: str = "*", op: str = "*", reason: str = "") -> Rule:
        """Keep matching layers entirely in high precision."""
        return cls(
            layer=layer, op=op, reason=reason or "rule: high precision", **dict.fromkeys(ROLES, "fp32")
        )

    def matches(self, layer: str, op: str) -> bool:
        return fnmatch.fnmatchcase(layer, self.layer) and fnmatch.fnmatchcase(op, self.op)


@dataclass(frozen=True)
class LayerDecision:
    """The four specs one GEMM site gets, and why it deviates from the policy's defaults."""

    weight: QuantSpec
    activation: QuantSpec
    grad_dgrad: QuantSpec
    grad_wgrad: QuantSpec
    share_gradient_sample: bool
    reasons: tuple[str, ...] = ()
    hadamard: HadamardSpec | None = None

    @property
    def requantizes(self) -> bool:
        """Whether this site's backward needs its operands requantized along the backward
        contraction axes (`qcompile::qmatmul_rq`): a block-scaled FP role, or a Hadamard."""
        specs = [getattr(self, r) for r in ROLES]
        return self.hadamard is not None or any(s.format == "fp" for s in specs)

    @property
    def any_quantized(self) -> bool:
        return any(getattr(self, r).is_quantized for r in ROLES)


@_strict_init
@dataclass(frozen=True)
class Policy:
    """What every GEMM of a model runs at. Frozen; derive variants with `Policy.replace`.

    share_gradient_sample: one dY sample feeds both backward GEMMs (the LUQ paper); needs the
        same per-tensor spec for both gradient roles, since only a per-tensor scale factors out
        of both GEMMs.
    keep_first_last: the first and last weight-bearing GEMM of each compiled graph stay in high
        precision (as in the LBT and 1-bit FQT code); shown in the plan.
    rules: per-layer overrides (`Rule`), applied in order after ``keep_first_last``.
    pack_saved: store what backward reads packed (4-bit operands two per byte with their
        scales, boolean masks as bits) instead of as FP32 / bool tensors; bit-identical results.
        Off only to compare or debug.
    attention: the spec of both operands of attention's two GEMMs (``q·kᵀ``, ``p·v``: ops
        ``attention.qk`` / ``attention.pv``), or None (the dataclass default, so that e.g.
        ``activation="fp32"`` also keeps attention in high precision) for the ``activation``
        spec. The default preset ``luq-int4`` sets INT4 with a max scale per row. They are
        activations, but P = softmax(·) lies in [0, 1] with most entries near 1/T: one scale per
        tensor rounds most of P to 0, while a scale per row (``sample``: per query for P and q,
        per key for kᵀ, per channel for v) is still constant along each contraction (SCQ).
        Rules on ``op="attention.*"`` override it through ``activation`` (both operands are activations,
        so the decision's ``weight`` is set to the same spec) and the gradient roles.
    hadamard: a random Hadamard transform (`HadamardSpec` or its string, e.g. ``"had16-wgrad"``)
        on both operands of the chosen GEMMs of every quantized layer, along each GEMM's
        contraction axis (the product is unchanged; outliers are spread over the block). None:
        no transform. Layers kept in high precision never get one.
    recompute: what backward may rebuild instead of saving (with ``pack_saved``; results stay
        bit-identical). ``"gemm"`` (default): ``Ŵ`` from ``W`` and the saved clip, elementwise
        chains, and FP32 tensors one GEMM away from saved codes (LayerNorm/BatchNorm inputs,
        softmax outputs, a high-precision layer's input), at the price of that GEMM again in
        backward. ``"pointwise"``: only the first two. ``"none"``: what AOTAutograd's partitioner
        chooses.
    """

    weight: QuantSpec | str = "int4"
    activation: QuantSpec | str = "int4-auto"
    grad_dgrad: QuantSpec | str = "luq4-sample"
    grad_wgrad: QuantSpec | str = "luq4-channel"
    share_gradient_sample: bool = False
    keep_first_last: bool = True
    rules: tuple[Rule, ...] = field(default_factory=tuple)
    name: str = "custom"
    pack_saved: bool = True
    recompute: str = "gemm"
    attention: QuantSpec | str | None = None
    hadamard: HadamardSpec | str | None = None

    def __post_init__(self) -> None:
        for role in ROLES:
            object.__setattr__(self, role, role_spec(role, getattr(self, role)))
        if self.attention is not None:
            object.__setattr__(self, "attention", attention_spec(self.attention))
        rules = tuple(self.rules) if isinstance(self.rules, (list, tuple)) else None
        if rules is None or not all(isinstance(r, Rule) for r in rules):
            raise PolicyError("rules must be a sequence of qcompile.Rule")
        object.__setattr__(self, "rules", rules)
        for flag in ("share_gradient_sample", "keep_first_last", "pack_saved"):
            if not isinstance(getattr(self, flag), bool):
                raise PolicyError(f"{flag} must be True or False, got {getattr(self, flag)!r}")
        if self.recompute not in RECOMPUTE_CHOICES:
            raise PolicyError(f"recompute must be one of {RECOMPUTE_CHOICES}, got {self.recompute!r}")
        if self.share_gradient_sample:
            _check_shareable(self.grad_dgrad, self.grad_wgrad)
        if self.hadamard is not None:
            try:
                object.__setattr__(self, "hadamard", parse_hadamard(self.hadamard))
            except ValueError as e:
                raise PolicyError(f"hadamard: {e}") from None
        _check_requantizable(self)

    @property
    def is_high_precision(self) -> bool:
        """True when no role of no layer can be quantized (the ``fp32`` preset)."""
        specs = [getattr(self, r) for r in ROLES] + [getattr(rule, r) for rule in self.rules for r in ROLES]
        specs.append(self.attention)
        return not any(s is not None and s.is_quantized for s in specs)

    def replace(self, **changes: object) -> Policy:
        """A copy with some fields changed, validated like the constructor."""
        unknown = sorted(set(changes) - {f.name for f in fields(self)})
        if unknown:
            raise PolicyError(
                f"unknown Policy field(s) {unknown}; valid fields: {[f.name for f in fields(self)]}"
            )
        return dataclasses.replace(self, **changes)

    def decide(self, layer: str, op: str, position: str | None = None) -> LayerDecision:
        """Resolve the specs for one GEMM site. ``position`` is ``"first"``/``"last"``/None."""
        if position not in (None, "first", "last"):
            raise PolicyError(f"position must be 'first', 'last' or None, got {position!r}")
        specs = {r: getattr(self, r) for r in ROLES}
        if self.attention is not None and op.startswith("attention."):
            specs["activation"] = self.attention
        reasons: list[str] = []
        if self.keep_first_last and position is not None:
            specs = dict.fromkeys(ROLES, HIGH_PRECISION)
            reasons.append(f"{position} GEMM layer (keep_first_last)")
        for rule in self.rules:
            if rule.matches(layer, op):
                for role in ROLES:
                    if getattr(rule, role) is not None:
                        specs[role] = getattr(rule, role)
                reasons.append(rule.reason or f"rule layer={rule.layer!r} op={rule.op!r}")
        if op.startswith("attention."):
            # Both operands of q·kᵀ and p·v are activations: the right one (kᵀ, v) takes the
            # activation spec too, so the decision says what the graph runs (and the shortfall
            # check does not expect a weight quantizer there).
            specs["weight"] = specs["activation"]
        share = self.share_gradient_sample and specs["grad_dgrad"] == specs["grad_wgrad"]
        quantized = any(s.is_quantized for s in specs.values())
        hadamard = self.hadamard if quantized else None
        return LayerDecision(
            **specs, share_gradient_sample=share, reasons=tuple(reasons), hadamard=hadamard
        )


def _check_requantizable(policy: Policy) -> None:
    """Block-scaled FP operands and backward Hadamards are requantized from the high-precision
    tensor along another axis in backward, which a learned clip (one α per layer, fitted to the
    forward's grid) cannot do; a shared dY draw cannot serve two different transforms."""
    specs = [getattr(policy, r) for r in ROLES] + [getattr(rule, r) for rule in policy.rules for r in ROLES]
    specs.append(policy.attention)
    uses_fp = any(s is not None and s.format == "fp" for s in specs)
    backward_had = policy.hadamard is not None and any(g in policy.hadamard.gemms for g in ("dgrad", "wgrad"))
    if not (uses_fp or policy.hadamard is not None):
        return
    if any(s is not None and s.scaling == "learned" for s in specs):
        raise PolicyError(
            "a learned clip cannot be combined with block-scaled FP formats or a Hadamard transform "
            "(their backward requantizes the operand along another axis); valid: sawb, max scalings"
        )
    if backward_had and policy.share_gradient_sample:
        raise PolicyError("share_gradient_sample cannot be combined with a dgrad/wgrad Hadamard: each "
                          "backward GEMM transforms dY along its own axis")  # fmt: skip


def _check_shareable(dgrad: QuantSpec, wgrad: QuantSpec) -> None:
    if dgrad != wgrad:
        raise PolicyError("share_gradient_sample needs grad_dgrad == grad_wgrad")
    if dgrad.is_quantized and dgrad.granularity != "per-tensor":
        raise PolicyError(
            "share_gradient_sample needs a per-tensor gradient spec: a per-sample scale does not "
            "factor out of the wgrad GEMM, nor a per-channel one out of dgrad"
        )
