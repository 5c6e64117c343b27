"""One rank of the fault-tolerance test (launched with torchrun by tests/test_distributed.py).

``resume_worker.py OUT_DIR STEPS EVERY KILL_AT``: DDP training of a compiled ``lbt-int4`` MLP (a
policy with quantizer state: LBT's γ) for STEPS steps, saving a distributed checkpoint
(`torch.distributed.checkpoint`: model with its `QuantizerState`, optimizer, step, and every
rank's RNG state) every EVERY steps. With KILL_AT >= 0, rank 1 dies at that step on the first
attempt (``os._exit``, as a crashed or preempted process would); torchrun's ``--max-restarts``
starts both ranks again and they resume from the last checkpoint. Each rank appends
``{"step", "loss", "attempt"}`` lines to ``OUT_DIR/rank<r>.jsonl``.
"""

from __future__ import annotations

import datetime
import gc
import json
import os
import sys

import torch
import torch.distributed as dist
import torch.distributed.checkpoint as dcp
import torch.nn.functional as F
from torch.distributed.checkpoint.state_dict import get_state_dict, set_state_dict
from torch.nn.parallel import DistributedDataParallel as DDP

import qcompile  # noqa: E402
from qcompile.testing.models import mlp  # noqa: E402


def _latest(out_dir: str) -> str | None:
    marker = os.path.join(out_dir, "latest")
    return open(marker).read().strip() if os.path.exists(marker) else None


def main(out_dir: str, steps: int, every: int, kill_at: int) -> None:
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0"))
    # A process group of this attempt's own: the restarted ranks must not read the addresses the
    # dead attempt published in torchrun's store (a race between publishing and connecting).
    store = dist.TCPStore(os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"]), is_master=False,
                          timeout=datetime.timedelta(seconds=300))  # fmt: skip
    dist.init_process_group("gloo", store=dist.PrefixStore(f"resume_attempt_{attempt}", store),
                            rank=int(os.environ["RANK"]), world_size=int(os.environ["WORLD_SIZE"]))  # fmt: skip
    rank = dist.get_rank()
    torch.manual_seed(0)
    model = mlp(width=32)
    policy = qcompile.preset("lbt-int4").replace(keep_first_last=False)
    compiled = torch.compile(model, backend="fqt", options={"policy": policy})
    run = DDP(compiled)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.manual_seed(1 + rank)  # each rank its own gradient-quantizer draws
    warmup = torch.Generator().manual_seed(99)
    compiled(torch.randn(16, 16, generator=warmup))  # bind the quantizer state (γ) before any load

    start = 0
    latest = _latest(out_dir)
    if latest is not None:  # resume: everything a step depends on comes back from the checkpoint
        model_state, optim_state = get_state_dict(model, opt)
        state = {"model": model_state, "optim": optim_state, "step": torch.zeros((), dtype=torch.long),
                 f"rng{rank}": torch.get_rng_state()}  # fmt: skip
        dcp.load(state, checkpoint_id=os.path.join(out_dir, latest))
        set_state_dict(model, opt, model_state_dict=state["model"], optim_state_dict=state["optim"])
        torch.set_rng_state(state[f"rng{rank}"])
        start = int(state["step"])

    log = open(os.path.join(out_dir, f"rank{rank}.jsonl"), "a")
    for step in range(start, steps):
        if attempt == 0 and rank == 1 and step == kill_at:
            os._exit(1)  # a crash: no cleanup, no goodbye to the other rank
        data = torch.Generator().manual_seed(1000 * rank + step)  # each step's batch, by its number
        x, y = torch.randn(16, 16, generator=data), torch.randint(0, 4, (16,), generator=data)
        loss = F.cross_entropy(run(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        log.write(json.dumps({"step": step, "loss": loss.item(), "attempt": attempt}) + "\n")
        log.flush()
        if (step + 1) % every == 0:
            model_state, optim_state = get_state_dict(model, opt)
            name = f"step{step + 1}"
            dcp.save({"model": model_state, "optim": optim_state, "step": torch.tensor(step + 1),
                      f"rng{rank}": torch.get_rng_state()}, checkpoint_id=os.path.join(out_dir, name))  # fmt: skip
            dist.barrier()
            if rank == 0:  # only a complete checkpoint becomes the one to resume from
                with open(os.path.join(out_dir, "latest.tmp"), "w") as f:
                    f.write(name)
                os.replace(os.path.join(out_dir, "latest.tmp"), os.path.join(out_dir, "latest"))
            dist.barrier()
    log.close()
    del run
    gc.collect()
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]))
