"""`qcompile.export`: write a model's quantized *training* graphs (forward and backward) to ONNX or MLIR.

torch.onnx cannot export a backward graph, and ONNX Runtime's training path is retired; the
`fqt` backend already holds both graphs AOTAutograd made, with every quantizer explicit
(forward INT4 in front of each GEMM, LUQ in front of each backward GEMM). This writes them:

    out_dir/forward.onnx     inputs: model inputs; weights as initializers
                             outputs: model outputs, updated buffers, saved activations
    out_dir/backward.onnx    inputs: saved activations + tangents (dL/d output)
                             outputs: gradients of parameters and inputs
    out_dir/manifest.json    every input/output (shape, dtype), which forward output feeds
                             which backward input, the policy and the plan

(``format="mlir"``: ``forward.torch.mlir``/``forward.linalg.mlir`` and the same for backward; in the
linalg form each quantizer is a call of a named function, listed in the manifest.)
The directory is written beside ``out_dir`` under a temporary name and renamed at the end, so a
failure leaves nothing half-written.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
from torch import fx

from qcompile.exporters.errors import ExportError

if TYPE_CHECKING:  # imported where used: the capture imports the backend, which hooks Dynamo
    from qcompile.exporters.capture import CapturedGraphs

FORMATS = ("onnx", "mlir")
GRAPHS = ("training", "inference")
_NEEDS = {"onnx": ("onnx",), "mlir": ("torch_mlir",)}  # onnxruntime only validates (tests)


def require_export_dependencies(fmt: str) -> None:
    """ImportError naming the extra to install when an export dependency is missing."""
    for module in _NEEDS[fmt]:
        try:
            importlib.import_module(module)
        except ImportError as e:
            raise ImportError(
                f"qcompile.export(format={fmt!r}) needs the {module!r} package, which is not installed: "
                f"pip install qcompile[export]  ({e})"
            ) from None


def _policy_dict(policy: Any) -> dict[str, Any]:
    def convert(v: Any) -> Any:
        if hasattr(v, "to_string"):
            return v.to_string()
        if dataclasses.is_dataclass(v):
            return {f.name: convert(getattr(v, f.name)) for f in dataclasses.fields(v)}
        if isinstance(v, (list, tuple)):
            return [convert(x) for x in v]
        return v

    return convert(policy)


def _input_name(dynamo_name: str, index: int) -> str:
    name = re.sub(r"^[lL]_", "", dynamo_name).strip("_")
    return name or f"input_{index}"


def _placeholders(gm: fx.GraphModule) -> list[fx.Node]:
    return [n for n in gm.graph.nodes if n.op == "placeholder"]


def _outputs(gm: fx.GraphModule) -> list[Any]:
    out = gm.graph.output_node().args[0]
    return list(out) if isinstance(out, (list, tuple)) else [out]


def _spec(node: Any) -> dict[str, Any]:
    v = node.meta["val"]
    return {"shape": [int(d) for d in v.shape], "dtype": str(v.dtype).removeprefix("torch.")}


@dataclasses.dataclass
class Boundary:
    """Names and roles of both graphs' inputs and outputs, shared by every format."""

    primals: list[dict[str, Any]]  # per forward placeholder: kind (parameter/buffer/input), name, tensor
    fw_outputs: list[dict[str, Any]]  # per forward FX output position
    bw_inputs: list[dict[str, Any]]  # per backward placeholder
    bw_outputs: list[dict[str, Any]]  # per backward FX output position


def describe_boundary(shadow: torch.nn.Module, captured: CapturedGraphs) -> Boundary:
    fw, bw, md = captured.forward, captured.backward, captured.fw_metadata
    # Tied weights (GPT-2's lm_head and wte) take their first name, as `named_parameters` gives it.
    params: dict[int, str] = {}
    for n, p in shadow.named_parameters(remove_duplicate=False):
        params.setdefault(id(p), n)
    buffers: dict[int, str] = {}
    for n, b in shadow.named_buffers(remove_duplicate=False):
        buffers.setdefault(id(b), n)
    fw_ph = _placeholders(fw)
    if len(fw_ph) != len(captured.dynamo_inputs):
        raise ExportError(
            f"forward graph has {len(fw_ph)} inputs but Dynamo passed {len(captured.dynamo_inputs)}: "
            "tensor subclasses or RNG/effect tokens are not exportable"
        )
    primals = []
    for i, (ph, t, dname) in enumerate(
        zip(fw_ph, captured.dynamo_inputs, captured.dynamo_names, strict=True)
    ):
        if not isinstance(t, torch.Tensor):
            raise ExportError(
                f"graph input {dname!r} is not a tensor ({type(t).__name__}); export needs static shapes"
            )
        if id(t) in params:
            primals.append({"fx": ph.name, "kind": "parameter", "name": params[id(t)], "tensor": t})
        elif id(t) in buffers:
            primals.append({"fx": ph.name, "kind": "buffer", "name": buffers[id(t)], "tensor": t})
        else:
            primals.append({"fx": ph.name, "kind": "input", "name": _input_name(dname, i), "tensor": t})
    by_fx = {p["fx"]: p for p in primals}
    outs = _outputs(fw)
    n_mut = md.num_mutated_inp_runtime_indices if md is not None else 0
    n_user = n_mut + (md.num_outputs + md.num_intermediate_bases if md is not None else len(outs))
    fw_outputs: list[dict[str, Any]] = []
    for i, v in enumerate(outs):
        if i < n_mut:
            fw_outputs.append({"kind": "mutated_input", "name": f"mutated_input_{i}", "fx": v})
        elif i < n_user:
            fw_outputs.append({"kind": "output", "name": f"output_{i - n_mut}", "fx": v})
        elif isinstance(v, fx.Node) and v.op == "placeholder":
            fw_outputs.append({"kind": "saved_primal", "name": None, "fx": v, "primal": by_fx[v.name]})
        else:
            fw_outputs.append({"kind": "saved", "name": f"saved_{v.name}", "fx": v})
    saved = fw_outputs[n_user:]
    bw_inputs: list[dict[str, Any]] = []
    bw_outputs: list[dict[str, Any]] = []
    if bw is not None:
        bw_ph = _placeholders(bw)
        if len(bw_ph) < len(saved):
            raise ExportError("backward graph takes fewer inputs than the forward saves")
        for ph, s in zip(bw_ph, saved, strict=False):
            if s["kind"] == "saved_primal":
                p = s["primal"]
                bw_inputs.append({"fx": ph.name, "kind": p["kind"], "name": p["name"], "tensor": p["tensor"]})
            else:
                bw_inputs.append({"fx": ph.name, "kind": "saved", "name": s["name"]})
        grad_of = [o["name"] for o in fw_outputs[:n_user]]
        if md is not None:
            wanted = [f"output_{i}" for i, info in enumerate(md.output_info) if info.requires_grad]
            if len(wanted) == len(bw_ph) - len(saved):
                grad_of = wanted
        for j, ph in enumerate(bw_ph[len(saved) :]):
            target = grad_of[j] if j < len(grad_of) else f"tangent_{j}"
            bw_inputs.append({"fx": ph.name, "kind": "tangent", "name": f"grad_{target}", "grad_of": target})
        for p, v in zip(primals, _outputs(bw), strict=False):
            bw_outputs.append(
                {"kind": "gradient", "name": None if v is None else f"grad_{p['name']}", "grad_of": p["name"]}
            )
    return Boundary(primals, fw_outputs, bw_inputs, bw_outputs)


def _feed(entry: dict[str, Any]) -> dict[str, Any]:
    """Where one backward input comes from: a forward output, a model input, a weight, the caller."""
    source = {
        "saved": {"forward_output": entry["name"]},
        "input": {"forward_input": entry["name"]},
        "parameter": {"parameter": entry["name"]},
        "buffer": {"buffer": entry["name"]},
        "tangent": {"caller": f"dL/d {entry.get('grad_of')} (forward output {entry.get('grad_of')})"},
    }[entry["kind"]]
    return {"backward_input": entry["name"], "kind": entry["kind"], **source}


def _manifest_value(entry: dict[str, Any], spec: dict[str, Any]) -> dict[str, Any]:
    keep = {k: v for k, v in entry.items() if k in ("name", "kind", "grad_of")}
    return {**keep, **spec}


def _write_onnx(
    tmp: Path, captured: CapturedGraphs, boundary: Boundary, external_threshold: int
) -> dict[str, Any]:
    from qcompile.exporters.onnx_model import GraphIO, check_model, save_model, translate_graph

    def io_for(entries: list[dict[str, Any]]) -> GraphIO:
        io = GraphIO()
        for e in entries:
            if e["kind"] in ("parameter", "buffer"):
                io.initializers[e["fx"]] = (e["name"], e["tensor"])
                if e["kind"] == "buffer":
                    io.buffer_names[e["fx"]] = e["name"]
            else:
                io.inputs[e["fx"]] = e["name"]
        return io

    files: dict[str, Any] = {}
    fw_io = io_for(boundary.primals)
    fw_io.outputs = [o["name"] for o in boundary.fw_outputs]
    fw = translate_graph(captured.forward, fw_io, "forward", doc="qcompile FQT forward graph")
    graphs = [("forward", fw, boundary.primals, boundary.fw_outputs)]
    if captured.backward is not None:
        bw_io = io_for(boundary.bw_inputs)
        bw_io.outputs = [o["name"] for o in boundary.bw_outputs]
        bw = translate_graph(captured.backward, bw_io, "backward", doc="qcompile FQT backward graph")
        graphs.append(("backward", bw, boundary.bw_inputs, boundary.bw_outputs))
    for kind, translated, ins, outs in graphs:
        path = tmp / f"{kind}.onnx"
        external = save_model(translated.model, str(path), external_threshold)
        check_model(str(path))
        gm = captured.forward if kind == "forward" else captured.backward
        ph = {n.name: n for n in _placeholders(gm)}
        out_vals = _outputs(gm)
        files[kind] = {
            "file": path.name,
            "external_data": (path.name + ".data") if external else None,
            "inputs": [
                _manifest_value(e, _spec(ph[e["fx"]]))
                for e in ins
                if e["kind"] not in ("parameter", "buffer")
            ],
            "initializers": [
                _manifest_value(e, _spec(ph[e["fx"]])) for e in ins if e["kind"] in ("parameter", "buffer")
            ],
            "outputs": [
                _manifest_value(o, _spec(v))
                for o, v in zip(outs, out_vals, strict=True)
                if o["name"] and v is not None
            ]
            + [
                {"name": out, "kind": "buffer_update", "buffer": buf}
                for buf, out in translated.buffer_updates.items()
            ],
        }
    return files


def _write_inference_onnx(
    tmp: Path, captured: CapturedGraphs, boundary: Boundary, external_threshold: int
) -> tuple[dict[str, Any], list[Any]]:
    """``inference.onnx``: the eval forward with each foldable weight stored as 4-bit codes."""
    import copy

    from qcompile.exporters.inference import fold_weight_quantizers
    from qcompile.exporters.onnx_model import GraphIO, check_model, save_model, translate_graph

    gm = copy.deepcopy(captured.forward)
    parameters = {e["fx"]: (e["name"], e["tensor"]) for e in boundary.primals if e["kind"] == "parameter"}
    folded = fold_weight_quantizers(gm, parameters)
    io = GraphIO()
    for e in boundary.primals:
        if e["kind"] in ("parameter", "buffer"):
            io.initializers[e["fx"]] = (e["name"], e["tensor"])
        else:
            io.inputs[e["fx"]] = e["name"]
    io.quantized_weights = {w.placeholder: w for w in folded}
    io.outputs = [o["name"] if o["kind"] == "output" else None for o in boundary.fw_outputs]
    translated = translate_graph(gm, io, "inference", doc="qcompile inference graph (4-bit weights)")
    path = tmp / "inference.onnx"
    external = save_model(translated.model, str(path), external_threshold)
    check_model(str(path))
    ph = {n.name: n for n in _placeholders(gm)}
    outs = _outputs(gm)
    files = {
        "inference": {
            "file": path.name,
            "external_data": (path.name + ".data") if external else None,
            "inputs": [
                _manifest_value(e, _spec(ph[e["fx"]])) for e in boundary.primals if e["kind"] == "input"
            ],
            "outputs": [
                _manifest_value(o, _spec(v))
                for o, v in zip(boundary.fw_outputs, outs, strict=True)
                if o["kind"] == "output" and v is not None
            ],
        }
    }
    return files, folded


def _write_mlir(tmp: Path, captured: CapturedGraphs, boundary: Boundary) -> dict[str, Any]:
    import copy

    from qcompile.exporters.mlir import functional_outputs, import_raw, lower_linalg

    files: dict[str, Any] = {}
    for kind, gm, ins, outs in (
        ("forward", captured.forward, boundary.primals, boundary.fw_outputs),
        ("backward", captured.backward, boundary.bw_inputs, boundary.bw_outputs),
    ):
        if gm is None:
            continue
        ph = {n.name: n for n in _placeholders(gm)}
        out_vals = _outputs(gm)
        gm = copy.deepcopy(gm)
        updated = functional_outputs(gm)
        names = {e["fx"]: e["name"] for e in ins}
        entry: dict[str, Any] = {
            "arguments": [_manifest_value(e, _spec(ph[e["fx"]])) for e in ins],
            "results": [
                _manifest_value({**o, "name": o["name"] or f"saved_{o['fx'].name}"}, _spec(v))
                for o, v in zip(outs, out_vals, strict=True)
                if v is not None
            ]
            + [
                {"name": f"{names[u]}.updated", "kind": "buffer_update", "buffer": names[u], **_spec(ph[u])}
                for u in updated
            ],
        }
        lowered = lower_linalg(copy.deepcopy(gm), kind)
        for form, text in (("torch", import_raw(copy.deepcopy(gm), kind)), ("linalg", lowered.text)):
            name = f"{kind}.{form}.mlir"
            (tmp / name).write_text(text)
            entry[f"{form}_file"] = name
        # Each quantizer of the linalg form: a named function, and where it is called.
        entry["quantizer_functions"] = [f.manifest() for f in lowered.functions]
        files[kind] = entry
    return files


def export(
    model: torch.nn.Module,
    example_inputs: Any,
    out_dir: str | os.PathLike,
    format: str = "onnx",
    policy: Any = None,
    overwrite: bool = False,
    *,
    graphs: str = "training",
    external_data_threshold: int = 2**31 - 2**26,
) -> Path:
    """Export ``model``'s quantized forward and backward graphs at ``example_inputs``' shapes.

    format: ``"onnx"`` (opset 21, INT4 Q/DQ, stochastic quantizers and block-scaled FP formats as
        ``qcompile`` functions, FP8 elements through the standard FLOAT8 Q/DQ types)
        or ``"mlir"`` (torch dialect with quantizers as custom ops, and linalg-on-tensors with
        quantizers as calls of named functions ``@qcompile.<op>.<config>.<type>``).
    policy: as ``torch.compile(..., backend="fqt", options={"policy": ...})`` (default luq-int4).
    overwrite: replace an existing ``out_dir`` (refused otherwise).
    graphs: ``"training"`` (the forward and backward graphs) or ``"inference"`` (ONNX only: one
        eval forward, no saved-for-backward outputs, each weight stored as its 4-bit codes and
        scale read by ``DequantizeLinear``, activations quantized as in training:
        ``out_dir/inference.onnx``; see `qcompile.exporters.inference`).
    external_data_threshold: ONNX models above this many bytes keep weights in ``<file>.data``.
    Returns the output directory. The model itself is not modified (a deep copy is compiled).
    """
    return export_with_graphs(
        model,
        example_inputs,
        out_dir,
        format,
        policy,
        overwrite,
        graphs=graphs,
        external_data_threshold=external_data_threshold,
    ).path


@dataclasses.dataclass
class ExportResult:
    """What `export_with_graphs` wrote, and the graphs it wrote it from (to run them eagerly)."""

    path: Path
    model: torch.nn.Module  # the compiled deep copy whose parameters the graphs read
    graphs: CapturedGraphs
    boundary: Boundary


def export_with_graphs(
    model: torch.nn.Module,
    example_inputs: Any,
    out_dir: str | os.PathLike,
    format: str = "onnx",
    policy: Any = None,
    overwrite: bool = False,
    *,
    graphs: str = "training",
    external_data_threshold: int = 2**31 - 2**26,
) -> ExportResult:
    """`export`, also returning the captured FX graphs (validation compares runtimes against them)."""
    from qcompile.policy.files import resolve_policy
    from qcompile.report.gemm_plan import plan_from_graphs

    if format not in FORMATS:
        raise ValueError(f"unknown export format {format!r}; valid formats: {', '.join(FORMATS)}")
    if graphs not in GRAPHS:
        raise ValueError(f"unknown graphs={graphs!r}; valid choices: {', '.join(GRAPHS)}")
    if graphs == "inference" and format != "onnx":
        raise ValueError("graphs='inference' writes ONNX only (format='onnx'); MLIR exports training graphs")
    out = Path(out_dir)
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} exists; pass overwrite=True to replace it")
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"export needs an nn.Module, got {type(model).__name__}")
    require_export_dependencies(format)
    # The exported graphs carry the quantized operands as plain tensors: packing saved operands
    # (a memory layout of this runtime) would only add unpack ops the consumers would have to learn.
    resolved = resolve_policy(policy).replace(pack_saved=False)
    inputs = tuple(example_inputs) if isinstance(example_inputs, (tuple, list)) else (example_inputs,)

    # Here, not at the top: the backend's import hooks Dynamo, which `import qcompile` must not do.
    from qcompile.exporters.capture import capture_training_graphs

    inference = graphs == "inference"
    shadow, captured_graphs = capture_training_graphs(
        getattr(model, "_orig_mod", model), inputs, resolved, inference=inference
    )
    if len(captured_graphs) != 1 or captured_graphs[0].forward is None:
        raise ExportError(
            f"export needs the model to compile to exactly one graph, got {len(captured_graphs)} "
            "(graph breaks: see torch._dynamo.explain(model)(*inputs))"
        )
    captured = captured_graphs[0]
    boundary = describe_boundary(shadow, captured)

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))
    try:
        extra: dict[str, Any] = {}
        if inference:
            files, folded = _write_inference_onnx(tmp, captured, boundary, external_data_threshold)
            extra["weights"] = [w.manifest() for w in folded]
        elif format == "onnx":
            files = _write_onnx(tmp, captured, boundary, external_data_threshold)
        else:
            files = _write_mlir(tmp, captured, boundary)
        feeds = [_feed(e) for e in boundary.bw_inputs]
        manifest = {
            "format": format,
            "graph_kind": graphs,
            "opset": 21 if format == "onnx" else None,
            "qcompile_version": _version(),
            "torch_version": torch.__version__,
            "policy": _policy_dict(resolved),
            "graphs": files,
            "feeds": feeds,
            "plan": json.loads(plan_from_graphs([captured.record]).to_json()),
            **extra,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=2))
        _swap_in(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ExportResult(out, shadow, captured, boundary)


def _swap_in(new: Path, out: Path) -> None:
    """Rename the finished directory into place; an existing one is moved aside first and only
    deleted once the new one is in place (restored if the rename fails)."""
    old = None
    if out.exists():
        old = Path(tempfile.mkdtemp(prefix=f".{out.name}.old-", dir=out.parent))
        os.replace(out, old / out.name)
    try:
        os.replace(new, out)
    except BaseException:
        if old is not None:
            os.replace(old / out.name, out)
            shutil.rmtree(old, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def _version() -> str:
    from qcompile.version import __version__

    return __version__
