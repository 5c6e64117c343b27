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

from qcompile.policy import ROLES, Policy, PolicyError, Rule
from qcompile.presets import DEFAULT_PRESET, preset

_POLICY_KEYS = {"base", "weight", "activation", "grad_dgrad", "grad_wgrad", "share_gradient_sample",
                "keep_first_last", "rules", "name", "pack_saved"}  # fmt: skip
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
        raise PolicyError(f"policy file {str(p)!r}: {e}") from None


def policy_from_dict(data: Mapping[str, Any], name: str = "custom") -> Policy:
    unknown = sorted(set(data) - _POLICY_KEYS)
    if unknown:
        raise PolicyError(f"unknown policy key(s) {unknown}; valid keys: {sorted(_POLICY_KEYS)}")
    base_name = data.get("base", DEFAULT_PRESET)
    if not isinstance(base_name, str):
        raise PolicyError("base must be a preset name")
    base = preset(base_name)
    changes: dict[str, Any] = {k: v for k, v in data.items() if k not in ("base", "rules")}
    changes.setdefault("name", name if name != "custom" else f"{base_name}+custom")
    if "rules" in data:
        rules = data["rules"]
        if not isinstance(rules, list):
            raise PolicyError("rules must be a list of tables")
        changes["rules"] = tuple(base.rules) + tuple(_rule_from_dict(r, i) for i, r in enumerate(rules))
    return base.replace(**changes)


def _rule_from_dict(data: Any, index: int) -> Rule:
    if not isinstance(data, Mapping):
        raise PolicyError(f"rules[{index}] must be a table")
    unknown = sorted(set(data) - _RULE_KEYS)
    if unknown:
        raise PolicyError(f"rules[{index}]: unknown key(s) {unknown}; valid keys: {sorted(_RULE_KEYS)}")
    fields_ = dict(data)
    high = fields_.pop("high_precision", False)
    if not isinstance(high, bool):
        raise PolicyError(f"rules[{index}]: high_precision must be true or false, got {high!r}")
    if high and set(fields_) & set(ROLES):
        raise PolicyError(
            f"rules[{index}]: high_precision = true sets every role; drop {sorted(set(fields_) & set(ROLES))}"
        )
    try:
        if high:
            return Rule.high_precision(
                fields_.get("layer", "*"), fields_.get("op", "*"), fields_.get("reason", "")
            )
        return Rule(**fields_)
    except PolicyError as e:
        raise PolicyError(f"rules[{index}]: {e}") from None
