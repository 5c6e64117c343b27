"""Per-layer gradient statistics of a benchmark task's model, as `benchmarks/accuracy.py` builds it.

    .venv/bin/python benchmarks/gradient_report.py --task cifar10 --policy luq-int4

Runs `qcompile.gradient_diagnostics` on one training batch of the task (the seed's initial
weights, optionally after ``--warmup-steps`` of eager FP32 Adam so the gradients are those of a
network that has started learning) and writes the table as JSON and the histograms as PNG.
Eager only: nothing is compiled, so it takes seconds.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch
from accuracy import RESULTS, make_task  # noqa: E402
from accuracy import build_parser as accuracy_parser  # noqa: E402

import qcompile  # noqa: E402


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--task", choices=("digits", "cifar10", "tinyshakespeare"), default="cifar10")
    p.add_argument("--policy", default="luq-int4")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--warmup-steps", type=int, default=50, help="eager FP32 Adam steps before measuring")
    p.add_argument("--draws", type=int, default=32)
    p.add_argument("--out", type=Path, default=None, help="JSON (default results/gradients_<task>.json)")
    p.add_argument("--plot", type=Path, default=None, help="PNG (default results/gradients_<task>.png)")
    args, rest = p.parse_known_args(argv)
    task_args = accuracy_parser().parse_args(rest)
    torch.set_num_threads(task_args.threads)
    task = make_task(args.task, task_args)
    torch.manual_seed(args.seed)
    model = task.make_model()
    opt = torch.optim.Adam(model.parameters(), lr=task.lr)
    batches = task.batches(args.seed, 0)
    for _ in range(args.warmup_steps):
        x, y = next(batches)
        opt.zero_grad(set_to_none=True)
        task.loss(model(x), y).backward()
        opt.step()
    x, y = next(batches)
    out = args.out or RESULTS / f"gradients_{args.task}.json"
    png = args.plot or RESULTS / f"gradients_{args.task}.png"
    report = qcompile.gradient_diagnostics(model, (x, y), task.loss, policy=args.policy, out_png=png,
                                           draws=args.draws)  # fmt: skip
    print(report)
    payload = {"task": task.name, "model": task.model_name, "seed": args.seed, "warmup_steps": args.warmup_steps,
               "command": "python benchmarks/gradient_report.py " + " ".join(sys.argv[1:] if argv is None else argv),
               **report.to_dict()}  # fmt: skip
    out.write_text(json.dumps(payload, indent=1))
    print(f"written {out} and {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
