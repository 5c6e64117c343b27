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


RESUME_WORKER = Path(__file__).parent / "distributed" / "resume_worker.py"


def _torchrun(out: Path, steps: int, every: int, kill_at: int, restarts: int) -> dict[int, list[dict]]:
    out.mkdir()
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "--max-restarts", str(restarts), str(RESUME_WORKER), str(out), str(steps), str(every),
           str(kill_at)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return {
        r: [json.loads(line) for line in (out / f"rank{r}.jsonl").read_text().splitlines()] for r in range(2)
    }


@pytest.mark.slow
def test_a_killed_rank_resumes_from_the_last_checkpoint_and_the_run_continues_unchanged(tmp_path):
    """DDP, 2 ranks, `lbt-int4` (stateful quantizers): rank 1 dies at step 5; torchrun restarts
    both, they load the distributed checkpoint of step 3 (model, γ, Adam, RNG) and the losses from
    there on are the uninterrupted run's, bit for bit."""
    steps, every, kill_at = 8, 3, 5
    clean = _torchrun(tmp_path / "clean", steps, every, -1, restarts=0)
    killed = _torchrun(tmp_path / "killed", steps, every, kill_at, restarts=1)
    for rank in range(2):
        assert [e["step"] for e in clean[rank]] == list(range(steps))
        first = [e for e in killed[rank] if e["attempt"] == 0]
        second = [e for e in killed[rank] if e["attempt"] == 1]
        assert [e["step"] for e in first] == list(range(kill_at))[: len(first)] and len(first) >= kill_at - 1
        assert [e["step"] for e in second] == list(range(every * (kill_at // every), steps))
        final = {e["step"]: e["loss"] for e in killed[rank]}  # the restarted run's entry wins
        assert [final[s] for s in range(steps)] == [e["loss"] for e in clean[rank]]
