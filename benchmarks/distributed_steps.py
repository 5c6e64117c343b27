"""Per-step time of DDP training with backend="fqt" against FP32 torch.compile, 1 vs 2 processes.

Each configuration runs as its own ``torchrun --standalone`` job on this machine (gloo, one thread
per process, as torchrun sets by default), with a fixed per-rank batch (weak scaling): two processes
do twice the work per step, so ``samples/s`` and the scaling efficiency are the figures to compare.
Printed as a table, written as JSON (``benchmarks/results/distributed_steps.json``).

    .venv/bin/python benchmarks/distributed_steps.py            # MLP width 1024, batch 256 per rank
    .venv/bin/python benchmarks/distributed_steps.py --quick    # tiny sizes: a smoke test
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results"
CONFIGS = ("fp32 inductor", "fqt luq-int4")


def worker(out: str, config: str, width: int, batch: int, steps: int) -> None:
    """One rank: compile, warm up, time ``steps`` DDP steps; rank 0 writes the median."""
    import torch
    import torch.distributed as dist
    import torch.nn.functional as F
    from torch.nn.parallel import DistributedDataParallel as DDP

    from qcompile.testing.benchmark_models import mlp

    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)
    model = mlp(width)
    if config == "fp32 inductor":
        compiled = torch.compile(model)
    else:
        compiled = torch.compile(model, backend="fqt", options={"policy": config.split()[1]})
    ddp = DDP(compiled)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    gen = torch.Generator().manual_seed(rank)
    x, y = torch.randn(batch, width, generator=gen), torch.randint(0, 10, (batch,), generator=gen)

    def step(ddp: DDP = ddp) -> None:
        loss = F.cross_entropy(ddp(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    for _ in range(3):  # compile and warm up
        step()
    times = []
    for _ in range(steps):
        dist.barrier()
        t0 = time.perf_counter()
        step()
        dist.barrier()
        times.append(time.perf_counter() - t0)
    if rank == 0:
        Path(out).write_text(json.dumps({"step_s": statistics.median(times), "world": world}))
    del ddp, step  # free DDP's Reducer (it holds the process group) while every rank is alive
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def launch(config: str, procs: int, width: int, batch: int, steps: int) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        out = os.path.join(tmp, "result.json")
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", str(procs),
               __file__, "--worker", out, config, str(width), str(batch), str(steps)]  # fmt: skip
        env = {**os.environ, "OMP_NUM_THREADS": "1"}  # torchrun sets it only for 2+ processes
        done = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if done.returncode != 0:
            raise RuntimeError(f"{config} with {procs} processes failed:\n{done.stderr[-3000:]}")
        result = json.loads(Path(out).read_text())
    step_s = result["step_s"]
    return {
        "config": config,
        "processes": procs,
        "step_ms": 1e3 * step_s,
        "samples_per_s": procs * batch / step_s,
    }


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    p.add_argument("--width", type=int, default=1024)
    p.add_argument("--batch", type=int, default=256, help="per-rank batch")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--configs", nargs="+", default=list(CONFIGS), choices=CONFIGS)
    p.add_argument("--out", default=str(RESULTS / "distributed_steps.json"))
    args = p.parse_args(argv)
    if args.quick:
        args.width, args.batch, args.steps = 32, 8, 2
    from tabulate import tabulate
    from tqdm import tqdm

    rows = []
    jobs = [(c, n) for c in args.configs for n in (1, 2)]
    for config, procs in tqdm(jobs, desc="torchrun jobs", unit="job"):
        rows.append(launch(config, procs, args.width, args.batch, args.steps))
    by = {(r["config"], r["processes"]): r for r in rows}
    for r in rows:
        one = by[(r["config"], 1)]
        r["scaling_efficiency"] = r["samples_per_s"] / (r["processes"] * one["samples_per_s"])
        fp32 = by.get(("fp32 inductor", r["processes"]))
        r["step_vs_fp32"] = r["step_ms"] / fp32["step_ms"] if fp32 else None
    table = [[r["config"], r["processes"], f"{r['step_ms']:.1f}", f"{r['samples_per_s']:.0f}",
              f"{r['scaling_efficiency']:.2f}", f"{r['step_vs_fp32']:.2f}×" if r["step_vs_fp32"] else "—"]
             for r in rows]  # fmt: skip
    print(
        tabulate(table, headers=["config", "procs", "step ms", "samples/s", "scaling eff.", "step vs fp32"])
    )
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    meta = {"width": args.width, "batch_per_rank": args.batch, "steps": args.steps, "quick": args.quick,
            "cpu_count": os.cpu_count(), "threads_per_process": 1}  # fmt: skip
    Path(args.out).write_text(json.dumps({"meta": meta, "rows": rows}, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 1 and sys.argv[1] == "--worker":
        out, config, width, batch, steps = sys.argv[2:7]
        worker(out, config, int(width), int(batch), int(steps))
    else:
        sys.exit(main())
