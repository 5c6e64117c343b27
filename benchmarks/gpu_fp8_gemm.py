"""The Triton FP8 GEMM on a GPU: its accumulation error and its speed beside cuBLAS.

    python3 benchmarks/gpu_fp8_gemm.py [--sizes 4096,8192] [--imprecise 0,64,none] [--out gpu_fp8_gemm.json]

Needs a CUDA GPU with FP8 tensor cores (compute capability 8.9) and Triton; otherwise it prints
why and exits with status 2 (nothing measured).

1. Accuracy of the FP32 accumulation on the tensor cores for each ``max_num_imprecise_acc``
   (`triton_fp8_gemm`: 0, its default, moves every instruction's sum to FP32; ``none`` is
   Triton's default, which on sm_90 never does): on codes whose every partial sum is exact in FP32 (the
   unit test's ``_exact_codes``), how many elements differ from the float64 product; on codes of
   Gaussian data with a wide range, the largest error as a fraction of the FP32 summation bound
   ``K·2^-24·Σ|a||b|`` and of ``|exact|``.
2. Speed, M = N = K: BF16 ``torch.mm`` (cuBLAS), ``torch._scaled_mm`` with row scales (cuBLAS
   FP8, with and without ``use_fast_accum``), the Triton FP8 GEMM in the forward (X·Wᵀ), dgrad
   (dY·W) and wgrad (dYᵀ·X) layouts with its scale epilogue (the forward also for the other
   ``max_num_imprecise_acc`` values), and the Triton int8 GEMM (forward): milliseconds (Triton's
   ``do_bench`` median), TFLOP/s and the ratio over BF16.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys
from pathlib import Path

import torch

NO_GPU_EXIT = 2


def gpu_problem() -> str:
    """Why this benchmark cannot run here ('' when it can)."""
    if not torch.cuda.is_available():
        return "no CUDA device"
    if torch.cuda.get_device_capability() < (8, 9):
        return "no FP8 tensor cores (compute capability {}.{})".format(*torch.cuda.get_device_capability())
    try:
        import triton  # noqa: F401
    except ImportError:
        return "Triton is not installed"
    return ""


def exact_codes(shape, dtype, seed: int) -> torch.Tensor:
    """``±2^e·(1 + f)`` with ``e`` in -2..1, and ~10% zeros: FP32 sums of up to 1024 products exact."""
    g = torch.Generator().manual_seed(seed)
    mant = 3 if dtype == torch.float8_e4m3fn else 2
    frac = torch.randint(0, 2**mant, shape, generator=g) / 2**mant
    e = torch.randint(-2, 2, shape, generator=g).float()
    sign = torch.randint(0, 2, shape, generator=g) * 2 - 1
    return (sign * torch.exp2(e) * (1 + frac) * (torch.rand(shape, generator=g) > 0.1)).to(dtype)


def accuracy(imprecise: int | None = 0) -> dict:
    from qcompile.runtime.kernels.triton_fp8_gemm import fp8_mm
    from qcompile.runtime.reference.block_scaled import fp8_codes_reference

    out = {}
    for name, (m, n, k) in {"exact codes 512x512x1024": (512, 512, 1024)}.items():
        a, b = exact_codes((m, k), torch.float8_e4m3fn, 1), exact_codes((k, n), torch.float8_e4m3fn, 2)
        got = fp8_mm(a.cuda(), b.cuda(), max_num_imprecise_acc=imprecise).cpu().double()
        want = a.double() @ b.double()
        out[name] = {"differing elements": int((got != want).sum()), "of": m * n,
                     "max abs error": float((got - want).abs().max())}  # fmt: skip
    g = torch.Generator().manual_seed(3)
    for k in (256, 4096):
        m = n = 512
        x = torch.randn(m, k, generator=g) * torch.exp(torch.randn(m, k, generator=g) * 2)
        w = torch.randn(n, k, generator=g)
        cx, _ = fp8_codes_reference(x, "e4m3", [0], -1)
        cw, _ = fp8_codes_reference(w, "e4m3", [0], -1)
        got = fp8_mm(cx.cuda(), cw.cuda().t(), max_num_imprecise_acc=imprecise).cpu().double()
        exact = cx.double() @ cw.double().t()
        bound = k * 2**-24 * (cx.double().abs() @ cw.double().abs().t())
        err = (got - exact).abs()
        out[f"gaussian row-scaled codes 512x512x{k}"] = {
            "max error / fp32 summation bound": float((err / bound.clamp_min(1e-300)).max()),
            "max error / |exact|": float((err / exact.abs().clamp_min(1e-300)).max()),
            "median error / |exact|": float((err / exact.abs().clamp_min(1e-300)).median()),
        }
    return out


def speed(sizes: list[int], imprecise: list[int | None]) -> list[dict]:
    rows: list[dict] = []
    for s in sizes:
        rows += speed_at(s, imprecise)
    return rows


def speed_at(s: int, imprecise: list[int | None]) -> list[dict]:
    """Every GEMM of section 2 at ``M = N = K = s``."""
    from triton.testing import do_bench

    from qcompile.runtime.kernels.triton_fp8_gemm import fp8_mm
    from qcompile.runtime.kernels.triton_int8_gemm import int8_mm

    flops = 2.0 * s**3
    g = torch.Generator("cuda").manual_seed(0)
    xb, wb = (torch.randn(s, s, device="cuda", generator=g, dtype=torch.bfloat16) for _ in range(2))
    x8, w8 = xb.to(torch.float8_e4m3fn), wb.to(torch.float8_e4m3fn)
    dy8 = xb.to(torch.float8_e5m2)
    rs, cs = torch.rand(s, device="cuda") + 0.5, torch.rand(s, device="cuda") + 0.5
    xi, wi = (torch.randint(-7, 8, (s, s), device="cuda", dtype=torch.int8) for _ in range(2))
    calls = {
        "bf16 torch.mm": lambda: torch.mm(xb, wb.t()),
        "cuBLAS _scaled_mm fp8 rowwise": lambda: torch._scaled_mm(
            x8, w8.t(), rs[:, None], cs[None, :], out_dtype=torch.bfloat16),
        "cuBLAS _scaled_mm fp8 rowwise, fast accum": lambda: torch._scaled_mm(
            x8, w8.t(), rs[:, None], cs[None, :], out_dtype=torch.bfloat16, use_fast_accum=True),
        "triton fp8 forward X·Wᵀ": lambda: fp8_mm(x8, w8.t(), rs, cs, out_dtype=torch.bfloat16),
        "triton fp8 dgrad dY·W (e5m2 x e4m3)": lambda: fp8_mm(dy8, w8, rs, cs, out_dtype=torch.bfloat16),
        "triton fp8 wgrad dYᵀ·X (e5m2 x e4m3)": lambda: fp8_mm(dy8.t(), x8, rs, cs),
        "triton int8 forward X·Wᵀ": lambda: int8_mm(xi, wi.t(), rs, cs, out_dtype=torch.bfloat16),
    }  # fmt: skip
    for imp in imprecise:
        if imp != 0:
            calls[f"triton fp8 forward X·Wᵀ, max_num_imprecise_acc={imp}"] = functools.partial(
                fp8_mm, x8, w8.t(), rs, cs, out_dtype=torch.bfloat16, max_num_imprecise_acc=imp
            )
    rows, base = [], None
    for name, fn in calls.items():
        try:
            ms = float(do_bench(fn, warmup=25, rep=100, return_mode="median"))
        except Exception as exc:  # a cuBLAS path this build lacks: say so, keep measuring
            rows.append({"size": s, "gemm": name, "error": repr(exc)[:200]})
            print(f"{s:>6} {name:<44} failed: {exc!r}"[:160], flush=True)
            continue
        base = ms if name == "bf16 torch.mm" else base
        row = {
            "size": s,
            "gemm": name,
            "ms": ms,
            "tflops": flops / ms / 1e9,
            "over_bf16": base / ms if base else None,
        }
        rows.append(row)
        ratio = f"{row['over_bf16']:.2f}x bf16" if base else ""
        print(f"{s:>6} {name:<44} {ms:8.3f} ms {row['tflops']:8.1f} TFLOP/s {ratio}", flush=True)
    return rows


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="4096,8192")
    parser.add_argument(
        "--imprecise", default="0,64,none", help="max_num_imprecise_acc values; none: Triton's"
    )
    parser.add_argument("--out", type=Path, default=Path("gpu_fp8_gemm.json"))
    args = parser.parse_args(argv)
    problem = gpu_problem()
    if problem:
        print(f"SKIPPED gpu_fp8_gemm: {problem}")
        return NO_GPU_EXIT
    import triton

    result = {
        "device": torch.cuda.get_device_name(),
        "torch": torch.__version__,
        "triton": triton.__version__,
    }
    imprecise = [None if v == "none" else int(v) for v in args.imprecise.split(",")]
    result["accuracy"] = {f"max_num_imprecise_acc={v}": accuracy(v) for v in imprecise}
    print(json.dumps(result, indent=1), flush=True)
    args.out.write_text(json.dumps(result, indent=1))
    result["speed"] = speed([int(s) for s in args.sizes.split(",")], imprecise)
    args.out.write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
