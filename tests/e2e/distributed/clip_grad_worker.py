"""One rank of the 2-process learned-clip test (launched with torchrun by tests/e2e/test_learned_clip_ddp.py).

``clip_grad_worker.py OUT_DIR``: compiles an MLP whose forward quantizers learn their clip α,
records each rank's own α gradient for its own batch, then takes the same step under DDP and
records the α gradient DDP leaves, for the test to check that it is the ranks' average.
"""

from __future__ import annotations

import gc
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import nn
from torch.nn.parallel import DistributedDataParallel as DDP

import qcompile
from qcompile.testing.models import mlp


class WithClips(nn.Module):
    """The compiled model plus its quantizer state, so that DDP reduces the learned clips too."""

    def __init__(self, net: nn.Module, state: nn.Module) -> None:
        super().__init__()
        self.net = net
        self.state = state

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def clip_grads(state: nn.Module) -> dict[str, float]:
    return {name: float(p.grad) for name, p in state.named_parameters()}


def main(out_dir: str) -> None:
    dist.init_process_group("gloo")
    rank, world = dist.get_rank(), dist.get_world_size()
    torch.manual_seed(0)  # same initial weights on every rank
    # Gradients in full precision: the backward is deterministic, so the two passes below agree.
    policy = qcompile.Policy(
        weight="int4-learned", activation="int4-learned-auto", grad_dgrad="fp32", grad_wgrad="fp32"
    ).replace(keep_first_last=False)
    model = mlp(width=32)
    compiled = torch.compile(model, backend="fqt", options={"policy": policy})
    compiled(torch.randn(16, 16, generator=torch.Generator().manual_seed(0)))  # same batch: same α init
    state = qcompile.state_of(model)
    gen = torch.Generator().manual_seed(100 + rank)  # each rank its own data
    x, y = torch.randn(16, 16, generator=gen), torch.randint(0, 4, (16,), generator=gen)

    F.cross_entropy(compiled(x), y).backward()  # this rank alone
    local = clip_grads(state)
    for p in [*model.parameters(), *state.parameters()]:
        p.grad = None

    run = DDP(WithClips(compiled, state), broadcast_buffers=False)
    F.cross_entropy(run(x), y).backward()  # the same batch, under DDP
    reduced = clip_grads(state)

    gathered: list[dict[str, float]] = [{} for _ in range(world)]
    dist.all_gather_object(gathered, local)
    with open(os.path.join(out_dir, f"rank{rank}.json"), "w") as f:
        json.dump({"rank": rank, "local": gathered, "ddp": reduced}, f)
    del run  # free DDP's reducer while both ranks are alive (see train_worker.py)
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1])
