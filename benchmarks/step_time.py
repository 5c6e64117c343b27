"""Training-step time of `fqt` presets against FP32 eager and FP32 `torch.compile` (Inductor).

One run, side by side, as ratios to FP32 Inductor (median of timed steps after warm-up):

    .venv/bin/python benchmarks/step_time.py --width 512 --batch 256 --steps 20

Prints a table and writes ``benchmarks/results/step_time.json``. On a CPU the 4-bit GEMMs are
simulated in float32, so this measures the cost of the quantizers and of the extra graph work.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import torch
import torch.nn as nn
from tabulate import tabulate
from tqdm import tqdm

import qcompile


def make_mlp(width: int, depth: int) -> nn.Sequential:
    layers: list[nn.Module] = []
    for _ in range(depth):
        layers += [nn.Linear(width, width), nn.ReLU()]
    return nn.Sequential(*layers, nn.Linear(width, 10))


def time_steps(
    model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int, warmup: int, bar: tqdm
) -> float:
    opt = torch.optim.SGD(model.parameters(), lr=1e-3)
    times = []
    for i in range(warmup + steps):
        t0 = time.perf_counter()
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if i >= warmup:
            times.append(time.perf_counter() - t0)
        bar.update(1)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--width", type=int, default=512)
    p.add_argument("--depth", type=int, default=4)
    p.add_argument("--batch", type=int, default=256)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--policies", default="luq-int4,luq,luq-smp2")
    p.add_argument("--out", default=str(Path(__file__).parent / "results" / "step_time.json"))
    args = p.parse_args(argv)

    torch.manual_seed(0)
    base = make_mlp(args.width, args.depth)
    x, y = torch.randn(args.batch, args.width), torch.randint(0, 10, (args.batch,))
    configs = [("fp32 eager", None), ("fp32 inductor", "inductor")] + [
        (f"fqt {name}", name) for name in args.policies.split(",")
    ]
    results = {}
    with tqdm(total=len(configs) * (args.steps + args.warmup), desc="steps") as bar:
        for label, how in configs:
            torch._dynamo.reset()
            model = make_mlp(args.width, args.depth)
            model.load_state_dict(base.state_dict())
            if how == "inductor":
                model = torch.compile(model)
            elif how is not None:
                model = torch.compile(model, backend="fqt", options={"policy": how})
            results[label] = time_steps(model, x, y, args.steps, args.warmup, bar)
    ref = results["fp32 inductor"]
    rows = [[label, f"{t * 1e3:.2f}", f"{t / ref:.2f}x"] for label, t in results.items()]
    print(tabulate(rows, headers=["config", "median step (ms)", "vs fp32 inductor"]))
    out = {
        "machine": {"cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads()},
        "torch": torch.__version__,
        "qcompile": qcompile.__version__,
        "args": vars(args),
        "median_step_s": results,
        "ratio_to_fp32_inductor": {k: v / ref for k, v in results.items()},
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
