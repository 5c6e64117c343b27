"""Every Triton kernel compiles for Hopper (sm_90), as a GPU run would launch it, without a GPU.

`benchmarks/gpu_compile_report.py` runs the kernel wrappers with their GPU tile sizes and the
GEMM's full autotuning list through a compile-only Triton driver: Triton's NVIDIA backend and
``ptxas`` build real cubins for sm_90. It runs in a subprocess because this test session runs
Triton's interpreter (``TRITON_INTERPRET=1``), which replaces the compiler.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
KERNELS = {
    "_int8_mm_kernel",
    "_fp8_mm_kernel",
    "_packed_mm_kernel",
    "_pack_kernel",
    "_int_quantize_kernel",
    "_luq_quantize_kernel",
    "_group_stats_kernel",
}
# The K-major wgrad launch (operands copied K-major, float32 out) is the K-major dgrad's
# specialisation, already compiled, so it adds no kernel of its own.
GEMM_LAYOUTS = {
    "forward X·Wᵀ + bias", "forward X·Wᵀ", "dgrad dY·W", "dgrad dY·W, strided", "wgrad dYᵀ·X, strided",
}  # fmt: skip
PACKED_LAYOUTS = {"packed X·Wᵀ", "packed dgrad dY·W", "packed wgrad dYᵀ·X", "packed wgrad, plain dYᵀ"}
# As for int8: the K-major FP8 wgrad launch is the K-major dgrad's build (E5M2 × E4M3 both).
FP8_LAYOUTS = {"fp8 forward X·Wᵀ + bias", "fp8 dgrad dY·W", "fp8 dgrad dY·W, strided", "fp8 wgrad dYᵀ·X, strided"}


@pytest.fixture(scope="module")
def sm90(tmp_path_factory):
    triton = pytest.importorskip("triton")
    if not (Path(triton.__file__).parent / "backends" / "nvidia" / "bin" / "ptxas").exists():
        pytest.skip("this Triton build ships no ptxas")
    sys.path.insert(0, str(ROOT / "benchmarks"))
    from gpu_compile_report import CHECKED_TRITON

    if not triton.__version__.startswith(CHECKED_TRITON + "."):
        pytest.skip(
            f"the compile-only driver is written for Triton {CHECKED_TRITON}.x, not {triton.__version__}"
        )
    tmp = tmp_path_factory.mktemp("gpu_compile")
    out = tmp / "sm90.json"
    # A fresh kernel cache (every config compiled here, none read back; no write to $HOME).
    drop = ("TRITON_INTERPRET", "TRITON_CACHE_AUTOTUNING")
    env = {k: v for k, v in os.environ.items() if k not in drop} | {"TRITON_CACHE_DIR": str(tmp / "cache")}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "gpu_compile_report.py"), "--arch", "90", "--out", str(out)],
        env=env, cwd=ROOT, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-4000:]
    return json.loads(out.read_text())["kernels"]


def test_every_kernel_compiles_within_the_devices_budget(sm90):
    assert {k["name"] for k in sm90} == KERNELS
    for k in sm90:
        assert k["fits"], k  # shared memory within the 227 KiB an sm_90 block may use
        assert k["spill_bytes"] == 0, k  # no register spills to local memory
        assert 0 < k["registers"] <= 255, k


def test_the_gemms_use_tensor_cores_in_every_layout_and_tuning_config(sm90):
    gemms = [k for k in sm90 if k["name"] == "_int8_mm_kernel"]
    assert {k["call"] for k in gemms} == GEMM_LAYOUTS
    for layout in GEMM_LAYOUTS:
        configs = [k for k in gemms if k["call"] == layout]
        assert len(configs) == 8, configs  # the whole autotuning list, each compiled once
        for k in configs:
            wide = "BLOCK_M=32" not in k["constants"]  # a warpgroup MMA needs 64 rows
            assert k["tensor_core"] == ("wgmma" if wide else "mma"), k
    packed = {k["call"]: k for k in sm90 if k["name"] == "_packed_mm_kernel"}
    assert set(packed) == PACKED_LAYOUTS  # every branch of the operand loader compiled
    assert all(k["tensor_core"] == "wgmma" for k in packed.values()), packed


def test_the_forward_gemm_is_software_pipelined(sm90):
    """Shared memory holds several K-slices of both tiles at once (loads overlap the MMAs): the
    pipelining that needs the launch's alignment and stride specialisation to have applied."""
    for k in sm90:
        if k["call"] != "forward X·Wᵀ":
            continue
        c = dict(kv.split("=") for kv in k["constants"].split(","))
        stage = int(c["BLOCK_K"]) * (int(c["BLOCK_M"]) + int(c["BLOCK_N"]))  # int8 A and B tiles
        assert k["shared_bytes"] >= 2 * stage, k


def test_the_fp8_gemm_builds_in_every_layout_on_tensor_cores(sm90):
    """Every layout and tile of the FP8 GEMM's autotuning list builds without spills (checked
    above for every kernel) on tensor cores. With its default exact FP32 accumulation
    (``max_num_imprecise_acc=0``) Triton 3.9 builds it as FP16 MMAs (``HMMA``) on the FP8 values
    widened in registers, not as FP8 warpgroup MMAs (``QGMMA``), which it emits only when partial
    sums may stay in the tensor cores' reduced-precision accumulator (docs/kernels.md)."""
    gemms = [k for k in sm90 if k["name"] == "_fp8_mm_kernel"]
    assert {k["call"] for k in gemms} == FP8_LAYOUTS
    for layout in FP8_LAYOUTS:
        configs = [k for k in gemms if k["call"] == layout]
        assert len(configs) == 5, configs  # the int8 list less the tiles that spill here
        assert all(k["tensor_core"] and k["mma_ops"] for k in configs), configs
