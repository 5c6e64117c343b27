"""Tests for the quantizer spec vocabulary: `parse_spec`, `QuantSpec` and their string form."""

from __future__ import annotations

import itertools
import re

import pytest

from qcompile.runtime.spec import (
    FORMATS,
    GRANULARITIES,
    MAX_SAMPLES,
    NAMED_SPECS,
    ROUNDINGS,
    SCALINGS,
    SIGNS,
    QuantSpec,
    parse_spec,
)

# --------------------------------------------------------------------------------- named specs

EXPECTED_NAMED = {
    "fp32": QuantSpec(),
    "int4": QuantSpec("int", 4, "sawb", "per-tensor", "nearest", "signed"),
    "int4-max": QuantSpec("int", 4, "max", "per-tensor", "nearest", "signed"),
    "uint4": QuantSpec("int", 4, "sawb", "per-tensor", "nearest", "unsigned"),
    "int4-sr": QuantSpec("int", 4, "sawb", "per-tensor", "stochastic", "signed"),
    "int8": QuantSpec("int", 8, "max", "per-tensor", "nearest", "signed"),
    "int8-sr": QuantSpec("int", 8, "max", "per-tensor", "stochastic", "signed"),
    "luq4": QuantSpec("luq", 4, "max", "per-tensor", "stochastic", "signed"),
    "luq4-smp2": QuantSpec("luq", 4, "max", "per-tensor", "stochastic", "signed", samples=2),
    "int1": QuantSpec("int", 1, "mean", "per-tensor", "nearest", "signed"),
    "lbt4": QuantSpec("lbt", 4, "max", "per-tensor", "stochastic", "signed"),
    "aq4-sample": QuantSpec("aq", 4, "max", "per-sample", "stochastic", "signed", pruning="range"),
    "aq4-channel": QuantSpec("aq", 4, "max", "per-channel", "stochastic", "signed", pruning="range"),
    "aq4-topk-sample": QuantSpec("aq", 4, "max", "per-sample", "stochastic", "signed", pruning="topk"),
    "fp4-mx32": QuantSpec("fp", 4, "mx", "per-block", "nearest", element="e2m1", block=(32,)),
    "fp4-nv16": QuantSpec("fp", 4, "nv", "per-block", "nearest", element="e2m1", block=(16,)),
    "fp4-nv16x16": QuantSpec("fp", 4, "nv", "per-block", "nearest", element="e2m1", block=(16, 16)),
    "fp4-nv16-sr": QuantSpec("fp", 4, "nv", "per-block", "stochastic", element="e2m1", block=(16,)),
    "fp8-e4m3-mx32": QuantSpec("fp", 8, "mx", "per-block", "nearest", element="e4m3", block=(32,)),
    "fp8-e4m3-row": QuantSpec("fp", 8, "max", "per-row", "nearest", element="e4m3", block=(0,)),
    "fp8-e5m2-row": QuantSpec("fp", 8, "max", "per-row", "nearest", element="e5m2", block=(0,)),
    "fp8-e4m3-tensor": QuantSpec("fp", 8, "max", "per-tensor", "nearest", element="e4m3", block=()),
}


def test_named_specs_are_all_covered():
    assert set(NAMED_SPECS) == set(EXPECTED_NAMED)


@pytest.mark.parametrize("name", NAMED_SPECS)
def test_named_specs_parse(name):
    spec = parse_spec(name)
    assert isinstance(spec, QuantSpec)
    assert spec == EXPECTED_NAMED[name]
    assert spec.is_quantized == (name != "fp32")


@pytest.mark.parametrize("name", NAMED_SPECS)
def test_named_specs_round_trip(name):
    spec = parse_spec(name)
    assert parse_spec(spec.to_string()) == spec
    # The canonical string is a fixed point.
    assert parse_spec(spec.to_string()).to_string() == spec.to_string()


def test_labels():
    assert parse_spec("fp32").label == "fp"
    assert parse_spec("int4").label == "int4"
    assert parse_spec("uint4").label == "uint4"
    assert parse_spec("int4-auto").label == "int4"
    assert parse_spec("luq4-smp2").label == "luq4"


@pytest.mark.parametrize("alias", ["fp32", "none", "fp", "high", " FP32 ", "None"])
def test_high_precision_aliases(alias):
    spec = parse_spec(alias)
    assert spec == QuantSpec() and not spec.is_quantized
    assert spec.to_string() == "fp32"


def test_parse_is_case_and_whitespace_insensitive():
    assert parse_spec("  INT8-Max-SR-Channel ") == parse_spec("int8-max-sr-channel")


def test_parse_accepts_a_quantspec_unchanged():
    spec = QuantSpec("int", 8, "max", "per-channel", "stochastic", "signed")
    assert parse_spec(spec) is spec


def test_defaults_and_suffixes():
    assert parse_spec("int4").scaling == "sawb"
    assert parse_spec("int3").scaling == "max"
    assert parse_spec("int4-max").scaling == "max"
    assert parse_spec("int8-rdn").rounding == "nearest"
    assert parse_spec("int4-sr").rounding == "stochastic"
    assert parse_spec("int4-auto").signed == "auto"
    assert parse_spec("luq4-sample").granularity == "per-sample"
    assert parse_spec("luq4-channel").granularity == "per-channel"
    assert parse_spec("luq4-tensor").granularity == "per-tensor"
    assert parse_spec(f"luq4-smp{MAX_SAMPLES}").samples == MAX_SAMPLES
    assert parse_spec("int4-max-sr-channel-smp3") == QuantSpec(
        "int", 4, "max", "per-channel", "stochastic", "signed", 3
    )
    luq = parse_spec("luq3-sr")
    assert (luq.format, luq.bits, luq.rounding, luq.signed) == ("luq", 3, "stochastic", "signed")


# ---------------------------------------------------------------------------------- round trip


def _all_valid_quantized_specs():
    out = []
    for fmt, bits, scaling, gran, rnd, sign, n in itertools.product(
        ("int", "luq"), range(1, 10), SCALINGS, GRANULARITIES, ROUNDINGS, SIGNS, (1, 2, MAX_SAMPLES)
    ):
        if fmt == "luq" and scaling == "sawb":
            continue  # rejected: see test_luq_rejects_sawb_scaling
        try:
            out.append(QuantSpec(fmt, bits, scaling, gran, rnd, sign, n))
        except ValueError:
            pass
    return out


def test_round_trip_every_valid_quantized_spec():
    specs = _all_valid_quantized_specs()
    assert len(specs) > 300
    for spec in specs:
        text = spec.to_string()
        assert parse_spec(text) == spec, text
        assert parse_spec(text).to_string() == text


def test_round_trip_every_suffix_combination():
    suffixes = ["", "-max", "-sr", "-rdn", "-auto", "-sample", "-channel", "-smp2"]
    n = 0
    for head in ("int2", "int4", "int8", "uint4", "luq2", "luq4", "luq5"):
        for a, b in itertools.combinations(suffixes, 2):
            try:
                spec = parse_spec(head + a + b)
            except ValueError:
                continue
            assert parse_spec(spec.to_string()) == spec, head + a + b
            n += 1
    assert n > 100


def test_luq_rejects_sawb_scaling():
    with pytest.raises(ValueError, match="scaling must be 'max'"):
        parse_spec("luq4-sawb")


def test_high_precision_rejects_other_fields():
    with pytest.raises(ValueError, match="takes no other fields"):
        QuantSpec(format="none", granularity="per-sample", samples=2)
    assert parse_spec(QuantSpec().to_string()) == QuantSpec()


def test_with_changes_fields_and_validates():
    spec = parse_spec("int4")
    assert spec.with_(granularity="per-channel").granularity == "per-channel"
    assert spec.with_(granularity="per-channel") != spec
    with pytest.raises(ValueError, match="valid"):
        spec.with_(granulartiy="per-channel")
    with pytest.raises(ValueError, match="sawb"):
        spec.with_(bits=8)


# --------------------------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    "text,names",
    [
        ("fp6", ["fp32", "int<b>", "uint<b>", "luq<b>", "fp4", "fp8"]),
        ("fp4-e4m3", ["e2m1"]),
        ("fp4-mx", ["mx<n>", "nv<n>x<n>", "row", "tensor"]),
        ("fp4-mx24", ["(8, 16, 32, 64, 128)"]),
        ("fp8-nv16", ["e2m1"]),
        ("fp4-nv16x32", ["square"]),
        ("float4", ["fp32", "luq<b>"]),
        ("int", ["int<b>"]),
        ("", ["fp32"]),
        ("int9", ["1..8"]),
        ("int0", ["1..8"]),
        ("uint9", ["1..8"]),
        ("int1-sr", ["sign(x)"]),
        ("lbt9", ["2..8"]),
        ("lbt4-smp2", ["samples=1"]),
        ("aq4-rdn", ["stochastic"]),
        ("int4-topk", ["AQ"]),
        ("luq6", ["2..5"]),
        ("luq1", ["2..5"]),
        ("int8-sawb", ["max", "sawb"]),
        ("int2-sawb", ["max"]),
        ("luq4-rdn", ["stochastic"]),
        ("luq4-auto", ["signed"]),
        ("int4-foo", ["sawb", "max", "sr", "rdn", "auto", "tensor", "sample", "channel", "smp<N>"]),
        ("int4-", ["smp<N>"]),
        ("luq4-smp", ["smp<N>"]),
        ("luq4-smp0", ["1..16"]),
        ("luq4-smp17", ["1..16"]),
    ],
)
def test_bad_spec_strings_name_the_valid_choices(text, names):
    with pytest.raises(ValueError) as info:
        parse_spec(text)
    message = str(info.value)
    for name in names:
        assert name in message, f"{name!r} missing from {message!r}"


@pytest.mark.parametrize(
    "kwargs,names",
    [
        ({"format": "fp8"}, ["none", "int", "luq"]),
        ({"format": "int", "bits": 4, "scaling": "lsq"}, ["sawb", "max"]),
        ({"format": "int", "bits": 4, "granularity": "per-row"}, ["per-tensor", "per-sample", "per-channel"]),
        ({"format": "int", "bits": 4, "rounding": "floor"}, ["nearest", "stochastic"]),
        ({"format": "int", "bits": 4, "signed": "yes"}, ["signed", "unsigned", "auto"]),
        ({"format": "int", "bits": 4, "samples": 0}, ["1..16"]),
        ({"format": "int", "bits": 4, "samples": 2.0}, ["1..16"]),
        ({"format": "int", "bits": 4.0}, ["int"]),
        ({"format": "int", "bits": True}, ["int"]),
        ({"format": "none", "bits": 4}, ["no other fields"]),
    ],
)
def test_bad_quantspec_fields(kwargs, names):
    with pytest.raises(ValueError) as info:
        QuantSpec(**kwargs)
    for name in names:
        assert name in str(info.value)


@pytest.mark.parametrize("value", [4, None, 4.0, b"int4"])
def test_non_string_spec_rejected(value):
    with pytest.raises(ValueError, match="string or QuantSpec"):
        parse_spec(value)


def test_vocabulary_constants():
    assert FORMATS == ("none", "int", "luq", "lbt", "aq", "fp")
    for name in NAMED_SPECS:
        assert parse_spec(name).format in FORMATS


# --------------------------------------------------------------------------- block-scaled FP


def _all_fp_specs():
    out = []
    for element, bits in (("e2m1", 4), ("e4m3", 8), ("e5m2", 8)):
        for scaling, gran, block in [("max", "per-tensor", ()), ("max", "per-row", (0,))] + [
            (sc, "per-block", b) for sc in ("mx", "nv") for n in (8, 16, 32, 64, 128) for b in ((n,), (n, n))
        ]:
            for rounding in ("nearest", "stochastic"):
                try:
                    out.append(QuantSpec("fp", bits, scaling, gran, rounding, element=element, block=block))
                except ValueError:
                    pass
    return out


def test_round_trip_every_valid_fp_spec():
    specs = _all_fp_specs()
    # 3 elements × (row, tensor, 10 mx blocks) × 2 roundings, + 10 nv blocks × 2 for e2m1
    assert len(specs) == 3 * 12 * 2 + 10 * 2
    for spec in specs:
        text = spec.to_string()
        assert parse_spec(text) == spec, text
        assert text.startswith("fp4" if spec.bits == 4 else f"fp8-{spec.element}")


def test_fp_defaults_and_suffix_order():
    assert parse_spec("fp4") == parse_spec("fp4-e2m1-mx32-rdn")
    assert parse_spec("fp8") == parse_spec("fp8-e4m3-row")
    assert parse_spec("fp4-sr-nv16") == parse_spec("fp4-nv16-sr")
    assert parse_spec("fp8-e5m2-tensor").block == ()


def test_hadamard_specs_parse_and_round_trip():
    from qcompile.runtime.spec import HadamardSpec, parse_hadamard

    assert parse_hadamard("had16-wgrad") == HadamardSpec(("wgrad",), 16, "random")
    assert parse_hadamard("had32-all-fixed") == HadamardSpec(("forward", "dgrad", "wgrad"), 32, "fixed")
    assert parse_hadamard("had16-wgrad-forward").gemms == ("forward", "wgrad")  # canonical order
    for text in ("had16-wgrad", "had32-all", "had8-forward-dgrad-fixed"):
        assert parse_hadamard(text).to_string() == text
    for bad, names in [("had12-wgrad", "(2, 4, 8"), ("had16", "had<block>"), ("had16-fwd", "forward")]:
        with pytest.raises(ValueError, match=re.escape(names)):
            parse_hadamard(bad)
