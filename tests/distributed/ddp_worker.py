"""One rank of the 2-process DDP test (launched with torchrun by tests/test_distributed.py)."""

from __future__ import annotations

import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
from qcompile.runtime.random_bits import draw_seed  # noqa: E402

import qcompile  # noqa: E402
from tests.models.small_nets import mlp  # noqa: E402


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights and the same seed on every rank
    model = mlp(width=32)
    policy = qcompile.preset("luq-int4").replace(keep_first_last=False)
    compiled = DDP(torch.compile(model, backend="fqt", options={"policy": policy}))  # compile, then wrap
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data shard
    losses = []
    for _ in range(3):
        x, y = torch.randn(16, 16, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        loss = F.cross_entropy(compiled(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    flat = torch.cat([p.detach().flatten() for p in model.parameters()])
    gathered = [torch.empty_like(flat) for _ in range(world)]
    dist.all_gather(gathered, flat)
    torch.manual_seed(5)
    seed = draw_seed().reshape(1)
    seeds = [torch.empty_like(seed) for _ in range(world)]
    dist.all_gather(seeds, seed)
    plan = qcompile.plan(model)
    rows = [(r.layer, r.op, r.weight.cell(), r.grad_dgrad.cell(), r.grad_wgrad.cell()) for r in plan]
    result = {
        "rank": rank,
        "losses": losses,
        "params_equal_across_ranks": all(torch.equal(gathered[0], g) for g in gathered),
        "seeds": [int(s) for s in seeds],
        "plan_rows": rows,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
