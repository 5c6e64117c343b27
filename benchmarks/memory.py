"""Memory of one training step: FP32 ``torch.compile`` against ``fqt`` (packed, and unpacked).

Every (model, configuration, batch) runs in a fresh Python process, so no measurement sees
another's allocations. Each child compiles its model, trains two warm-up steps (compilation
happens there), then measures one step:

* ``step_peak``: the operating system's peak resident set during the step, above the resident
  set just before it (Linux ``VmHWM``, reset through ``/proc/self/clear_refs`` after warm-up);
* ``saved_rss``: resident set after the forward minus before it: what the forward left alive
  for backward (the loss is a scalar);
* ``saved_held``: bytes of the tensors the compiled forward really handed to autograd
  (``CompiledFunctionBackward.saved_tensors``), parameters and the input batch excluded,
  each storage counted once;
* ``saved_plan`` (fqt only): the plan's count, read from the compiled backward graph;
* ``maxrss``: ``ru_maxrss`` of the child from ``os.wait4``. Resetting ``VmHWM`` resets it too,
  so it is the absolute peak of the measured step (libraries, compiled code, parameters and
  optimizer state included): the kernel's own accounting of ``step_peak_abs``, a cross-check;
* ``step_seconds``: the median of three more steps, timed after the memory measurement (an
  indication of what recomputation costs; `cpu_perf.py` is the speed benchmark).

Configurations: ``fp32`` (``torch.compile``), ``fqt`` (the default ``luq-int4`` policy: packed,
``recompute="gemm"``), ``fqt-no-recompute`` (packed only) and ``fqt-unpacked``. ``--autocast bf16``
runs every configuration's step under CPU autocast, the mode GPU training uses.

Children run with glibc's mmap threshold fixed at 64 KiB (``MALLOC_MMAP_THRESHOLD_``), so every
tensor larger than that is its own mapping, returned to the OS when freed; without it glibc
keeps freed memory in its heap and RSS would not follow the live tensors.

``--budget-mib`` also finds the largest batch whose step stays within a memory budget: step
memory is affine in the batch (every activation and gradient of an activation scales with it,
parameters and code do not), so two measured batch sizes give the line, the budget gives the
batch, and one more fresh process at that batch checks it.

    python benchmarks/memory.py                # full sizes (~10 min on 2 cores)
    python benchmarks/memory.py --quick        # tiny sizes (smoke test)
    python benchmarks/memory.py --autocast bf16 --out benchmarks/results/memory_bf16.json
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
RESULTS = HERE / "results" / "memory.json"
# fqt: the default policy (packed, recompute="gemm"); fqt-no-recompute: packed only; fqt-unpacked: neither
# fqt-reference: the default policy with every GEMM a float simulation (kernels="reference"), the
# path whose backward rebuilds float X̂ and Ŵ; fqt runs the integer GEMMs where they gain (CPU).
CONFIGS = ("fp32", "fqt", "fqt-no-recompute", "fqt-unpacked", "fqt-reference")
MODELS = ("mlp", "convnet", "transformer")
# (full, quick) sizes and batch per model
SIZES = {
    "mlp": ({"width": 1024, "depth": 8, "inputs": 256, "batch": 1024},
            {"width": 64, "depth": 4, "inputs": 16, "batch": 16}),
    "convnet": ({"width": 32, "image": 32, "batch": 64},
                {"width": 8, "image": 8, "batch": 4}),
    "transformer": ({"d_model": 256, "layers": 4, "seq": 128, "batch": 32},
                    {"d_model": 32, "layers": 1, "seq": 8, "batch": 4}),
}  # fmt: skip


# ----------------------------------------------------------------------------- child process


def _status() -> dict[str, int]:
    """VmRSS and VmHWM of this process, in bytes."""
    out = {}
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(("VmRSS", "VmHWM")):
                key, value = line.split(":")
                out[key] = int(value.split()[0]) * 1024
    return out


def _reset_peak() -> None:
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")


def build(model: str, size: dict):
    import torch
    from torch import nn

    from qcompile.testing.models import SmallResNet

    if model == "mlp":
        layers: list[nn.Module] = []
        d = size["inputs"]
        for _ in range(size["depth"] - 1):
            layers += [nn.Linear(d, size["width"]), nn.ReLU()]
            d = size["width"]
        layers.append(nn.Linear(d, 10))
        net = nn.Sequential(*layers)

        def batch(n):
            return torch.randn(n, size["inputs"]), torch.randint(0, 10, (n,))

    elif model == "convnet":
        net = SmallResNet(width=size["width"])

        def batch(n):
            return torch.randn(n, 3, size["image"], size["image"]), torch.randint(0, 10, (n,))

    elif model == "transformer":
        net = TinyTransformer(size["d_model"], size["layers"])

        def batch(n):
            return torch.randint(0, 256, (n, size["seq"])), torch.randint(0, 10, (n,))

    else:
        raise ValueError(f"unknown model {model!r}; valid: {MODELS}")
    return net, batch


def _transformer_class():
    import torch
    from torch import nn

    class _TinyTransformer(nn.Module):
        """Token embedding, ``layers`` post-norm encoder layers (ReLU FFN), mean-pool classifier."""

        def __init__(self, d_model: int, layers: int) -> None:
            super().__init__()
            self.embed = nn.Embedding(256, d_model)
            layer = nn.TransformerEncoderLayer(d_model, 4, 4 * d_model, dropout=0.0, batch_first=True)
            self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
            self.head = nn.Linear(d_model, 10)

        def forward(self, tokens: torch.Tensor) -> torch.Tensor:
            return self.head(self.encoder(self.embed(tokens)).mean(1))

    return _TinyTransformer


def TinyTransformer(d_model: int, layers: int):  # noqa: N802 (a class factory)
    return _transformer_class()(d_model, layers)


def _held_saved_bytes(loss, exclude: set[int]) -> int:
    """Bytes of the storages the compiled forwards saved for backward (each storage once)."""
    seen: set[int] = set()
    total, stack, visited = 0, [loss.grad_fn], set()
    while stack:
        fn = stack.pop()
        if fn is None or fn in visited:
            continue
        visited.add(fn)
        if type(fn).__name__ == "CompiledFunctionBackward":
            for t in fn.saved_tensors:
                storage = t.untyped_storage()
                ptr = storage.data_ptr()
                if ptr not in exclude and ptr not in seen:
                    seen.add(ptr)
                    total += storage.nbytes()
        stack.extend(f for f, _ in fn.next_functions)
    return total


def child(model: str, config: str, batch_size: int, quick: bool, autocast: str = "none") -> dict:
    import contextlib

    import torch
    import torch.nn.functional as F

    import qcompile

    torch.manual_seed(0)
    size = SIZES[model][1 if quick else 0]
    net, make_batch = build(model, size)
    if config == "fp32":
        compiled = torch.compile(net)
    else:
        policy = qcompile.preset("luq-int4").replace(
            pack_saved=config != "fqt-unpacked",
            recompute="gemm" if config in ("fqt", "fqt-reference") else "none",
        )
        kernels = "reference" if config == "fqt-reference" else "auto"
        compiled = torch.compile(net, backend="fqt", options={"policy": policy, "kernels": kernels})
    opt = torch.optim.SGD(net.parameters(), lr=1e-3, momentum=0.9)
    x, y = make_batch(batch_size)

    def amp():
        if autocast == "none":
            return contextlib.nullcontext()
        return torch.autocast("cpu", dtype=getattr(torch, {"bf16": "bfloat16", "fp16": "float16"}[autocast]))

    def forward_loss():
        with amp():
            return F.cross_entropy(compiled(x).float(), y)

    def step():
        loss = forward_loss()
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(2):  # compile forward and backward, create the optimizer state
        step()
    import gc

    gc.collect()
    exclude = {p.untyped_storage().data_ptr() for p in net.parameters()} | {x.untyped_storage().data_ptr()}
    before = _status()["VmRSS"]
    _reset_peak()
    loss = forward_loss()
    after_forward = _status()["VmRSS"]
    held = _held_saved_bytes(loss, exclude)
    loss.backward()
    opt.step()
    opt.zero_grad(set_to_none=True)
    peak = _status()["VmHWM"]
    times = []
    for _ in range(3):  # after the memory measurement, so it does not disturb it
        start = time.perf_counter()
        step()
        times.append(time.perf_counter() - start)
    out = {
        "model": model,
        "config": config,
        "autocast": autocast,
        "batch": batch_size,
        "size": size,
        "rss_before_step": before,
        "step_peak": peak - before,
        "step_peak_abs": peak,
        "saved_rss": after_forward - before,
        "saved_held": held,
        "step_seconds": sorted(times)[1],
        "parameters": sum(p.numel() for p in net.parameters()),
    }
    if config != "fp32":
        out["saved_plan"] = qcompile.plan(compiled).memory()["saved_bytes"]
    return out


# ----------------------------------------------------------------------------- parent


def measure(model: str, config: str, batch: int, quick: bool, autocast: str = "none") -> dict:
    """One measurement in a fresh process, plus the child's ``ru_maxrss`` (from ``os.wait4``)."""
    import tempfile

    env = dict(os.environ, MALLOC_MMAP_THRESHOLD_="65536", MALLOC_TRIM_THRESHOLD_="65536")
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", model, config, str(batch)]
    if quick:
        cmd.append("--quick")
    cmd += ["--autocast", autocast]
    with tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, env=env, text=True)
        out = proc.stdout.read()
        proc.stdout.close()
        _, status, usage = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        if proc.returncode != 0:
            err.seek(0)
            raise RuntimeError(f"{model}/{config}/batch {batch} failed:\n{err.read()[-3000:]}")
    result = json.loads(out.strip().splitlines()[-1])
    result["maxrss"] = usage.ru_maxrss * 1024  # Linux reports KiB
    return result


def largest_batch(
    model: str, config: str, budget: int, batches: tuple[int, int], quick: bool, autocast: str = "none"
) -> dict:
    """Fit step memory = a + b·batch on two batches, solve for the budget, check it in a fresh run."""
    (b1, b2), runs = batches, [measure(model, config, b, quick, autocast) for b in batches]
    slope = (runs[1]["step_peak"] - runs[0]["step_peak"]) / (b2 - b1)
    fixed = runs[0]["step_peak"] - slope * b1
    predicted = int((budget - fixed) / slope) if slope > 0 else 0
    check = measure(model, config, predicted, quick, autocast) if predicted > 0 else None
    return {
        "model": model,
        "config": config,
        "budget": budget,
        "fit_batches": list(batches),
        "fit_step_peaks": [r["step_peak"] for r in runs],
        "bytes_per_sample": slope,
        "fixed_bytes": fixed,
        "largest_batch": predicted,
        "check_step_peak": check["step_peak"] if check else None,
        "check_within_budget": bool(check and check["step_peak"] <= budget),
    }


def _mib(n: float | None) -> str:
    return "-" if n is None else f"{n / 2**20:.2f}"


def _ratio(a: float, b: float) -> float | None:
    """a / b, or None when b is not positive (a tiny run below the measurement's resolution)."""
    return a / b if b > 0 else None


def _fmt(x: float | None) -> str:
    return "-" if x is None else f"{x:.3f}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny sizes (smoke test)")
    parser.add_argument("--models", default=",".join(MODELS))
    parser.add_argument("--configs", default=",".join(CONFIGS), help="fp32 and fqt are required")
    parser.add_argument("--out", default=str(RESULTS))
    parser.add_argument("--budget-mib", type=float, default=0.0, help="also find the largest batch (MLP)")
    parser.add_argument(
        "--autocast", choices=("none", "bf16", "fp16"), default="none",
        help="run every configuration's step under CPU autocast (default: float32)",
    )  # fmt: skip
    parser.add_argument("--child", nargs=3, metavar=("MODEL", "CONFIG", "BATCH"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        model, config, batch = args.child
        print(json.dumps(child(model, config, int(batch), args.quick, args.autocast)))
        return 0

    from tabulate import tabulate
    from tqdm import tqdm

    models = [m for m in args.models.split(",") if m]
    configs = [c for c in args.configs.split(",") if c]
    if not {"fp32", "fqt"} <= set(configs) or not set(configs) <= set(CONFIGS):
        raise SystemExit(f"--configs must include fp32 and fqt; valid: {CONFIGS}")
    jobs = [(m, c) for m in models for c in configs]
    runs: list[dict] = []
    start = time.time()
    for model, config in tqdm(jobs, desc="fresh processes"):
        batch = SIZES[model][1 if args.quick else 0]["batch"]
        runs.append(measure(model, config, batch, args.quick, args.autocast))
    table, ratios = [], []
    for model in models:
        r = {x["config"]: x for x in runs if x["model"] == model}
        fp, fq, un, nr = r["fp32"], r["fqt"], r.get("fqt-unpacked"), r.get("fqt-no-recompute")
        ref = r.get("fqt-reference")
        for config, x in r.items():
            table.append([model, config, x["batch"], _mib(x["saved_held"]), _mib(x.get("saved_plan")),
                          _mib(x["saved_rss"]), _mib(x["step_peak"]), _mib(x["maxrss"]),
                          f"{x['step_seconds'] * 1e3:.1f}"])  # fmt: skip
        ratios.append({
            "model": model,
            "saved_held_fqt_vs_fp32": _ratio(fq["saved_held"], fp["saved_held"]),
            "saved_rss_fqt_vs_fp32": _ratio(fq["saved_rss"], fp["saved_rss"]),
            "step_peak_fqt_vs_fp32": _ratio(fq["step_peak"], fp["step_peak"]),
            "maxrss_fqt_vs_fp32": _ratio(fq["maxrss"], fp["maxrss"]),
            "saved_held_packed_vs_unpacked": _ratio(fq["saved_held"], un["saved_held"]) if un else None,
            "saved_held_no_recompute_vs_fp32": _ratio(nr["saved_held"], fp["saved_held"]) if nr else None,
            "step_time_fqt_vs_fp32": _ratio(fq["step_seconds"], fp["step_seconds"]),
            "step_time_recompute_vs_not": _ratio(fq["step_seconds"], nr["step_seconds"]) if nr else None,
            "step_peak_reference_vs_fp32": _ratio(ref["step_peak"], fp["step_peak"]) if ref else None,
        })  # fmt: skip
    headers = ["model", "config", "batch", "saved held MiB", "saved (plan) MiB", "saved RSS MiB",
               "step peak MiB", "ru_maxrss MiB", "step ms"]  # fmt: skip
    print(tabulate(table, headers=headers, tablefmt="simple"))
    print()
    print(tabulate(
        [[x["model"]] + [_fmt(x[k]) for k in ("saved_held_fqt_vs_fp32", "saved_held_no_recompute_vs_fp32",
          "saved_rss_fqt_vs_fp32", "step_peak_fqt_vs_fp32", "maxrss_fqt_vs_fp32", "saved_held_packed_vs_unpacked",
          "step_time_fqt_vs_fp32", "step_time_recompute_vs_not", "step_peak_reference_vs_fp32")] for x in ratios],
        headers=["model", "saved held fqt/fp32", "(no recompute)", "saved RSS fqt/fp32", "step peak fqt/fp32",
                 "ru_maxrss fqt/fp32", "saved fqt/unpacked", "step time fqt/fp32", "recompute/not",
                 "step peak fqt reference/fp32"],
        tablefmt="simple",
    ))  # fmt: skip
    budget_runs = []
    if args.budget_mib > 0:
        budget = int(args.budget_mib * 2**20)
        base = SIZES["mlp"][1 if args.quick else 0]["batch"]
        for config in tqdm(("fp32", "fqt"), desc="largest batch"):
            budget_runs.append(
                largest_batch("mlp", config, budget, (base, 2 * base), args.quick, args.autocast)
            )
        print()
        print(tabulate(
            [[b["config"], _mib(b["budget"]), f"{b['bytes_per_sample'] / 1024:.1f}", b["largest_batch"],
              _mib(b["check_step_peak"]), b["check_within_budget"]] for b in budget_runs],
            headers=["mlp config", "budget MiB", "KiB/sample", "largest batch", "step peak there MiB", "fits"],
            tablefmt="simple",
        ))  # fmt: skip
        if len(budget_runs) == 2 and budget_runs[0]["largest_batch"]:
            print(
                f"fqt fits {budget_runs[1]['largest_batch'] / budget_runs[0]['largest_batch']:.2f}x the batch"
            )
    out = {
        "quick": args.quick,
        "autocast": args.autocast,
        "seconds": round(time.time() - start, 1),
        "torch": __import__("torch").__version__,
        "method": "fresh process per run; step_peak = VmHWM - VmRSS before the step (peak reset via "
        "/proc/self/clear_refs); maxrss = ru_maxrss from os.wait4 (peak since that reset, absolute); "
        "MALLOC_MMAP_THRESHOLD_=65536",
        "runs": runs,
        "ratios": ratios,
        "largest_batch": budget_runs,
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(out, indent=2))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
