"""Which forward GEMM of a transformer loses most to INT4, and which scale granularity fixes it.

    .venv/bin/python benchmarks/forward_error.py --checkpoint CKPT.pt --lm-d 128 --lm-layers 4 \\
        --lm-block 128 --lm-batch 32 [--json benchmarks/results/lm4/forward_error.json]

Loads a character GPT that `benchmarks/accuracy.py` trained (its per-epoch checkpoint, under
``~/.cache/qcompile/accuracy-checkpoints/``; the LM size arguments must match the run's), runs one
training batch through it in float32, and for every GEMM of every block measures the relative
output error ``‖Y_q − Y‖² / ‖Y‖²`` when its operands are quantized to INT4 by the reference
quantizers, one GEMM at a time (the others exact):

* linear layers (``qkv``, ``proj``, ``fc1``, ``fc2``): W SAWB per tensor with X SAWB per tensor (the
  default), X max per row, X SAWB per row; and W alone, X alone;
* the same linear layers under issue 19's formats and transforms: INT4 after a 16-point Hadamard
  along K (per tensor; X max per row), NVFP4 (W 16×16, X 1×16), MXFP4 with and without a 32-point
  Hadamard, MXFP8, FP8 per row;
* attention (``q·kᵀ``, ``p·v``): both operands SAWB per tensor, or max per row (per query for q and
  P, per key for kᵀ, per channel for v: `qcompile.Policy.attention`).

Eager, no compile: seconds. Prints a table and writes JSON.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path

import torch
import torch.nn.functional as F
from accuracy import build_parser as accuracy_parser  # noqa: E402
from accuracy import make_task  # noqa: E402
from tabulate import tabulate

from qcompile.runtime.ops.block_formats import FIXED_SIGNS_SEED
from qcompile.runtime.reference.block_scaled import block_quantize_reference
from qcompile.runtime.reference.hadamard import hadamard_reference, random_signs_reference
from qcompile.runtime.reference.int_quant import int_quantize_reference


def _q(x: torch.Tensor, scaling: str, signed: str, dims: list[int]) -> torch.Tensor:
    return int_quantize_reference(x, 4, scaling, signed, dims)


def _fp(x: torch.Tensor, spec: str, block2d: bool = False) -> torch.Tensor:
    """Block-scaled FP along the contraction (the last axis of X and of W)."""
    element, scaling, block = {
        "nvfp4": ("e2m1", "nv", [16, 16] if block2d else [16]), "mxfp4": ("e2m1", "mx", [32]),
        "mxfp8": ("e4m3", "mx", [32]), "fp8-row": ("e4m3", "max", [0]),
    }[spec]  # fmt: skip
    return block_quantize_reference(x, element, scaling, block, -1)


def _had(x: torch.Tensor, k: int) -> torch.Tensor:
    """The random Hadamard of ``qcompile.Policy(hadamard=...)`` along the contraction (fixed signs):
    applied to both X and W it leaves X·Wᵀ unchanged before quantization."""
    return hadamard_reference(x, -1, k, random_signs_reference(k, FIXED_SIGNS_SEED))


def relative_error(approx: torch.Tensor, exact: torch.Tensor) -> float:
    return float(((approx - exact) ** 2).sum() / (exact**2).sum())


LINEAR_SCHEMES: dict[str, Callable[[torch.Tensor, torch.Tensor], tuple[torch.Tensor, torch.Tensor]]] = {
    "W tensor, X tensor (default)": lambda x, w: (_q(x, "sawb", "auto", []), _q(w, "sawb", "signed", [])),
    "W tensor, X max per row": lambda x, w: (_q(x, "max", "auto", [-1]), _q(w, "sawb", "signed", [])),
    "W tensor, X sawb per row": lambda x, w: (_q(x, "sawb", "auto", [-1]), _q(w, "sawb", "signed", [])),
    "W only": lambda x, w: (x, _q(w, "sawb", "signed", [])),
    "X only (tensor)": lambda x, w: (_q(x, "sawb", "auto", []), w),
    # Issue 19's formats and transforms on the same GEMMs (block scales along K):
    "INT4 tensor + had16": lambda x, w: (_q(_had(x, 16), "sawb", "auto", []), _q(_had(w, 16), "sawb", "signed", [])),
    "INT4 + had16, X max per row": lambda x, w: (_q(_had(x, 16), "max", "auto", [-1]),
                                                 _q(_had(w, 16), "sawb", "signed", [])),
    "NVFP4": lambda x, w: (_fp(x, "nvfp4"), _fp(w, "nvfp4", block2d=True)),
    "MXFP4": lambda x, w: (_fp(x, "mxfp4"), _fp(w, "mxfp4")),
    "MXFP4 + had32": lambda x, w: (_fp(_had(x, 32), "mxfp4"), _fp(_had(w, 32), "mxfp4")),
    "MXFP8": lambda x, w: (_fp(x, "mxfp8"), _fp(w, "mxfp8")),
    "FP8 row": lambda x, w: (_fp(x, "fp8-row"), _fp(w, "fp8-row")),
}
ATTENTION_SCHEMES = {"tensor (sawb)": ("sawb", False), "max per row": ("max", True)}


def measure(model: torch.nn.Module, ids: torch.Tensor) -> dict[tuple[str, str], float]:
    """Relative output error per (GEMM, scheme) for one batch, block by block."""
    out: dict[tuple[str, str], float] = {}

    def linear(name: str, mod: torch.nn.Linear, x: torch.Tensor) -> torch.Tensor:
        exact = F.linear(x, mod.weight, mod.bias)
        for scheme, quant in LINEAR_SCHEMES.items():
            xq, wq = quant(x, mod.weight)
            out[(name, scheme)] = relative_error(F.linear(xq, wq, mod.bias), exact)
        return exact

    with torch.no_grad():
        h = model.embed(ids) + model.pos[: ids.shape[1]]
        for i, blk in enumerate(model.blocks):
            b, t, d = h.shape
            qkv = linear(f"{i}.qkv", blk.qkv, blk.ln1(h))
            q, k, v = (z.view(b, t, blk.heads, d // blk.heads).transpose(1, 2) for z in qkv.split(d, -1))
            scale = (d // blk.heads) ** -0.5
            causal = torch.ones(t, t, dtype=torch.bool).triu(1)
            scores = q @ k.transpose(-2, -1) * scale
            probs = scores.masked_fill(causal, float("-inf")).softmax(-1)
            attn = probs @ v
            for scheme, (scaling, per_row) in ATTENTION_SCHEMES.items():
                left, right = ([-1], [-2]) if per_row else ([], [])
                kt = k.transpose(-2, -1)
                qk = _q(q, scaling, "auto", left) @ _q(kt, scaling, "auto", right) * scale
                out[(f"{i}.q·kᵀ", scheme)] = relative_error(qk, scores)
                pv = _q(probs, scaling, "auto", left) @ _q(v, scaling, "auto", right)
                out[(f"{i}.p·v", scheme)] = relative_error(pv, attn)
            h = h + linear(f"{i}.proj", blk.proj, attn.transpose(1, 2).reshape(b, t, d))
            h = h + linear(f"{i}.fc2", blk.fc2, F.gelu(linear(f"{i}.fc1", blk.fc1, blk.ln2(h))))
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--checkpoint", type=Path, required=True, help="an accuracy.py checkpoint of the LM task")
    p.add_argument("--batches", type=int, default=2, help="training batches to average over")
    p.add_argument("--json", type=Path, default=None)
    args, rest = p.parse_known_args(argv)
    task = make_task("tinyshakespeare", accuracy_parser().parse_args(rest))
    state = torch.load(args.checkpoint, map_location="cpu", weights_only=False)
    model = task.make_model()
    model.load_state_dict({k: v for k, v in state["model"].items() if not k.startswith("qcompile_state")})
    batches = task.batches(0, 0)
    sums: dict[tuple[str, str], float] = {}
    for _ in range(args.batches):
        ids, _ = next(batches)
        for key, value in measure(model, ids).items():
            sums[key] = sums.get(key, 0.0) + value / args.batches
    gemms = list(dict.fromkeys(g for g, _ in sums))
    schemes = list(dict.fromkeys(s for _, s in sums))
    rows = [[g] + [f"{sums[(g, s)]:.4f}" if (g, s) in sums else "" for s in schemes] for g in gemms]
    print(f"relative output error ‖Y_q − Y‖²/‖Y‖², one GEMM at a time; checkpoint epoch {state['epoch']}")
    print(tabulate(rows, headers=["GEMM", *schemes], tablefmt="github"))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        payload = {"command": "python benchmarks/forward_error.py " + " ".join(sys.argv[1:] if argv is None else argv),
                   "checkpoint_epoch": state["epoch"], "model": task.model_name,
                   "errors": [{"gemm": g, "scheme": s, "relative_error": v} for (g, s), v in sums.items()]}  # fmt: skip
        args.json.write_text(json.dumps(payload, indent=1))
        print(f"written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
