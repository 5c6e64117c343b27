"""DDP and FSDP2 with backend="fqt": two processes under torchrun (gloo), as a user would launch them."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "distributed" / "train_worker.py"


def _launch(tmp_path: Path, mode: str) -> list[dict]:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path), mode]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("mode", ["ddp", "fsdp2"])
def test_two_processes_train_in_lockstep(tmp_path, mode):
    results = _launch(tmp_path, mode)
    assert all(r["params_equal_across_ranks"] for r in results)  # replicas (or gathered shards) agree
    assert all(r["params_changed"] for r in results)  # and training moved them
    assert results[0]["losses"] != results[1]["losses"]  # different data shards
    seeds = results[0]["seeds"]
    assert seeds[0] != seeds[1]  # same torch.manual_seed, independent gradient noise per rank
    assert results[0]["plan_rows"] == results[1]["plan_rows"]  # the same plan on every rank
    rows = results[0]["plan_rows"]
    assert rows and all("luq4" in row[4] for row in rows), rows  # every wgrad quantized
    assert all("luq4" in row[3] or "no grad" in row[3] for row in rows), rows  # dgrad unless input needs none
    if mode == "fsdp2":  # the compiled block's two linears, quantized in both passes
        assert sorted(row[0] for row in rows) == ["fc1", "fc2"]
