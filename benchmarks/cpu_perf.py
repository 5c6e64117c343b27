"""CPU performance of qcompile, side by side in one run, as ratios.

    .venv/bin/python benchmarks/cpu_perf.py            # full run (~25 min on 2 cores)
    .venv/bin/python benchmarks/cpu_perf.py --quick    # seconds: small sizes, for a smoke test

Sections (medians of repeated steps after warm-up; the configurations of one model are timed
round-robin, one step each in turn, so load changes on a shared machine hit all of them alike):
  1. quantizers: throughput relative to a compiled `clone` of the same tensor (the memory-bandwidth
     floor), 64 KB .. 256 MB, as run by Inductor (the decomposition qcompile hands it): the float
     path's quantizers and the integer path's codes writers;
  2. GEMMs: every integer GEMM of an fqt ``kernels="auto"`` MLP step, timed inside the compiled
     step, against the bare kernel on codes of the same shape and layout, ``aten._int_mm`` and the
     float32 ``mm`` of that layout (the AVX2 kernel, or ``aten._int_mm`` on VNNI CPUs); 2b. the
     kernel as the backend runs it against float32 ``mm``, by size;
  3. training steps: FP32 eager, FP32 and bf16-autocast ``torch.compile`` (Inductor), the eager
     per-layer fake-quant baseline (the papers' reference style, `benchmarks/eager_fake_quant.py`),
     fqt ``kernels="reference"`` (every GEMM a float simulation) and fqt ``kernels="auto"`` (integer
     GEMMs where they gain), on an MLP (width 1024 and 2048), a residual conv net, a small GPT and
     Hugging Face GPT-2 from a config (4 layers, d=512, sequence 128); and compile time;
  4. MLP step-time ratio of fqt auto against width (512..4096) and batch (64..1024): a table and a PNG.
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
from eager_fake_quant import to_eager_fake_quant  # noqa: E402
from tabulate import tabulate  # noqa: E402
from tqdm import tqdm  # noqa: E402

import qcompile  # noqa: E402
from qcompile.compiler.compiled_graphs import graphs_for  # noqa: E402
from qcompile.runtime.kernels import cpu_int8_gemm  # noqa: E402
from qcompile.runtime.ops.decompositions import _int_quantize, _luq_quantize, _quantize_codes  # noqa: E402
from qcompile.testing.benchmark_models import ConvNet, TinyGPT, mlp  # noqa: E402

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
    "int4 SAWB codes (int8 path)": lambda t: _quantize_codes(t, "int", 4, "sawb", "auto", [], False),
    "LUQ codes per-sample (int8 path)": lambda t: _quantize_codes(t, "luq", 4, "max", "signed", [1], True),
    "LUQ codes per-channel (int8 path)": lambda t: _quantize_codes(t, "luq", 4, "max", "signed", [0], True),
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
    if kind == "gpt2":
        import transformers

        seq, vocab = (128, 4096) if width >= 128 else (16, 64)
        cfg = transformers.GPT2Config(vocab_size=vocab, n_positions=seq, n_embd=width, n_layer=4,
                                      n_head=max(1, width // 64), attn_pdrop=0, resid_pdrop=0, embd_pdrop=0,
                                      bos_token_id=0, eos_token_id=0)  # fmt: skip
        model = transformers.GPT2LMHeadModel(cfg)
        model.config.use_cache = False
        ids = torch.randint(0, vocab, (batch, seq))
        return model, ids, lambda out: F.cross_entropy(out.logits.flatten(0, 1), ids.flatten())
    model = TinyGPT(d=width)
    ids = torch.randint(0, 64, (batch, 64))
    return model, ids, lambda out: F.cross_entropy(out.flatten(0, 1), ids.flatten())


def fqt_options(config: str) -> dict:
    """``"fqt auto"`` / ``"fqt reference"`` → the default policy with that ``kernels`` option;
    ``"fqt luq-int4 unpacked"`` / ``"... recompute=none"`` → a preset with less memory saving."""
    words = config[4:].split()
    if words[0] in ("auto", "reference", "int8"):
        return {"kernels": words[0]}
    name, *variant = words
    policy = qcompile.preset(name)
    if variant == ["unpacked"]:
        policy = policy.replace(pack_saved=False)
    elif variant and variant[0].startswith("recompute="):
        policy = policy.replace(recompute=variant[0].removeprefix("recompute="))
    elif variant:
        raise ValueError(f"unknown variant {variant!r} in {config!r}")
    return {"policy": policy}


def make_step(kind: str, width: int, batch: int, config: str):
    """(model, one training step) of ``config``: the compiled (or eager) model and its optimizer."""
    model, x, loss_of = make_task(kind, width, batch)
    if config in ("fp32 inductor", "bf16 inductor"):
        run = torch.compile(model)
    elif config == "eager fake-quant":
        run = to_eager_fake_quant(model)
    elif config.startswith("fqt "):
        run = torch.compile(model, backend="fqt", options=fqt_options(config))
    else:
        run = model
    opt = torch.optim.SGD(model.parameters(), lr=1e-4)
    autocast = config.startswith("bf16")

    def step():
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
            loss = loss_of(run(x))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return model, step


# bf16 GEMMs on a CPU without AVX512-BF16 / AMX run about 100x slower than float32 (measured on the
# 2-core AMD EPYC, Zen 3: 0.01x at 256x1024x1024): a bf16 step is timed over fewer steps.
SLOW_CONFIGS = {"bf16 inductor": 2}


def run_task(kind: str, width: int, batch: int, configs: list[str], steps: int) -> list[dict]:
    """All configurations of one model: compile each (first step), then time them round-robin
    (a configuration in ``SLOW_CONFIGS`` only for its first few rounds)."""
    torch._dynamo.reset()
    entries = []
    with torch._functorch.config.patch(enable_autograd_cache=False):
        for config in configs:
            model, step = make_step(kind, width, batch, config)
            t0 = time.perf_counter()
            step()
            entries.append((config, model, step, time.perf_counter() - t0))
        for config, _, step, _ in entries:  # warm-up
            step()
            if config not in SLOW_CONFIGS:
                step()
        times: dict[str, list[float]] = {c: [] for c in configs}
        for i in range(steps):
            for config, _, step, _ in entries:
                if i >= SLOW_CONFIGS.get(config, steps):
                    continue
                t0 = time.perf_counter()
                step()
                times[config].append(time.perf_counter() - t0)
    out = []
    for config, model, _, first in entries:
        t = statistics.median(times[config])
        graphs = len(graphs_for(model)) if config.startswith("fqt ") else None
        out.append({"model": kind, "width": width, "batch": batch, "config": config, "step_seconds": t,
                    "first_step_seconds": first, "compile_seconds": max(first - t, 0.0), "fqt_graphs": graphs})  # fmt: skip
    return out


def bench_steps(tasks, configs, steps, bar) -> list[dict]:
    """``tasks``: (model, width, batch) or (model, width, batch, configurations to leave out)."""
    out = []
    for kind, width, batch, *skip in tasks:
        chosen = [c for c in configs if c not in (skip[0] if skip else ())]
        out += run_task(kind, width, batch, chosen, steps)
        bar.update(len(configs))
    return out


# --------------------------------------------------------------------------------- 2. GEMMs
def _kernel_entry(kernel: str):
    """(object, attribute) of the call the compiled step makes for each integer GEMM, looked up
    at run time so that a wrapper sees every call: `cpu_int8_gemm.avx2_int8_mm` for the AVX2
    kernel, Inductor's extern ``_int_mm`` for oneDNN's VNNI kernel (its scale epilogue is fused
    into the next Inductor loop, so the GEMM alone is timed)."""
    if kernel == "avx2-maddubs":
        return cpu_int8_gemm, "avx2_int8_mm"
    if kernel == "int-mm":
        from torch._inductor.select_algorithm import extern_kernels

        return extern_kernels, "_int_mm"
    return None, ""


def bench_gemms(width: int, batch: int, reps: int, int_mm_reps: int, config: str = "fqt auto") -> list[dict]:
    """Each integer GEMM of one fqt ``kernels="auto"`` MLP step, as the compiled step ran it
    (recorded by wrapping the kernel's entry point), against the bare kernel, ``aten._int_mm`` and
    float32 ``mm`` on operands of the same shape and strides."""
    kernel = cpu_int8_gemm.cpu_int8_kernel()[0]
    owner, name = _kernel_entry(kernel)
    if owner is None:
        return []
    calls: list[dict] = []
    real = getattr(owner, name)

    def spy(a, b, *rest, **kw):
        t0 = time.perf_counter()
        out = real(a, b, *rest, **kw)
        bounds = list(rest[2:4]) if kernel == "avx2-maddubs" else [64, 15]  # _int_mm: any codes
        calls.append({"m": a.shape[0], "k": a.shape[1], "n": b.shape[1], "a_stride": list(a.stride()),
                      "b_stride": list(b.stride()), "bounds": bounds,
                      "in_graph_seconds": time.perf_counter() - t0})  # fmt: skip
        return out

    torch._dynamo.reset()
    _, step = make_step("mlp", width, batch, config)
    setattr(owner, name, spy)
    try:
        for _ in range(2 + reps):
            step()
    finally:
        setattr(owner, name, real)
    per_step = len(calls) // (2 + reps)
    rows = []
    for i in range(per_step):
        same = [c for j, c in enumerate(calls) if j % per_step == i][2:]
        c = same[0]
        in_graph = statistics.median(x["in_graph_seconds"] for x in same)
        a = _strided_codes(c["m"], c["k"], c["a_stride"], c["bounds"][0])
        b = _strided_codes(c["k"], c["n"], c["b_stride"], c["bounds"][1])
        rs, cs = torch.rand(c["m"]) + 0.5, torch.rand(c["n"]) + 0.5
        if kernel == "avx2-maddubs":
            bare = median_time(lambda a=a, b=b, rs=rs, cs=cs, c=c: real(a, b, rs, cs, *c["bounds"]), reps)
        else:
            bare = median_time(lambda a=a, b=b: torch._int_mm(a, b), reps)
        af, bf = _same_layout(a.float()), _same_layout(b.float())
        fp32 = median_time(lambda af=af, bf=bf: torch.mm(af, bf), reps)
        int_mm = median_time(lambda a=a, b=b: torch._int_mm(a, b), int_mm_reps, warmup=1)
        layout = ("A^T" if c["a_stride"][0] == 1 and c["k"] > 1 else "A") + "·" + (
            "B^T" if c["b_stride"][0] == 1 and c["n"] > 1 else "B")  # fmt: skip
        rows.append({**c, "kernel": kernel, "layout": layout, "in_graph_seconds": in_graph, "bare_seconds": bare,
                     "fp32_mm_seconds": fp32, "int_mm_seconds": int_mm})  # fmt: skip
    return rows


GEMM_SIZES = [(64, 64, 64), (128, 128, 128), (256, 256, 256), (256, 512, 512), (512, 512, 512),
              (256, 1024, 1024), (1024, 1024, 1024), (256, 2048, 2048)]  # fmt: skip
# The three training layouts with the default policy's code bounds: forward X̂·Ŵᵀ (unsigned INT4 ×
# INT4), dgrad dY·Ŵ (LUQ × INT4), wgrad dYᵀ·X̂ (LUQ transposed × unsigned INT4).
LAYOUTS = {
    "forward A·B^T": ("n", "t", 15, 7),
    "dgrad A·B": ("n", "n", 64, 7),
    "wgrad A^T·B": ("t", "n", 64, 15),
}


def bench_gemm_sizes(sizes, reps: int) -> list[dict]:
    """The kernel as the backend runs it against float32 ``mm`` of the same layout, by size:
    where int8 starts to gain (the decision's ``CPU_MIN_MACS``). The AVX2 kernel includes its
    epilogue; on VNNI CPUs it is ``aten._int_mm`` with the float64 scale epilogue compiled by
    Inductor (`int_mm_scaled`, as the backend's decomposition emits it), against a compiled
    ``mm``."""
    kernel = cpu_int8_gemm.cpu_int8_kernel()[0]
    float_mm = torch.mm
    if kernel == "avx2-maddubs":
        run = cpu_int8_gemm.avx2_int8_mm
    elif kernel == "int-mm":
        compiled = torch.compile(cpu_int8_gemm.int_mm_scaled, dynamic=False)
        float_mm = torch.compile(torch.mm, dynamic=False)  # the same call overhead on both sides

        def run(a, b, rs, cs, ab, bb):
            return compiled(a, b, rs, cs)
    else:
        return []
    rows = []
    for m, k, n in sizes:
        for name, (la, lb, ab, bb) in LAYOUTS.items():
            a = _strided_codes(m, k, [1, m] if la == "t" else [k, 1], ab)
            b = _strided_codes(k, n, [1, k] if lb == "t" else [n, 1], bb)
            rs, cs = torch.rand(m) + 0.5, torch.rand(n) + 0.5
            kernel_s = median_time(
                lambda a=a, b=b, rs=rs, cs=cs, ab=ab, bb=bb: run(a, b, rs, cs, ab, bb), reps
            )
            af, bf = _same_layout(a.float()), _same_layout(b.float())
            fp32 = median_time(lambda af=af, bf=bf: float_mm(af, bf), reps)
            rows.append({"m": m, "k": k, "n": n, "layout": name, "kernel": kernel, "kernel_seconds": kernel_s,
                         "fp32_mm_seconds": fp32})  # fmt: skip
    return rows


def _strided_codes(rows: int, cols: int, stride: list[int], bound: int) -> torch.Tensor:
    """Random codes in [-bound, bound] with the recorded layout (row- or column-major)."""
    codes = torch.randint(-bound, bound + 1, (rows, cols), dtype=torch.int8)
    return codes.t().contiguous().t() if stride[0] == 1 and cols > 1 else codes


def _same_layout(t: torch.Tensor) -> torch.Tensor:
    return t if t.is_contiguous() else t.t().contiguous().t()


def ratio_rows(results: list[dict]) -> list[list]:
    rows = []
    by_task: dict[tuple, dict[str, dict]] = {}
    for r in results:
        by_task.setdefault((r["model"], r["width"], r["batch"]), {})[r["config"]] = r
    for (kind, width, batch), cfgs in by_task.items():
        ind = cfgs["fp32 inductor"]
        bf16 = cfgs.get("bf16 inductor")
        fq = cfgs.get("eager fake-quant")
        for name, r in cfgs.items():
            rows.append([kind, width, batch, name, f"{r['step_seconds'] * 1e3:.1f}",
                         f"{r['step_seconds'] / ind['step_seconds']:.2f}x",
                         f"{r['step_seconds'] / bf16['step_seconds']:.2f}x" if bf16 else "",
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
        ax.axhline(0.5, color="red", lw=0.8, ls="--", label="target 0.5x (fqt auto)")
        ax.set_xscale("log", base=2)
        ax.set_xlabel(key)
        ax.set_ylabel("step time / FP32 Inductor")
        ax.set_title(f"MLP step time / FP32 Inductor vs {key}")
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

    sweep_configs = ["fp32 inductor", "fqt auto"]
    if args.quick:
        sizes = [2**16, 2**20]
        tasks = [("mlp", 64, 16)]
        widths, batches = [64], [16]
        steps, gemm_width, int_mm_reps = 2, 128, 1
    else:
        sizes = [2**16, 2**20, 2**24, 2**28]
        # bf16 steps take minutes at these sizes (SLOW_CONFIGS); the eager baseline converts only
        # nn.Linear / nn.Conv2d (not GPT-2's Conv1D)
        slow = ("bf16 inductor", "eager fake-quant")
        tasks = [("mlp", 1024, 256), ("mlp", 2048, 256, slow), ("convnet", 32, 64), ("transformer", 256, 16),
                 ("gpt2", 512, 8, slow)]  # fmt: skip
        widths, batches = [512, 1024, 2048, 4096], [64, 256, 1024]
        steps, gemm_width, int_mm_reps = args.steps, 1024, 2
    configs = [
        "fp32 eager",
        "fp32 inductor",
        "bf16 inductor",
        "eager fake-quant",
        "fqt reference",
        "fqt auto",
    ]
    torch._dynamo.config.cache_size_limit = 64  # several compiled copies of one model class at a time
    total = (
        len(sizes) * len(QUANTIZERS)
        + len(tasks) * len(configs)
        + (len(widths) + len(batches)) * len(sweep_configs)
    )
    with tqdm(total=total, desc="cpu_perf", file=sys.stderr) as bar:
        quant = bench_quantizers(sizes, bar)
        gemms = bench_gemms(gemm_width, 256 if not args.quick else 64, steps, int_mm_reps,
                            "fqt int8" if args.quick else "fqt auto")  # fmt: skip
        gemm_sizes = bench_gemm_sizes(GEMM_SIZES[:2] if args.quick else GEMM_SIZES, 3 if args.quick else 20)
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
    kernel, why = cpu_int8_gemm.cpu_int8_kernel()
    print(f"\n2. Integer GEMMs of one fqt auto MLP step (kernel: {kernel or 'none'}, {why}); ratios of times")
    print(tabulate([[f"{g['m']}x{g['k']}x{g['n']}", g["layout"], f"{g['in_graph_seconds'] * 1e3:.2f}",
                     f"{g['bare_seconds'] / g['in_graph_seconds']:.2f}",
                     f"{g['fp32_mm_seconds'] / g['in_graph_seconds']:.2f}x",
                     f"{g['int_mm_seconds'] / g['in_graph_seconds']:.1f}x"] for g in gemms],
                   headers=["MxKxN", "layout", "in step ms", "bare kernel / in step (target >= 0.8)",
                            "fp32 mm / this", "aten._int_mm / this"]))  # fmt: skip
    print("\n2b. The kernel against float32 mm by size (fp32 time / kernel time; > 1: int8 faster)")
    sizes = sorted({(g["m"], g["k"], g["n"]) for g in gemm_sizes})
    print(tabulate([[f"{m}x{k}x{n}"] + [f"{g['fp32_mm_seconds'] / g['kernel_seconds']:.2f}x" for g in gemm_sizes
                                        if (g["m"], g["k"], g["n"]) == (m, k, n)] for m, k, n in sizes],
                   headers=["MxKxN", *LAYOUTS]))  # fmt: skip
    print(
        "\n3. Training steps (ratios; fqt auto targets: <= 0.5x FP32 Inductor on the MLP, <= 0.7x on the GPTs)"
    )
    print(tabulate(ratio_rows(step_results), headers=["model", "width", "batch", "config", "step ms", "vs inductor",
                                                      "vs bf16 inductor", "eager fake-quant / this",
                                                      "compile vs inductor", "fqt graphs"]))  # fmt: skip
    print("\n4. MLP step-time ratio sweeps (over FP32 Inductor)")
    sweep_rows = []
    for key, rows in (("width", width_results), ("batch", batch_results)):
        ind = {r[key]: r["step_seconds"] for r in rows if r["config"] == "fp32 inductor"}
        for r in rows:
            if r["config"] != "fp32 inductor":
                sweep_rows.append([key, r[key], r["config"], f"{r['step_seconds'] / ind[r[key]]:.2f}x"])
    print(tabulate(sweep_rows, headers=["sweep", "value", "config", "over FP32 inductor"]))

    machine = {"cpu": cpu_name(), "cores": os.cpu_count(), "torch_threads": torch.get_num_threads(),
               "cpu_capability": torch.backends.cpu.get_cpu_capability(), "int8_kernel": kernel,
               "int8_kernel_why": why}  # fmt: skip
    out = {"machine": machine, "torch": torch.__version__, "qcompile": qcompile.__version__, "quick": args.quick,
           "quantizers": quant, "gemms": gemms, "gemm_sizes": gemm_sizes, "steps": step_results, "width_sweep": width_results,
           "batch_sweep": batch_results}  # fmt: skip
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    plot_sweeps(width_results, batch_results, Path(args.plot))
    print(f"\nwrote {args.out} and {args.plot}  ({machine['cpu']}, {machine['cores']} cores)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
