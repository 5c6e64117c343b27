"""Policies from TOML/JSON files, dicts and objects (`qcompile.resolve_policy`), and the backend's
``options``/``mode`` handling (`qcompile.compiler.backend._inductor_config_patches`)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

import qcompile
from qcompile import Policy, PolicyError, QuantSpec, Rule, parse_spec
from qcompile.compiler.backend import _inductor_config_patches

HP = QuantSpec()

TOML_POLICY = """\
base = "luq"
weight = "int8"
keep_first_last = false

[[rules]]
layer = "head"
high_precision = true
reason = "classifier stays fp32"

[[rules]]
op = "attention.*"
grad_dgrad = "luq4-smp2"
grad_wgrad = "luq4-smp2"
"""

JSON_POLICY = {
    "base": "luq",
    "weight": "int8",
    "keep_first_last": False,
    "rules": [
        {"layer": "head", "high_precision": True, "reason": "classifier stays fp32"},
        {"op": "attention.*", "grad_dgrad": "luq4-smp2", "grad_wgrad": "luq4-smp2"},
    ],
}


def write(tmp_path: Path, name: str, text: str | bytes) -> Path:
    path = tmp_path / name
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path


def check_example_policy(p: Policy) -> None:
    luq = qcompile.preset("luq")
    assert p.weight == parse_spec("int8")
    assert p.activation == luq.activation
    assert p.grad_dgrad == luq.grad_dgrad == p.grad_wgrad
    assert p.share_gradient_sample is True
    assert p.keep_first_last is False
    assert len(p.rules) == 2

    head = p.decide("head", "linear", "last")
    assert not head.any_quantized
    assert head.reasons == ("classifier stays fp32",)

    attn = p.decide("encoder.0.attn", "attention.qk")
    assert attn.grad_dgrad == parse_spec("luq4-smp2") == attn.grad_wgrad
    # attention's right operand (kᵀ) is an activation: the activation spec, not the file's weight int8
    assert attn.weight == attn.activation == luq.activation
    assert attn.share_gradient_sample is True

    body = p.decide("encoder.0.fc1", "linear", "first")  # keep_first_last is off
    assert body.weight == parse_spec("int8")
    assert body.grad_dgrad == luq.grad_dgrad
    assert body.reasons == ()


# --------------------------------------------------------------------------- good files


def test_toml_file(tmp_path):
    path = write(tmp_path, "mine.toml", TOML_POLICY)
    p = qcompile.resolve_policy(str(path))
    check_example_policy(p)
    assert p.name == "mine"


def test_json_file(tmp_path):
    path = write(tmp_path, "mine.json", json.dumps(JSON_POLICY))
    p = qcompile.resolve_policy(str(path))
    check_example_policy(p)
    assert p.name == "mine"


def test_toml_and_json_agree(tmp_path):
    a = qcompile.resolve_policy(write(tmp_path, "same.toml", TOML_POLICY))  # a Path works too
    b = qcompile.resolve_policy(write(tmp_path, "same.json", json.dumps(JSON_POLICY)))
    assert a == b


def test_load_policy_file_directly(tmp_path):
    path = write(tmp_path, "p.toml", 'base = "fp32"\n')
    p = qcompile.load_policy_file(path)
    assert p.is_high_precision
    assert p.name == "p"


def test_file_without_base_starts_from_default(tmp_path):
    p = qcompile.resolve_policy(write(tmp_path, "d.toml", 'weight = "int4-channel"\n'))
    default = qcompile.preset("luq-int4")
    assert p.weight == parse_spec("int4-channel")
    assert p.grad_dgrad == default.grad_dgrad and p.grad_wgrad == default.grad_wgrad
    assert p.keep_first_last is True


def test_file_name_key_wins_over_stem(tmp_path):
    p = qcompile.resolve_policy(write(tmp_path, "stem.toml", 'base = "luq"\nname = "my-luq"\n'))
    assert p.name == "my-luq"


def test_empty_toml_file_is_the_default(tmp_path):
    p = qcompile.resolve_policy(write(tmp_path, "empty.toml", ""))
    assert p.replace(name="luq-int4") == qcompile.preset("luq-int4")


def test_high_precision_rule_with_op(tmp_path):
    text = '[[rules]]\nop = "attention.*"\nhigh_precision = true\n'
    p = qcompile.resolve_policy(write(tmp_path, "attn.toml", text))
    (rule,) = p.rules
    assert rule == Rule.high_precision(op="attention.*")
    assert not p.decide("blk.attn", "attention.pv").any_quantized
    assert p.decide("blk.fc", "linear").any_quantized


# --------------------------------------------------------------------------- bad files


def test_bad_toml_syntax(tmp_path):
    path = write(tmp_path, "bad.toml", 'weight = \n[[rules]\nlayer = "x"\n')
    with pytest.raises(PolicyError, match="does not parse") as exc:
        qcompile.resolve_policy(str(path))
    assert "bad.toml" in str(exc.value)


def test_bad_json_syntax(tmp_path):
    path = write(tmp_path, "bad.json", '{"weight": }')
    with pytest.raises(PolicyError, match="does not parse") as exc:
        qcompile.resolve_policy(str(path))
    assert "bad.json" in str(exc.value)


def test_not_utf8(tmp_path):
    path = write(tmp_path, "bin.toml", b'weight = "\xff\xfe"\n')
    with pytest.raises(PolicyError, match="does not parse"):
        qcompile.resolve_policy(str(path))


def test_unknown_top_level_key_names_valid_keys(tmp_path):
    path = write(tmp_path, "typo.toml", 'wieght = "int4"\n')
    with pytest.raises(PolicyError) as exc:
        qcompile.resolve_policy(str(path))
    msg = str(exc.value)
    assert "wieght" in msg and "typo.toml" in msg
    for key in ("base", "weight", "activation", "grad_dgrad", "grad_wgrad", "rules"):
        assert repr(key) in msg


def test_unknown_rule_key(tmp_path):
    path = write(tmp_path, "r.toml", '[[rules]]\nlayer = "head"\nwieght = "int8"\n')
    with pytest.raises(PolicyError) as exc:
        qcompile.resolve_policy(str(path))
    msg = str(exc.value)
    assert "rules[0]" in msg and "wieght" in msg and "high_precision" in msg


def test_bad_bit_width_in_rule(tmp_path):
    text = '[[rules]]\nlayer = "a"\nweight = "int8"\n\n[[rules]]\nlayer = "head"\nweight = "int9"\n'
    path = write(tmp_path, "bits.toml", text)
    with pytest.raises(PolicyError) as exc:
        qcompile.resolve_policy(str(path))
    msg = str(exc.value)
    assert "rules[1]" in msg and "weight" in msg and "1..8" in msg

    path = write(tmp_path, "bits0.json", json.dumps({"rules": [{"layer": "head", "grad_dgrad": "luq9"}]}))
    with pytest.raises(PolicyError, match=r"rules\[0\]"):
        qcompile.resolve_policy(str(path))


def test_bad_granularity_in_rule(tmp_path):
    path = write(tmp_path, "g.toml", '[[rules]]\nlayer = "head"\ngrad_dgrad = "luq4-channel"\n')
    with pytest.raises(PolicyError, match=r"rules\[0\].*per-sample"):
        qcompile.resolve_policy(str(path))


def test_rule_with_no_role(tmp_path):
    path = write(tmp_path, "none.toml", '[[rules]]\nlayer = "head"\n')
    with pytest.raises(PolicyError, match=r"rules\[0\].*overrides no role"):
        qcompile.resolve_policy(str(path))


def test_invalid_role_next_to_high_precision_rejected():
    with pytest.raises(PolicyError, match=r"rules\[0\]"):
        qcompile.resolve_policy({"rules": [{"layer": "head", "high_precision": True, "weight": "int99"}]})


def test_high_precision_must_be_bool():
    with pytest.raises(PolicyError, match="high_precision"):
        qcompile.resolve_policy({"rules": [{"layer": "head", "high_precision": "false"}]})


def test_rules_not_a_list(tmp_path):
    path = write(tmp_path, "rules.toml", '[rules]\nlayer = "head"\nweight = "int8"\n')
    with pytest.raises(PolicyError, match="rules must be a list"):
        qcompile.resolve_policy(str(path))
    path = write(tmp_path, "rules.json", json.dumps({"rules": [1]}))
    with pytest.raises(PolicyError, match=r"rules\[0\] must be a table"):
        qcompile.resolve_policy(str(path))


def test_bad_top_level_value(tmp_path):
    path = write(tmp_path, "v.toml", 'keep_first_last = "no"\n')
    with pytest.raises(PolicyError, match="keep_first_last"):
        qcompile.resolve_policy(str(path))
    path = write(tmp_path, "s.toml", "share_gradient_sample = true\n")  # default's split is not shareable
    with pytest.raises(PolicyError, match="share_gradient_sample"):
        qcompile.resolve_policy(str(path))


def test_unknown_base(tmp_path):
    path = write(tmp_path, "base.toml", 'base = "nope"\n')
    with pytest.raises(PolicyError) as exc:
        qcompile.resolve_policy(str(path))
    msg = str(exc.value)
    assert "nope" in msg and "luq-int4" in msg and "fp32" in msg
    path = write(tmp_path, "base2.json", json.dumps({"base": 3}))
    with pytest.raises(PolicyError, match="base"):
        qcompile.resolve_policy(str(path))


@pytest.mark.parametrize("name", ["absent.toml", "absent.json"])
def test_missing_file(tmp_path, name):
    with pytest.raises(PolicyError, match="does not exist") as exc:
        qcompile.resolve_policy(str(tmp_path / name))
    assert name in str(exc.value)


def test_directory_is_not_a_policy_file(tmp_path):
    (tmp_path / "dir.toml").mkdir()
    with pytest.raises(PolicyError, match="does not exist"):
        qcompile.resolve_policy(str(tmp_path / "dir.toml"))


@pytest.mark.parametrize("body", ["[1, 2]", '"luq"', "3", "null"])
def test_non_table_top_level(tmp_path, body):
    path = write(tmp_path, "list.json", body)
    with pytest.raises(PolicyError, match="top level"):
        qcompile.resolve_policy(str(path))


def test_code_in_a_file_is_not_executed(tmp_path, monkeypatch):
    marker = tmp_path / "pwned"
    payload = f"__import__('os').system('touch {marker}')"
    calls: list[object] = []
    monkeypatch.setattr("os.system", lambda *a: calls.append(a) or 0)

    path = write(tmp_path, "evil.toml", f"weight = {json.dumps(payload)}\n")
    with pytest.raises(PolicyError, match="unknown quantizer spec"):
        qcompile.resolve_policy(str(path))

    path = write(tmp_path, "evil.json", json.dumps({"rules": [{"layer": "x", "activation": payload}]}))
    with pytest.raises(PolicyError, match=r"rules\[0\].*unknown quantizer spec"):
        qcompile.resolve_policy(str(path))

    path = write(tmp_path, "evil2.toml", f"import os\nos.system('touch {marker}')\n")
    with pytest.raises(PolicyError, match="does not parse"):
        qcompile.resolve_policy(str(path))

    assert calls == []
    assert not marker.exists()


# --------------------------------------------------------------------------- other inputs


def test_resolve_dict():
    p = qcompile.resolve_policy(
        {"base": "luq", "weight": "int8", "rules": [{"layer": "head", "high_precision": True}]}
    )
    assert p.weight == parse_spec("int8")
    assert p.share_gradient_sample is True
    assert p.name == "luq+custom"
    assert not p.decide("head", "linear").any_quantized


def test_resolve_dict_errors():
    with pytest.raises(PolicyError, match="valid keys"):
        qcompile.resolve_policy({"wieght": "int4"})
    with pytest.raises(PolicyError, match=r"rules\[0\]"):
        qcompile.resolve_policy({"rules": [{"layer": "x", "weight": "luq4"}]})


def test_resolve_policy_object_is_returned_as_is():
    p = Policy(weight="int8", name="mine")
    assert qcompile.resolve_policy(p) is p


def test_resolve_preset_name():
    assert qcompile.resolve_policy("luq") is qcompile.preset("luq")
    with pytest.raises(PolicyError, match="luq-int4"):
        qcompile.resolve_policy("nope")


@pytest.mark.parametrize("value", [42, 1.5, ["luq"], ("luq",), b"luq", Rule(layer="x", weight="int8")])
def test_resolve_rejects_other_types(value):
    with pytest.raises(PolicyError) as exc:
        qcompile.resolve_policy(value)
    assert type(value).__name__ in str(exc.value)
    assert isinstance(exc.value, ValueError)


# --------------------------------------------------------------------------- backend options


def test_no_mode_no_options_gives_no_patches():
    assert _inductor_config_patches(None, {}) == {}
    assert _inductor_config_patches("default", {}) == {}


def test_unknown_option_names_policy():
    with pytest.raises(PolicyError) as exc:
        _inductor_config_patches(None, {"polcy": "luq"})
    msg = str(exc.value)
    assert "polcy" in msg and "policy" in msg


@pytest.mark.parametrize("key", ["epilogue_fusion", "max_autotune", "triton.cudagraphs"])
def test_inductor_key_passes_through(key):
    assert _inductor_config_patches(None, {key: False}) == {key: False}


@pytest.mark.parametrize("key", ["save_config", "patch", "os"])
def test_non_config_module_attribute_rejected(key):
    with pytest.raises(PolicyError):
        _inductor_config_patches(None, {key: 1})


def test_max_autotune_mode_gives_patches():
    patches = _inductor_config_patches("max-autotune", {})
    assert patches
    assert patches.get("max_autotune") is True
    # Explicit options override the mode's.
    assert _inductor_config_patches("max-autotune", {"max_autotune": False})["max_autotune"] is False


@pytest.mark.parametrize("mode", ["reduce-overhead", "max-autotune-no-cudagraphs"])
def test_other_modes(mode):
    assert isinstance(_inductor_config_patches(mode, {}), dict)


def test_unknown_mode_names_valid_modes():
    with pytest.raises(PolicyError) as exc:
        _inductor_config_patches("fastest", {})
    msg = str(exc.value)
    assert "fastest" in msg
    for mode in ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs"):
        assert mode in msg


# --------------------------------------------------------------------------- error lines


LINE_TOML = """\
base = "luq-int4"
weight = "int4"

[[rules]]
layer = "a"
weight = "int8"

[[rules]]
layer = "head"
grad_dgrad = "luq4-channel"
"""


def test_toml_error_names_key_and_line(tmp_path):
    path = write(tmp_path, "lines.toml", LINE_TOML)
    with pytest.raises(PolicyError) as exc:
        qcompile.resolve_policy(str(path))
    msg = str(exc.value)
    assert "line 10" in msg and "rules[1].grad_dgrad" in msg and "per-sample" in msg
    assert exc.value.line == 10 and exc.value.key_path == ("rules", 1, "grad_dgrad")


@pytest.mark.parametrize(
    "text,line,key",
    [
        ('base = "luq"\n\nactivation = "int99"\n', 3, "activation"),
        ('weight = "int4"\nkeep_first_last = "no"\n', 2, "keep_first_last"),
        ('weight = "int4"\n\n\nbase = "nope"\n', 4, "base"),
        ('name = "x"\nwieght = "int4"\n', 2, "wieght"),
        ('[[rules]]\nweight = "int8"\n\n[[rules]]\nop = "linear"\nwieght = "int8"\n', 6, "rules[1].wieght"),
        ('[[rules]]\nweight = "int8"\n[[rules]]\nlayer = "x"\n', 3, "rules[1]"),
        ('grad_dgrad = "lbt4"\nshare_gradient_sample = true\n', 2, "share_gradient_sample"),
    ],
)
def test_toml_error_lines(tmp_path, text, line, key):
    path = write(tmp_path, "e.toml", text)
    with pytest.raises(PolicyError) as exc:
        qcompile.resolve_policy(str(path))
    assert f"line {line}" in str(exc.value) and repr(key) in str(exc.value), str(exc.value)


def test_json_error_names_key_and_line(tmp_path):
    data = {
        "base": "luq",
        "rules": [{"layer": "a", "weight": "int8"}, {"layer": "head", "activation": "luq4"}],
    }
    path = write(tmp_path, "lines.json", json.dumps(data, indent=2))
    with pytest.raises(PolicyError) as exc:
        qcompile.resolve_policy(str(path))
    text = path.read_text().splitlines()
    expected = next(i for i, t in enumerate(text, start=1) if '"activation"' in t)
    assert f"line {expected}" in str(exc.value) and "rules[1].activation" in str(exc.value)
    path = write(tmp_path, "one.json", '{"weight": "int4",\n "grad_wgrad": "aq4-sample"}')
    with pytest.raises(PolicyError, match=r"line 2, key 'grad_wgrad'.*per-channel"):
        qcompile.resolve_policy(str(path))


def test_paper_presets_as_file_bases(tmp_path):
    path = write(
        tmp_path, "lbt.toml", 'base = "lbt-int4"\n[[rules]]\nlayer = "head"\ngrad_dgrad = "aq4-topk-sample"\n'
    )
    p = qcompile.resolve_policy(str(path))
    assert p.grad_dgrad.format == "lbt" and p.rules[-1].grad_dgrad.pruning == "topk"


def test_block_format_policy_file(tmp_path):
    """A file can start from a block-format preset and set the Hadamard; a bad Hadamard string
    points at its key and names the valid forms."""
    path = tmp_path / "fp4.toml"
    path.write_text('base = "nvfp4"\nactivation = "fp4-mx32"\nhadamard = "had32-all"\n')
    p = qcompile.resolve_policy(str(path))
    assert p.weight == parse_spec("fp4-nv16x16") and p.activation == parse_spec("fp4-mx32")
    assert p.hadamard.to_string() == "had32-all"
    bad = tmp_path / "bad.toml"
    bad.write_text('hadamard = "had16-sideways"\n')
    with pytest.raises(PolicyError, match=r"hadamard.*valid"):
        qcompile.resolve_policy(str(bad))
