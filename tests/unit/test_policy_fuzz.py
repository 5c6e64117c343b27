"""Fuzzing policies, policy files and spec strings: a valid object or a ValueError, nothing else."""

from __future__ import annotations

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import qcompile
from qcompile.policy.files import _POLICY_KEYS, _RULE_KEYS, load_policy_file, policy_from_dict
from qcompile.runtime.spec import NAMED_SPECS, parse_spec

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

spec_like = st.one_of(
    st.sampled_from(NAMED_SPECS + ("luq4-sample", "int4-channel", "int8-max-sr", "luq3", "uint2")),
    st.text(max_size=24),
    st.from_regex(
        r"(int|uint|luq|fp)\d{0,2}(-(sawb|max|sr|rdn|auto|tensor|sample|channel|smp\d))*", fullmatch=True
    ),
)
scalar = st.one_of(st.none(), st.booleans(), st.integers(-5, 40), st.floats(allow_nan=True), spec_like)
rule = st.dictionaries(
    st.one_of(st.sampled_from(sorted(_RULE_KEYS)), st.text(max_size=8)), scalar, max_size=5
)
policy_dict = st.dictionaries(
    st.one_of(st.sampled_from(sorted(_POLICY_KEYS)), st.text(max_size=10)),
    st.one_of(
        scalar, st.lists(st.one_of(rule, scalar), max_size=3), st.sampled_from(list(qcompile.presets()))
    ),
    max_size=6,
)


@FUZZ
@given(spec_like)
def test_spec_strings(text):
    try:
        spec = parse_spec(text)
    except ValueError:
        return
    assert parse_spec(spec.to_string()) == spec


@FUZZ
@given(policy_dict)
def test_policy_dicts(data):
    try:
        policy = policy_from_dict(data)
    except ValueError as e:
        assert str(e)
        return
    assert isinstance(policy, qcompile.Policy)
    policy.decide("some.layer", "linear", None)


@FUZZ
@given(st.text(max_size=200), st.sampled_from([".toml", ".json"]))
def test_policy_files_with_arbitrary_text(tmp_path_factory, text, suffix):
    path = tmp_path_factory.mktemp("fuzz") / f"p{suffix}"
    path.write_text(text)
    try:
        policy = load_policy_file(path)
    except ValueError as e:
        assert str(path) in str(e) or "policy" in str(e)
        return
    assert isinstance(policy, qcompile.Policy)
