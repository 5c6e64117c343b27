"""Policies: which quantizer each GEMM operand gets, per layer; the named presets; policy files; FNT."""

from qcompile.policy.config import ROLES, LayerDecision, Policy, PolicyError, Rule

__all__ = ["ROLES", "LayerDecision", "Policy", "PolicyError", "Rule"]
