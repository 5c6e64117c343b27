"""The benchmark scripts run and write their JSON (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "benchmarks"


@pytest.mark.slow
def test_cpu_perf_quick_mode_writes_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import cpu_perf

    out, png = tmp_path / "perf.json", tmp_path / "sweep.png"
    assert cpu_perf.main(["--quick", "--out", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert {r["quantizer"] for r in data["quantizers"]} >= {"int4 SAWB (auto sign)", "LUQ per-tensor"}
    assert all(r["throughput_vs_clone"] > 0 for r in data["quantizers"])
    configs = {r["config"] for r in data["steps"]}
    assert {"fp32 inductor", "eager fake-quant", "fqt luq-int4"} <= configs
    assert all(r["fqt_graphs"] == 1 for r in data["steps"] if r["config"].startswith("fqt "))  # no recompiles
    assert png.stat().st_size > 1000
    sys.modules.pop("cpu_perf", None)


def test_eager_fake_quant_baseline_really_quantizes():
    import torch

    sys.path.insert(0, str(BENCH))
    try:
        from bench_models import mlp
        from eager_fake_quant import to_eager_fake_quant
    finally:
        sys.path.remove(str(BENCH))
    torch.manual_seed(0)
    ref = mlp(32)
    fq = to_eager_fake_quant(mlp(32))
    fq.load_state_dict(ref.state_dict())
    x = torch.randn(8, 32)
    assert not torch.allclose(ref(x), fq(x), atol=1e-4)
    fq(x).sum().backward()
    assert all(p.grad is not None for p in fq.parameters())


@pytest.mark.slow
def test_memory_benchmark_quick_mode_writes_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import memory

    out = tmp_path / "memory.json"
    assert memory.main(["--quick", "--models", "mlp", "--configs", "fp32,fqt", "--out", str(out)]) == 0
    data = json.loads(out.read_text())
    runs = {r["config"]: r for r in data["runs"]}
    assert set(runs) == {"fp32", "fqt"} and data["quick"] is True
    for r in runs.values():
        assert r["saved_held"] > 0 and r["maxrss"] > 0 and r["rss_before_step"] > 0
    # the plan's count (read from the compiled graphs) is what autograd really holds
    assert abs(runs["fqt"]["saved_plan"] - runs["fqt"]["saved_held"]) <= 0.01 * runs["fqt"]["saved_held"]
    assert (
        data["ratios"][0]["saved_held_fqt_vs_fp32"] == runs["fqt"]["saved_held"] / runs["fp32"]["saved_held"]
    )
    sys.modules.pop("memory", None)
