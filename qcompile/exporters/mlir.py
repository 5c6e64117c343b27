"""Export AOTAutograd graphs to MLIR through torch-mlir's stateless FX importer.

Two forms per graph:

* ``*.torch.mlir``: the graph as imported (``output_type="raw"``), torch dialect, every
  qcompile quantizer a recognisable ``torch.operator "torch.qcompile.<op>"`` with its
  configuration (bits, scaling, reduce dims, tag) as operands.
* ``*.linalg.mlir``: lowered to ``linalg-on-tensors``, every quantizer still recognisable as a
  call of a named function, ``func.call @qcompile.<op>.<config>.<type>(%x)``, defined once per
  configuration and tensor type (``func.func private``, configuration also as the function's
  ``qcompile.quantizer`` attribute, layer as the call's ``qcompile.tag``); the rest of the graph
  and the functions' bodies are linalg-on-tensors.

torch-mlir cannot lower unknown custom ops, so the quantizers' bodies and qcompile's GEMM ops are
re-traced into ATen: the INT quantizer is `int_quantize_reference` (``torch.rand_like`` for
stochastic rounding), LUQ is `luq_quantize_portable` (the same distribution, with
``2^floor(log2 x)`` computed by ``log2``/``floor``/``exp2`` instead of a float bit-cast that
torch-mlir does not lower).

How the named functions survive lowering (`lower_linalg`), and why this way:

1. The graph is re-traced with everything but the quantizers decomposed (`portable_graph` with
   ``keep=QUANTIZERS``) and imported into one module; each distinct quantizer configuration is
   traced alone (its portable decomposition on a tensor of the call's type) and imported into the
   same module as a private function.
2. Each ``torch.operator "torch.qcompile.<quantizer>"`` of the main function is replaced by a
   ``func.call {no_inline}`` of its function (the configuration operands are constants, already
   in the callee).
3. The whole module goes through torch-mlir's own pipelines: the torch-backend pipeline
   (its ``inline`` pass honours ``no_inline``) and the linalg-on-tensors pipeline without its
   last pass, ``torch-verify-linalg-on-tensors-backend-contract``, which reports any
   ``func.call`` as illegal. The contract is checked instead on a copy with the calls inlined
   (a flat module computing what `lower_linalg(..., named_quantizers=False)` computes; the tests
   check that bit for bit), so every function body and the main function are verified to be
   linalg-on-tensors. The ``no_inline`` markers do not survive torch-mlir's backend type
   conversion (nor are they put back): a consumer's ``inline`` pass flattens the module.
4. The calls get their layer tags and the functions their configurations as attributes.

Lowering the module in one pass run keeps the stochastic quantizers' semantics exactly those of
the flat form: ``convert-torch-conversion-to-mlprogram`` gives the module one ``@global_seed``
that each random draw, in whichever function, advances in program order. Lowering the graph and
the quantizers separately and stitching the modules would have to merge several ``@global_seed``
globals, affine-map aliases and resource blobs, and would need a placeholder op that survives
lowering in the main graph (no such op exists for arbitrary tensor types).
Keeping the quantizers as custom ops through ``backend_legal_ops`` fails in torch-mlir 20261001:
ops with string operands are still reported illegal.
"""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.fma and the inductor_* random prims)
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from qcompile.exporters.errors import ExportError
from qcompile.runtime.ops import qconv_op as quantized_conv
from qcompile.runtime.ops import qmatmul_op as quantized_matmul
from qcompile.runtime.ops.block_formats import signs_decomposition
from qcompile.runtime.quant_tag import QuantTag
from qcompile.runtime.reference.block_scaled import block_quantize_reference
from qcompile.runtime.reference.hadamard import hadamard_reference
from qcompile.runtime.reference.int_quant import int_quantize_reference
from qcompile.runtime.reference.luq import luq_levels
from qcompile.runtime.reference.scaling_groups import group_amax, normalize_dims

qops = torch.ops.qcompile
prims = torch.ops.prims


def luq_quantize_portable(
    g: torch.Tensor, bits: int = 4, reduce_dims: Sequence[int] = (), noise: torch.Tensor | None = None
) -> torch.Tensor:
    """`luq_quantize_reference` (LUQ, Chmiel et al. 2023, Eq. 10 and 12) without the float
    bit-cast: ``f = 2^floor(log2 x)`` from ``log2``/``floor``/``exp2``, corrected by one step
    either way so it is exact at powers of two. Same output as the reference for the same noise."""
    if g.numel() == 0:
        return g.clone()
    dims = normalize_dims(reduce_dims, g.ndim)
    gf = g.float()
    alpha = group_amax(gf, dims) / float(2 ** (luq_levels(bits) - 1))
    alpha = torch.where(alpha == 0, torch.ones_like(alpha), alpha)
    x = gf.abs() / alpha
    u = torch.rand_like(gf) if noise is None else noise.float()
    xc = torch.clamp(x, min=1.0)
    f = torch.exp2(torch.floor(torch.log2(xc)))
    f = torch.where(f > xc, f * 0.5, f)
    f = torch.where(2 * f <= xc, 2 * f, f)
    log_rounded = torch.where(u * f < x - f, 2 * f, f)
    q = torch.where(x < 1, (u < x).to(gf.dtype), log_rounded)
    q = torch.where(torch.isnan(x), x, q)
    return (torch.sign(gf) * q * alpha).to(g.dtype)


def _int_quantize(x, bits, scaling, signed, reduce_dims, stochastic, tag):
    return int_quantize_reference(x, bits, scaling, signed, reduce_dims, stochastic)


def _luq_quantize(g, bits, reduce_dims, sample, tag):
    return luq_quantize_portable(g, bits, reduce_dims)


def _inductor_random(shape, seed, mode):
    return torch.rand(shape) if mode == "rand" else torch.randn(shape)


PORTABLE_DECOMPOSITIONS = {
    qops.int_quantize.default: _int_quantize,
    qops.luq_quantize.default: _luq_quantize,
    qops.qmatmul.default: quantized_matmul.matmul_forward,
    qops.qmatmul_rq.default: lambda a_hat, b_hat, *_: quantized_matmul.matmul_forward(a_hat, b_hat),
    qops.qconv.default: quantized_conv.conv_forward,
    qops.mark_layer.default: lambda x, tag: x,
    qops.hadamard.default: lambda x, signs, axis, block, inverse, tag: hadamard_reference(x, axis, block, signs, inverse),
    qops.hadamard_signs.default: signs_decomposition,
    prims.inductor_seeds.default: lambda count, device: torch.zeros(count, dtype=torch.int64),
    prims.inductor_lookup_seed.default: lambda seeds, index: seeds[index],
    prims.inductor_random.default: _inductor_random,
    prims.fma.default: lambda a, b, c: a * b + c,
}


def functional_outputs(gm: fx.GraphModule) -> list[str]:
    """In place: drop ``None`` outputs (MLIR functions return tensors only) and turn each
    ``copy_`` into a graph input (BatchNorm running statistics) into an extra result, appended
    after the others. Returns the placeholder names of those updated inputs, in order."""
    out = gm.graph.output_node()
    values = out.args[0] if isinstance(out.args[0], (list, tuple)) else [out.args[0]]
    values = [v for v in values if v is not None]
    updated: list[str] = []
    for node in list(gm.graph.nodes):
        if node.op == "call_function" and node.target == torch.ops.aten.copy_.default:
            dst, src = node.args[:2]
            node.replace_all_uses_with(src)
            gm.graph.erase_node(node)
            values.append(src)
            updated.append(dst.name)
    out.args = (tuple(values),)
    gm.recompile()
    return updated


def _fake_inputs(gm: fx.GraphModule) -> list[torch.Tensor]:
    inputs = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            v = n.meta["val"]
            inputs.append(
                torch.zeros(v.shape, dtype=v.dtype)
                if v.dtype != torch.bool
                else torch.zeros(v.shape, dtype=torch.bool)
            )
    return inputs


def portable_graph(gm: fx.GraphModule, keep: Iterable[Any] = ()) -> fx.GraphModule:
    """``gm`` re-traced with qcompile's ops replaced by plain ATen (see module docstring); the ops
    in ``keep`` stay as they are."""
    table = _decomposition_table()
    for op in keep:
        table.pop(op, None)
    return make_fx(gm, decomposition_table=table, tracing_mode="fake")(*_fake_inputs(gm))


def _decomposition_table() -> dict[Any, Callable[..., Any]]:
    from torch_mlir.fx import get_decomposition_table

    table = dict(get_decomposition_table())
    table.update(PORTABLE_DECOMPOSITIONS)
    return table


# ---------------------------------------------------------------------------------------------
# Quantizers as named functions in the linalg-on-tensors form


@dataclasses.dataclass(frozen=True)
class QuantizerLowering:
    """How one quantizer op becomes a named function: its configuration (read from the node's
    arguments), a stable label for that configuration, and the ATen body to lower."""

    op: str  # e.g. "int_quantize" (the torch.operator is "torch.qcompile.int_quantize")
    config: Callable[[dict[str, Any], int], dict[str, Any]]  # (node arguments, rank) -> configuration
    label: Callable[[dict[str, Any]], str]
    body: Callable[[dict[str, Any]], Callable[[torch.Tensor], torch.Tensor]]


def _dims_label(dims: Sequence[int]) -> str:
    return "all" if not dims else "_".join(str(d) for d in dims)


def _int_config(args: dict[str, Any], ndim: int) -> dict[str, Any]:
    return {
        "bits": int(args["bits"]),
        "scaling": str(args["scaling"]),
        "signed": str(args["signed"]),
        "reduce_dims": normalize_dims(args["reduce_dims"], ndim),
        "stochastic": bool(args["stochastic"]),
    }


def _luq_config(args: dict[str, Any], ndim: int) -> dict[str, Any]:
    dims = normalize_dims(args["reduce_dims"], ndim)
    return {"bits": int(args["bits"]), "reduce_dims": dims, "stochastic": True}


def _int_label(c: dict[str, Any]) -> str:
    rounding = "sr" if c["stochastic"] else "rdn"
    return f"int{c['bits']}_{c['scaling']}_{c['signed']}_{rounding}_reduce_{_dims_label(c['reduce_dims'])}"


def _int_body(c: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    return functools.partial(int_quantize_reference, **c)


def _luq_body(c: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    return functools.partial(luq_quantize_portable, bits=c["bits"], reduce_dims=c["reduce_dims"])


def _fp_config(args: dict[str, Any], ndim: int) -> dict[str, Any]:
    return {
        "element": str(args["element"]),
        "scaling": str(args["scaling"]),
        "block": [int(b) for b in args["block"]],
        "axis": int(args["axis"]) % max(ndim, 1),
        "stochastic": bool(args["stochastic"]),
    }


def _fp_label(c: dict[str, Any]) -> str:
    block = "x".join(str(b) for b in c["block"]) or "tensor"
    rounding = "sr" if c["stochastic"] else "rdn"
    return f"{c['element']}_{c['scaling']}{block}_axis{c['axis']}_{rounding}"


def _fp_body(c: dict[str, Any]) -> Callable[[torch.Tensor], torch.Tensor]:
    return functools.partial(block_quantize_reference, **c)


QUANTIZERS: dict[Any, QuantizerLowering] = {
    qops.fp_quantize.default: QuantizerLowering("fp_quantize", _fp_config, _fp_label, _fp_body),
    qops.int_quantize.default: QuantizerLowering("int_quantize", _int_config, _int_label, _int_body),
    qops.luq_quantize.default: QuantizerLowering(
        "luq_quantize",
        _luq_config,
        lambda c: f"luq{c['bits']}_reduce_{_dims_label(c['reduce_dims'])}",
        _luq_body,
    ),
}

_MLIR_DTYPES = {torch.float32: "f32", torch.float16: "f16", torch.bfloat16: "bf16", torch.float64: "f64"}


def _type_label(shape: Sequence[int], dtype: torch.dtype) -> str:
    """``8x32xf32``, the tensor type as MLIR spells it (without ``tensor<>``)."""
    return "x".join(
        [*(str(int(d)) for d in shape), _MLIR_DTYPES.get(dtype, str(dtype).removeprefix("torch."))]
    )


@dataclasses.dataclass
class QuantizerFunction:
    """One ``func.func private @qcompile.<op>.<label>.<type>`` of a lowered module."""

    name: str
    op: str
    config: dict[str, Any]
    shape: list[int]
    dtype: torch.dtype
    body: Callable[[torch.Tensor], torch.Tensor]
    call_sites: list[dict[str, Any]] = dataclasses.field(default_factory=list)

    def manifest(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "op": self.op,
            "config": self.config,
            "shape": self.shape,
            "dtype": str(self.dtype).removeprefix("torch."),
            "calls": len(self.call_sites),
            "call_sites": self.call_sites,
        }


def _call_site(args: dict[str, Any]) -> dict[str, Any]:
    """Where one quantizer call sits: its tag ``<layer>|<role>|<plan site>`` split up."""
    tag = str(args.get("tag", ""))
    site: dict[str, Any] = {"tag": tag, "layer": tag}
    if QuantTag.is_tag(tag):
        parsed = QuantTag.parse(tag)
        site.update(
            layer=parsed.layer,
            role=parsed.role,
            site=parsed.key if parsed.draw is None else f"{parsed.key}#{parsed.draw}",
        )
    if "sample" in args:
        site["sample"] = int(args["sample"])
    return site


def quantizer_calls(
    gm: fx.GraphModule,
) -> tuple[list[QuantizerFunction], list[tuple[QuantizerFunction, dict[str, Any]]]]:
    """The distinct quantizer functions of ``gm`` (one per configuration and tensor type, in
    order of first use) and, per quantizer node in graph order, its function and call site."""
    functions: dict[str, QuantizerFunction] = {}
    calls: list[tuple[QuantizerFunction, dict[str, Any]]] = []
    for node in gm.graph.nodes:
        if node.op != "call_function" or node.target not in QUANTIZERS:
            continue
        lowering = QUANTIZERS[node.target]
        names = [a.name for a in node.target._schema.arguments]
        args = {**dict(zip(names, node.args, strict=False)), **node.kwargs}
        value = node.args[0].meta["val"]
        config = lowering.config(args, value.ndim)
        name = f"qcompile.{lowering.op}.{lowering.label(config)}.{_type_label(value.shape, value.dtype)}"
        if name not in functions:
            functions[name] = QuantizerFunction(
                name, lowering.op, config, [int(d) for d in value.shape], value.dtype, lowering.body(config)
            )
        site = _call_site(args)
        functions[name].call_sites.append(site)
        calls.append((functions[name], site))
    return list(functions.values()), calls


@dataclasses.dataclass
class LinalgModule:
    text: str  # the module, linalg-on-tensors
    functions: list[QuantizerFunction]  # its quantizer functions (empty for the flat form)


TORCH_BACKEND_PIPELINE = (
    "builtin.module(func.func(torch-match-quantized-custom-ops),torchdynamo-export-to-torch-backend-pipeline)"
)
LINALG_PIPELINE = (
    "builtin.module(torch-backend-to-linalg-on-tensors-backend-pipeline{allow-non-finites=true})"
)
_CONTRACT_PASS = "torch-verify-linalg-on-tensors-backend-contract"


def _linalg_pipeline_without_contract() -> str:
    """`LINALG_PIPELINE` expanded into its passes, less the final contract check (which rejects
    ``func.call``; `_check_contract` runs it on the inlined module instead)."""
    from torch_mlir.passmanager import PassManager

    full = str(PassManager.parse(LINALG_PIPELINE))
    tail = f",{_CONTRACT_PASS})"
    if not full.endswith(tail):
        raise RuntimeError(f"unexpected torch-mlir linalg pipeline (no final {_CONTRACT_PASS}): {full}")
    return full[: -len(tail)] + ")"


def _func_op(module: Any, name: str) -> Any:
    from torch_mlir import ir

    for op in module.body.operations:
        if op.operation.name == "func.func" and ir.StringAttr(op.attributes["sym_name"]).value == name:
            return op
    raise KeyError(name)


def _calls_for_operators(
    module: Any, name: str, calls: list[tuple[QuantizerFunction, dict[str, Any]]]
) -> None:
    """In the imported (torch dialect) function ``name``: each quantizer ``torch.operator``
    becomes a ``func.call {no_inline}`` of its function. The importer emits the FX nodes in
    order, so the i-th quantizer operator is the i-th entry of ``calls``."""
    from torch_mlir import ir
    from torch_mlir.dialects import func as func_d

    ops = [f"torch.qcompile.{q.op}" for q in QUANTIZERS.values()]
    block = _func_op(module, name).regions[0].blocks[0]
    found = [
        op
        for op in block.operations
        if op.operation.name == "torch.operator" and ir.StringAttr(op.attributes["name"]).value in ops
    ]
    if len(found) != len(calls):
        raise RuntimeError(f"{len(found)} quantizer operators imported for {len(calls)} quantizer nodes")
    for op, (function, _) in zip(found, calls, strict=True):
        if ir.StringAttr(op.attributes["name"]).value != f"torch.qcompile.{function.op}":
            raise RuntimeError(f"quantizer operators out of order at {function.name}")
        with ir.InsertionPoint(op):
            call = func_d.CallOp(
                [op.results[0].type], ir.FlatSymbolRefAttr.get(function.name), [op.operands[0]]
            )
        call.attributes["no_inline"] = ir.UnitAttr.get()
        op.results[0].replace_all_uses_with(call.result)
        op.operation.erase()


def _check_contract(module: Any) -> None:
    """The linalg-on-tensors backend contract, on a copy with every call inlined."""
    from torch_mlir import ir
    from torch_mlir.compiler_utils import run_pipeline_with_repro_report

    flat = ir.Module.parse(str(module))
    for op in flat.body.operations:
        for inner in op.regions[0].blocks[0].operations if op.operation.name == "func.func" else ():
            if inner.operation.name == "func.call" and "no_inline" in inner.attributes:
                del inner.attributes["no_inline"]
    run_pipeline_with_repro_report(
        flat,
        f"builtin.module(inline,symbol-dce,{_CONTRACT_PASS})",
        "Checking the linalg-on-tensors backend contract (quantizer calls inlined)",
    )


def _quantizer_attr(function: QuantizerFunction) -> Any:
    from torch_mlir import ir

    i64 = ir.IntegerType.get_signless(64)

    def attr(v: Any) -> Any:
        if isinstance(v, bool):
            return ir.BoolAttr.get(v)
        if isinstance(v, int):
            return ir.IntegerAttr.get(i64, v)
        if isinstance(v, (list, tuple)):
            return ir.ArrayAttr.get([attr(x) for x in v])
        return ir.StringAttr.get(str(v))

    return ir.DictAttr.get({"op": attr(function.op), **{k: attr(v) for k, v in function.config.items()}})


def _annotate(module: Any, name: str, calls: list[tuple[QuantizerFunction, dict[str, Any]]]) -> None:
    """After lowering: each call gets its layer tag (``qcompile.tag``), each function its
    configuration (``qcompile.quantizer``). ``func.call`` declares no memory effects, so MLIR
    assumes any: the pipelines neither drop, merge nor reorder calls, and the i-th quantizer call
    is still ``calls[i]`` (checked)."""
    from torch_mlir import ir

    block = _func_op(module, name).regions[0].blocks[0]
    found = [
        op
        for op in block.operations
        if op.operation.name == "func.call"
        and ir.FlatSymbolRefAttr(op.attributes["callee"]).value.startswith("qcompile.")
    ]
    if [ir.FlatSymbolRefAttr(op.attributes["callee"]).value for op in found] != [f.name for f, _ in calls]:
        raise RuntimeError("quantizer calls lost or reordered by lowering")
    for op, (_, site) in zip(found, calls, strict=True):
        if "no_inline" in op.attributes:
            del op.attributes["no_inline"]
        op.attributes["qcompile.tag"] = ir.StringAttr.get(site["tag"])
    for function in {f.name: f for f, _ in calls}.values():
        _func_op(module, function.name).attributes["qcompile.quantizer"] = _quantizer_attr(function)


def _checked(graph: fx.GraphModule, keep: Iterable[Any]) -> fx.GraphModule:
    """``graph``, if no qcompile op but those in ``keep`` is left in it: torch-mlir cannot lower
    the others (e.g. LBT's and AQ's quantizers, which have no portable decomposition yet)."""
    for node in graph.graph.nodes:
        target = node.target
        if (
            node.op == "call_function"
            and getattr(target, "namespace", None) == "qcompile"
            and target not in keep
        ):
            tag = next((a for a in reversed(node.args) if QuantTag.is_tag(a)), "")
            layer = f" of layer '{QuantTag.parse(tag).layer}'" if tag else ""
            raise ExportError(
                f"cannot export op {target} (node '{node.name}'){layer} to MLIR: it has no portable "
                f"decomposition (the MLIR export lowers the quantizers {', '.join(q.op for q in QUANTIZERS.values())})"
            )
    return graph


def lower_linalg(gm: fx.GraphModule, name: str, named_quantizers: bool = True) -> LinalgModule:
    """``gm`` lowered to linalg-on-tensors as function ``@name``, each quantizer a call of its
    named function (see module docstring). ``named_quantizers=False``: the flat form, quantizers
    decomposed in place (what the module looks like with its calls inlined)."""
    from torch_mlir import fx as tmfx
    from torch_mlir import ir
    from torch_mlir.compiler_utils import run_pipeline_with_repro_report
    from torch_mlir.dialects import torch as torch_d
    from torch_mlir.extras.fx_importer import FxImporter

    if not named_quantizers:
        flat = _checked(portable_graph(gm), keep=())
        return LinalgModule(
            str(tmfx.stateless_fx_import(flat, output_type="linalg-on-tensors", model_name=name)), []
        )
    graph = _checked(portable_graph(gm, keep=QUANTIZERS), keep=QUANTIZERS)
    functions, calls = quantizer_calls(graph)
    ctx = ir.Context()
    torch_d.register_dialect(ctx)
    importer = FxImporter(context=ctx)
    importer.import_stateless_graph(graph.graph, func_name=name)
    table = _decomposition_table()
    for function in functions:
        example = torch.zeros(function.shape, dtype=function.dtype)
        body = make_fx(function.body, decomposition_table=table, tracing_mode="fake")(example)
        importer.import_stateless_graph(body.graph, func_name=function.name)
    module = importer.module
    with ctx, ir.Location.unknown():
        for function in functions:
            _func_op(module, function.name).attributes["sym_visibility"] = ir.StringAttr.get("private")
        _calls_for_operators(module, name, calls)
        run_pipeline_with_repro_report(
            module, TORCH_BACKEND_PIPELINE, "Lowering TorchFX IR -> Torch Backend IR"
        )
        run_pipeline_with_repro_report(
            module,
            _linalg_pipeline_without_contract(),
            "Lowering Torch Backend IR -> Linalg-on-Tensors Backend IR",
        )
        _check_contract(module)
        _annotate(module, name, calls)
    return LinalgModule(str(module), functions)


def import_raw(gm: fx.GraphModule, name: str) -> str:
    from torch_mlir import fx as tmfx

    return str(tmfx.stateless_fx_import(gm, output_type="raw", model_name=name))


def parse_and_verify(text: str) -> None:
    """Parse an exported module with torch-mlir's Python bindings and run the MLIR verifier.

    The bindings register the ``torch`` dialect and MLIR's upstream dialects but not
    torch-mlir's ``tm_tensor`` (which the linalg-on-tensors contract allows, e.g. for an
    embedding's scatter-add gradient). A module using it is first verified by the wheel's own
    ``torch-mlir-opt`` (which registers every torch-mlir dialect) and printed in generic form,
    which the bindings then parse and verify with that one dialect left unregistered.
    """
    import subprocess
    from pathlib import Path

    import torch_mlir
    from torch_mlir import ir
    from torch_mlir.dialects import torch as torch_d

    uses_tm_tensor = "tm_tensor." in text
    if uses_tm_tensor:
        opt = Path(torch_mlir.__path__[0]) / "_mlir_libs" / "torch-mlir-opt"
        done = subprocess.run(
            [str(opt), "--mlir-print-op-generic"], input=text, capture_output=True, text=True, check=False
        )
        if done.returncode != 0:
            raise ValueError(f"torch-mlir-opt rejected the module: {done.stderr[-2000:]}")
        text = done.stdout
    with ir.Context() as ctx:
        torch_d.register_dialect(ctx)
        ctx.allow_unregistered_dialects = uses_tm_tensor
        module = ir.Module.parse(text)
        if not module.operation.verify():
            raise ValueError("MLIR module failed verification")
