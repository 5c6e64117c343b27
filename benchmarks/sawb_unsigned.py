"""Unsigned INT4 SAWB: our step ``clip/15`` against the LUQ authors' ``2·clip/15``, by MSE.

    .venv/bin/python benchmarks/sawb_unsigned.py [--json benchmarks/results/sawb_unsigned.json]

For a group with no negative value (after a ReLU, a softmax) qcompile uses the codes 0..15 on
``[0, clip]``: step ``clip/15``. The LUQ authors' code uses step ``2·clip/15`` (range
``[0, 2·clip]``). The SAWB clip comes from coefficients fitted for symmetric data, so which range
is right is an empirical question. This measures the relative quantization error
``E[(x̂ − x)²] / E[x²]`` of both on the non-negative tensors training really quantizes, per tensor
(the default granularity) and seeded, plus max scaling (``clip = max x``) per tensor and per row
(the last axis: the contraction axis of ``p·v``) for reference.
"""

from __future__ import annotations

import argparse
import json
import platform
from collections.abc import Callable
from pathlib import Path

import torch
from tabulate import tabulate

from qcompile.runtime.reference.int_quant import int_clip, int_codes_for_clip

RESULTS = Path(__file__).resolve().parent / "results"


def _laplace(shape: tuple[int, ...], gen: torch.Generator) -> torch.Tensor:
    u = torch.rand(shape, generator=gen) - 0.5
    return -u.sign() * torch.log1p(-2 * u.abs())


def _softmax_rows(scale: float) -> Callable[[torch.Generator], torch.Tensor]:
    """Causal attention probabilities P (batch 8, 4 heads, 128 positions) from N(0, scale²)
    scores: the ``p·v`` GEMM's left operand."""

    def make(gen: torch.Generator) -> torch.Tensor:
        t = 128
        scores = scale * torch.randn(8, 4, t, t, generator=gen)
        mask = torch.ones(t, t, dtype=torch.bool).triu(1)
        return scores.masked_fill(mask, float("-inf")).softmax(-1)

    return make


TENSORS: dict[str, Callable[[torch.Generator], torch.Tensor]] = {
    "relu(gaussian) 256x1024": lambda g: torch.randn(256, 1024, generator=g).relu(),
    "relu(laplace) 256x1024": lambda g: _laplace((256, 1024), g).relu(),
    "relu(gaussian + 0.5) 256x1024": lambda g: (torch.randn(256, 1024, generator=g) + 0.5).relu(),
    "softmax P, scores N(0,1)": _softmax_rows(1.0),
    "softmax P, scores N(0,3²)": _softmax_rows(3.0),
}


def relative_mse(x: torch.Tensor, clip: torch.Tensor) -> float:
    """``E[(x̂ − x)²] / E[x²]`` of unsigned INT4 round-to-nearest on ``[0, clip]``."""
    q = int_codes_for_clip(x, clip, 15.0, 4, "unsigned")
    xhat = q * (clip / 15.0)
    return float(((xhat - x) ** 2).mean() / (x**2).mean())


def measure(seeds: int) -> list[dict[str, object]]:
    rows = []
    for name, make in TENSORS.items():
        ours, authors, amax, rows_max = [], [], [], []
        for seed in range(seeds):
            x = make(torch.Generator().manual_seed(seed)).float()
            clip = int_clip(x, "sawb", ())
            ours.append(relative_mse(x, clip))
            authors.append(relative_mse(x, 2 * clip))
            amax.append(relative_mse(x, x.max()))
            rows_max.append(relative_mse(x, x.amax(-1, keepdim=True)))
        mean = lambda v: sum(v) / len(v)  # noqa: E731
        rows.append({"tensor": name, "ours_clip_over_15": mean(ours), "authors_2clip_over_15": mean(authors),
                     "max_scaling": mean(amax), "max_per_row": mean(rows_max),
                     "authors_over_ours": mean(authors) / mean(ours)})  # fmt: skip
    return rows


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, default=4)
    p.add_argument("--json", type=Path, default=RESULTS / "sawb_unsigned.json")
    args = p.parse_args(argv)
    rows = measure(args.seeds)
    table = [[r["tensor"], f"{r['ours_clip_over_15']:.4f}", f"{r['authors_2clip_over_15']:.4f}",
              f"{r['max_scaling']:.4f}", f"{r['max_per_row']:.4f}", f"{r['authors_over_ours']:.2f}×"]
             for r in rows]  # fmt: skip
    headers = ["non-negative tensor", "ours: clip/15", "authors: 2·clip/15", "max/15", "row max/15", "authors / ours"]
    print("relative MSE E[(x̂−x)²]/E[x²], unsigned INT4 SAWB, round to nearest, mean over seeds")
    print(tabulate(table, headers=headers, tablefmt="github"))
    args.json.parent.mkdir(parents=True, exist_ok=True)
    payload = {"command": "python benchmarks/sawb_unsigned.py " + " ".join(argv or []), "seeds": args.seeds,
               "torch": torch.__version__, "machine": platform.machine(), "rows": rows}  # fmt: skip
    args.json.write_text(json.dumps(payload, indent=1))
    print(f"\nwritten to {args.json}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
