"""Compile every Triton kernel for a GPU that is not here, as a GPU run would launch it.

    .venv/bin/python benchmarks/gpu_compile_report.py            # sm_90 (H100/H200)
    .venv/bin/python benchmarks/gpu_compile_report.py --arch 80  # sm_80 (A100)

Without a GPU the kernels can still be compiled: Triton's NVIDIA backend lowers them to PTX and
``ptxas`` (shipped with Triton) assembles the cubin for the chosen architecture. A stand-in Triton
driver (`CompileOnlyDriver`) makes this happen through the real launch path: the Python wrappers
(`int8_mm`, `packed_mm`, `pack_codes`, `int_quantize_codes`, `luq_quantize_codes`,
`group_stats`) run on CPU tensors with their GPU tile sizes (`triton_support.gpu_tiles`), the
GEMM's autotuner compiles every config, and the launches themselves do nothing.

For each compiled kernel it reports what the device would be asked for: shared memory (against the
architecture's limit), registers per thread and spills (from ``cuobjdump`` on the cubin), warps,
pipeline stages, and whether the GEMMs use tensor cores (``wgmma`` on sm_90, ``mma`` otherwise).
This proves the kernels build for the target and fit it; it measures no speed (`gpu_kernels.py`
does, on a GPU). Writes ``benchmarks/results/gpu_compile_sm<arch>.json``. Must run without
``TRITON_INTERPRET`` (the interpreter replaces the compiler).
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import re
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

RESULTS = Path(__file__).parent / "results"
# The stand-in driver speaks to Triton internals (driver slots, launcher and load_binary
# signatures, the autotuner's benchmarker) as they are in this release.
CHECKED_TRITON = "3.9"
# Shared memory a block may use (opt-in maximum), bytes, and SM count, per architecture.
DEVICES = {90: ("H100/H200 (sm_90)", 232448, 132), 80: ("A100 (sm_80)", 166912, 108)}


@dataclass
class CompiledKernel:
    call: str  # the wrapper call that launched it
    name: str
    constants: str
    num_warps: int
    num_stages: int
    shared_bytes: int
    registers: int = -1
    spill_bytes: int = -1
    tensor_core: str = ""
    mma_ops: str = ""  # the MMA opcodes in the SASS (QGMMA: FP8 operands on the tensor cores)
    fits: bool = True


class CompileOnlyDriver:
    """A Triton driver for an absent GPU: compiles for ``GPUTarget("cuda", arch, 32)``, records
    each kernel it would load, launches nothing, and times every autotuning config as equal."""

    def __init__(self, arch: int) -> None:
        from types import SimpleNamespace

        from triton.backends.compiler import GPUTarget

        _, self.max_shared, sms = DEVICES[arch]
        self.arch = arch
        self.target = GPUTarget("cuda", arch, 32)
        self.kernels: list[CompiledKernel] = []
        self.call = ""  # set by the caller before each wrapper call
        props = {"max_shared_mem": self.max_shared, "multiprocessor_count": sms, "max_num_regs": 65536,
                 "warpSize": 32}  # fmt: skip
        self.utils = SimpleNamespace(
            load_binary=self._load_binary,
            get_device_properties=lambda device: props,
            unload_module=lambda m: None,
        )

    # What JITFunction.run / CompiledKernel._init_handles / Autotuner ask of a driver.
    def get_current_device(self) -> int:
        return 0

    def get_current_stream(self, device: int | None = None) -> int:
        return 0

    def get_current_target(self):
        return self.target

    def get_benchmarker(self):
        def bench(kernel_call, quantiles=None, **_):
            kernel_call()  # compiles the config and "launches" it
            return [1.0] * len(quantiles) if quantiles else 1.0

        return bench

    def launcher_cls(self, src, metadata):
        consts = {
            src.fn.arg_names[k[0]]: v for k, v in src.constants.items() if src.fn.arg_names[k[0]].isupper()
        }
        self.kernels.append(
            CompiledKernel(
                self.call, src.name, ",".join(f"{k}={v}" for k, v in sorted(consts.items())), metadata.num_warps,
                metadata.num_stages, metadata.shared, fits=metadata.shared <= self.max_shared,
            )
        )  # fmt: skip
        self._pending = self.kernels[-1]
        return lambda *args, **kwargs: None

    def _load_binary(self, name, cubin, shared, device):
        k = self._pending
        k.registers, k.spill_bytes = _resource_usage(cubin)
        sass = _disassemble(cubin)
        # SASS opcodes: HGMMA/IGMMA/QGMMA (FP16-BF16 / int8 / FP8 warpgroup MMA, sm_90), HMMA/IMMA/QMMA.
        k.mma_ops = ",".join(sorted(set(re.findall(r"\b([HIQ]G?MMA)\b", sass))))
        k.tensor_core = "wgmma" if "GMMA" in k.mma_ops else "mma" if k.mma_ops else ""
        return "compile-only", None, k.registers, k.spill_bytes, 1024  # a module: loaded once


def _tool(name: str) -> str:
    import triton

    return str(Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / name)


def _with_cubin(cubin: bytes, args: list[str]) -> str:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        return subprocess.run([*args, f.name], capture_output=True, text=True, check=True).stdout


def _resource_usage(cubin: bytes) -> tuple[int, int]:
    """(registers per thread, bytes per thread spilled to the stack or local memory), from
    ``cuobjdump``. A kernel whose registers do not fit gets a stack frame (seen: ``REG:32
    STACK:5440``), so both count as spills."""
    out = _with_cubin(cubin, [_tool("cuobjdump"), "--dump-resource-usage"])
    reg = re.search(r"REG:(\d+)", out)
    spill = sum(int(m) for m in re.findall(r"(?:STACK|LOCAL):(\d+)", out))
    return int(reg.group(1)) if reg else -1, spill


def _disassemble(cubin: bytes) -> str:
    return _with_cubin(cubin, [_tool("cuobjdump"), "--dump-sass"])


def compile_all(arch: int, n: int = 1024) -> list[CompiledKernel]:
    """Run every kernel wrapper once on CPU tensors as if on an sm_``arch`` GPU: forward, dgrad and
    wgrad layouts of the int8 GEMM (all autotuning configs, with and without bias) and, from sm_89
    on (FP8 tensor cores), of the FP8 GEMM, the packed GEMM, the quantizers (per tensor, per row,
    per column; nearest and stochastic; writing packed codes too) and packing."""
    import triton

    from qcompile.runtime.kernels import triton_support
    from qcompile.runtime.kernels.triton_fp8_gemm import fp8_mm
    from qcompile.runtime.kernels.triton_int8_gemm import dgrad_gemm, forward_gemm, wgrad_gemm
    from qcompile.runtime.kernels.triton_int_quantize import int_quantize_codes
    from qcompile.runtime.kernels.triton_luq_quantize import luq_quantize_codes
    from qcompile.runtime.kernels.triton_pack_int4 import pack_codes, packed_mm

    if triton_support.interpreting():
        raise RuntimeError("gpu_compile_report: unset TRITON_INTERPRET (the interpreter compiles nothing)")
    if not triton.__version__.startswith(CHECKED_TRITON + "."):
        raise RuntimeError(
            f"gpu_compile_report: written against Triton {CHECKED_TRITON}.x internals, found {triton.__version__}"
        )
    drv = CompileOnlyDriver(arch)
    previous = triton.runtime.driver._active  # None on a machine without a GPU driver
    triton.runtime.driver.set_active(drv)
    gpu_tiles = triton_support.gpu_tiles
    triton_support.gpu_tiles = lambda device: True
    try:
        g = torch.Generator().manual_seed(0)
        a8 = torch.randint(-64, 65, (n, n), dtype=torch.int8, generator=g)
        w8 = torch.randint(-7, 8, (n, n), dtype=torch.int8, generator=g)
        rs, cs, bias = torch.rand(n) + 0.5, torch.rand(n) + 0.5, torch.randn(n, dtype=torch.bfloat16)
        x = torch.randn(n, n, generator=g)
        calls = {
            "forward X·Wᵀ + bias": lambda: forward_gemm(a8, w8, rs, cs, bias, out_dtype=torch.bfloat16),
            "forward X·Wᵀ": lambda: forward_gemm(a8, w8, rs, cs, out_dtype=torch.bfloat16),
            # The backward layouts as launched on a GPU (MN-major operands copied K-major) and
            # read through their strides (k_major=False, the benchmark's comparison rows).
            "dgrad dY·W": lambda: dgrad_gemm(a8, w8, rs, cs, out_dtype=torch.float32),
            "wgrad dYᵀ·X": lambda: wgrad_gemm(a8, w8, rs, cs, out_dtype=torch.float32),
            "dgrad dY·W, strided": lambda: dgrad_gemm(a8, w8, rs, cs, k_major=False),
            "wgrad dYᵀ·X, strided": lambda: wgrad_gemm(a8, w8, rs, cs, k_major=False),
            "pack int4": lambda: pack_codes(w8),
            "packed X·Wᵀ": lambda: packed_mm(pack_codes(a8.clamp(-7, 7)), pack_codes(w8).t(), rs, cs,
                                            out_dtype=torch.bfloat16),
            # dgrad reads W packed along its GEMM's N axis, wgrad dYᵀ packed along its M axis, and
            # a plain int8 operand beside a packed one (Triton 3.6 on an H200 failed to compile
            # that last branch combination; 3.9 compiled it).
            "packed dgrad dY·W": lambda: packed_mm(pack_codes(w8), pack_codes(w8), rs, cs),
            "packed wgrad dYᵀ·X": lambda: packed_mm(pack_codes(w8).t(), pack_codes(w8), rs, cs),
            "packed wgrad, plain dYᵀ": lambda: packed_mm(w8.t(), pack_codes(w8), rs, cs),
        }  # fmt: skip
        for dims, axis in (([], "tensor"), ([1], "row"), ([0], "column")):
            # The fused forward's quantizer writes codes and saved nibbles together (pack=True).
            calls[f"int4 sawb auto packed per {axis}"] = lambda d=dims: int_quantize_codes(
                x, 4, "sawb", "auto", d, False, pack=True
            )
            calls[f"int4 stochastic bf16 per {axis}"] = lambda d=dims: int_quantize_codes(
                x.bfloat16(), 4, "max", "signed", d, True
            )
            calls[f"luq4 per {axis}"] = lambda d=dims: luq_quantize_codes(x, 4, d)
        calls["luq4 packed per row"] = lambda: luq_quantize_codes(x, 4, [1], pack=True)
        if arch >= 89:  # E4M3 needs FP8 tensor cores; dY in E5M2 (mixed formats) for dgrad/wgrad
            fx, fw, fdy = x.to(torch.float8_e4m3fn), w8.to(torch.float8_e4m3fn), x.to(torch.float8_e5m2)
            calls["fp8 forward X·Wᵀ + bias"] = lambda: fp8_mm(
                fx, fw.t(), rs, cs, bias, out_dtype=torch.bfloat16
            )
            calls["fp8 dgrad dY·W"] = lambda: fp8_mm(fdy, fw, rs, cs)
            calls["fp8 wgrad dYᵀ·X"] = lambda: fp8_mm(fdy.t(), fx, rs, cs)  # = the dgrad's build
            calls["fp8 dgrad dY·W, strided"] = lambda: fp8_mm(fdy, fw, rs, cs, k_major=False)
            calls["fp8 wgrad dYᵀ·X, strided"] = lambda: fp8_mm(fdy.t(), fx, rs, cs, k_major=False)
        for name, call in calls.items():
            drv.call = name
            call()
    finally:
        triton_support.gpu_tiles = gpu_tiles
        _forget_compiled_kernels()  # while the stand-in is active: it unloads its kernels
        gc.collect()
        triton.runtime.driver._active = previous
    return drv.kernels


def _forget_compiled_kernels() -> None:
    """Drop what the stand-in driver left in the kernels' caches (compiled-only kernels with no-op
    launchers, the autotuners' equal timings and benchmarker), so a later launch in this process
    compiles and tunes for the real device."""
    from triton.runtime.autotuner import Autotuner
    from triton.runtime.jit import JITFunction

    from qcompile.runtime.kernels import (
        triton_fp8_gemm,
        triton_int8_gemm,
        triton_int_quantize,
        triton_luq_quantize,
        triton_pack_int4,
        triton_reductions,
    )

    modules = (
        triton_fp8_gemm,
        triton_int8_gemm,
        triton_int_quantize,
        triton_luq_quantize,
        triton_pack_int4,
        triton_reductions,
    )
    for obj in (v for m in modules for v in vars(m).values()):
        if isinstance(obj, Autotuner):
            obj.cache.clear()
            obj.__dict__.pop("do_bench", None)  # a cached_property: the stand-in's benchmarker
        if isinstance(obj, JITFunction):
            obj.device_caches.clear()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--arch", type=int, default=90, choices=sorted(DEVICES))
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args(argv)
    from tabulate import tabulate

    kernels = compile_all(args.arch)
    print(
        f"compiled for {DEVICES[args.arch][0]} without a GPU (shared memory limit {DEVICES[args.arch][1]} B)"
    )
    print(tabulate([[k.call, k.name, k.constants, k.num_warps, k.num_stages, k.shared_bytes, k.registers, k.spill_bytes,
                     f"{k.tensor_core} ({k.mma_ops})" if k.tensor_core else "-", "yes" if k.fits else "NO"]
                    for k in kernels],
                   headers=["call", "kernel", "constants", "warps", "stages", "shared B", "regs", "spill B",
                            "tensor cores", "fits"]))  # fmt: skip
    import triton

    out = args.out or RESULTS / f"gpu_compile_sm{args.arch}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    data = {"arch": args.arch, "device": DEVICES[args.arch][0], "triton": triton.__version__,
            "torch": torch.__version__, "kernels": [asdict(k) for k in kernels]}  # fmt: skip
    out.write_text(json.dumps(data, indent=2))
    print(f"wrote {out}")
    return 0 if all(k.fits and k.spill_bytes == 0 for k in kernels) else 1


if __name__ == "__main__":
    os.environ.setdefault("TRITON_DEFAULT_FP_FUSION", "1")
    sys.exit(main())
