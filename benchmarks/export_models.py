"""Export three real models to ONNX and MLIR and check the ONNX forward against ours.

python benchmarks/export_models.py [--out benchmarks/results/export_models.json]

Per model: export times (warm process, second export), node counts, how many forward quantizers
became standard QuantizeLinear nodes and how many backward quantizers are qcompile-domain
function calls, and ONNX Runtime's forward output against our forward graph run eagerly.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from tabulate import tabulate
from tqdm import tqdm

from qcompile.testing.export_models import MODELS, run_our_forward  # noqa: E402


def measure(name: str, workdir: Path) -> dict:
    import onnx
    import onnxruntime as ort

    import qcompile
    from qcompile.exporters.api import export_with_graphs

    model, inputs = MODELS[name]()
    export_with_graphs(model, inputs, workdir / f"{name}-warm", overwrite=True)
    start = time.perf_counter()
    result = export_with_graphs(model, inputs, workdir / name, overwrite=True)
    onnx_s = time.perf_counter() - start
    start = time.perf_counter()
    qcompile.export(model, inputs, workdir / f"{name}-mlir", format="mlir", overwrite=True)
    mlir_s = time.perf_counter() - start
    fw, bw = (onnx.load(str(result.path / f)) for f in ("forward.onnx", "backward.onnx"))
    manifest = json.loads((result.path / "manifest.json").read_text())["graphs"]
    session = ort.InferenceSession(str(result.path / "forward.onnx"), providers=["CPUExecutionProvider"])
    feed = {e["name"]: x.numpy() for e, x in zip(manifest["forward"]["inputs"], inputs, strict=True)}
    (out,) = session.run(["output_0"], feed)
    diff = float(np.abs(out - run_our_forward(result)["output_0"].numpy()).max())
    return {
        "model": name,
        "onnx_export_s": round(onnx_s, 2),
        "mlir_export_s": round(mlir_s, 2),
        "forward_nodes": len(fw.graph.node),
        "backward_nodes": len(bw.graph.node),
        "forward_quantize_linear": sum(n.op_type == "QuantizeLinear" for n in fw.graph.node),
        "backward_qcompile_calls": sum(n.domain == "qcompile" for n in bw.graph.node),
        "ort_vs_ours_max_abs_diff": diff,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="benchmarks/results/export_models.json")
    parser.add_argument("--models", default=",".join(MODELS), help=f"comma-separated, from {list(MODELS)}")
    args = parser.parse_args(argv)
    torch.manual_seed(0)
    with tempfile.TemporaryDirectory() as tmp:
        rows = [measure(name, Path(tmp)) for name in tqdm(args.models.split(","), desc="export")]
    print(tabulate(rows, headers="keys", tablefmt="github"))
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps({"torch": torch.__version__, "rows": rows}, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
