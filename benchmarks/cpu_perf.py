"""CPU performance of qcompile, side by side in one run, as ratios.

    .venv/bin/python benchmarks/cpu_perf.py            # full run (~10 min on 2 cores)
    .venv/bin/python benchmarks/cpu_perf.py --quick    # seconds: small sizes, for a smoke test

Sections (medians of repeated steps after warm-up):
  1. quantizers: throughput relative to a compiled `clone` of the same tensor (the memory-bandwidth
     floor), 64 KB .. 256 MB, as run by Inductor (the decomposition qcompile hands it);
  2. training steps of an MLP, a residual conv net and a small GPT: each fqt preset over FP32
     `torch.compile` (Inductor) and over an eager per-layer fake-quant baseline (the papers'
     reference style, `benchmarks/eager_fake_quant.py`);
  3. compile time of fqt over Inductor's (caches off for both);
  4. step-time ratio against width (256..4096) and batch (32..1024): a table and a PNG.
Writes ``benchmarks/results/cpu_perf.json`` and ``cpu_perf_sweep.png``.
"""

from __future__ import annotations

import os
import tempfile

# Compile times must be real: no FX graph cache, and a fresh on-disk kernel cache per run (else
# kernels compiled by an earlier run make one side's compile look free).
os.environ.setdefault("TORCHINDUCTOR_FX_GRAPH_CACHE", "0")
os.environ.setdefault("TORCHINDUCTOR_CACHE_DIR", tempfile.mkdtemp(prefix="qcompile-cpu-perf-"))

import argparse  # noqa: E402
import json  # noqa: E402
import platform  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tqdm import tqdm  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_models import ConvNet, TinyGPT, mlp  # noqa: E402
from eager_fake_quant import to_eager_fake_quant  # noqa: E402
from qcompile.runtime.decompositions import _int_quantize, _luq_quantize  # noqa: E402

import qcompile  # noqa: E402
from qcompile.compiled_graphs import graphs_for  # noqa: E402

RESULTS = Path(__file__).parent / "results"


def median_time(fn, reps: int, warmup: int = 2) -> float:
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(reps):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


# ----------------------------------------------------------------------------- 1. quantizers
QUANTIZERS = {
    "int4 SAWB (auto sign)": lambda t: _int_quantize(t, 4, "sawb", "auto", [], False, ""),
    "int4 max": lambda t: _int_quantize(t, 4, "max", "signed", [], False, ""),
    "int4 max SR": lambda t: _int_quantize(t, 4, "max", "signed", [], True, ""),
    "LUQ per-tensor": lambda t: _luq_quantize(t, 4, [], 0, ""),
    "LUQ SCQ split (2 draws)": lambda t: (_luq_quantize(t, 4, [1], 0, ""), _luq_quantize(t, 4, [0], 1, "")),
}


def bench_quantizers(sizes_bytes: list[int], bar: tqdm) -> list[dict]:
    rows = []
    clone = torch.compile(lambda t: t.clone())
    compiled = {name: torch.compile(fn) for name, fn in QUANTIZERS.items()}
    for size in sizes_bytes:
        numel = size // 4
        x = torch.randn(max(1, numel // 1024), min(1024, numel))
        reps = 30 if size <= 2**24 else 8
        base = median_time(lambda x=x: clone(x), reps)
        for name, fn in compiled.items():
            t = median_time(lambda fn=fn, x=x: fn(x), reps)
            outputs = 2 if "2 draws" in name else 1
            rows.append({"quantizer": name, "bytes": size, "seconds": t, "clone_seconds": base,
                         "throughput_vs_clone": outputs * base / t})  # fmt: skip
            bar.update(1)
    return rows


# ------------------------------------------------------------------------- 2./3. training steps
def make_task(kind: str, width: int, batch: int):
    torch.manual_seed(0)
    if kind == "mlp":
        model = mlp(width)
        x, y = torch.randn(batch, width), torch.randint(0, 10, (batch,))
        return model, x, lambda out: F.cross_entropy(out, y)
    if kind == "convnet":
        model = ConvNet(width)
        x, y = torch.randn(batch, 3, 16, 16), torch.randint(0, 10, (batch,))
        return model, x, lambda out: F.cross_entropy(out, y)
    model = TinyGPT(d=width)
    ids = torch.randint(0, 64, (batch, 64))
    return model, ids, lambda out: F.cross_entropy(out.flatten(0, 1), ids.flatten())


def fqt_policy(config: str) -> qcompile.Policy:
    """``"fqt luq-int4"`` → the preset; ``"fqt luq-int4 recompute=none"`` / ``"... unpacked"``
    → the preset with less memory saving, to see what packing and recomputation cost."""
    name, *variant = config[4:].split()
    policy = qcompile.preset(name)
    if variant == ["unpacked"]:
        return policy.replace(pack_saved=False)
    if variant and variant[0].startswith("recompute="):
        return policy.replace(recompute=variant[0].removeprefix("recompute="))
    if variant:
        raise ValueError(f"unknown variant {variant!r} in {config!r}")
    return policy


def run_config(kind: str, width: int, batch: int, config: str, steps: int) -> dict:
    torch._dynamo.reset()
    model, x, loss_of = make_task(kind, width, batch)
    if config == "fp32 inductor":
        run = torch.compile(model)
    elif config == "eager fake-quant":
        run = to_eager_fake_quant(model)
    elif config.startswith("fqt "):
        run = torch.compile(model, backend="fqt", options={"policy": fqt_policy(config)})
    else:
        run = model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)

    def step():
        loss = loss_of(run(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    with torch._functorch.config.patch(enable_autograd_cache=False):
        t0 = time.perf_counter()
        step()
        first = time.perf_counter() - t0
    t = median_time(step, steps, warmup=2)
    graphs = len(graphs_for(model)) if config.startswith("fqt ") else None
    return {"model": kind, "width": width, "batch": batch, "config": config, "step_seconds": t,
            "first_step_seconds": first, "compile_seconds": max(first - t, 0.0), "fqt_graphs": graphs}  # fmt: skip


def bench_steps(tasks, configs, steps, bar) -> list[dict]:
    out = []
    for kind, width, batch in tasks:
        for config in configs:
            out.append(run_config(kind, width, batch, config, steps))
            bar.update(1)
    return out


def ratio_rows(results: list[dict]) -> list[list]:
    rows = []
    by_task: dict[tuple, dict[str, dict]] = {}
    for r in results:
        by_task.setdefault((r["model"], r["width"], r["batch"]), {})[r["config"]] = r
    for (kind, width, batch), cfgs in by_task.items():
        ind = cfgs["fp32 inductor"]
        fq = cfgs.get("eager fake-quant")
        for name, r in cfgs.items():
            rows.append([kind, width, batch, name, f"{r['step_seconds'] * 1e3:.1f}",
                         f"{r['step_seconds'] / ind['step_seconds']:.2f}x",
                         f"{fq['step_seconds'] / r['step_seconds']:.2f}x" if fq else "",
                         f"{r['compile_seconds'] / max(ind['compile_seconds'], 1e-9):.2f}x" if name != "fp32 eager" and name != "eager fake-quant" else "",
                         r["fqt_graphs"] if r["fqt_graphs"] is not None else ""])  # fmt: skip
    return rows


def plot_sweeps(width_rows: list[dict], batch_rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(10, 4))
    for ax, rows, key in ((axes[0], width_rows, "width"), (axes[1], batch_rows, "batch")):
        ind = {r[key]: r["step_seconds"] for r in rows if r["config"] == "fp32 inductor"}
        for config in sorted({r["config"] for r in rows} - {"fp32 inductor"}):
            pts = sorted((r[key], r["step_seconds"] / ind[r[key]]) for r in rows if r["config"] == config)
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=config)
        ax.axhline(1.0, color="gray", lw=0.8)
        ax.axhline(1.3, color="red", lw=0.8, ls="--", label="target 1.3x")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(key)
        ax.set_ylabel("step time / FP32 Inductor")
        ax.set_title(f"MLP step-time ratio vs {key}")
        ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes: a smoke test of the script")
    p.add_argument("--steps", type=int, default=10)
    p.add_argument("--out", default=str(RESULTS / "cpu_perf.json"))
    p.add_argument("--plot", default=str(RESULTS / "cpu_perf_sweep.png"))
    args = p.parse_args(argv)

    if args.quick:
        sizes = [2**16, 2**20]
        tasks = [("mlp", 64, 16)]
        widths, batches = [64, 128], [16, 32]
        steps = 2
    else:
        sizes = [2**16, 2**20, 2**24, 2**28]
        tasks = [("mlp", 1024, 256), ("convnet", 32, 64), ("transformer", 256, 16)]
        widths, batches = [256, 512, 1024, 2048, 4096], [32, 128, 512, 1024]
        steps = args.steps
    configs = ["fp32 eager", "fp32 inductor", "eager fake-quant", "fqt luq-int4", "fqt luq-int4 recompute=none",
               "fqt luq-int4 unpacked", "fqt luq", "fqt luq-smp2"]  # fmt: skip
    sweep_configs = ["fp32 inductor", "fqt luq-int4"]
    total = (
        len(sizes) * len(QUANTIZERS)
        + len(tasks) * len(configs)
        + (len(widths) + len(batches)) * len(sweep_configs)
    )
    with tqdm(total=total, desc="cpu_perf", file=sys.stderr) as bar:
        quant = bench_quantizers(sizes, bar)
        step_results = bench_steps(tasks, configs, steps, bar)
        width_results = bench_steps(
            [("mlp", w, 256 if not args.quick else 16) for w in widths], sweep_configs, steps, bar
        )
        batch_results = bench_steps(
            [("mlp", 1024 if not args.quick else 64, b) for b in batches], sweep_configs, steps, bar
        )

    print("\n1. Quantizers (Inductor, throughput relative to clone; target >= 0.5 for >= 1 MB)")
    print(tabulate([[r["quantizer"], f"{r['bytes'] / 2**20:g} MB", f"{r['seconds'] * 1e3:.3f}",
                     f"{r['throughput_vs_clone']:.2f}"] for r in quant],
                   headers=["quantizer", "tensor", "ms", "throughput / clone"]))  # fmt: skip
    print(
        "\n2-3. Training steps (ratios; fqt targets: <= 1.3x Inductor, >= 2x faster than eager fake-quant, compile <= 1.5x)"
    )
    print(tabulate(ratio_rows(step_results), headers=["model", "width", "batch", "config", "step ms", "vs inductor",
                                                      "eager fake-quant / this", "compile vs inductor", "fqt graphs"]))  # fmt: skip
    print("\n4. MLP step-time ratio sweeps (fqt luq-int4 / FP32 Inductor)")
    sweep_rows = []
    for key, rows in (("width", width_results), ("batch", batch_results)):
        ind = {r[key]: r["step_seconds"] for r in rows if r["config"] == "fp32 inductor"}
        for r in rows:
            if r["config"] != "fp32 inductor":
                sweep_rows.append([key, r[key], f"{r['step_seconds'] / ind[r[key]]:.2f}x"])
    print(tabulate(sweep_rows, headers=["sweep", "value", "fqt luq-int4 / inductor"]))

    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    out = {"machine": machine, "torch": torch.__version__, "qcompile": qcompile.__version__, "quick": args.quick,
           "quantizers": quant, "steps": step_results, "width_sweep": width_results, "batch_sweep": batch_results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    plot_sweeps(width_results, batch_results, Path(args.plot))
    print(f"\nwrote {args.out} and {args.plot}  ({machine['cpu']}, {machine['cores']} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
