"""The three papers' gradient quantizers side by side on one model, one option changed.

    python benchmarks/paper_presets.py [--epochs 4] [--seeds 0] [--json benchmarks/results/paper_presets.json]

Trains the demo's digits conv net (`qcompile.demo`) with FP32 and each quantized preset from the
same initial weights and batch order, and reports test accuracy, the gap to FP32, the average
bits per dY element each backward GEMM really used (AQ's are measured: kept elements x 4 / all),
LBT's γ per layer at the end, and wall time (compile included) as a ratio to FP32.
"""

from __future__ import annotations

import argparse
import copy
import json
import statistics
from pathlib import Path

import torch
from tabulate import tabulate
from tqdm.auto import tqdm

import qcompile
from qcompile.demo import DigitsNet, load_digits_split, train_run

PRESETS = ("fp32", "luq-int4", "luq", "lbt-int4", "aq1-int4", "aq1")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    p.add_argument("--presets", nargs="+", default=list(PRESETS))
    p.add_argument("--limit", type=int, default=None, help="a stratified subset of this many images")
    p.add_argument("--json", default=None)
    args = p.parse_args(argv)

    runs: dict[str, list[dict]] = {name: [] for name in args.presets}
    jobs = [(seed, name) for seed in args.seeds for name in args.presets]
    for seed, name in tqdm(jobs, desc="runs"):
        torch._dynamo.reset()  # every run compiles the same forward code: stay under Dynamo's cache limit
        data = load_digits_split(seed, args.limit)
        torch.manual_seed(seed)
        initial = DigitsNet()
        torch.manual_seed(seed)
        model = copy.deepcopy(initial)
        result, compiled = train_run(
            model, name, data, epochs=args.epochs, batch_size=64, lr=3e-3, seed=seed, progress=False
        )
        totals = qcompile.plan(compiled).totals()
        state = qcompile.state_of(model)
        runs[name].append(
            {
                "seed": seed,
                "test_accuracy": result.test_accuracy,
                "final_train_loss": result.final_train_loss,
                "wall_time_s": result.wall_time_s,
                "avg_bits": totals["avg_bits"],
                "avg_bits_quantized": totals["avg_bits_quantized"],
                "gammas": state.gammas() if state is not None else {},
            }
        )

    def mean(name: str, key: str) -> float:
        return statistics.mean(r[key] for r in runs[name])

    base_acc, base_time = mean(args.presets[0], "test_accuracy"), mean(args.presets[0], "wall_time_s")
    rows = []
    for name in args.presets:
        bits = runs[name][-1]["avg_bits_quantized"]
        gammas = runs[name][-1]["gammas"]
        rows.append([
            name,
            f"{100 * mean(name, 'test_accuracy'):.2f}%",
            f"{100 * (mean(name, 'test_accuracy') - base_acc):+.2f}",
            f"{mean(name, 'final_train_loss'):.4f}",
            "fp32" if bits["grad_dgrad"] is None else f"{bits['grad_dgrad']:.2f} / {bits['grad_wgrad']:.2f}",
            ", ".join(f"{k.split('/')[0]} {v:.3f}" for k, v in gammas.items()) or "-",
            f"{mean(name, 'wall_time_s'):.1f} ({mean(name, 'wall_time_s') / base_time:.2f}x)",
        ])  # fmt: skip
    print(
        f"digits 8x8, DigitsNet, {args.epochs} epochs, seeds {args.seeds} (accuracy: mean over seeds)\n"
        + tabulate(
            rows,
            headers=[
                "preset",
                "test acc",
                "gap (pts)",
                "train loss",
                "dY bits dgrad / wgrad",
                "γ at end",
                "wall s (x fp32)",
            ],
            disable_numparse=True,
        )
    )
    print(
        "dY bits: per dY element of the quantized backward GEMMs (plan totals avg_bits_quantized; AQ measured)"
    )
    if args.json:
        Path(args.json).write_text(json.dumps({"config": vars(args), "runs": runs}, indent=2))
        print(f"written {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
