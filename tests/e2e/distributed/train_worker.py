"""One rank of the 2-process distributed tests (launched with torchrun by tests/test_distributed.py).

``train_worker.py OUT_DIR ddp|fsdp2``: trains three steps with ``backend="fqt"`` and writes what the
test checks (losses, whether the ranks hold the same parameters, the gradient-noise seeds, the plan).
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel as DDP

import qcompile  # noqa: E402
from qcompile.runtime.reference.random_bits import draw_seed  # noqa: E402
from qcompile.testing.models import BlockNet, mlp  # noqa: E402


def build(mode: str, policy: qcompile.Policy) -> tuple[torch.nn.Module, torch.nn.Module]:
    """(the module to call, the module that owns the parameters)."""
    if mode == "ddp":
        model = mlp(width=32)
        return DDP(
            torch.compile(model, backend="fqt", options={"policy": policy})
        ), model  # compile, then wrap
    from torch.distributed.fsdp import fully_shard

    # The FSDP2 recipe (as torchtitan's): compile each block, shard each block, then the root.
    model = BlockNet()
    for block in model.blocks:
        block.compile(backend="fqt", options={"policy": policy})
        fully_shard(block)
    fully_shard(model)
    return model, model


def full_parameters(model: torch.nn.Module) -> torch.Tensor:
    """All parameters in one flat tensor; FSDP2's sharded DTensors are gathered first."""
    full = [p.full_tensor() if hasattr(p, "full_tensor") else p for p in model.parameters()]
    return torch.cat([p.detach().flatten() for p in full])


def main(out_dir: str, mode: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights and the same seed on every rank
    policy = qcompile.preset("luq-int4").replace(keep_first_last=False)
    run, model = build(mode, policy)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data shard
    losses = []
    for _ in range(3):
        x, y = torch.randn(16, 16, generator=gen), torch.randint(0, 4, (16,), generator=gen)
        loss = F.cross_entropy(run(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    flat = full_parameters(model)
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
        "params_changed": not torch.equal(flat, full_parameters(_initial(mode))),
        "seeds": [int(s) for s in seeds],
        "plan_rows": rows,
    }
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump(result, f)
    # DDP's Reducer holds the gloo process group. Freed only when main returns, after the other rank
    # has exited, gloo's destructor can wait forever on a worker thread: free it while both are alive.
    del run
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


def _initial(mode: str) -> torch.nn.Module:
    torch.manual_seed(0)
    return mlp(width=32) if mode == "ddp" else BlockNet()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else "ddp")
