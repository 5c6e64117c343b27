"""The benchmark scripts run and write their JSON (tiny sizes; no timing is asserted)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

import qcompile

BENCH = Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.mark.slow
def test_cpu_perf_quick_mode_writes_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    # cpu_perf switches Inductor's FX graph cache off for its timings (os.environ, at import):
    # set here so that monkeypatch restores the session's environment afterwards.
    monkeypatch.setenv("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    import cpu_perf

    out, png = tmp_path / "perf.json", tmp_path / "sweep.png"
    assert cpu_perf.main(["--quick", "--out", str(out), "--plot", str(png)]) == 0
    data = json.loads(out.read_text())
    assert data["quick"] is True
    assert {r["quantizer"] for r in data["quantizers"]} >= {"int4 SAWB (auto sign)", "LUQ per-tensor"}
    assert all(r["throughput_vs_clone"] > 0 for r in data["quantizers"])
    configs = {r["config"] for r in data["steps"]}
    assert {"fp32 inductor", "bf16 inductor", "eager fake-quant", "fqt reference", "fqt auto"} <= configs
    if data["machine"]["int8_kernel"] == "avx2-maddubs":  # the quick MLP forces its GEMMs onto the kernel
        assert {g["layout"] for g in data["gemms"]} >= {"A·B^T", "A·B"} and all(
            g["in_graph_seconds"] > 0 for g in data["gemms"])  # fmt: skip
    assert all(r["fqt_graphs"] == 1 for r in data["steps"] if r["config"].startswith("fqt "))  # no recompiles
    assert png.stat().st_size > 1000
    sys.modules.pop("cpu_perf", None)


def test_eager_fake_quant_baseline_really_quantizes():
    import torch

    sys.path.insert(0, str(BENCH))
    try:
        from eager_fake_quant import to_eager_fake_quant

        from qcompile.testing.benchmark_models import mlp
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
def test_distributed_steps_quick_mode_writes_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import distributed_steps

    out = tmp_path / "dist.json"
    assert distributed_steps.main(["--quick", "--configs", "fqt luq-int4", "--out", str(out)]) == 0
    rows = json.loads(out.read_text())["rows"]
    assert {(r["config"], r["processes"]) for r in rows} == {("fqt luq-int4", 1), ("fqt luq-int4", 2)}
    assert all(r["step_ms"] > 0 and r["samples_per_s"] > 0 for r in rows)
    sys.modules.pop("distributed_steps", None)


def test_gpu_kernels_benchmark_exits_cleanly_without_cuda():
    """Without a CUDA GPU the benchmark says so and exits with status 2 (nothing measured)."""
    import subprocess

    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: the benchmark would really run")
    proc = subprocess.run(
        [sys.executable, str(BENCH / "gpu_kernels.py"), "--quick"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    assert "SKIPPED" in proc.stdout and "CUDA" in proc.stdout
    assert proc.stderr.strip() == "" or "Traceback" not in proc.stderr


def test_gpu_quantizer_and_peak_sections_run_on_cpu(monkeypatch):
    """The GPU benchmark's quantizer-kernel rows and its int8 peak probe, run on CPU (kernels in
    Triton's interpreter) at tiny shapes with a unit timer: every case runs and reports."""
    pytest.importorskip("triton")
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_kernels

    def one_ms(fn):  # run once, report 1 ms
        fn()
        return 1.0

    rows = gpu_kernels.quantizer_rows(24, 40, device="cpu", timer=one_ms, compiled=False)
    assert len(rows) == 8 and all(r["ms"] == 1.0 and r["vs_eager"] == 1.0 and r["gb_per_s"] > 0 for r in rows)
    peak = gpu_kernels.int8_peak(timer=one_ms, shapes=((16, 32, 8),), device="cpu")
    assert peak["shape"] == [16, 32, 8] and peak["tops"] > 0
    sys.modules.pop("gpu_kernels", None)


def test_gpu_block_step_configurations_run_on_cpu(monkeypatch):
    """The GPU benchmark's block-step code (every configuration, the plan's kernel count) on a tiny
    block on CPU, so a GPU session's minutes are not spent on a bug in it."""
    monkeypatch.syspath_prepend(str(BENCH))
    import gpu_kernels

    # The baseline and the default fqt configuration (each compiles in 10-30 s on CPU); the other
    # fqt policies are built too (`only` filters after building them) but not compiled.
    only = ("bf16 torch.compile", "fqt luq-int4 (Triton int8 GEMMs)")
    rows, plan_text = gpu_kernels.block_rows(
        2, 16, device="cpu", d=32, heads=2, timer=lambda step: step() or 1.0, only=only, profile=only[1:]
    )
    assert [r["config"] for r in rows] == list(only)
    # The profiled step (on CPU: operators' self time) sums its categories; the fqt step's
    # quantizers show as their own ops, its GEMMs as float GEMMs (simulated on CPU).
    prof = rows[1]["profile"]
    assert "profile" not in rows[0] and prof["steps"] == gpu_kernels.PROFILE_STEPS
    assert prof["total_ms_per_step"] == pytest.approx(sum(prof["categories"].values()))
    assert prof["categories"]["cuBLAS / CUTLASS GEMM"] > 0, prof["categories"]
    assert 0 < len(prof["top_kernels"]) <= 15
    assert gpu_kernels.kernel_category("_luq_quantize_kernel") == "qcompile quantizer"
    assert gpu_kernels.kernel_category("triton_poi_fused_add_0") == "Inductor-generated"
    assert gpu_kernels.kernel_category("sm90_xmma_gemm_bf16bf16") == "cuBLAS / CUTLASS GEMM"
    # The quantizer-placement switch one configuration sets is back to its default afterwards.
    from qcompile.passes.post_aot import inline_quantizers

    assert inline_quantizers.INDUCTOR_QUANTIZERS_ON == ()
    assert [r.get("error") for r in rows] == [None] * 2, rows
    assert all(r["ms"] == 1.0 and r["peak_mib"] is None and r["speedup_vs_bf16_compile"] == 1.0 for r in rows)
    # On CPU nothing runs on the Triton kernels. The plan counts three roles of the four linear
    # layers and of the two attention GEMMs.
    assert (rows[1]["gemms_on_triton"], rows[1]["gemms_total"]) == (0, 18), rows
    assert sum(" attention." in line for line in plan_text.splitlines()) == 2, plan_text
    with pytest.raises(ValueError, match="valid: .*bf16 torch.compile"):
        gpu_kernels.block_rows(2, 16, device="cpu", d=32, heads=2, only=("fqt luq4",))
    sys.modules.pop("gpu_kernels", None)


def test_paper_presets_benchmark_writes_results(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import paper_presets

    out = tmp_path / "presets.json"
    assert (
        paper_presets.main(["--presets", "lbt-int4", "--epochs", "1", "--limit", "200", "--json", str(out)])
        == 0
    )
    run = json.loads(out.read_text())["runs"]["lbt-int4"][0]
    assert run["avg_bits_quantized"]["grad_dgrad"] == 4.0
    assert run["gammas"] and all(0 < g <= 1 for g in run["gammas"].values())
    sys.modules.pop("paper_presets", None)


def _accuracy_module(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    import accuracy

    return accuracy


def test_accuracy_derived_policies_quantize_what_their_names_say(monkeypatch):
    accuracy = _accuracy_module(monkeypatch)
    fnt = accuracy.fnt_policy().decide("layers.0.conv1", "conv2d")
    assert fnt.weight.is_quantized and not fnt.activation.is_quantized
    assert not fnt.grad_dgrad.is_quantized and not fnt.grad_wgrad.is_quantized
    for role, quantized in (("forward", ("weight", "activation")), ("dgrad", ("grad_dgrad",)),
                            ("wgrad", ("grad_wgrad",))):  # fmt: skip
        d = accuracy.resolve(f"ablate:{role}").decide("fc", "linear")
        assert {
            r for r in ("weight", "activation", "grad_dgrad", "grad_wgrad") if getattr(d, r).is_quantized
        } == set(quantized)
    assert accuracy.resolve("no-such-preset") is None
    row = accuracy.resolve("luq-int4+attn-row")
    for op in ("attention.qk", "attention.pv"):
        d = row.decide("blocks.0.attn", op)
        assert d.activation.granularity == "per-sample" and d.activation.scaling == "max"
    assert row.decide("blocks.0.fc", "linear") == qcompile.preset("luq-int4").decide("blocks.0.fc", "linear")
    assert not accuracy.resolve("luq+attn-fp32").decide("a", "attention.pv").activation.is_quantized
    assert accuracy.resolve("luq-int4+attn-int8").decide("a", "attention.qk").activation.bits == 8
    had = accuracy.resolve("luq-int4+had16-forward")
    assert had.name == "luq-int4+had16-forward" and had.decide("fc", "linear").hadamard.gemms == ("forward",)
    assert "nvfp4" in accuracy.ALL_POLICIES and accuracy.resolve("nvfp4") == qcompile.preset("nvfp4")
    # FNT schedule: starts at the last LR, peaks at the lower LR half-way, ends at zero
    assert accuracy.fnt_lr(0, 10, 0.02, 0.1) == 0.02
    assert accuracy.fnt_lr(5, 10, 0.02, 0.1) == pytest.approx(0.1)
    assert accuracy.fnt_lr(10, 10, 0.02, 0.1) == 0.0
    assert accuracy.lr_at(0, 100, 1.0) < accuracy.lr_at(5, 100, 1.0) == pytest.approx(1.0)
    sys.modules.pop("accuracy", None)


@pytest.mark.slow
def test_accuracy_benchmark_digits_smoke(tmp_path, monkeypatch):
    accuracy = _accuracy_module(monkeypatch)
    out, png = tmp_path / "acc.json", tmp_path / "acc.png"
    argv = ["--tasks", "digits", "--digits-limit", "300", "--digits-epochs", "2", "--seeds", "0",
            "--policies", "fp32", "luq+fnt", "no-such-preset", "--ablation", "never", "--no-progress",
            "--out", str(out), "--plot", str(png), "--no-checkpoints"]  # fmt: skip
    assert accuracy.main(argv) == 0
    data = json.loads(out.read_text())
    runs = {r["policy"]: r for r in data["runs"]}
    assert set(runs) == {"fp32", "luq", "luq+fnt"}
    assert runs["fp32"]["backend"] == "inductor" and runs["luq"]["backend"] == "fqt"
    assert runs["luq"]["plan_totals"]["quantized_gemms"] > 0
    # luq+fnt shares luq's first epoch exactly, then continues with its own policy
    assert runs["luq+fnt"]["train_loss"][0] == runs["luq"]["train_loss"][0]
    assert runs["luq+fnt"]["train_loss"][1] != runs["luq"]["train_loss"][1]
    assert "FNT" in runs["luq+fnt"]["note"]
    assert any("no-such-preset" in m for m in data["log"])
    summary = {r["policy"]: r for r in data["summary"]}
    assert summary["luq"]["gap_mean"] == pytest.approx(
        runs["luq"]["final"]["test_accuracy"] - runs["fp32"]["final"]["test_accuracy"]
    )
    assert data["tasks"]["digits"]["sizes"]["train"] == 240
    assert png.stat().st_size > 5000
    sys.modules.pop("accuracy", None)


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


@pytest.mark.slow
def test_accuracy_run_interrupted_after_an_epoch_resumes_to_the_same_numbers(tmp_path, monkeypatch):
    """A run killed after its first epoch and restarted with the same command continues from the
    checkpoint (weights, optimizer, curves, the RNG the stochastic quantizers draw from) and ends
    exactly where an uninterrupted run ends."""
    accuracy = _accuracy_module(monkeypatch)
    base = ["--tasks", "digits", "--digits-limit", "300", "--digits-epochs", "2", "--seeds", "0",
            "--policies", "luq", "--ablation", "never", "--no-progress", "--plot", str(tmp_path / "p.png")]  # fmt: skip
    assert accuracy.main([*base, "--out", str(tmp_path / "straight.json"), "--no-checkpoints"]) == 0
    straight = json.loads((tmp_path / "straight.json").read_text())["runs"][0]

    saves = []
    original = accuracy.Checkpoint.save

    def save_then_die(self, epoch, *args, **kwargs):
        original(self, epoch, *args, **kwargs)
        saves.append(epoch)
        raise KeyboardInterrupt  # the machine went away right after the first checkpoint

    ckpt = ["--checkpoints", str(tmp_path / "ck"), "--out", str(tmp_path / "resumed.json")]
    monkeypatch.setattr(accuracy.Checkpoint, "save", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        accuracy.main([*base, *ckpt])
    assert saves == [1] and len(list((tmp_path / "ck").glob("digits-*__luq__s0.pt"))) == 1
    monkeypatch.setattr(accuracy.Checkpoint, "save", original)
    torch.manual_seed(123)  # the resumed run must not depend on the process's RNG state
    assert accuracy.main([*base, *ckpt]) == 0
    resumed = json.loads((tmp_path / "resumed.json").read_text())["runs"][0]
    assert resumed["train_loss"] == straight["train_loss"] and resumed["final"] == straight["final"]
    # The same command once more: the checkpoint holds the last epoch, nothing trains, and the
    # plan comes from one batch (it used to fail: "no graph compiled").
    assert accuracy.main([*base, *ckpt]) == 0
    again = json.loads((tmp_path / "resumed.json").read_text())["runs"][0]
    assert again["final"] == straight["final"] and again["train_loss"] == straight["train_loss"]
    assert again["plan_totals"] == straight["plan_totals"] and straight["plan_totals"]
    sys.modules.pop("accuracy", None)


def test_cifar_random_crops_are_windows_of_the_padded_image(monkeypatch):
    monkeypatch.syspath_prepend(str(BENCH))
    from accuracy_tasks import random_crops

    x = torch.randn(16, 3, 8, 8)
    out = random_crops(x, 2, torch.Generator().manual_seed(0))
    padded = torch.nn.functional.pad(x, (2, 2, 2, 2))
    offsets = set()
    for i in range(16):
        hits = [(dy, dx) for dy in range(5) for dx in range(5) if torch.equal(out[i], padded[i, :, dy : dy + 8, dx : dx + 8])]
        assert hits, i
        offsets.add(hits[0])
    assert len(offsets) > 4  # random offsets, not one shift for all
