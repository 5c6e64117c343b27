"""Learned clips under DDP: α's gradient flows through autograd, so DDP averages it across ranks."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

WORKER = Path(__file__).parent / "distributed" / "clip_grad_worker.py"


@pytest.mark.slow
def test_ddp_averages_the_learned_clip_gradient(tmp_path):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           str(WORKER), str(tmp_path)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    results = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]
    local = results[0]["local"]  # every rank's own α gradients, gathered
    assert set(local[0]) == {f"lbt_clip/{i}/{role}" for i in (0, 2, 4) for role in ("weight", "activation")}
    assert any(local[0][k] != local[1][k] for k in local[0])  # different data: different gradients
    for r in results:
        for name, grad in r["ddp"].items():
            assert grad == pytest.approx((local[0][name] + local[1][name]) / 2, rel=1e-5, abs=1e-7), (
                r["rank"],
                name,
            )
