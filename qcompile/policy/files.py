"""Turn what users pass as ``options={"policy": ...}`` into a `Policy`.

Accepted: None (the default preset), a preset name, a `Policy`, a dict with `Policy`'s fields,
or a path to a ``.toml`` / ``.json`` file holding such a dict. A dict may start from a preset
(``base = "luq"``) and lists rules as tables (``[[rules]] layer = "head" weight = "int8"``).
Files are parsed as data only; nothing in them is executed.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import tomllib

from qcompile.policy.config import ROLES, Policy, PolicyError, Rule, attention_spec, role_spec
from qcompile.policy.file_lines import format_key_path, json_key_lines, line_of, toml_key_lines
from qcompile.policy.recipes import DEFAULT_PRESET, preset
from qcompile.runtime.spec import parse_hadamard

_POLICY_KEYS = {"base", "weight", "activation", "grad_dgrad", "grad_wgrad", "share_gradient_sample",
                "keep_first_last", "rules", "name", "pack_saved", "recompute", "attention", "hadamard"}  # fmt: skip
_RULE_KEYS = {"layer", "op", "weight", "activation", "grad_dgrad", "grad_wgrad", "reason", "high_precision"}


def resolve_policy(value: Any) -> Policy:
    """Policy from any accepted form; `PolicyError` (a ValueError) otherwise."""
    if value is None:
        return preset(DEFAULT_PRESET)
    if isinstance(value, Policy):
        return value
    if isinstance(value, Mapping):
        return policy_from_dict(value)
    if isinstance(value, (str, os.PathLike)):
        text = os.fspath(value)
        if text.lower().endswith((".toml", ".json")):
            return load_policy_file(text)
        return preset(text)
    raise PolicyError(
        f"policy must be a preset name, a qcompile.Policy, a dict or a .toml/.json path, got {type(value).__name__}"
    )


def load_policy_file(path: str | os.PathLike) -> Policy:
    p = Path(path)
    if not p.is_file():
        raise PolicyError(f"policy file {str(p)!r} does not exist")
    raw = p.read_bytes()
    try:
        if p.suffix.lower() == ".toml":
            data = tomllib.loads(raw.decode("utf-8"))
        else:
            data = json.loads(raw.decode("utf-8"))
    except (tomllib.TOMLDecodeError, json.JSONDecodeError, UnicodeDecodeError) as e:
        raise PolicyError(f"policy file {str(p)!r} does not parse: {e}") from None
    if not isinstance(data, dict):
        raise PolicyError(f"policy file {str(p)!r} must hold a table/object at the top level")
    try:
        return policy_from_dict(data, name=p.stem)
    except PolicyError as e:
        where = ""
        key_path = getattr(e, "key_path", None)
        if key_path:
            text = raw.decode("utf-8")
            lines = toml_key_lines(text) if p.suffix.lower() == ".toml" else json_key_lines(text)
            line = line_of(lines, key_path)
            where = f", line {line}" if line is not None else ""
            where += f", key {format_key_path(key_path)!r}"
        error = PolicyError(f"policy file {str(p)!r}{where}: {e}")
        error.key_path = key_path  # type: ignore[attr-defined]
        error.line = line if key_path else None  # type: ignore[attr-defined]
        raise error from None


def _error(key_path: tuple, message: str) -> PolicyError:
    """A `PolicyError` that knows which key it is about (files turn that into a line)."""
    error = PolicyError(message)
    error.key_path = key_path  # type: ignore[attr-defined]
    return error


def _check_field(key_path: tuple, key: str, value: Any) -> None:
    """Validate one policy/rule field on its own, so an error can point at its key."""
    try:
        if key in ROLES:
            role_spec(key, value)
        elif key == "attention":
            attention_spec(value)
        elif key == "hadamard":
            try:
                parse_hadamard(value)
            except ValueError as e:
                raise PolicyError(f"hadamard: {e}") from None
        elif key in ("share_gradient_sample", "keep_first_last", "high_precision") and not isinstance(
            value, bool
        ):
            raise PolicyError(f"{key} must be true or false, got {value!r}")
        elif key in ("name", "layer", "op", "reason", "base") and not isinstance(value, str):
            raise PolicyError(f"{key} must be a string, got {value!r}")
    except PolicyError as e:
        raise _error(key_path, str(e)) from None


def policy_from_dict(data: Mapping[str, Any], name: str = "custom") -> Policy:
    """`Policy` from a dict with `Policy`'s fields, ``base`` (a preset) and ``rules`` (tables).

    Every error is a `PolicyError` whose ``key_path`` attribute names the offending key
    (``("rules", 1, "weight")``), which file loading turns into a line number."""
    unknown = sorted(set(data) - _POLICY_KEYS, key=str)
    if unknown:
        raise _error((unknown[0],), f"unknown policy key(s) {unknown}; valid keys: {sorted(_POLICY_KEYS)}")
    for key, value in data.items():
        if key != "rules":
            _check_field((key,), key, value)
    base_name = data.get("base", DEFAULT_PRESET)
    if not isinstance(base_name, str):
        raise _error(("base",), "base must be a preset name")
    try:
        base = preset(base_name)
    except PolicyError as e:
        raise _error(("base",), str(e)) from None
    changes: dict[str, Any] = {k: v for k, v in data.items() if k not in ("base", "rules")}
    changes.setdefault("name", name if name != "custom" else f"{base_name}+custom")
    if "rules" in data:
        rules = data["rules"]
        if not isinstance(rules, list):
            raise _error(("rules",), "rules must be a list of tables")
        changes["rules"] = tuple(base.rules) + tuple(_rule_from_dict(r, i) for i, r in enumerate(rules))
    try:
        return base.replace(**changes)
    except PolicyError as e:
        # Only combinations are left (e.g. share_gradient_sample with a split gradient spec).
        keys = [k for k in ("share_gradient_sample", "grad_dgrad", "grad_wgrad") if k in data]
        raise _error((keys[0],) if keys else (), str(e)) from None


def _rule_from_dict(data: Any, index: int) -> Rule:
    where = ("rules", index)
    if not isinstance(data, Mapping):
        raise _error(where, f"rules[{index}] must be a table")
    unknown = sorted(set(data) - _RULE_KEYS, key=str)
    if unknown:
        raise _error(
            (*where, unknown[0]),
            f"rules[{index}]: unknown key(s) {unknown}; valid keys: {sorted(_RULE_KEYS)}",
        )
    for key, value in data.items():
        try:
            _check_field((*where, key), key, value)
        except PolicyError as e:
            raise _error(e.key_path, f"rules[{index}]: {e}") from None  # type: ignore[attr-defined]
    fields_ = dict(data)
    high = fields_.pop("high_precision", False)
    if high and set(fields_) & set(ROLES):
        extra = sorted(set(fields_) & set(ROLES))
        raise _error(
            (*where, extra[0]), f"rules[{index}]: high_precision = true sets every role; drop {extra}"
        )
    try:
        if high:
            return Rule.high_precision(
                fields_.get("layer", "*"), fields_.get("op", "*"), fields_.get("reason", "")
            )
        return Rule(**fields_)
    except PolicyError as e:
        raise _error(where, f"rules[{index}]: {e}") from None
