"""Export AOTAutograd graphs to MLIR through torch-mlir's stateless FX importer.

Two forms per graph:

* ``*.torch.mlir``: the graph as imported (``output_type="raw"``), torch dialect, every
  qcompile quantizer a recognisable ``torch.operator "torch.qcompile.<op>"`` with its
  configuration (bits, scaling, reduce dims, tag) as operands.
* ``*.linalg.mlir``: lowered to ``linalg-on-tensors``. torch-mlir cannot lower unknown custom
  ops, so quantizers and qcompile's GEMM ops are first re-traced into ATen: the INT quantizer is
  `int_quantize_reference` (``torch.rand_like`` for stochastic rounding), LUQ is
  `luq_quantize_portable` (the same distribution, with ``2^floor(log2 x)`` computed by
  ``log2``/``floor``/``exp2`` instead of a float bit-cast that torch-mlir does not lower).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.fma and the inductor_* random prims)
from torch import fx
from torch.fx.experimental.proxy_tensor import make_fx

from qcompile.runtime import quantized_conv, quantized_matmul
from qcompile.runtime.int_quantize import int_quantize_reference
from qcompile.runtime.luq_quantize import luq_levels
from qcompile.runtime.scaling_groups import group_amax, normalize_dims

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
    qops.qconv.default: quantized_conv.conv_forward,
    qops.mark_layer.default: lambda x, tag: x,
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


def portable_graph(gm: fx.GraphModule) -> fx.GraphModule:
    """``gm`` re-traced with qcompile's ops replaced by plain ATen (see module docstring)."""
    from torch_mlir.fx import get_decomposition_table

    table = dict(get_decomposition_table())
    table.update(PORTABLE_DECOMPOSITIONS)
    return make_fx(gm, decomposition_table=table, tracing_mode="fake")(*_fake_inputs(gm))


def import_raw(gm: fx.GraphModule, name: str) -> str:
    from torch_mlir import fx as tmfx

    return str(tmfx.stateless_fx_import(gm, output_type="raw", model_name=name))


def import_linalg(gm: fx.GraphModule, name: str) -> str:
    from torch_mlir import fx as tmfx

    return str(tmfx.stateless_fx_import(portable_graph(gm), output_type="linalg-on-tensors", model_name=name))


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
