"""Named policies. Adding a preset is one entry in `_PRESETS`."""

from __future__ import annotations

from qcompile.policy.config import Policy, PolicyError

_PRESETS: dict[str, Policy] = {
    # The design card's default: INT4 SAWB forward, LUQ dY quantized twice with the SCQ split;
    # attention's operands (q, kᵀ, P, v) INT4 with one max scale per row, not per tensor: P lies in
    # [0, 1], mostly near 1/T, and one scale per tensor rounds most of it to 0 (docs/accuracy.md).
    "luq-int4": Policy(name="luq-int4", attention="int4-max-auto-sample"),
    # LUQ as published: one per-tensor LUQ sample of dY feeds both backward GEMMs.
    "luq": Policy(
        name="luq",
        grad_dgrad="luq4",
        grad_wgrad="luq4",
        share_gradient_sample=True,
    ),
    # LUQ with SMP (§5.1): the average of 2 independent LUQ samples, cost 2x per backward GEMM.
    "luq-smp2": Policy(
        name="luq-smp2",
        grad_dgrad="luq4-smp2",
        grad_wgrad="luq4-smp2",
        share_gradient_sample=True,
    ),
    # LBT (Kim et al., ECCV 2024): INT4 SAWB forward; one INT4 stochastic-rounding sample of dY
    # per layer with the adaptive clip γ·max|dY| (γ per layer, model state), feeding both
    # backward GEMMs as in the paper.
    "lbt-int4": Policy(
        name="lbt-int4",
        grad_dgrad="lbt4",
        grad_wgrad="lbt4",
        share_gradient_sample=True,
    ),
    # LBT with the paper's learned-clip INT4 forward (one trainable clip per layer and role, PACT
    # gradient); the clips are parameters of qcompile.state_of(model): add them to the optimizer.
    "lbt-int4-learned": Policy(
        name="lbt-int4-learned",
        weight="int4-learned",
        activation="int4-learned-auto",
        grad_dgrad="lbt4",
        grad_wgrad="lbt4",
        share_gradient_sample=True,
    ),
    # 1-bit FQT (Gao et al.) with the paper's binary forward (sign·mean|x|, per output channel
    # for W; {0, 2·mean} for non-negative activations): a FINE-TUNING recipe for pretrained (binary) nets; from scratch it fails (ImageNet
    # 21.6 vs 57.1 in the paper). dY: AQ, 1 bit per element on average, SCQ groups.
    "aq1": Policy(
        name="aq1",
        weight="int1-channel",
        activation="int1-auto",
        grad_dgrad="aq4-sample",
        grad_wgrad="aq4-channel",
    ),
    # AQ gradients (average 1 bit, SCQ groups) under the INT4 SAWB forward.
    "aq1-int4": Policy(
        name="aq1-int4",
        grad_dgrad="aq4-sample",
        grad_wgrad="aq4-channel",
    ),
    # No quantization at all: the same numbers as torch.compile with Inductor.
    "fp32": Policy(
        name="fp32",
        weight="fp32",
        activation="fp32",
        grad_dgrad="fp32",
        grad_wgrad="fp32",
        keep_first_last=False,
    ),
}

DEFAULT_PRESET = "luq-int4"


def presets() -> dict[str, Policy]:
    """All named policies, by name (a copy: the registry cannot be changed through it)."""
    return dict(_PRESETS)


def preset(name: str) -> Policy:
    """The named policy; `PolicyError` (a ValueError) lists the valid names."""
    try:
        return _PRESETS[name]
    except (KeyError, TypeError):
        raise PolicyError(f"unknown policy preset {name!r}; valid presets: {', '.join(_PRESETS)}") from None
