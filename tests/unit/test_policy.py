"""The policy layer: `qcompile.Policy`, `qcompile.Rule` and the named presets.

The role/granularity table is the SCQ rule (docs/algorithms.md): a scale can leave a low-bit GEMM only
if it is constant along that GEMM's contraction axis.
"""

from __future__ import annotations

import dataclasses
import re

import pytest

import qcompile
from qcompile import Policy, PolicyError, QuantSpec, Rule, parse_spec

HP = QuantSpec()  # high precision
ROLES = ("weight", "activation", "grad_dgrad", "grad_wgrad")


def specs_of(obj) -> dict[str, QuantSpec]:
    return {r: getattr(obj, r) for r in ROLES}


# --------------------------------------------------------------------------- construction


def test_policy_error_is_value_error():
    assert issubclass(PolicyError, ValueError)


def test_policy_is_frozen():
    p = Policy()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.weight = "int8"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.keep_first_last = False  # type: ignore[misc]


def test_rule_is_frozen():
    r = Rule(layer="head", weight="int8")
    with pytest.raises(dataclasses.FrozenInstanceError):
        r.layer = "body"  # type: ignore[misc]


def test_string_specs_are_coerced_to_quantspec():
    p = Policy(weight="int8", activation="uint4", grad_dgrad="int8-sr", grad_wgrad="luq4")
    for role in ROLES:
        assert isinstance(getattr(p, role), QuantSpec)
    assert p.weight == parse_spec("int8")
    assert p.activation == parse_spec("uint4")
    assert p.grad_dgrad == parse_spec("int8-sr")
    assert p.grad_wgrad == parse_spec("luq4")


def test_quantspec_instances_are_kept():
    spec = QuantSpec(format="int", bits=8, granularity="per-channel")
    p = Policy(weight=spec)
    assert p.weight is spec


def test_rule_string_specs_are_coerced():
    r = Rule(layer="head", weight="int8", grad_wgrad="luq4-channel")
    assert r.weight == parse_spec("int8")
    assert r.grad_wgrad == parse_spec("luq4-channel")
    assert r.activation is None and r.grad_dgrad is None


@pytest.mark.parametrize(
    ("role", "spec"),
    [
        ("weight", "int4"),
        ("weight", "int4-channel"),
        ("weight", "int8-max-channel"),
        ("activation", "int4-auto"),
        ("activation", "int8-sample"),
        ("grad_dgrad", "luq4"),
        ("grad_dgrad", "luq4-sample"),
        ("grad_dgrad", "int8-sr-sample"),
        ("grad_wgrad", "luq4-channel"),
        ("grad_wgrad", "int4-sr-channel"),
        ("grad_dgrad", "luq4-smp2"),
        ("grad_wgrad", "fp32"),
    ],
)
def test_allowed_role_specs(role, spec):
    p = Policy(**{role: spec})
    assert getattr(p, role) == parse_spec(spec)


@pytest.mark.parametrize(
    ("role", "spec", "valid"),
    [
        # dX = dY W contracts over Cout: a per-channel dY scale varies along it.
        ("grad_dgrad", "luq4-channel", ("per-tensor", "per-sample")),
        # dW = dY^T X contracts over N: a per-sample dY scale varies along it.
        ("grad_wgrad", "luq4-sample", ("per-tensor", "per-channel")),
        ("weight", "int4-sample", ("per-tensor", "per-channel")),
        ("activation", "int4-channel", ("per-tensor", "per-sample")),
    ],
)
def test_granularity_table_is_enforced(role, spec, valid):
    with pytest.raises(PolicyError) as exc:
        Policy(**{role: spec})
    msg = str(exc.value)
    assert role in msg
    for g in valid:
        assert g in msg
    assert isinstance(exc.value, ValueError)


def test_granularity_table_is_enforced_in_rules():
    with pytest.raises(PolicyError, match="per-sample"):
        Rule(layer="x", grad_dgrad="luq4-channel")


@pytest.mark.parametrize("role", ["weight", "activation"])
def test_luq_format_rejected_on_forward_roles(role):
    with pytest.raises(PolicyError) as exc:
        Policy(**{role: "luq4"})
    msg = str(exc.value)
    assert role in msg and "format" in msg
    assert "'none'" in msg and "'int'" in msg


@pytest.mark.parametrize("role", ["weight", "activation"])
def test_samples_rejected_on_forward_roles(role):
    # A LUQ spec is already rejected for its format; an INT spec with SMP for its samples.
    with pytest.raises(PolicyError):
        Policy(**{role: "luq4-smp2"})
    with pytest.raises(PolicyError, match="gradient roles only"):
        Policy(**{role: "int4-smp2"})


@pytest.mark.parametrize("spec", ["int9", "luq6", "int5-sawb", "int4-bogus", "float4", "", "luq4-rdn"])
def test_invalid_spec_strings_raise_policy_error(spec):
    with pytest.raises(PolicyError, match="weight|grad_dgrad"):
        Policy(grad_dgrad=spec) if spec.startswith("luq") else Policy(weight=spec)


@pytest.mark.parametrize("value", [None, 4, 4.0, ["int4"]])
def test_non_string_spec_raises_policy_error(value):
    with pytest.raises(PolicyError, match="weight"):
        Policy(weight=value)


def test_unknown_policy_field_names_valid_fields():
    with pytest.raises(PolicyError) as exc:
        Policy(wieght="int4")
    msg = str(exc.value)
    assert "wieght" in msg
    for name in ("weight", "activation", "grad_dgrad", "grad_wgrad", "share_gradient_sample", "rules"):
        assert name in msg


def test_replace_unknown_field_names_valid_fields():
    with pytest.raises(PolicyError) as exc:
        Policy().replace(foo=1)
    msg = str(exc.value)
    assert "foo" in msg and "keep_first_last" in msg


def test_unknown_rule_field_raises_policy_error():
    with pytest.raises(PolicyError, match="valid fields"):
        Rule(layer="x", wieght="int8")


def test_replace_returns_validated_copy():
    p = Policy()
    q = p.replace(weight="int8", keep_first_last=False)
    assert q.weight == parse_spec("int8") and q.keep_first_last is False
    assert p.weight == parse_spec("int4") and p.keep_first_last is True
    with pytest.raises(PolicyError):
        p.replace(weight="luq4")


@pytest.mark.parametrize("flag", ["share_gradient_sample", "keep_first_last"])
@pytest.mark.parametrize("value", [1, "yes", None])
def test_flags_must_be_bool(flag, value):
    with pytest.raises(PolicyError, match=flag):
        Policy(**{flag: value})


def test_rules_must_be_rule_sequence():
    with pytest.raises(PolicyError, match="rules"):
        Policy(rules=({"layer": "x", "weight": "int8"},))
    with pytest.raises(PolicyError, match="rules"):
        Policy(rules=Rule(layer="x", weight="int8"))
    p = Policy(rules=[Rule(layer="x", weight="int8")])  # a list is accepted, stored as a tuple
    assert isinstance(p.rules, tuple) and len(p.rules) == 1


# --------------------------------------------------------------------------- share_gradient_sample


def test_share_gradient_sample_needs_equal_specs():
    # The default's per-sample / per-channel split cannot be one shared sample.
    with pytest.raises(PolicyError, match="grad_dgrad == grad_wgrad"):
        Policy(share_gradient_sample=True)
    with pytest.raises(PolicyError, match="grad_dgrad == grad_wgrad"):
        Policy(grad_dgrad="luq4", grad_wgrad="luq4-smp2", share_gradient_sample=True)


def test_share_gradient_sample_with_equal_per_tensor_specs():
    p = Policy(grad_dgrad="luq4", grad_wgrad="luq4", share_gradient_sample=True)
    assert p.share_gradient_sample
    p = Policy(grad_dgrad="int8-sr", grad_wgrad="int8-sr", share_gradient_sample=True)
    assert p.share_gradient_sample
    p = Policy(grad_dgrad="fp32", grad_wgrad="fp32", share_gradient_sample=True)
    assert p.share_gradient_sample


def test_share_checked_on_replace():
    p = qcompile.preset("luq")
    with pytest.raises(PolicyError):
        p.replace(grad_wgrad="luq4-channel")
    assert p.replace(grad_wgrad="luq4-channel", grad_dgrad="luq4-sample", share_gradient_sample=False)


# --------------------------------------------------------------------------- decide


def test_decide_middle_layer_gets_policy_specs():
    p = Policy()
    d = p.decide("body.fc", "linear")
    assert specs_of(d) == specs_of(p)
    assert d.reasons == ()
    assert d.any_quantized
    assert d.share_gradient_sample is False


@pytest.mark.parametrize("position", ["first", "last"])
def test_keep_first_last_is_high_precision_with_reason(position):
    d = Policy().decide("stem", "conv2d", position)
    assert all(s == HP for s in specs_of(d).values())
    assert not d.any_quantized
    assert len(d.reasons) == 1
    assert position in d.reasons[0] and "keep_first_last" in d.reasons[0]


def test_keep_first_last_off():
    p = Policy(keep_first_last=False)
    d = p.decide("stem", "conv2d", "first")
    assert specs_of(d) == specs_of(p)
    assert d.reasons == ()


def test_rule_overrides_only_its_roles():
    p = Policy(rules=(Rule(layer="head", weight="int8", reason="wider head"),))
    d = p.decide("head", "linear")
    assert d.weight == parse_spec("int8")
    assert d.activation == p.activation
    assert d.grad_dgrad == p.grad_dgrad
    assert d.grad_wgrad == p.grad_wgrad
    assert d.reasons == ("wider head",)
    assert p.decide("body", "linear").weight == p.weight


def test_rule_default_reason_names_layer_and_op():
    p = Policy(rules=(Rule(layer="head", op="linear", weight="int8"),))
    (reason,) = p.decide("head", "linear").reasons
    assert "head" in reason and "linear" in reason


def test_later_rules_win():
    p = Policy(
        rules=(
            Rule(weight="int8", reason="all int8"),
            Rule(layer="head", weight="int4-max", reason="head int4-max"),
            Rule(layer="head", activation="int8", reason="head act int8"),
        )
    )
    d = p.decide("head", "linear")
    assert d.weight == parse_spec("int4-max")
    assert d.activation == parse_spec("int8")
    assert d.reasons == ("all int8", "head int4-max", "head act int8")
    d = p.decide("body", "linear")
    assert d.weight == parse_spec("int8")
    assert d.activation == p.activation
    assert d.reasons == ("all int8",)

    swapped = p.replace(rules=(p.rules[1], p.rules[0]))
    assert swapped.decide("head", "linear").weight == parse_spec("int8")


def test_rules_apply_after_keep_first_last():
    p = Policy(rules=(Rule(layer="stem", weight="int8", reason="stem weight int8"),))
    d = p.decide("stem", "conv2d", "first")
    assert d.weight == parse_spec("int8")
    assert d.activation == HP and d.grad_dgrad == HP and d.grad_wgrad == HP
    assert len(d.reasons) == 2
    assert "keep_first_last" in d.reasons[0]
    assert d.reasons[1] == "stem weight int8"


@pytest.mark.parametrize(
    ("op", "matches"),
    [("attention.qk", True), ("attention.pv", True), ("linear", False), ("bmm", False)],
)
def test_rule_op_glob(op, matches):
    rule = Rule(op="attention.*", grad_dgrad="fp32", grad_wgrad="fp32")
    assert rule.matches("encoder.0.attn", op) is matches
    p = Policy(rules=(rule,))
    d = p.decide("encoder.0.attn", op)
    assert (d.grad_dgrad == HP) is matches
    # attention's right operand (kᵀ, v) is an activation: it gets the activation spec
    assert d.weight == (d.activation if op.startswith("attention.") else p.weight)


@pytest.mark.parametrize(
    ("layer", "matches"),
    [
        ("encoder.0.fc1", True),
        ("encoder.layers.11.fc1", True),
        ("decoder.0.fc1", False),
        ("encoder.0.fc2", False),
        ("encoder.0.fc1.extra", False),
    ],
)
def test_rule_layer_glob(layer, matches):
    rule = Rule(layer="encoder.*.fc1", weight="int8")
    assert rule.matches(layer, "linear") is matches
    assert (Policy(rules=(rule,)).decide(layer, "linear").weight == parse_spec("int8")) is matches


def test_rule_layer_and_op_both_must_match():
    rule = Rule(layer="head", op="linear", weight="int8")
    assert rule.matches("head", "linear")
    assert not rule.matches("head", "conv2d")
    assert not rule.matches("body", "linear")


def test_rule_high_precision():
    r = Rule.high_precision(layer="head")
    assert all(s == HP for s in specs_of(r).values())
    assert r.layer == "head" and r.op == "*"
    assert r.reason
    d = Policy(rules=(r,)).decide("head", "linear")
    assert not d.any_quantized
    assert d.reasons == (r.reason,)
    assert Policy(rules=(r,)).decide("body", "linear").any_quantized
    assert Rule.high_precision(op="attention.*", reason="softmax path").reason == "softmax path"


def test_rule_with_no_role_raises():
    with pytest.raises(PolicyError, match="overrides no role"):
        Rule(layer="head")
    with pytest.raises(PolicyError, match="overrides no role"):
        Rule(layer="head", reason="why")


def test_rule_layer_and_op_must_be_strings():
    with pytest.raises(PolicyError, match="glob"):
        Rule(layer=3, weight="int8")  # type: ignore[arg-type]
    with pytest.raises(PolicyError, match="glob"):
        Rule(op=None, weight="int8")  # type: ignore[arg-type]


def test_decide_share_gradient_sample():
    p = qcompile.preset("luq")
    assert p.decide("body", "linear").share_gradient_sample is True
    # A rule that makes the two gradient specs differ turns sharing off for that layer only.
    p = p.replace(rules=(Rule(layer="head", grad_wgrad="luq4-smp2"),))
    assert p.decide("head", "linear").share_gradient_sample is False
    assert p.decide("body", "linear").share_gradient_sample is True
    # The default policy never shares.
    assert Policy().decide("body", "linear").share_gradient_sample is False


# --------------------------------------------------------------------------- presets


def test_presets_listed():
    names = qcompile.presets()
    assert {"luq-int4", "luq", "luq-smp2", "fp32"} <= set(names)
    for name, policy in names.items():
        assert isinstance(policy, Policy)
        assert policy.name == name
        assert qcompile.preset(name) is policy


def test_presets_returns_a_copy():
    qcompile.presets().pop("luq")
    qcompile.presets()["evil"] = Policy()
    assert "luq" in qcompile.presets()
    assert "evil" not in qcompile.presets()


@pytest.mark.parametrize("name", ["nope", "LUQ", "", None, ["luq"]])
def test_unknown_preset_lists_names(name):
    with pytest.raises(ValueError) as exc:
        qcompile.preset(name)  # type: ignore[arg-type]
    assert isinstance(exc.value, PolicyError)
    msg = str(exc.value)
    for valid in ("luq-int4", "luq", "luq-smp2", "fp32"):
        assert valid in msg


def test_default_preset_is_luq_int4():
    assert qcompile.DEFAULT_PRESET == "luq-int4"
    assert qcompile.resolve_policy(None).name == "luq-int4"
    assert qcompile.resolve_policy(None) is qcompile.preset("luq-int4")
    # A bare Policy() is the default preset but for its name and attention spec: the dataclass
    # leaves attention to the activation spec, so Policy(activation="fp32") quantizes no attention.
    assert Policy(name="luq-int4", attention="int4-max-auto-sample") == qcompile.preset("luq-int4")
    assert not Policy(activation="fp32").decide("a", "attention.pv").activation.is_quantized


def test_luq_int4_matches_the_card():
    p = qcompile.preset("luq-int4")
    assert p.weight == QuantSpec(
        format="int", bits=4, scaling="sawb", granularity="per-tensor", rounding="nearest", signed="signed"
    )
    assert p.activation == QuantSpec(
        format="int", bits=4, scaling="sawb", granularity="per-tensor", rounding="nearest", signed="auto"
    )
    assert p.grad_dgrad == QuantSpec(
        format="luq", bits=4, scaling="max", granularity="per-sample", rounding="stochastic", samples=1
    )
    assert p.grad_wgrad == QuantSpec(
        format="luq", bits=4, scaling="max", granularity="per-channel", rounding="stochastic", samples=1
    )
    assert p.share_gradient_sample is False
    assert p.keep_first_last is True
    assert p.rules == ()
    assert not p.is_high_precision


def test_luq_shares_one_per_tensor_sample():
    p = qcompile.preset("luq")
    assert p.share_gradient_sample is True
    assert p.grad_dgrad == p.grad_wgrad
    assert p.grad_dgrad.format == "luq" and p.grad_dgrad.bits == 4
    assert p.grad_dgrad.granularity == "per-tensor"
    assert p.grad_dgrad.samples == 1
    assert p.weight == qcompile.preset("luq-int4").weight
    assert p.activation == qcompile.preset("luq-int4").activation


def test_luq_smp2_has_two_samples():
    p = qcompile.preset("luq-smp2")
    assert p.grad_dgrad.samples == 2 and p.grad_wgrad.samples == 2
    assert p.grad_dgrad == p.grad_wgrad
    assert p.grad_dgrad.format == "luq" and p.grad_dgrad.granularity == "per-tensor"
    assert p.share_gradient_sample is True


def test_fp32_is_high_precision():
    p = qcompile.preset("fp32")
    assert p.is_high_precision
    assert all(s == HP for s in specs_of(p).values())
    assert not p.decide("body", "linear").any_quantized
    # A rule that quantizes something makes it no longer high precision.
    assert not p.replace(rules=(Rule(layer="head", weight="int8"),)).is_high_precision


def test_is_high_precision_false_for_quantized_presets():
    for name in ("luq-int4", "luq", "luq-smp2"):
        assert not qcompile.preset(name).is_high_precision


def test_attention_spec_applies_to_both_attention_gemms_only():
    p = qcompile.preset("luq").replace(attention="int4-max-auto-sample")
    for op in ("attention.qk", "attention.pv"):
        d = p.decide("blocks.0.attn", op)
        assert d.activation.granularity == "per-sample" and d.activation.scaling == "max"
        assert d.grad_dgrad == p.grad_dgrad  # gradients keep the policy's specs
    assert p.decide("blocks.0.fc1", "linear").activation == p.activation
    # A rule on the attention ops still wins over the field, like over any role default.
    ruled = p.replace(rules=(Rule.high_precision(op="attention.pv"),))
    assert not ruled.decide("a", "attention.pv").activation.is_quantized
    assert ruled.decide("a", "attention.qk").activation.granularity == "per-sample"
    assert not qcompile.preset("fp32").replace(attention="int8-sample").is_high_precision


@pytest.mark.parametrize(
    ("value", "words"),
    [("luq4", "valid formats"), ("int4-channel", "valid: ('per-tensor', 'per-sample')"),
     ("int4-learned", "valid scalings"), ("int9", "attention")],
)  # fmt: skip
def test_bad_attention_spec_names_the_valid_choices(value, words):
    with pytest.raises(qcompile.PolicyError, match=re.escape(words)):
        qcompile.preset("luq-int4").replace(attention=value)


def test_attention_spec_from_a_policy_file(tmp_path):
    f = tmp_path / "p.toml"
    f.write_text('base = "luq"\nattention = "int8-max-sample"\n')
    p = qcompile.load_policy_file(f)
    assert p.attention.bits == 8 and p.decide("x", "attention.qk").activation.bits == 8
    f.write_text('base = "luq"\nattention = "int4-learned"\n')
    with pytest.raises(qcompile.PolicyError, match=r"line 2.*attention"):
        qcompile.load_policy_file(f)


def test_attention_decisions_give_both_operands_the_activation_spec():
    """q·kᵀ and p·v multiply two activations: the decision's weight is the attention spec too, so
    the shortfall check never waits for a weight quantizer attention does not have."""
    p = Policy(weight="int8", activation="int4", attention="int4-max-auto-sample")
    d = p.decide("blk.attn", "attention.qk")
    assert d.weight == d.activation == parse_spec("int4-max-auto-sample")
    assert p.decide("blk.fc", "linear").weight == parse_spec("int8")


def test_block_format_presets_keep_attention_high_precision_and_name_their_source():
    for name in ("nvfp4", "mxfp4", "mxfp8", "fp8-rowwise"):
        p = qcompile.preset(name)
        assert p.weight.format == "fp" and p.grad_wgrad.format == "fp"
        assert not p.decide("blk.attn", "attention.pv").any_quantized
        assert p.decide("blk.fc", "linear").requantizes
    nv = qcompile.preset("nvfp4")
    assert nv.weight.block == (16, 16) and nv.activation.block == (16,)
    assert nv.grad_dgrad.rounding == "stochastic" and nv.activation.rounding == "nearest"
    assert nv.hadamard.to_string() == "had16-wgrad-fixed"
    assert nv.decide("head", "linear", "last").hadamard is None  # high-precision layers get none
