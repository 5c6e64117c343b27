"""``python -m qcompile``: plan a model without training it, list presets, run the demo.

python -m qcompile plan torchvision_like.models:resnet20 --input-shape 8,3,32,32 --policy luq
python -m qcompile export qcompile.testing.models:small_resnet --input-shape 8,3,32,32 --format onnx --out out/
python -m qcompile presets
python -m qcompile demo --epochs 4
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import sys
from pathlib import Path

import torch
from tabulate import tabulate


def _load_factory(target: str):
    """``package.module:factory`` or ``path/to/file.py:factory`` → the callable."""
    module_name, sep, attr = target.partition(":")
    if not sep or not attr:
        raise SystemExit(f"error: model must be given as module:factory, got {target!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise SystemExit(f"error: no such file {module_name!r}")
        spec = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(module)  # type: ignore[union-attr]
    else:
        sys.path.insert(0, str(Path.cwd()))
        try:
            module = importlib.import_module(module_name)
        except ImportError as e:
            raise SystemExit(f"error: cannot import {module_name!r}: {e}") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise SystemExit(f"error: {module_name!r} has no attribute {attr!r}") from None


def _shape(text: str) -> tuple[int, ...]:
    try:
        dims = tuple(int(d) for d in text.split(","))
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"input shape must be comma-separated integers, got {text!r}"
        ) from None
    if not dims or any(d < 0 for d in dims):
        raise argparse.ArgumentTypeError(f"input shape must be non-negative integers, got {text!r}")
    return dims


def _model_and_inputs(args: argparse.Namespace) -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """The model from ``module:factory`` and random example inputs of the given shapes."""
    factory = _load_factory(args.model)
    model = factory()
    if not isinstance(model, torch.nn.Module):
        raise SystemExit(f"error: {args.model} returned {type(model).__name__}, not an nn.Module")
    torch.manual_seed(args.seed)
    inputs = []
    for shape in args.input_shape:
        if args.int_input:
            inputs.append(torch.randint(0, args.int_input, shape))
        else:
            inputs.append(torch.randn(shape))
    model.train(not args.eval)
    return model, tuple(inputs)


def _cmd_plan(args: argparse.Namespace) -> int:
    import qcompile

    model, inputs = _model_and_inputs(args)
    try:
        plan = qcompile.plan(model, tuple(inputs), policy=args.policy, kernels=args.kernels)
    except qcompile.PolicyError as e:
        raise SystemExit(f"error: {e}") from None
    print(plan.to_json() if args.json else plan)
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    import qcompile

    model, inputs = _model_and_inputs(args)
    try:
        out = qcompile.export(
            model, inputs, args.out, format=args.format, policy=args.policy, overwrite=args.overwrite,
            graphs=args.graphs,
        )  # fmt: skip
    except (ValueError, FileExistsError, ImportError) as e:
        raise SystemExit(f"error: {e}") from None
    manifest = json.loads((out / "manifest.json").read_text())
    rows = []
    for kind, g in manifest["graphs"].items():
        for key, label in (
            ("file", "file"),
            ("torch_file", "torch dialect"),
            ("linalg_file", "linalg-on-tensors"),
        ):
            if g.get(key):
                rows.append([kind, label, str(out / g[key])])
    print(tabulate(rows, headers=["graph", "form", "path"]))
    print(f"manifest: {out / 'manifest.json'}")
    return 0


def _cmd_presets(args: argparse.Namespace) -> int:
    import qcompile

    rows = []
    for name, p in qcompile.presets().items():
        attention = p.decide("attention", "attention.qk")  # what attention's GEMMs get, rules applied
        rows.append([
            name, p.weight.to_string(), p.activation.to_string(), p.grad_dgrad.to_string(), p.grad_wgrad.to_string(),
            "fp32" if not attention.any_quantized else attention.activation.to_string(),
            p.hadamard.to_string() if p.hadamard is not None else "—", p.share_gradient_sample, p.keep_first_last,
        ])  # fmt: skip
    headers = ["preset", "weight", "activation", "grad_dgrad", "grad_wgrad", "attention", "hadamard", "shared dY",
               "keep first/last"]  # fmt: skip
    print(tabulate(rows, headers=headers))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m qcompile", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("plan", help="print the per-GEMM bit-width plan of a model without training it")
    p.add_argument("model", help="module:factory or file.py:factory returning an nn.Module")
    p.add_argument("--input-shape", type=_shape, action="append", required=True,
                   help="shape of one example input, e.g. 8,3,32,32 (repeat for several inputs)")  # fmt: skip
    p.add_argument("--int-input", type=int, default=0, metavar="HIGH",
                   help="make integer inputs in [0, HIGH) (token ids) instead of normal floats")  # fmt: skip
    p.add_argument("--policy", default=None, help="preset name or .toml/.json policy file (default luq-int4)")
    p.add_argument(
        "--kernels",
        default="auto",
        choices=("auto", "int8", "reference"),
        help="GEMM kernels: integer where they gain (auto), wherever the codes allow (int8), or float (reference)",
    )
    p.add_argument("--eval", action="store_true", help="plan the model in eval() mode")
    p.add_argument("--json", action="store_true", help="print the plan as JSON")
    p.add_argument("--seed", type=int, default=0)
    p.set_defaults(func=_cmd_plan)
    e = sub.add_parser("export", help="write the quantized forward and backward graphs to ONNX or MLIR")
    e.add_argument("model", help="module:factory or file.py:factory returning an nn.Module")
    e.add_argument("--input-shape", type=_shape, action="append", required=True,
                   help="shape of one example input, e.g. 8,3,32,32 (repeat for several inputs)")  # fmt: skip
    e.add_argument("--int-input", type=int, default=0, metavar="HIGH",
                   help="make integer inputs in [0, HIGH) (token ids) instead of normal floats")  # fmt: skip
    e.add_argument("--format", default="onnx", help="onnx or mlir (default onnx)")
    e.add_argument("--out", required=True, help="output directory (must not exist unless --overwrite)")
    e.add_argument("--overwrite", action="store_true", help="replace an existing output directory")
    e.add_argument("--policy", default=None, help="preset name or .toml/.json policy file (default luq-int4)")
    e.add_argument("--eval", action="store_true", help="export the model in eval() mode")
    e.add_argument("--graphs", default="training",
                   help="training (forward + backward) or inference (ONNX: eval forward, INT4 weights)")  # fmt: skip
    e.add_argument("--seed", type=int, default=0)
    e.set_defaults(func=_cmd_export)
    s = sub.add_parser("presets", help="list the named policies")
    s.set_defaults(func=_cmd_presets)
    sub.add_parser("demo", help="train FP32 and 4-bit side by side on the 8x8 digits (options: demo --help)")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["demo"]:  # everything after `demo` belongs to the demo's own parser
        from qcompile import demo

        rest = argv[1:]
        return demo.main(rest[1:] if rest[:1] == ["--"] else rest)
    args = build_parser().parse_args(argv)
    if args.command == "demo":  # `demo` given after global options: run with defaults
        from qcompile import demo

        return demo.main([])
    return args.func(args)
