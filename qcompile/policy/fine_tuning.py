"""FNT: LUQ's high-precision fine-tuning phase (Chmiel et al., ICLR 2023, §5.2).

After 4-bit training, a few epochs in which everything runs in high precision except the
weights' forward quantizer close most of the remaining gap (ResNet-50: 75.42 → 76.18, FP 76.5).
The LR ramps linearly from the last LR of the 4-bit phase up to the base LR over the first half
of the phase, then linearly down to 0 (docs/algorithms.md, LUQ step 6).

    cmodel = torch.compile(model, backend="fqt", options={"policy": "luq-int4"})
    ...train...
    cmodel = qcompile.fnt(cmodel)                         # recompiles: W INT4, all else FP32
    sched = qcompile.fnt_scheduler(opt, total_steps=T, base_lr=0.1)
    for step in range(T): ...; opt.step(); sched.step()
"""

from __future__ import annotations

from typing import Any

import torch

from qcompile.compiler.compiled_graphs import graphs_for
from qcompile.policy.config import Policy, Rule
from qcompile.policy.files import resolve_policy


def fnt_policy(policy: Any = None) -> Policy:
    """The FNT variant of ``policy`` (any form `resolve_policy` takes): weights keep their spec
    (and per-layer weight rules), activations and both gradient roles go to high precision."""
    p = resolve_policy(policy)
    rules = tuple(
        Rule(layer=r.layer, op=r.op, weight=r.weight, reason=r.reason)
        for r in p.rules
        if r.weight is not None
    )
    return p.replace(
        activation="fp32",
        grad_dgrad="fp32",
        grad_wgrad="fp32",
        share_gradient_sample=False,
        rules=rules,
        name=f"{p.name}+fnt",
    )


def fnt(model: torch.nn.Module, policy: Any = None, **compile_kwargs: Any) -> torch.nn.Module:
    """Switch a model (compiled with ``backend="fqt"`` or not) to the FNT phase: returns
    ``torch.compile(model, backend="fqt")`` with `fnt_policy` of ``policy``, by default of the
    policy the model was last compiled with. Parameters, optimizer and quantizer state are
    shared with the model passed in; only the graphs are recompiled."""
    base = getattr(model, "_orig_mod", model)
    if policy is None:
        previous = graphs_for(base)
        policy = previous[-1].policy if previous else None
    options = dict(compile_kwargs.pop("options", None) or {})
    options["policy"] = fnt_policy(policy)
    return torch.compile(base, backend="fqt", options=options, **compile_kwargs)


def fnt_lr(step: int, total_steps: int, start_lr: float, base_lr: float) -> float:
    """LR at ``step`` of an FNT phase of ``total_steps``: linear ``start_lr → base_lr`` over the
    first half, then linear ``base_lr → 0`` at ``total_steps`` (LUQ §5.2)."""
    if total_steps < 2:
        raise ValueError(f"an FNT phase needs at least 2 steps, got {total_steps}")
    half = total_steps / 2
    t = min(max(step, 0), total_steps)
    if t <= half:
        return start_lr + (base_lr - start_lr) * t / half
    return base_lr * (total_steps - t) / (total_steps - half)


def fnt_scheduler(
    optimizer: torch.optim.Optimizer, total_steps: int, base_lr: float | None = None
) -> torch.optim.lr_scheduler.LambdaLR:
    """A scheduler that drives every param group along `fnt_lr`, starting from the group's
    current LR (the last LR of the 4-bit phase). ``base_lr`` defaults to the group's
    ``initial_lr`` (set by an earlier scheduler) or its current LR. Call ``.step()`` per step."""
    lambdas = []
    for group in optimizer.param_groups:
        start = float(group["lr"])
        base = float(base_lr if base_lr is not None else group.get("initial_lr", start))
        if base <= 0:
            raise ValueError(f"base_lr must be > 0, got {base}")
        group["initial_lr"] = base  # LambdaLR multiplies this by the factor below
        lambdas.append(lambda step, s=start, b=base: fnt_lr(step, total_steps, s, b) / b)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, lambdas)
