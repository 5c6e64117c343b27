"""Per-layer diagnostics of the gradient quantizers on a model's real gradients.

    report = qcompile.gradient_diagnostics(cmodel, (x, y), F.cross_entropy, out_png="grads.png")
    print(report)

Why: when 4-bit training misses FP32 it is usually one layer whose dY sits badly on the grid —
most of it below LUQ's smallest level (underflow), or beyond an INT clip — or one quantizer whose
noise swamps the gradient. This helper measures exactly that, on the gradients your model
produces for one batch:

* it captures every Linear/Conv layer's real output gradient dY on an eager deep copy of the model
  (a hook on each layer's output; the compiled model, its weights and its ``.grad`` stay untouched);
* for each gradient role of each layer (``grad_dgrad``, ``grad_wgrad``) it takes the spec the
  policy gives that layer (read from the compiled graphs' policy, or ``policy=``), normalises |dY|
  by each element's own scaling group (so per-sample / per-channel grids line up) and counts the
  fraction of non-zero values in the underflow region, the fraction flushed to zero, and the
  fraction clipped;
* it applies the reference quantizer (`qcompile.quantize`, the same maths the compiled kernels
  run) ``draws`` times and measures its bias ``‖E[Q(dY)] − dY‖ / ‖dY‖`` (noise-corrected, with the
  standard-error floor below which bias cannot be told from noise) and variance
  ``E‖Q(dY) − E[Q(dY)]‖² / ‖dY‖²``;
* ``out_png`` draws, per layer, the histogram of log2(|dY| / group step) with the grid's levels.

``keep_first_last`` is ignored on purpose: the first and last layers are measured with the
policy's gradient specs too, which shows why a policy keeps them in high precision; the
``in_plan`` column says what the compiled graphs really ran for each layer (when there is a plan).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from qcompile.policy.config import Policy
from qcompile.runtime.reference.int_quant import int_clip
from qcompile.runtime.reference.luq import luq_levels
from qcompile.runtime.reference.scaling_groups import gradient_reduce_dims, group_amax, normalize_dims
from qcompile.runtime.spec import QuantSpec, parse_spec

GEMM_MODULES: dict[type, str] = {
    nn.Linear: "linear", nn.Conv1d: "conv1d", nn.Conv2d: "conv2d", nn.Conv3d: "conv3d",
}  # fmt: skip
GRADIENT_ROLES = ("grad_dgrad", "grad_wgrad")


@dataclass
class QuantizerStats:
    """How one gradient quantizer treats one layer's dY (fractions are of the non-zero elements)."""

    role: str
    spec: str
    in_plan: str
    underflow: float
    zeroed: float
    clipped: float
    bias: float
    bias_floor: float
    variance: float
    mse: float
    draws: int


@dataclass
class LayerGradients:
    """One layer's captured dY and the stats of each of its gradient quantizers."""

    layer: str
    op: str
    shape: list[int]
    rms: float
    amax: float
    zero_fraction: float
    quantizers: list[QuantizerStats] = field(default_factory=list)
    log2_normalized: dict[str, list[float]] = field(default_factory=dict, repr=False)
    grid: dict[str, tuple[list[float], float | None]] = field(default_factory=dict, repr=False)


@dataclass
class GradientReport:
    """Everything `gradient_diagnostics` measured; ``str()`` is a table, ``to_dict()`` JSON-ready."""

    policy: str
    layers: list[LayerGradients]

    def rows(self) -> list[dict[str, Any]]:
        return [{"layer": g.layer, "op": g.op, **asdict(q)} for g in self.layers for q in g.quantizers]

    def to_dict(self) -> dict[str, Any]:
        layers = [
            {k: v for k, v in asdict(g).items() if k not in ("log2_normalized", "grid")} for g in self.layers
        ]
        return {"policy": self.policy, "layers": layers}

    def stats(self, layer: str, role: str) -> QuantizerStats:
        for g in self.layers:
            if g.layer == layer:
                for q in g.quantizers:
                    if q.role == role:
                        return q
        raise KeyError(
            f"no stats for layer {layer!r} role {role!r}; layers: {[g.layer for g in self.layers]}"
        )

    def __str__(self) -> str:
        from tabulate import tabulate

        rows = [
            [g.layer, g.op, "x".join(map(str, g.shape)), f"{g.rms:.2e}", q.role.removeprefix("grad_"), q.spec,
             q.in_plan, f"{100 * q.underflow:.1f}", f"{100 * q.zeroed:.1f}", f"{100 * q.clipped:.2f}",
             f"{q.bias:.3f} (±{q.bias_floor:.3f})", f"{q.variance:.3f}"]
            for g in self.layers for q in g.quantizers
        ]  # fmt: skip
        headers = ["layer", "op", "dY shape", "dY rms", "role", "spec", "in plan", "underflow %", "zeroed %",
                   "clipped %", "rel. bias (floor)", "rel. variance"]  # fmt: skip
        return f"gradient quantizers of policy {self.policy!r} on this batch's dY:\n" + tabulate(
            rows, headers=headers, tablefmt="simple", disable_numparse=True
        )


def _group_step(g: torch.Tensor, spec: QuantSpec, dims: list[int]) -> tuple[torch.Tensor, list[float], float | None, float]:  # fmt: skip
    """(per-element grid step, levels in step units, clip level in step units or None, underflow bound).

    LUQ: step α = max|g| / 2^(L−1), levels α·2^k (k = 0..L−1), nothing clips, |g| < α underflows
    (stochastically to 0 or α). INT: step Δ = clip / qmax, levels Δ·1..qmax, |g| > clip clips,
    |g| below Δ/2 (nearest) or Δ (stochastic rounding) can round to zero.
    """
    gf = g.float()
    if spec.format == "luq":
        top = 2 ** (luq_levels(spec.bits) - 1)
        step = group_amax(gf, dims) / float(top)
        return step, [float(2**k) for k in range(luq_levels(spec.bits))], None, 1.0
    qmax = 2**spec.bits - 1 if spec.signed == "unsigned" else 2 ** (spec.bits - 1) - 1
    step = int_clip(gf, spec.scaling, dims) / float(qmax)
    return (
        step,
        [float(k) for k in range(1, qmax + 1)],
        float(qmax),
        1.0 if spec.rounding == "stochastic" else 0.5,
    )


def quantizer_stats(g: torch.Tensor, spec: QuantSpec | str, channel_dim: int, *, role: str = "grad_dgrad",
                    draws: int = 32, in_plan: str = "") -> tuple[QuantizerStats, torch.Tensor, list[float], float | None]:  # fmt: skip
    """Grid occupancy, bias and variance of ``spec`` applied to the gradient ``g``.

    Returns the stats, log2(|g| / step) of the non-zero elements, the grid levels and the clip
    level (both in step units, for plotting). Bias and variance come from ``draws`` independent
    applications of the reference quantizer (`qcompile.quantize`).
    """
    from qcompile.tensor_quantize import quantize

    spec = parse_spec(spec)
    if not spec.is_quantized:
        raise ValueError(f"{spec.to_string()!r} is high precision: there is no quantizer to measure")
    if draws < 2:
        raise ValueError("draws must be at least 2 to measure a variance")
    gf = g.detach().float()
    dims = normalize_dims(gradient_reduce_dims(spec.granularity, gf.ndim, channel_dim), gf.ndim)
    step, levels, clip, underflow_bound = _group_step(gf, spec, dims)
    nonzero = gf != 0
    n_nz = max(int(nonzero.sum()), 1)
    x = gf.abs() / torch.where(step == 0, torch.ones_like(step), step)
    underflow = float(((x < underflow_bound) & nonzero).sum()) / n_nz
    clipped = float((x > clip * (1 + 1e-6)).sum()) / n_nz if clip is not None else 0.0

    s1 = torch.zeros_like(gf, dtype=torch.float64)
    s2 = torch.zeros_like(gf, dtype=torch.float64)
    zeroed = 0.0
    for _ in range(draws):
        q = quantize(gf, spec, channel_dim=channel_dim).double()
        s1 += q
        s2 += q * q
        zeroed += float(((q == 0) & nonzero).sum()) / n_nz
    mean = s1 / draws
    var = (s2 / draws - mean * mean).clamp_min(0) * (draws / (draws - 1))
    norm2 = max(float((gf.double() ** 2).sum()), 1e-300)
    var_sum = float(var.sum())
    err2 = float(((mean - gf.double()) ** 2).sum())
    noise2 = var_sum / draws  # E‖mean − E[Q]‖²: what an unbiased quantizer's ‖mean − g‖² still shows
    stats = QuantizerStats(
        role=role, spec=spec.to_string(), in_plan=in_plan, underflow=underflow, zeroed=zeroed / draws,
        clipped=clipped, bias=math.sqrt(max(err2 - noise2, 0.0) / norm2), bias_floor=math.sqrt(noise2 / norm2),
        variance=var_sum / norm2, mse=(float(((s2 / draws) - 2 * mean * gf.double()).sum()) + norm2) / norm2,
        draws=draws,
    )  # fmt: skip
    log2x = torch.log2(x[nonzero]).flatten()
    return stats, log2x, levels, clip


def _capture_output_grads(model: nn.Module) -> tuple[dict[str, list[torch.Tensor]], dict[str, str], list]:
    grads: dict[str, list[torch.Tensor]] = {}
    ops: dict[str, str] = {}
    handles = []
    for name, module in model.named_modules():
        op = GEMM_MODULES.get(type(module))
        if op is None:
            continue
        ops[name] = op

        def hook(mod, inputs, output, name=name):
            if isinstance(output, torch.Tensor) and output.requires_grad:
                output.register_hook(lambda g: grads.setdefault(name, []).append(g.detach().clone()))

        handles.append(module.register_forward_hook(hook))
    return grads, ops, handles


def _plan_cells(model: Any) -> tuple[Policy | None, dict[tuple[str, str], str]]:
    """The compiled model's policy and, per (layer, gradient role), the spec its graphs really ran."""
    from qcompile.compiler.compiled_graphs import graphs_for
    from qcompile.report.gemm_plan import plan_from_graphs

    base = getattr(model, "_orig_mod", model)
    graphs = graphs_for(base)
    if not graphs:
        return None, {}
    cells: dict[tuple[str, str], str] = {}
    for row in plan_from_graphs(graphs).rows:
        for role in GRADIENT_ROLES:
            cells[(row.layer, role)] = getattr(row, role).cell()
    return graphs[-1].policy, cells


def gradient_diagnostics(
    model: nn.Module,
    batch: torch.Tensor | Sequence[Any],
    loss_fn: Callable[..., torch.Tensor],
    *,
    policy: Policy | str | None = None,
    out_png: str | Path | None = None,
    draws: int = 32,
    layers: Sequence[str] | None = None,
) -> GradientReport:
    """Measure each gradient quantizer on the real dY of every Linear/Conv layer for one batch.

    model: an nn.Module or its ``torch.compile`` wrapper (compiled with ``backend="fqt"`` or not).
    batch: ``(inputs, target)`` → ``loss_fn(model(inputs), target)`` (``inputs`` may be a tuple of
        positional inputs), or a tensor → ``loss_fn(model(batch))``.
    policy: whose gradient specs to measure; default: the compiled model's policy, else ``luq-int4``.
    out_png: where to draw the per-layer histograms of dY against each quantizer's grid.
    draws: applications of each (stochastic) quantizer used for the bias and variance estimates.
    layers: restrict to these module paths (default: every Linear/Conv that receives a gradient).
    """
    from qcompile.policy.files import resolve_policy

    plan_policy, cells = _plan_cells(model)
    pol = resolve_policy(policy) if policy is not None else plan_policy or resolve_policy(None)
    base = getattr(model, "_orig_mod", model)
    if not isinstance(base, nn.Module):
        raise TypeError(f"gradient_diagnostics needs an nn.Module, got {type(base).__name__}")
    eager = copy.deepcopy(base)
    grads, ops, handles = _capture_output_grads(eager)
    try:
        if isinstance(batch, torch.Tensor):
            loss = loss_fn(eager(batch))
        else:
            inputs, target = batch
            inputs = inputs if isinstance(inputs, (tuple, list)) else (inputs,)
            loss = loss_fn(eager(*inputs), target)
        loss.backward()
    finally:
        for h in handles:
            h.remove()
    if not grads:
        raise ValueError("no Linear/Conv layer received a gradient: does the loss depend on the model?")
    wanted = set(layers) if layers is not None else None
    report = GradientReport(policy=pol.name, layers=[])
    for name in ops:  # forward (module definition) order
        captured = grads.get(name)
        if not captured or (wanted is not None and name not in wanted):
            continue
        op = ops[name]
        channel_dim = 1 if op.startswith("conv") else -1
        for call, g in enumerate(reversed(captured)):  # backward visits calls in reverse order
            label = name if len(captured) == 1 else f"{name}#{call}"
            gf = g.float()
            entry = LayerGradients(label, op, list(g.shape), float(gf.pow(2).mean().sqrt()), float(gf.abs().max()),
                                   float((gf == 0).float().mean()))  # fmt: skip
            decision = pol.decide(name, op)
            for role in GRADIENT_ROLES:
                spec = getattr(decision, role)
                if not spec.is_quantized:
                    continue
                stats, log2x, levels, clip = quantizer_stats(
                    g, spec, channel_dim, role=role, draws=draws, in_plan=cells.get((name, role), "(no plan)")
                )
                entry.quantizers.append(stats)
                entry.log2_normalized[role] = (
                    log2x.tolist() if log2x.numel() <= 200_000 else log2x[:200_000].tolist()
                )
                entry.grid[role] = (levels, clip)
            report.layers.append(entry)
    if out_png is not None:
        save_histograms(report, out_png)
    return report


def save_histograms(report: GradientReport, path: str | Path) -> None:
    """One panel per layer: histogram of log2(|dY| / step) per gradient role, the grid's levels as
    vertical lines, the underflow region (below the first level) shaded, the clip level dashed."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = [g for g in report.layers if g.quantizers]
    if not panels:
        raise ValueError(f"policy {report.policy!r} quantizes no gradient of these layers: nothing to plot")
    cols = min(3, len(panels))
    rows = math.ceil(len(panels) / cols)
    fig, axes = plt.subplots(rows, cols, figsize=(4.6 * cols, 3.2 * rows), squeeze=False)
    colors = {"grad_dgrad": "tab:blue", "grad_wgrad": "tab:orange"}
    for ax, g in zip(axes.flat, panels, strict=False):
        for q in g.quantizers:
            data = g.log2_normalized[q.role]
            if data:
                ax.hist(data, bins=80, alpha=0.45, color=colors[q.role], density=True,
                        label=f"{q.role.removeprefix('grad_')} {q.spec}: {100 * q.underflow:.0f}% under, "
                              f"{100 * q.clipped:.1f}% clip")  # fmt: skip
            levels, clip = g.grid[q.role]
            for lv in levels:
                ax.axvline(math.log2(lv), color=colors[q.role], lw=0.6, alpha=0.7)
            if clip is not None:
                ax.axvline(math.log2(clip), color=colors[q.role], ls="--", lw=1.2)
        ax.axvspan(ax.get_xlim()[0], 0.0, color="grey", alpha=0.12)
        ax.set_title(f"{g.layer} ({g.op}), dY {'x'.join(map(str, g.shape))}", fontsize=8)
        ax.set_xlabel("log2(|dY| / grid step of its group)", fontsize=7)
        ax.legend(fontsize=6)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.suptitle(f"dY against the quantization grid, policy {report.policy!r} (shaded: below the first level)",
                 fontsize=9)  # fmt: skip
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
