"""Named policies. Adding a preset is one entry in `_PRESETS`."""

from __future__ import annotations

from qcompile.policy.config import Policy, PolicyError, Rule


def _attention_high_precision(reason: str) -> Rule:
    """Both attention GEMMs (``q·kᵀ``, ``p·v``) and their gradients in high precision."""
    return Rule.high_precision(op="attention.*", reason=reason)


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
    # NVIDIA's NVFP4 training recipe ("Pretraining Large Language Models with NVFP4", NVIDIA 2025;
    # Transformer Engine's NVFP4BlockScaling): E2M1 elements, an E4M3 scale per 16 elements times
    # one FP32 scale per tensor; 16x16 blocks for weights (W and Wᵀ quantize alike), 1x16 for
    # activations and gradients; stochastic rounding on gradients only; a 16-point random
    # Hadamard on both inputs of the weight-gradient GEMM, with TE's fixed sign vector. TE keeps
    # attention's GEMMs and the last layers in BF16: here attention stays FP32 and
    # keep_first_last keeps the first and last layer (the paper keeps ~15% of the layers).
    "nvfp4": Policy(
        name="nvfp4",
        weight="fp4-nv16x16",
        activation="fp4-nv16",
        grad_dgrad="fp4-nv16-sr",
        grad_wgrad="fp4-nv16-sr",
        hadamard="had16-wgrad-fixed",
        rules=(_attention_high_precision("NVFP4 recipe: attention's GEMMs stay high precision (TE)"),),
    ),
    # MXFP4 (OCP Microscaling Formats spec v1.0): E2M1 elements, one E8M0 power-of-two scale per
    # 32 elements along each GEMM's contraction axis, every operand; round-to-nearest forward and
    # stochastic rounding on gradients (Tseng et al. 2025, "Training LLMs with MXFP4", who add
    # a Hadamard in backward: `replace(hadamard="had32-dgrad-wgrad")`). Attention stays FP32, as
    # in torchao's MX training, which converts linear layers only.
    "mxfp4": Policy(
        name="mxfp4",
        weight="fp4-mx32",
        activation="fp4-mx32",
        grad_dgrad="fp4-mx32-sr",
        grad_wgrad="fp4-mx32-sr",
        rules=(_attention_high_precision("MX recipe: linear layers only, attention high precision"),),
    ),
    # MXFP8 (OCP MX v1.0; torchao's MXLinearConfig defaults): E4M3 elements for weights,
    # activations and gradients, E8M0 scales per 32 elements (the spec's floor rule),
    # round-to-nearest. Linear layers only: attention stays FP32.
    "mxfp8": Policy(
        name="mxfp8",
        weight="fp8-e4m3-mx32",
        activation="fp8-e4m3-mx32",
        grad_dgrad="fp8-e4m3-mx32",
        grad_wgrad="fp8-e4m3-mx32",
        rules=(_attention_high_precision("MX recipe: linear layers only, attention high precision"),),
    ),
    # FP8 rowwise (torchao float8's ROWWISE recipe): E4M3 for every operand, one scale per row
    # along each GEMM's contraction axis (backward requantizes along its own axes). torchao
    # rounds those scales down to powers of two; here they are exact FP32 amax/448.
    "fp8-rowwise": Policy(
        name="fp8-rowwise",
        weight="fp8-e4m3-row",
        activation="fp8-e4m3-row",
        grad_dgrad="fp8-e4m3-row",
        grad_wgrad="fp8-e4m3-row",
        rules=(_attention_high_precision("float8 recipe: linear layers only, attention high precision"),),
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
