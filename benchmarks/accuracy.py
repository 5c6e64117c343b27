"""FP32 vs. fully quantized 4-bit training on real data, side by side: the papers' central claim.

    .venv/bin/python benchmarks/accuracy.py                       # all tasks, all policies, seeds 0 1
    .venv/bin/python benchmarks/accuracy.py --tasks digits --seeds 0 --policies fp32 luq-int4
    .venv/bin/python benchmarks/accuracy.py --merge a.json b.json  # combine runs made in parallel

For each task every policy trains the same model from the same initial weights (one draw per
seed) on the same batches in the same order; only the policy differs. The FP32 baseline is plain
``torch.compile`` (Inductor, default backend); quantized runs use
``torch.compile(model, backend="fqt", options={"policy": ...})``. Evaluation runs the compiled
model (quantized forward for quantized policies: that is what the policy deploys).

Policies: any qcompile preset name; names that do not exist (yet) are skipped with a message.
Derived policies built here with the Policy/Rule API:

* ``luq+fnt`` — LUQ then FNT (LUQ paper §5.2): the ``luq`` run's last ``--fnt-epochs`` epochs are
  replaced by a phase whose policy keeps only the weights at INT4 (activations and both gradient
  roles high precision) at a lower learning rate (a triangle peaking at ``--fnt-lr-scale`` × the
  base LR, the paper's ramp-up-then-down shape). Total epochs stay the same as every other row.
* ``<policy>+had<k>-<gemms>`` — that policy with a random Hadamard transform
  (``Policy(hadamard=...)``), e.g. ``luq-int4+had16-forward``.
* ``ablate:forward`` / ``ablate:dgrad`` / ``ablate:wgrad`` — ``luq-int4`` with only one role
  quantized (forward W and X / dY of the input-gradient GEMM / dY of the weight-gradient GEMM);
  run automatically on a task whose target is missed (``--ablation auto``).

Writes a tabulate table, JSON (default ``benchmarks/results/accuracy.json``) and a PNG of the
learning curves (training loss and test metric per epoch, one line per policy).
"""

from __future__ import annotations

import argparse
import copy
import hashlib
import json
import math
import platform
import statistics
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from accuracy_tasks import DEFAULT_DATA, Task, cache_dir, cifar10_task, digits_task, lm_task  # noqa: E402

import qcompile  # noqa: E402
from qcompile import Policy, Rule  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
ALL_POLICIES = ("fp32", "luq-int4", "luq", "luq-smp2", "luq+fnt", "lbt-int4", "aq1-int4", "nvfp4", "mxfp4", "mxfp8", "fp8-rowwise")
HEADLINE = ("fp32", "luq-int4")
ABLATIONS = ("ablate:forward", "ablate:dgrad", "ablate:wgrad")
TASKS = ("digits", "cifar10", "tinyshakespeare")
# Targets of the issue: luq-int4 within 1.0 pt of FP32 accuracy, within 2% of FP32 validation loss.
ACCURACY_TARGET_PTS = 1.0
LOSS_TARGET_REL = 0.02
PAPER_GAPS = {
    "LUQ, ResNet-50 ImageNet (4-bit fwd+bwd)": "76.5 -> 75.42 (-1.1 pt)",
    "LUQ + SMP(2), ResNet-50 ImageNet": "75.63 (-0.87 pt)",
    "LUQ + 3 epochs FNT, ResNet-50 ImageNet": "76.18 (-0.32 pt)",
    "LBT 4/4/4, ResNet-18 ImageNet": "-3.3 pt",
}


# --------------------------------------------------------------------------- policies


def fnt_policy() -> Policy:
    """LUQ's FNT phase: weights stay INT4 in the forward; activations and gradients high precision."""
    return qcompile.preset("luq").replace(
        name="luq-fnt-phase",
        share_gradient_sample=False,
        rules=(Rule(layer="*", activation="fp32", grad_dgrad="fp32", grad_wgrad="fp32",
                    reason="FNT: only the weights stay 4-bit"),),
    )  # fmt: skip


def ablation_policy(role: str) -> Policy:
    """``luq-int4`` with exactly one role group quantized (the others high precision), via a rule."""
    keep = {"forward": ("weight", "activation"), "dgrad": ("grad_dgrad",), "wgrad": ("grad_wgrad",)}[role]
    off = {r: "fp32" for r in qcompile.ROLES if r not in keep}
    return qcompile.preset("luq-int4").replace(
        name=f"ablate:{role}", rules=(Rule(layer="*", reason=f"ablation: only {role} quantized", **off),)
    )


ATTENTION_VARIANTS = {
    # P = softmax(q·kᵀ) lies in [0, 1] with most entries near 1/T: one per-tensor SAWB scale rounds
    # most of them to 0 (relative MSE 0.07-0.19, benchmarks/sawb_unsigned.py). A scale per row (per
    # query for P and q, per key for kᵀ, per channel for v) is constant along the contraction: SCQ.
    "attn-row": {"activation": "int4-max-auto-sample", "reason": "attention: INT4, a max scale per row"},
    "attn-tensor": {"activation": "int4-auto", "reason": "attention: INT4 SAWB, one scale per tensor"},
    "attn-int8": {"activation": "int8-max-auto-sample", "reason": "attention: INT8, a max scale per row"},
    "attn-fp32": {**dict.fromkeys(qcompile.ROLES, "fp32"), "reason": "attention in high precision"},
}


def attention_policy(base: Policy, variant: str) -> Policy:
    """``base`` with both attention GEMMs (``q·kᵀ``, ``p·v``) set by one of `ATTENTION_VARIANTS`,
    through a rule on ``op="attention.*"`` (what a user would write), applied after its rules."""
    fields = dict(ATTENTION_VARIANTS[variant])
    return base.replace(name=f"{base.name}+{variant}", rules=(*base.rules, Rule(op="attention.*", **fields)))


def resolve(name: str) -> Policy | str | None:
    """The policy to compile with (``"fp32"`` means plain Inductor), or None when it does not exist."""
    if name == "fp32":
        return "fp32"
    if name == "luq+fnt":
        return qcompile.preset("luq") if "luq" in qcompile.presets() else None
    if name.startswith("ablate:") and name[7:] in ("forward", "dgrad", "wgrad"):
        return ablation_policy(name[7:])
    base, _, variant = name.partition("+")
    if variant in ATTENTION_VARIANTS:  # e.g. luq-int4+attn-row, ablate:forward+attn-row
        inner = resolve(base)
        return attention_policy(inner, variant) if isinstance(inner, Policy) else None
    if variant.startswith("had"):  # e.g. luq-int4+had16-forward: a Hadamard transform (issue 19)
        inner = resolve(base)
        return inner.replace(name=name, hadamard=variant) if isinstance(inner, Policy) else None
    return qcompile.preset(name) if name in qcompile.presets() else None


# --------------------------------------------------------------------------- training


@dataclass
class Run:
    """What one (task, policy, seed) training run measured."""

    task: str
    model: str
    policy: str
    seed: int
    backend: str
    metric: str
    final: dict[str, float]
    train_loss: list[float]
    test_metric: list[float]
    wall_time_s: float
    compile_first_step_s: float
    epochs: int
    steps: int
    plan_totals: dict[str, Any] = field(default_factory=dict)
    note: str = ""


def lr_at(step: int, total: int, base: float) -> float:
    """Linear warm-up over the first 5% of steps (at most 100), then cosine to zero."""
    warm = max(1, min(100, total // 20))
    if step < warm:
        return base * (step + 1) / warm
    return base * 0.5 * (1 + math.cos(math.pi * (step - warm) / max(1, total - warm)))


def fnt_lr(step: int, steps: int, start: float, peak: float) -> float:
    """FNT's schedule (LUQ §5.2): from the last LR linearly to ``peak`` over half the phase, then to 0."""
    half = max(1, steps // 2)
    if step < half:
        return start + (peak - start) * step / half
    return peak * (steps - step) / max(1, steps - half)


def _compile(model: torch.nn.Module, policy: Policy | str):
    if policy == "fp32":
        return torch.compile(model, dynamic=False), "inductor"
    return torch.compile(model, backend="fqt", options={"policy": policy}, dynamic=False), "fqt"


def _plan_totals(task: Task, model, compiled: Any, policy: Policy | str, backend: str, seed: int,
                 ran: bool) -> dict[str, Any]:  # fmt: skip
    """The plan's totals of a run. A run resumed after its last epoch compiled nothing in this
    process: a copy of the model is compiled and run as the training loop runs it (one training
    forward and backward, one evaluation, no optimizer step), so the plan reads the same graphs."""
    if backend != "fqt":
        return {}
    if not ran:
        model = copy.deepcopy(model)
        compiled, _ = _compile(model, policy)
        model.train()
        x, y = next(iter(task.batches(seed, 0)))
        task.loss(compiled(x), y).backward()
        model.eval()
        task.evaluate(compiled)
    return qcompile.plan(compiled).totals()


def _train_epochs(task: Task, model, compiled, opt, seed: int, epochs: range, lr_fn, bar, hist,
                  save=None) -> float:  # fmt: skip
    """Train the given epochs; append per-epoch train loss and test metric to ``hist``; return the
    seconds until the first step finished (NaN when ``hist`` already had steps). ``save(epoch)``
    runs after each epoch (a checkpoint)."""
    first = math.nan
    t0 = time.perf_counter()
    for epoch in epochs:
        model.train()
        losses = []
        for i, (x, y) in enumerate(task.batches(seed, epoch)):
            step = (epoch - epochs.start) * task.steps_per_epoch + i
            for group in opt.param_groups:
                group["lr"] = lr_fn(step)
            loss = task.loss(compiled(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            losses.append(loss.item())
            if math.isnan(first) and not hist["train_loss"]:
                first = time.perf_counter() - t0
                hist.setdefault("first_step_s", first)
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        model.eval()
        metrics = task.evaluate(compiled)
        hist["train_loss"].append(sum(losses) / len(losses))
        hist["test_metric"].append(metrics[task.metric])
        hist["final"] = metrics
        bar.set_postfix(loss=f"{hist['train_loss'][-1]:.3f}", **{task.metric: f"{metrics[task.metric]:.3f}"})
        if save is not None:
            save(epoch + 1)
    return first


class Checkpoint:
    """One run's state after each finished epoch (model, optimizer, curves, the global RNG the
    stochastic quantizers draw from, elapsed time), so an interrupted run resumes at its last
    epoch boundary with the same batches and draws. Written atomically (temp file, rename)."""

    def __init__(self, folder: Path | None, task: Task, policy: str, seed: int) -> None:
        config = json.dumps([task.sizes, task.epochs, task.steps_per_epoch, task.lr], sort_keys=True, default=str)
        key = hashlib.sha256(config.encode()).hexdigest()[:10]  # another size never resumes this run
        name = f"{task.name}-{key}__{policy.replace(':', '_')}__s{seed}.pt"
        self.path = None if folder is None else folder / name

    def load(self) -> dict[str, Any] | None:
        if self.path is None or not self.path.exists():
            return None
        return torch.load(self.path, map_location="cpu", weights_only=False)

    def save(self, epoch: int, model, opt, hist: dict[str, Any], elapsed: float) -> None:
        if self.path is None:
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        state = {"epoch": epoch, "model": model.state_dict(), "opt": opt.state_dict(), "hist": hist,
                 "rng": torch.get_rng_state(), "elapsed": elapsed}  # fmt: skip
        tmp = self.path.with_suffix(".tmp")
        torch.save(state, tmp)
        tmp.replace(self.path)


def train_policy(task: Task, name: str, policy: Policy | str, seed: int, initial: dict[str, torch.Tensor],
                 *, fnt_epochs: int = 0, fnt_lr_scale: float = 0.1, progress: bool = True,
                 checkpoints: Path | None = None) -> list[Run]:  # fmt: skip
    """Train one policy from ``initial`` weights; with ``fnt_epochs`` also branch off a ``luq+fnt`` run
    that shares the first ``epochs - fnt_epochs`` epochs and replaces the rest with the FNT phase.
    With ``checkpoints`` (a folder) the shared epochs are checkpointed after each epoch and a
    run resumes from its checkpoint there (the short tail after the FNT branch point reruns)."""
    from tqdm.auto import tqdm

    torch._dynamo.reset()
    torch.manual_seed(seed)  # stochastic quantizers draw their seeds from the global generator
    model = task.make_model()
    model.load_state_dict(initial)
    compiled, backend = _compile(model, policy)
    opt = task.make_optimizer(model.parameters())
    total = task.epochs * task.steps_per_epoch
    branch = task.epochs - fnt_epochs if fnt_epochs else task.epochs
    bar_total = total + fnt_epochs * task.steps_per_epoch
    bar = tqdm(total=bar_total, desc=f"{task.name}/{name}/s{seed}", unit="step", disable=not progress)
    hist: dict[str, Any] = {"train_loss": [], "test_metric": [], "final": {}}
    # A run that branches FNT off at `branch` checkpoints only up to there: its own file, so a
    # finished plain run's last epoch is never taken for the branch point.
    ckpt = Checkpoint(checkpoints, task, name if branch == task.epochs else f"{name}-until-{branch}", seed)
    done, before = 0, 0.0
    state = ckpt.load()
    if state is not None:
        if backend == "fqt":
            qcompile.attach_state(model)  # so quantizer state (LBT's γ, learned clips) is restored too
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["opt"])
        hist, done, before = state["hist"], min(state["epoch"], branch), state["elapsed"]
        torch.set_rng_state(state["rng"])
        bar.update(done * task.steps_per_epoch)
        bar.write(f"{task.name}/{name}/s{seed}: resumed after epoch {done} from {ckpt.path}")
    start = time.perf_counter() - before
    offset = done * task.steps_per_epoch  # `_train_epochs` counts steps from its first epoch
    _train_epochs(task, model, compiled, opt, seed, range(done, branch), lambda s: lr_at(offset + s, total, task.lr),
                  bar, hist, lambda epoch: ckpt.save(epoch, model, opt, hist, time.perf_counter() - start))  # fmt: skip
    first = hist.get("first_step_s", math.nan)
    branch_s = time.perf_counter() - start
    snapshot = None
    if fnt_epochs:
        snapshot = (copy.deepcopy(model.state_dict()), copy.deepcopy(opt.state_dict()), copy.deepcopy(hist))
        off = branch * task.steps_per_epoch
        _train_epochs(task, model, compiled, opt, seed, range(branch, task.epochs),
                      lambda s: lr_at(off + s, total, task.lr), bar, hist)  # fmt: skip
    wall = time.perf_counter() - start
    model_name = task.model_name
    runs = [Run(task.name, model_name, name, seed, backend, task.metric, hist["final"], hist["train_loss"],
                hist["test_metric"], wall, first, task.epochs, total,
                _plan_totals(task, model, compiled, policy, backend, seed, done < task.epochs))]  # fmt: skip
    if snapshot is not None:
        state, opt_state, fhist = snapshot
        torch._dynamo.reset()
        fmodel = task.make_model()
        fmodel.load_state_dict(state)
        fcompiled, fbackend = _compile(fmodel, fnt_policy())
        fopt = task.make_optimizer(fmodel.parameters())
        fopt.load_state_dict(opt_state)
        k = fnt_epochs * task.steps_per_epoch
        start_lr, peak = lr_at(branch * task.steps_per_epoch, total, task.lr), fnt_lr_scale * task.lr
        t0 = time.perf_counter()
        _train_epochs(task, fmodel, fcompiled, fopt, seed, range(branch, task.epochs),
                      lambda s: fnt_lr(s, k, start_lr, peak), bar, fhist)  # fmt: skip
        note = (f"epochs 1-{branch} luq, then {fnt_epochs} epoch(s) FNT (W int4; X, dY fp32) "
                f"with LR {start_lr:.2g} -> {peak:.2g} -> 0")  # fmt: skip
        runs.append(Run(task.name, model_name, "luq+fnt", seed, fbackend, task.metric, fhist["final"],
                        fhist["train_loss"], fhist["test_metric"], branch_s + time.perf_counter() - t0, first,
                        task.epochs, total, _plan_totals(task, fmodel, fcompiled, fnt_policy(), fbackend, seed, True),
                        note))  # fmt: skip
    bar.close()
    return runs


# --------------------------------------------------------------------------- summary


def gap(task_metric: str, value: float, base: float) -> float:
    """Accuracy: points (quantized - fp32). Loss: relative % ((quantized - fp32) / fp32 * 100)."""
    if task_metric.endswith("accuracy"):
        return value - base
    return 100.0 * (value - base) / base


def _mean_std(xs: Sequence[float]) -> tuple[float, float]:
    return statistics.fmean(xs), (statistics.stdev(xs) if len(xs) > 1 else float("nan"))


def summarize(runs: Sequence[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per (task, policy): mean ± std over seeds of the final metric and of the paired gap."""
    rows = []
    keys = list(dict.fromkeys((r["task"], r["policy"]) for r in runs))
    for task, policy in keys:
        mine = [r for r in runs if r["task"] == task and r["policy"] == policy]
        metric = mine[0]["metric"]
        base = {r["seed"]: r["final"][metric] for r in runs if r["task"] == task and r["policy"] == "fp32"}
        values = [r["final"][metric] for r in mine]
        gaps = [gap(metric, r["final"][metric], base[r["seed"]]) for r in mine if r["seed"] in base]
        m, s = _mean_std(values)
        gm, gs = _mean_std(gaps) if gaps else (float("nan"), float("nan"))
        rows.append({
            "task": task, "model": mine[0]["model"], "policy": policy, "seeds": [r["seed"] for r in mine],
            "metric": metric, "mean": m, "std": s, "values": values, "gap_mean": gm, "gap_std": gs,
            "gap_unit": "pt" if metric.endswith("accuracy") else "% of fp32 loss",
            "wall_time_s": statistics.fmean(r["wall_time_s"] for r in mine),
        })  # fmt: skip
    return rows


def target_met(summary: Sequence[dict[str, Any]], task: str) -> bool | None:
    """Whether ``luq-int4`` is within the issue's target of FP32 on ``task`` (None: not measured)."""
    row = next((r for r in summary if r["task"] == task and r["policy"] == "luq-int4"), None)
    if row is None or math.isnan(row["gap_mean"]):
        return None
    if row["metric"].endswith("accuracy"):
        return row["gap_mean"] >= -ACCURACY_TARGET_PTS
    return row["gap_mean"] <= 100 * LOSS_TARGET_REL


def _fmt(x: float, nd: int) -> str:
    return "n/a" if math.isnan(x) else f"{x:.{nd}f}"


def table(summary: Sequence[dict[str, Any]]) -> str:
    rows = []
    for r in summary:
        acc = r["metric"].endswith("accuracy")
        nd = 2 if acc else 4
        val = _fmt(r["mean"], nd) + ("%" if acc else "")
        if len(r["seeds"]) > 1:
            val += f" ± {_fmt(r['std'], nd)}"
        if not acc:
            val += f" ({r['mean'] / math.log(2):.3f} bpc)"
        g = "—" if r["policy"] == "fp32" else f"{r['gap_mean']:+.2f}" + (" pt" if acc else " %")
        if r["policy"] != "fp32" and len(r["seeds"]) > 1:
            g += f" ± {_fmt(r['gap_std'], 2)}"
        rows.append([r["task"], r["model"], r["policy"], ",".join(map(str, r["seeds"])),
                     f"{r['metric']}: {val}", g, f"{r['wall_time_s']:.0f}"])  # fmt: skip
    headers = ["task", "model", "policy", "seeds", "final metric (mean ± std)", "gap to fp32", "wall s"]
    return __import__("tabulate").tabulate(rows, headers=headers, tablefmt="github", disable_numparse=True)


def save_plot(runs: Sequence[dict[str, Any]], path: Path) -> None:
    """Rows: tasks; columns: training loss and test metric per epoch; one line per policy (mean over seeds)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tasks = list(dict.fromkeys(r["task"] for r in runs))
    fig, axes = plt.subplots(len(tasks), 2, figsize=(11, 3.4 * len(tasks)), squeeze=False)
    for row, task in zip(axes, tasks, strict=True):
        mine = [r for r in runs if r["task"] == task]
        for policy in dict.fromkeys(r["policy"] for r in mine):
            pr = [r for r in mine if r["policy"] == policy]
            style = "--" if policy.startswith("ablate") else "-"
            for ax, key in zip(row, ("train_loss", "test_metric"), strict=True):
                curves = [r[key] for r in pr]
                n = min(len(c) for c in curves)
                mean = [statistics.fmean(c[i] for c in curves) for i in range(n)]
                xs = list(range(1, n + 1))
                (line,) = ax.plot(xs, mean, style, marker="o", ms=3, label=f"{policy} (n={len(pr)})")
                if len(curves) > 1:
                    lo = [min(c[i] for c in curves) for i in range(n)]
                    hi = [max(c[i] for c in curves) for i in range(n)]
                    ax.fill_between(xs, lo, hi, color=line.get_color(), alpha=0.15)
        row[0].set_title(f"{task}: training loss per epoch")
        losses = [v for r in mine for v in r["train_loss"] if v > 0]
        if losses and max(losses) / min(losses) > 5:  # log scale only where the loss spans a decade
            row[0].set_yscale("log")
        row[1].set_title(f"{task}: {mine[0]['metric']} per epoch")
        for ax in row:
            ax.set_xlabel("epoch" if task != "tinyshakespeare" else "evaluation (every N steps)")
            ax.grid(True, alpha=0.3)
        row[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --------------------------------------------------------------------------- CLI


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description=__doc__.split("\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--tasks", nargs="+", default=list(TASKS), choices=TASKS)
    p.add_argument("--policies", nargs="+", default=list(ALL_POLICIES),
                   help="preset names, luq+fnt, ablate:{forward,dgrad,wgrad}; missing presets are skipped")  # fmt: skip
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1], help="seeds for the headline policies")
    p.add_argument("--headline", nargs="+", default=list(HEADLINE), help="policies run on every seed")
    p.add_argument("--ablation", choices=("auto", "always", "never"), default="auto",
                   help="role ablation of luq-int4 (first seed): auto = only where the target is missed")  # fmt: skip
    p.add_argument("--fnt-epochs", type=int, default=1, help="epochs of FNT at the end of luq+fnt")
    p.add_argument("--fnt-lr-scale", type=float, default=0.1, help="FNT peak LR as a fraction of the base LR")
    p.add_argument("--data", type=Path, default=DEFAULT_DATA, help="folder with the data files")
    p.add_argument(
        "--cifar", type=Path, default=None, help="CIFAR-10 JPEG archive (default DATA/cifar10-jpg.tar.xz)"
    )
    p.add_argument(
        "--text", type=Path, default=None, help="tiny-shakespeare (default DATA/tinyshakespeare.txt)"
    )
    p.add_argument("--digits-epochs", type=int, default=4)
    p.add_argument("--digits-limit", type=int, default=None, help="stratified subset of the digits")
    p.add_argument("--cifar-train", type=int, default=8_000)
    p.add_argument("--cifar-test", type=int, default=2_000)
    p.add_argument("--cifar-epochs", type=int, default=4)
    p.add_argument("--cifar-width", type=int, default=8, help="ResNet-20 base width (16 = the original)")
    p.add_argument("--cifar-crop", type=int, default=0, help="random crops of the image padded by N pixels (4: standard)")
    p.add_argument("--cifar-optimizer", choices=("adam", "sgd"), default="adam")
    p.add_argument("--cifar-lr", type=float, default=3e-3)
    p.add_argument("--cifar-weight-decay", type=float, default=0.0)
    p.add_argument("--lm-steps", type=int, default=360)
    p.add_argument("--lm-evals", type=int, default=6, help="evaluations (curve points) over the steps")
    p.add_argument("--lm-d", type=int, default=64)
    p.add_argument("--lm-layers", type=int, default=2)
    p.add_argument("--lm-heads", type=int, default=4)
    p.add_argument("--lm-block", type=int, default=64, help="context length (characters)")
    p.add_argument("--lm-batch", type=int, default=32)
    p.add_argument("--threads", type=int, default=1, help="torch.set_num_threads (default 1)")
    p.add_argument("--out", type=Path, default=RESULTS / "accuracy.json")
    p.add_argument("--plot", type=Path, default=RESULTS / "accuracy.png")
    p.add_argument("--merge", nargs="+", type=Path, default=None,
                   help="combine these result JSONs (made by parallel runs) into --out/--plot; trains nothing")  # fmt: skip
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--checkpoints", type=Path, default=cache_dir() / "accuracy-checkpoints",
                   help="folder for per-epoch checkpoints; a rerun of the same command resumes from them")  # fmt: skip
    p.add_argument("--no-checkpoints", action="store_true", help="neither write nor resume checkpoints")
    return p


def make_task(name: str, args: argparse.Namespace) -> Task:
    if name == "digits":
        return digits_task(epochs=args.digits_epochs, limit=args.digits_limit)
    if name == "cifar10":
        archive = args.cifar or args.data / "cifar10-jpg.tar.xz"
        return cifar10_task(archive, train=args.cifar_train, test=args.cifar_test, epochs=args.cifar_epochs,
                            width=args.cifar_width, crop=args.cifar_crop, optimizer=args.cifar_optimizer,
                            lr=args.cifar_lr, weight_decay=args.cifar_weight_decay)  # fmt: skip
    text = args.text or args.data / "tinyshakespeare.txt"
    return lm_task(text, steps=args.lm_steps, evals=args.lm_evals, d=args.lm_d, layers=args.lm_layers,
                   heads=args.lm_heads, block=args.lm_block, batch=args.lm_batch)  # fmt: skip


def run_task(task: Task, args: argparse.Namespace, log: list[str], checkpoint=None) -> list[Run]:
    """All requested policies on one task: headline policies on every seed, the rest on the first.
    ``checkpoint(runs)`` is called after every run (to save partial results)."""
    torch.manual_seed(args.seeds[0])
    initial = {s: None for s in args.seeds}
    for s in args.seeds:
        torch.manual_seed(s)
        initial[s] = copy.deepcopy(task.make_model().state_dict())  # the same weights for every policy
    runs: list[Run] = []
    wanted = list(dict.fromkeys(args.policies))
    fnt = "luq+fnt" in wanted and args.fnt_epochs > 0
    for seed in args.seeds:
        # luq+fnt branches off the luq run: on the first seed, or on every seed when it is a headline policy
        fnt_seed = fnt and (seed == args.seeds[0] or "luq+fnt" in args.headline)
        for name in wanted:
            if name == "luq+fnt" or (seed != args.seeds[0] and name not in args.headline):
                continue
            policy = resolve(name)
            if policy is None:
                if seed == args.seeds[0]:
                    msg = f"[{task.name}] skipping {name!r}: no such preset yet (have {', '.join(qcompile.presets())})"
                    print(msg)
                    log.append(msg)
                continue
            branch = fnt_seed and name == "luq"
            runs += train_policy(task, name, policy, seed, initial[seed], fnt_epochs=args.fnt_epochs if branch else 0,
                                 fnt_lr_scale=args.fnt_lr_scale, progress=not args.no_progress,
                                 checkpoints=None if args.no_checkpoints else args.checkpoints)  # fmt: skip
            if checkpoint is not None:
                checkpoint(runs)
        if fnt_seed and "luq" not in wanted:
            runs += train_policy(task, "luq", resolve("luq"), seed, initial[seed], fnt_epochs=args.fnt_epochs,
                                 fnt_lr_scale=args.fnt_lr_scale, progress=not args.no_progress,
                                 checkpoints=None if args.no_checkpoints else args.checkpoints)  # fmt: skip
            if checkpoint is not None:
                checkpoint(runs)
    met = target_met(summarize([asdict(r) for r in runs]), task.name)
    if args.ablation == "always" or (args.ablation == "auto" and met is False):
        log.append(f"[{task.name}] luq-int4 target met: {met}; running the role ablation")
        print(log[-1])
        for name in ABLATIONS:
            runs += train_policy(task, name, resolve(name), args.seeds[0], initial[args.seeds[0]],
                                 progress=not args.no_progress,
                                 checkpoints=None if args.no_checkpoints else args.checkpoints)  # fmt: skip
            if checkpoint is not None:
                checkpoint(runs)
    return runs


def write_outputs(payload: dict[str, Any], out: Path, plot: Path | None) -> None:
    payload["summary"] = summarize(payload["runs"])
    for name in payload["tasks"]:
        payload["tasks"][name]["luq_int4_target_met"] = target_met(payload["summary"], name)
    print()
    print(table(payload["summary"]))
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(payload, indent=1, default=str))
    print(f"\nresults written to {out}")
    if plot is not None:
        save_plot(payload["runs"], plot)
        print(f"learning curves written to {plot}")


def merge(paths: Sequence[Path], out: Path, plot: Path | None) -> int:
    parts = [json.loads(Path(p).read_text()) for p in paths]
    tasks: dict[str, Any] = {}
    for part in parts:
        for k, v in part["tasks"].items():
            seeds = sorted(set(tasks.get(k, {}).get("seeds", [])) | set(v.get("seeds", [])))
            tasks[k] = {**v, "seeds": seeds}
    runs: dict[tuple[str, str, int], dict[str, Any]] = {}
    log = [m for p in parts for m in p.get("log", [])]
    for r in (r for p in parts for r in p["runs"]):
        key = (r["task"], r["policy"], r["seed"])
        if key in runs:  # e.g. luq re-run to branch luq+fnt off it: keep the first, record if they agree
            same = runs[key]["final"] == r["final"]
            log.append(
                f"merge: duplicate run {key} dropped; final metrics {'identical' if same else 'differ'}"
            )
            continue
        runs[key] = r
    payload = {**parts[0], "commands": [c for p in parts for c in p.get("commands", [])], "tasks": tasks,
               "runs": list(runs.values()), "log": log}  # fmt: skip
    payload["partial"] = any(p.get("partial", False) for p in parts)  # some part was cut short
    write_outputs(payload, out, plot)
    return 0


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.merge:
        return merge(args.merge, args.out, args.plot)
    torch.set_num_threads(args.threads)
    log: list[str] = []
    payload: dict[str, Any] = {
        "commands": ["python benchmarks/accuracy.py " + " ".join(sys.argv[1:] if argv is None else argv)],
        "environment": {"torch": torch.__version__, "threads": torch.get_num_threads(),
                        "machine": platform.machine(), "processor": platform.processor() or platform.platform()},
        "fp32_baseline": "torch.compile default backend (Inductor), no quantization",
        "quantized": "torch.compile(model, backend='fqt', options={'policy': name})",
        "optimizer": "per task (tasks.*.sizes.optimizer; default Adam); linear warm-up (5% of steps, <=100) then cosine to 0",
        "paper_reference_gaps": PAPER_GAPS,
        "targets": {"accuracy_pts": ACCURACY_TARGET_PTS, "loss_rel": LOSS_TARGET_REL},
        "tasks": {}, "runs": [], "log": log,
    }  # fmt: skip
    for name in args.tasks:
        task = make_task(name, args)
        print(
            f"\n== {task.name}: {task.model_name}; {task.epochs} epochs x {task.steps_per_epoch} steps; {task.sizes}"
        )
        payload["tasks"][task.name] = {"model": task.model_name, "metric": task.metric, "lr": task.lr,
                                       "epochs": task.epochs, "steps_per_epoch": task.steps_per_epoch,
                                       "sizes": task.sizes, "seeds": args.seeds}  # fmt: skip
        done = list(payload["runs"])

        def checkpoint(runs: list[Run], done: list[dict[str, Any]] = done) -> None:
            partial = {**payload, "runs": done + [asdict(r) for r in runs], "partial": True}
            args.out.parent.mkdir(parents=True, exist_ok=True)
            args.out.write_text(json.dumps(partial, indent=1, default=str))

        runs = run_task(task, args, log, checkpoint)
        payload["runs"] += [asdict(r) for r in runs]
        write_outputs(payload, args.out, args.plot)  # after each task, so a long run leaves partial results
    return 0


if __name__ == "__main__":
    sys.exit(main())
