"""DDP with backend="fqt": two processes under torchrun (gloo), as a user would launch them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "distributed" / "ddp_worker.py"


@pytest.mark.slow
def test_ddp_two_processes_train_in_lockstep(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    assert all(r["params_equal_across_ranks"] for r in results)  # DDP keeps the replicas identical
    assert results[0]["losses"] != results[1]["losses"]  # different data shards
    seeds = results[0]["seeds"]
    assert seeds[0] != seeds[1]  # same torch.manual_seed, independent gradient noise per rank
    assert results[0]["plan_rows"] == results[1]["plan_rows"]  # the same plan on every rank
    assert any("luq4" in row[4] for row in results[0]["plan_rows"])
