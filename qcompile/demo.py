"""FP32 vs. fully quantized 4-bit training, side by side, on scikit-learn's 8x8 digits.

    python -m qcompile.demo [--epochs 4] [--policy luq-int4] [--json r.json] [--plot loss.png]

Both runs compile the same small residual conv net with ``backend="fqt"``: one with the ``fp32``
policy (numerically plain ``torch.compile``) as the baseline, one with the chosen quantized
policy. They start from the same initial weights and see the batches in the same order, so the
accuracy gap printed at the end is the cost of quantization and not of a different seed. The
data set ships with scikit-learn (no download) and the net is tiny, so the whole demo, compile
time included, runs in well under two minutes on two CPU cores.
"""

from __future__ import annotations

import argparse
import copy
import json
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from tabulate import tabulate
from torch import nn

import qcompile
from qcompile.policy.config import PolicyError


class DigitsNet(nn.Module):
    """A stem conv, one residual block of two convs, and a linear head.

    Small enough to compile and train in seconds on a CPU, yet it has every GEMM kind the policy
    treats differently: with ``keep_first_last`` the stem conv and the head stay high precision
    and the two block convs run at 4 bits, which the plan shows.
    """

    def __init__(self, width: int = 32, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(1, width, 3, padding=1, bias=False)
        self.stem_bn = nn.BatchNorm2d(width)
        self.conv_a = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn_a = nn.BatchNorm2d(width)
        self.conv_b = nn.Conv2d(width, width, 3, padding=1, bias=False)
        self.bn_b = nn.BatchNorm2d(width)
        self.head = nn.Linear(width * 4 * 4, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.stem_bn(self.stem(x)))
        y = F.relu(self.bn_a(self.conv_a(x)))
        y = self.bn_b(self.conv_b(y))
        x = F.relu(x + y)  # residual connection
        x = F.max_pool2d(x, 2)  # 8x8 -> 4x4
        return self.head(torch.flatten(x, 1))


@dataclass
class Digits:
    """The train/test split as float tensors: images N×1×8×8 in [0, 1], integer labels."""

    x_train: torch.Tensor
    y_train: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor


def load_digits_split(seed: int, limit: int | None = None) -> Digits:
    """A fixed stratified 80/20 split of the bundled digits (1797 images).

    ``limit`` first draws a stratified subset of that many images, so a test can run the whole
    pipeline on a few hundred samples.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    images = data.images.astype("float32") / 16.0  # pixel values are 0..16
    labels = data.target
    if limit is not None and limit < len(labels):
        images, _, labels, _ = train_test_split(
            images, labels, train_size=limit, stratify=labels, random_state=seed
        )
    x_tr, x_te, y_tr, y_te = train_test_split(
        images, labels, test_size=0.2, stratify=labels, random_state=seed
    )
    as_x = lambda a: torch.from_numpy(a).unsqueeze(1).contiguous()  # noqa: E731
    as_y = lambda a: torch.from_numpy(a).long()  # noqa: E731
    return Digits(as_x(x_tr), as_y(y_tr), as_x(x_te), as_y(y_te))


@dataclass
class RunResult:
    """What one training run measured; ``plan`` is `qcompile.Plan.to_dict()` of its compiled model."""

    policy: str
    final_train_loss: float
    test_accuracy: float
    wall_time_s: float
    first_step_s: float
    epoch_losses: list[float] = field(default_factory=list)
    step_losses: list[float] = field(default_factory=list)
    plan: dict[str, Any] = field(default_factory=dict)


def train_run(
    model: nn.Module,
    policy: str,
    data: Digits,
    *,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
    progress: bool = True,
    kernels: str = "auto",
) -> tuple[RunResult, nn.Module]:
    """Compile ``model`` with ``policy``, train it, evaluate it; return the result and the compiled model.

    The batch order comes from a generator seeded with ``seed`` and the global RNG (used by the
    stochastic-rounding quantizers) is reseeded too, so two calls differ only by the policy.
    Incomplete last batches are dropped: every step has the same shape, so each run compiles one
    training graph and one evaluation graph and nothing more.
    """
    from tqdm.auto import tqdm

    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    compiled = torch.compile(
        model, backend="fqt", options={"policy": policy, "kernels": kernels}, dynamic=False
    )
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    n = len(data.y_train)
    steps_per_epoch = n // batch_size
    if steps_per_epoch == 0:
        raise ValueError(f"batch size {batch_size} exceeds the {n} training samples")

    step_losses: list[float] = []
    epoch_losses: list[float] = []
    first_step_s = math.nan
    bar = tqdm(total=epochs * steps_per_epoch, desc=f"{policy:>10}", unit="step", disable=not progress)
    model.train()
    for _ in range(epochs):
        order = torch.randperm(n, generator=gen)
        losses = []
        for i in range(steps_per_epoch):
            idx = order[i * batch_size : (i + 1) * batch_size]
            loss = F.cross_entropy(compiled(data.x_train[idx]), data.y_train[idx])
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            losses.append(loss.item())
            if math.isnan(first_step_s):
                first_step_s = time.perf_counter() - start  # dominated by compiling fwd + bwd
            bar.update(1)
            bar.set_postfix(loss=f"{losses[-1]:.3f}")
        step_losses += losses
        epoch_losses.append(sum(losses) / len(losses))
    bar.close()

    model.eval()
    with torch.no_grad():
        logits = compiled(data.x_test)  # quantized forward too: that is what the policy deploys
    accuracy = (logits.argmax(1) == data.y_test).float().mean().item()
    result = RunResult(
        policy=policy,
        final_train_loss=epoch_losses[-1],
        test_accuracy=accuracy,
        wall_time_s=time.perf_counter() - start,
        first_step_s=first_step_s,
        epoch_losses=epoch_losses,
        step_losses=step_losses,
        plan=qcompile.plan(compiled).to_dict(),
    )
    return result, compiled


def summary_table(results: Sequence[RunResult]) -> str:
    """The comparison table; the first result is the FP32 baseline the gap is measured against."""
    base = results[0].test_accuracy
    rows = [
        [
            r.policy,
            f"{r.final_train_loss:.4f}",
            f"{100 * r.test_accuracy:.2f}%",
            f"{100 * (r.test_accuracy - base):+.2f}",
            f"{r.wall_time_s:.1f} (compile+1st step {r.first_step_s:.1f})",
        ]
        for r in results
    ]
    headers = ["policy", "final train loss", "test acc", "gap to fp32 (pts)", "wall time s"]
    return tabulate(
        rows,
        headers=headers,
        tablefmt="simple",
        disable_numparse=True,
        colalign=("left", "right", "right", "right", "right"),
    )


def save_plot(results: Sequence[RunResult], path: str | Path) -> None:
    """Per-step training loss of every run in one PNG (Agg: works without a display)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        ax.plot(range(1, len(r.step_losses) + 1), r.step_losses, label=r.policy, linewidth=1.2)
    ax.set_xlabel("training step")
    ax.set_ylabel("cross-entropy loss")
    ax.set_yscale("log")
    ax.set_title("digits 8x8: FP32 vs. quantized training")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m qcompile.demo",
        description="Train a small conv net on 8x8 digits in FP32 and with a 4-bit FQT policy, side by side.",
    )
    p.add_argument("--epochs", type=int, default=4, help="training epochs per run (default 4)")
    p.add_argument(
        "--policy",
        default=qcompile.DEFAULT_PRESET,
        help=f"quantized policy: a preset ({', '.join(qcompile.presets())}) or a .toml/.json policy file "
        f"(default {qcompile.DEFAULT_PRESET})",
    )
    p.add_argument("--kernels", default="auto", choices=("auto", "int8", "reference"),
                   help="GEMM kernels of the quantized run: integer where they gain (auto, the default), "
                   "wherever the codes allow (int8), or the float simulation (reference)")  # fmt: skip
    p.add_argument("--seed", type=int, default=0, help="seed for the split, the init and the batch order")
    p.add_argument("--batch-size", type=int, default=64, help="training batch size (default 64)")
    p.add_argument("--lr", type=float, default=3e-3, help="Adam learning rate (default 3e-3)")
    p.add_argument("--limit", type=int, default=None, help="use a stratified subset of this many images")
    p.add_argument(
        "--threads", type=int, default=None, help="torch.set_num_threads (default: torch's choice)"
    )
    p.add_argument("--json", metavar="PATH", default=None, help="write the results (with both plans) as JSON")
    p.add_argument("--plot", metavar="PATH", default=None, help="write the training-loss curves as a PNG")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bars")
    return p


def main(argv: list[str] | None = None) -> int:
    """Run the FP32 baseline and the quantized policy, print the plan and the comparison; return 0."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.epochs < 1 or args.batch_size < 1:
        parser.error("--epochs and --batch-size must be positive")
    if args.limit is not None and args.limit < 50:
        parser.error("--limit must be at least 50 (the split is stratified over 10 classes)")
    try:
        policy_name = qcompile.resolve_policy(args.policy).name
    except PolicyError as e:
        parser.error(str(e))
    if args.threads is not None:
        torch.set_num_threads(args.threads)

    data = load_digits_split(args.seed, args.limit)
    print(
        f"digits 8x8: {len(data.y_train)} train / {len(data.y_test)} test images, "
        f"{args.epochs} epochs of {len(data.y_train) // args.batch_size} steps (batch {args.batch_size}), "
        f"{torch.get_num_threads()} threads"
    )
    torch.manual_seed(args.seed)
    initial = DigitsNet()  # both runs start from copies of these weights

    results: list[RunResult] = []
    quantized_compiled = None
    for policy in ("fp32", args.policy):
        result, compiled = train_run(
            copy.deepcopy(initial),
            policy,
            data,
            epochs=args.epochs,
            batch_size=args.batch_size,
            lr=args.lr,
            seed=args.seed,
            progress=not args.no_progress,
            kernels=args.kernels,
        )
        if policy != "fp32":
            result.policy = policy_name if policy_name != "custom" else str(policy)
        results.append(result)
        quantized_compiled = compiled

    print(f"\nplan of the {results[-1].policy} model:")
    print(qcompile.plan(quantized_compiled))
    print()
    print(summary_table(results))

    if args.json:
        payload = {"config": vars(args), "runs": [asdict(r) for r in results]}
        Path(args.json).write_text(json.dumps(payload, indent=2, default=str))
        print(f"results written to {args.json}")
    if args.plot:
        save_plot(results, args.plot)
        print(f"loss curves written to {args.plot}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
