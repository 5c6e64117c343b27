"""GPU throughput of qcompile's Triton int8 kernels, side by side with cuBLAS, as ratios.

    .venv/bin/python benchmarks/gpu_kernels.py           # 1024³ .. 8192³ GEMMs + a GPT-2-small block
    .venv/bin/python benchmarks/gpu_kernels.py --quick   # 1024³, 2048³ and a shorter block

Needs a CUDA GPU and Triton (``pip install -e .[cuda]``). Without one it prints why and exits
with status 2 (nothing measured; distinct from 0 = measured, 1 = error).

Sections (Triton's `do_bench`: median of repeated runs after warm-up):
  1. GEMMs M = N = K from 1024 to 8192: ``torch.mm`` in BF16 (cuBLAS), ``torch._int_mm``
     (cuBLAS int8 → int32), the Triton int8 GEMM with its scale epilogue in the forward
     (X·Wᵀ), dgrad (dY·W) and wgrad (dYᵀ·X) layouts (the backward ones with their MN-major
     operands copied K-major, the default, and read through strides), the fused path
     (quantize both operands to codes + GEMM) and the GEMM reading 4-bit codes packed two per
     byte: TFLOP/s (TOP/s for
     int8), ratio over BF16 and over ``_int_mm``, and the fraction of the device's measured int8
     peak (`int8_peak`: ``torch._int_mm`` at large square shapes, or any faster int8 row).
  2. A GPT-2-small-sized transformer block (d=768, 12 heads, MLP 3072, 8×1024 tokens): one full
     training step (forward, backward, SGD update) with ``backend="fqt"`` (its GEMMs routed to the
     Triton kernels; the plan's kernel column says which) over BF16 ``torch.compile``, with the
     default packed + recomputing backend, with ``recompute="none"``, with ``pack_saved=False``
     and with attention kept in high precision (SDPA fused), and each configuration's peak CUDA
     memory over one step.
  3. The quantizer kernels (INT4 SAWB per tensor, the fused forward's INT4 SAWB writing codes and
     saved nibbles, INT4 max per row, stochastic INT4, LUQ per row and per column, the reduction
     pass, nibble packing) on a bf16 activation-sized tensor:
     milliseconds, effective GB/s (one read of the input plus the codes written) and the ratio
     over the PyTorch reference of the same codes, eager and compiled by Inductor.
Writes ``benchmarks/results/gpu_kernels.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import os
import platform
import sys
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
NO_GPU_EXIT = 2


def gpu_problem() -> str:
    """Why this benchmark cannot run here ('' when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device visible to torch (this build: torch " + torch.__version__ + ")"
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed (pip install -e '.[cuda]')"
    return ""


def tflops(flops: float, ms: float) -> float:
    return flops / (ms * 1e-3) / 1e12


def bench(fn) -> float:
    """Median milliseconds of ``fn`` (CUDA-synchronised)."""
    from triton.testing import do_bench

    return float(do_bench(fn, warmup=25, rep=100, return_mode="median"))


def gemm_times(n: int) -> dict[str, float]:
    """Milliseconds of every GEMM variant at M = N = K = n (inputs freed on return)."""
    from qcompile.runtime.kernels.triton_int8_gemm import dgrad_gemm, forward_gemm, wgrad_gemm
    from qcompile.runtime.kernels.triton_int_quantize import int_quantize_codes
    from qcompile.runtime.kernels.triton_luq_quantize import luq_quantize_codes
    from qcompile.runtime.kernels.triton_pack_int4 import pack_codes, packed_mm

    dev = "cuda"
    a16 = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    b16 = torch.randn(n, n, device=dev, dtype=torch.bfloat16)
    a8 = torch.randint(-64, 65, (n, n), device=dev, dtype=torch.int8)
    b8 = torch.randint(-7, 8, (n, n), device=dev, dtype=torch.int8)
    rs = torch.rand(n, device=dev) + 0.5
    cs = torch.rand(n, device=dev) + 0.5
    x32, w32 = a16.float(), b16.float()

    def fused():
        qa = luq_quantize_codes(x32, 4, [1])  # per-sample LUQ dY-like operand
        qb = int_quantize_codes(w32, 4, "max", "signed", [1])  # per-channel INT4 weight
        return forward_gemm(
            qa.codes, qb.codes, qa.scale.reshape(-1), qb.scale.reshape(-1), out_dtype=torch.bfloat16
        )

    bf16 = torch.bfloat16
    pa, pb = pack_codes(torch.randint(-7, 8, (n, n), device=dev, dtype=torch.int8)), pack_codes(b8)
    return {
        "bf16 torch.mm": bench(lambda: torch.mm(a16, b16)),
        "int8 torch._int_mm": bench(lambda: torch._int_mm(a8, b8.t())),
        "triton int8 fwd (X·Wᵀ)": bench(lambda: forward_gemm(a8, b8, rs, cs, out_dtype=bf16)),
        # The backward layouts copy their MN-major operands K-major first (the default on a GPU,
        # copy included in the time), and, beside it, read them through strides.
        "triton int8 dgrad (dY·W)": bench(lambda: dgrad_gemm(a8, b8, rs, cs, out_dtype=bf16)),
        "triton int8 dgrad, strided W": bench(
            lambda: dgrad_gemm(a8, b8, rs, cs, out_dtype=bf16, k_major=False)
        ),
        "triton int8 wgrad (dYᵀ·X)": bench(lambda: wgrad_gemm(a8, b8, rs, cs, out_dtype=bf16)),
        "triton int8 wgrad, strided": bench(
            lambda: wgrad_gemm(a8, b8, rs, cs, out_dtype=bf16, k_major=False)
        ),
        "triton packed-int4 fwd (nibbles)": bench(lambda: packed_mm(pa, pb.t(), rs, cs, out_dtype=bf16)),
        "fused LUQ+INT4 quantize + GEMM": bench(fused),
    }


PEAK_SHAPES = ((8192, 8192, 8192), (16384, 8192, 16384))


def int8_peak(timer=None, shapes=PEAK_SHAPES, device: str = "cuda") -> dict:
    """The device's int8 tensor-core rate as measured here: ``torch._int_mm`` (cuBLAS) at large
    shapes, where it is compute-bound. TOP/s, and the shape that gave it."""
    timer = timer or bench
    best = {"tops": 0.0, "shape": None}
    for m, k, n in shapes:
        a = torch.randint(-64, 65, (m, k), device=device, dtype=torch.int8)
        b = torch.randint(-7, 8, (n, k), device=device, dtype=torch.int8)
        tops = tflops(2.0 * m * n * k, timer(lambda a=a, b=b: torch._int_mm(a, b.t())))
        if tops > best["tops"]:
            best = {"tops": tops, "shape": [m, k, n]}
        del a, b
    return best


def gemm_rows(sizes: list[int], peak: dict) -> list[dict]:
    from tqdm import tqdm

    rows = []
    for n in tqdm(sizes, desc="GEMMs"):
        for name, ms in gemm_times(n).items():
            rows.append({"size": n, "kernel": name, "ms": ms, "tflops": tflops(2.0 * n**3, ms)})
        torch.cuda.empty_cache()
    # A faster int8 row than the probe means the probe missed the peak: use that row's rate.
    int8_peak = max([peak["tops"]] + [r["tflops"] for r in rows if not r["kernel"].startswith("bf16")])
    for r in rows:
        same = {x["kernel"]: x for x in rows if x["size"] == r["size"]}
        r["vs_bf16"] = r["tflops"] / same["bf16 torch.mm"]["tflops"]
        r["vs_int_mm"] = r["tflops"] / same["int8 torch._int_mm"]["tflops"]
        r["of_int8_peak"] = r["tflops"] / int8_peak
    return rows


def quantizer_rows(
    rows: int = 8192, cols: int = 3072, device: str = "cuda", timer=None, compiled: bool = True
) -> list[dict]:
    """Each Triton quantizer kernel beside the PyTorch reference of the same result (eager, and
    compiled by Inductor), on a bf16 ``rows × cols`` tensor (a GPT-2-small MLP activation at
    8×1024 tokens by default). ``device``/``timer``/``compiled`` let a CPU smoke test run it."""
    from qcompile.runtime.kernels.triton_int_quantize import int_quantize_codes
    from qcompile.runtime.kernels.triton_luq_quantize import luq_quantize_codes
    from qcompile.runtime.kernels.triton_pack_int4 import pack_codes, pack_reference
    from qcompile.runtime.kernels.triton_reductions import group_stats
    from qcompile.runtime.kernels.triton_support import as_2d
    from qcompile.runtime.reference.codes import quantizer_codes
    from qcompile.runtime.reference.packed_int import int_quantize_packed_reference

    timer = timer or bench
    x = torch.randn(rows, cols, device=device, dtype=torch.bfloat16)
    codes = torch.randint(-7, 8, (rows, cols), device=device, dtype=torch.int8)

    def ref(kind, scaling, signed, dims, stochastic):
        return lambda t: quantizer_codes(t, kind, 4, scaling, signed, dims, stochastic)

    # name: (Triton kernel, PyTorch reference of the same output, bytes written per element)
    cases = {
        "INT4 SAWB per tensor (W, X)": (
            lambda: int_quantize_codes(x, 4, "sawb", "signed", []), ref("int", "sawb", "signed", [], False), 1),
        "INT4 SAWB auto + packed (fused forward)": (
            lambda: int_quantize_codes(x, 4, "sawb", "auto", [], pack=True),
            lambda t: int_quantize_packed_reference(t, 4, "sawb", "auto", [], False), 1.5),
        "INT4 max per row": (
            lambda: int_quantize_codes(x, 4, "max", "signed", [1]), ref("int", "max", "signed", [1], False), 1),
        "INT4 stochastic per row": (
            lambda: int_quantize_codes(x, 4, "max", "signed", [1], stochastic=True),
            ref("int", "max", "signed", [1], True), 1),
        "LUQ per row (dgrad dY)": (lambda: luq_quantize_codes(x, 4, [1]), ref("luq", "max", "", [1], True), 1),
        "LUQ per column (wgrad dY)": (lambda: luq_quantize_codes(x, 4, [0]), ref("luq", "max", "", [0], True), 1),
        "reduction max|x|, min, Σ|x|, Σx² per row": (
            lambda: group_stats(as_2d(x, [1]), moments=True),
            lambda t: (t.abs().amax(1), t.amin(1), t.double().abs().sum(1), t.double().square().sum(1)), 0),
        "pack int4 codes, two per byte": (lambda: pack_codes(codes), lambda t: pack_reference(codes), 0.5),
    }  # fmt: skip
    out = []
    for name, (kernel, reference, written) in cases.items():
        moved = rows * cols * ((1 if name.startswith("pack") else x.element_size()) + written)
        row = {"kernel": name, "shape": [rows, cols], "ms": timer(kernel)}
        row["gb_per_s"] = moved / (row["ms"] * 1e-3) / 1e9
        row["eager_ms"] = timer(lambda reference=reference: reference(x))
        row["vs_eager"] = row["eager_ms"] / row["ms"]
        if compiled:
            torch._dynamo.reset()
            fn = torch.compile(reference)
            row["inductor_ms"] = timer(lambda fn=fn: fn(x))
            row["vs_inductor"] = row["inductor_ms"] / row["ms"]
        out.append(row)
    return out


class Block(torch.nn.Module):
    """A GPT-2-small transformer block (pre-LN, causal SDPA, GELU MLP)."""

    def __init__(self, d: int = 768, heads: int = 12):
        super().__init__()
        self.heads = heads
        self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
        self.qkv, self.proj = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
        self.fc, self.out = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

    def forward(self, x):
        b, t, d = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(d, dim=-1)
        q, k, v = (z.view(b, t, self.heads, d // self.heads).transpose(1, 2) for z in (q, k, v))
        att = torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(att.transpose(1, 2).reshape(b, t, d))
        return x + self.out(torch.nn.functional.gelu(self.fc(self.ln2(x))))


# Kernel names by what they do, first match wins: the profile's categories.
KERNEL_CATEGORIES = (
    ("qcompile GEMM", ("_int8_mm_kernel", "_packed_mm_kernel", "_fp8_mm_kernel")),
    ("qcompile quantizer", ("_int_quantize_kernel", "_luq_quantize_kernel", "_group_stats_kernel", "_pack_kernel")),
    ("cuBLAS / CUTLASS GEMM", ("gemm", "cutlass", "xmma", "nvjet", "cublas", "_int_mm", "aten::mm", "aten::addmm", "aten::bmm")),
    ("attention (SDPA)", ("flash", "fmha", "attention")),
    ("Inductor-generated", ("triton_",)),
)  # fmt: skip
PROFILE_STEPS = 3
INDUCTOR_QUANTIZERS = "fqt luq-int4, quantizers in Inductor's code"


def kernel_category(name: str) -> str:
    """`KERNEL_CATEGORIES`' label for a kernel (or, on CPU, an operator) name; ``"other"``."""
    low = name.lower()
    for label, keys in KERNEL_CATEGORIES:
        if any(k.lower() in low for k in keys):
            return label
    return "other"


def profile_step(step, device: str, steps: int = PROFILE_STEPS, top: int = 15) -> dict:
    """Where one training step's time goes: ``steps`` steps under `torch.profiler`, each kernel's
    self time on the device (on CPU: each operator's self CPU time), summed by
    `kernel_category` and listed for the ``top`` kernels, in milliseconds per step. Why: the
    step's time over BF16 is the sum of these, and the GEMM table alone cannot say which part of
    the step loses it (quantizers, GEMM layouts, Inductor's own kernels)."""
    from torch.profiler import ProfilerActivity, profile

    cuda = torch.device(device).type == "cuda"
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if cuda else [])
    with profile(activities=activities) as prof:
        for _ in range(steps):
            step()
        if cuda:
            torch.cuda.synchronize()
    kernels = []
    for e in prof.key_averages():
        if cuda:
            if e.device_type != torch.autograd.DeviceType.CUDA:
                continue
            us = e.self_device_time_total
        else:
            us = e.self_cpu_time_total
        if us > 0:
            kernels.append({"name": e.key[:160], "category": kernel_category(e.key),
                            "ms_per_step": us / 1e3 / steps, "calls_per_step": e.count / steps})  # fmt: skip
    kernels.sort(key=lambda k: -k["ms_per_step"])
    categories: dict[str, float] = {}
    for k in kernels:
        categories[k["category"]] = categories.get(k["category"], 0.0) + k["ms_per_step"]
    return {
        "time": "device self time" if cuda else "CPU self time",
        "steps": steps,
        "total_ms_per_step": sum(categories.values()),
        "categories": dict(sorted(categories.items(), key=lambda kv: -kv[1])),
        "top_kernels": kernels[:top],
    }


def block_rows(
    batch: int,
    seq: int,
    device: str = "cuda",
    d: int = 768,
    heads: int = 12,
    timer=None,
    only=None,
    profile: tuple[str, ...] = (),
) -> tuple[list[dict], str]:
    """One training step of `Block` per configuration: milliseconds (``timer``, default `bench`),
    GEMM TFLOP/s, peak CUDA memory over one step, for fqt how many GEMMs the plan puts on the
    Triton kernels, and for the configurations named in ``profile`` where the step's time goes
    (`profile_step`). ``device``/``d``/``heads``/``timer``/``only`` (configuration names) let a
    CPU smoke test run the same code."""
    import qcompile
    from qcompile import Policy, Rule

    timer = timer or bench
    x = torch.randn(batch, seq, d, device=device)
    tokens = batch * seq
    # 4 GEMMs of the block, forward + 2 backward: 6 · tokens · params(GEMM) FLOPs.
    gemm_flops = 6.0 * tokens * (d * 3 * d + d * d + 2 * d * 4 * d)
    rows, plan_text = [], ""
    fqt = Policy(name="luq-int4-all", keep_first_last=False)
    configs = {
        "bf16 torch.compile": ("inductor", None),
        # Default: saved operands packed (4-bit codes the fused GEMMs read), LayerNorm/softmax/
        # GELU inputs recomputed in backward (forward GEMMs replayed there).
        "fqt luq-int4 (Triton int8 GEMMs)": ("fqt", fqt),
        "fqt luq-int4, recompute=none": ("fqt", dataclasses.replace(fqt, recompute="none")),
        "fqt luq-int4, unpacked (pack_saved=False)": ("fqt", dataclasses.replace(fqt, pack_saved=False)),
        # Quantized attention is two explicit GEMMs around a materialised softmax; kept in high
        # precision, SDPA stays one fused (flash) kernel, as in the BF16 baseline.
        "fqt luq-int4, attention high precision (fused SDPA)": (
            "fqt",
            dataclasses.replace(fqt, rules=(Rule.high_precision(op="attention.*", reason="fused SDPA"),)),
        ),
        # The default, with the quantizers feeding the Triton GEMMs generated by Inductor rather
        # than qcompile's Triton quantizer kernels (`inline_quantizers.INDUCTOR_QUANTIZERS_ON`).
        INDUCTOR_QUANTIZERS: ("fqt", fqt),
    }
    unknown = sorted((set(only or ()) | set(profile)) - set(configs))
    if unknown:
        raise ValueError(f"unknown block configurations {unknown}; valid: {list(configs)}")
    configs = {k: v for k, v in configs.items() if only is None or k in only}
    cuda = torch.device(device).type == "cuda"
    inline = importlib.import_module("qcompile.passes.post_aot.inline_quantizers")
    default_inline = inline.INDUCTOR_QUANTIZERS_ON
    try:
        for name, (backend, policy) in configs.items():
            # Read when the graphs compile (the first step below); restored below.
            inline.INDUCTOR_QUANTIZERS_ON = (
                (torch.device(device).type,) if name == INDUCTOR_QUANTIZERS else default_inline
            )
            torch._dynamo.reset()
            torch.manual_seed(0)
            model = Block(d, heads).to(device)
            opt = torch.optim.SGD(model.parameters(), lr=1e-4)
            options = {"policy": policy} if policy is not None else None
            cm = (
                torch.compile(model, backend=backend, options=options)
                if backend == "fqt"
                else torch.compile(model)
            )

            def step(cm=cm, opt=opt):
                with torch.autocast(torch.device(device).type, dtype=torch.bfloat16):
                    loss = cm(x).float().square().mean()
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)

            try:
                step()  # compile outside the timed region and the memory reading
                peak = None
                if cuda:
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                    step()
                    torch.cuda.synchronize()
                    peak = torch.cuda.max_memory_allocated() / 2**20
                ms = timer(step)
            except Exception as exc:  # report, do not hide: the JSON says this config failed and why
                rows.append({"config": name, "error": f"{type(exc).__name__}: {exc}"[:500]})
                continue
            row = {"config": name, "ms": ms, "gemm_tflops": tflops(gemm_flops, ms), "peak_mib": peak}
            if name in profile:
                row["profile"] = profile_step(step, device)
            if backend == "fqt":
                plan = qcompile.plan(cm)
                plan_text = str(plan)
                kernels = [k for r in plan for k in r.kernels().values()]
                row["gemms_on_triton"] = sum(k.startswith("triton") for k in kernels)
                row["gemms_total"] = len(kernels)
            rows.append(row)
    finally:  # the switch is module state: back to its default whatever happened
        inline.INDUCTOR_QUANTIZERS_ON = default_inline
    base = next((r for r in rows if r["config"].startswith("bf16") and "ms" in r), None)
    for r in rows:
        if base is not None and "ms" in r:
            r["speedup_vs_bf16_compile"] = base["ms"] / r["ms"]
    return rows, plan_text


def print_profile(config: str, prof: dict) -> None:
    """A profiled step's categories and top kernels, as tables."""
    from tabulate import tabulate

    total = prof["total_ms_per_step"]
    print(tabulate([[c, f"{ms:.3f}", f"{ms / total:.0%}"] for c, ms in prof["categories"].items()],
                   headers=[f"{config}: {prof['time']}", "ms/step", "share"]))  # fmt: skip
    print(tabulate([[k["name"][:70], k["category"], f"{k['ms_per_step']:.3f}", f"{k['calls_per_step']:g}"]
                    for k in prof["top_kernels"]], headers=["kernel", "category", "ms/step", "calls/step"]))  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="1024³ and 2048³ GEMMs, a 2×1024-token block")
    parser.add_argument("--sizes", default="", help="GEMM sizes M=N=K, comma-separated (overrides --quick's)")
    parser.add_argument(
        "--block-configs",
        default="",
        help="block-step configurations to run, ';'-separated names (default: all)",
    )
    parser.add_argument(
        "--profile",
        default=f"bf16 torch.compile;fqt luq-int4 (Triton int8 GEMMs);{INDUCTOR_QUANTIZERS}",
        help="block-step configurations to profile (kernel time by category), ';'-separated ('' for none)",
    )
    parser.add_argument("--no-quantizers", action="store_true", help="skip the quantizer-kernel section")
    parser.add_argument("--out", type=Path, default=RESULTS / "gpu_kernels.json")
    args = parser.parse_args(argv)
    only = tuple(c.strip() for c in args.block_configs.split(";") if c.strip()) or None
    profiled = tuple(
        c.strip() for c in args.profile.split(";") if c.strip() and (only is None or c.strip() in only)
    )
    problem = gpu_problem()
    if problem:
        print(
            f"gpu_kernels: SKIPPED, nothing measured: {problem}. This benchmark needs a CUDA GPU and Triton."
        )
        return NO_GPU_EXIT
    from tabulate import tabulate

    sizes = [int(n) for n in args.sizes.split(",") if n] or (
        [1024, 2048] if args.quick else [1024, 2048, 4096, 8192]
    )
    import triton

    data = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
        "python": platform.python_version(),
        "quick": args.quick,
        "sizes": sizes,
    }

    def save(**section) -> None:
        """Write what is measured so far (whole, by a rename): a time limit that cuts the run
        short keeps it."""
        data.update(section)
        args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = args.out.with_suffix(".json.partial")
        partial.write_text(json.dumps(data, indent=2))
        os.replace(partial, args.out)

    peak = int8_peak()
    print(f"measured int8 peak: {peak['tops']:.0f} TOP/s (torch._int_mm, M,K,N = {peak['shape']})")
    gemms = gemm_rows(sizes, peak)
    save(int8_peak=peak, gemms=gemms)
    print(tabulate([[r["size"], r["kernel"], f"{r['ms']:.3f}", f"{r['tflops']:.1f}", f"{r['vs_bf16']:.2f}x",
                     f"{r['vs_int_mm']:.2f}x", f"{r['of_int8_peak']:.0%}"] for r in gemms],
                   headers=["M=N=K", "kernel", "ms", "TFLOP/s", "vs bf16", "vs _int_mm", "of int8 peak"]))  # fmt: skip
    block, plan_text = block_rows(2 if args.quick else 8, 1024, only=only, profile=profiled)
    save(block_step=block, plan=plan_text)
    print(tabulate([[r["config"], f"{r['ms']:.2f}" if "ms" in r else r.get("error", ""),
                     f"{r.get('speedup_vs_bf16_compile', 0):.2f}x", f"{r.get('peak_mib') or 0:.0f}",
                     r.get("gemms_on_triton", "")] for r in block],
                   headers=["GPT-2-small block step", "ms", "vs bf16 compile", "peak MiB",
                            "GEMMs on triton"]))  # fmt: skip
    for r in block:
        if "profile" in r:
            print_profile(r["config"], r["profile"])
    if plan_text:
        print(plan_text)
    if not args.no_quantizers:
        quantizers = quantizer_rows()
        save(quantizers=quantizers)
        print(tabulate([[r["kernel"], f"{r['ms']:.3f}", f"{r['gb_per_s']:.0f}", f"{r['vs_eager']:.1f}x",
                         f"{r['vs_inductor']:.2f}x"] for r in quantizers],
                       headers=["quantizer kernel (8192×3072 bf16)", "ms", "GB/s", "vs eager ref",
                                "vs Inductor ref"]))  # fmt: skip
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
