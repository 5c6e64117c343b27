"""qcompile's quantizers in ONNX: standard INT4/INT8 Q/DQ where the scheme fits, functions otherwise.

Round-to-nearest INT quantization with a symmetric (−7..7) or unsigned (0..15) grid is exactly
``DequantizeLinear(QuantizeLinear(clip(x)))`` with an INT4/UINT4 zero point (opset 21): the
input is clipped to the group's clip value first, so the saturating range of INT4 (−8..7) never
sees −8. The scale is computed in the graph from the data (SAWB or max, as
`qcompile.runtime.int_quantize_reference` does), per tensor or per axis; a group with several
kept dims divides by its scale first and quantizes with scale 1. ``signed="auto"`` runs the
signed and the unsigned Q/DQ and picks one per group (`Where` on the group's minimum).

Stochastic quantizers (LUQ, stochastic-rounding INT) are ONNX functions in the ``qcompile``
domain whose bodies use standard ops only (``RandomUniformLike``, ``Floor``, ``Log``, ``Pow``,
...), one function per distinct configuration, so any ONNX runtime executes them.
"""

from __future__ import annotations

import math

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper

from qcompile.exporters.onnx_graph import NodeContext, OnnxGraphBuilder, onnx_dtype
from qcompile.runtime.reference.int_quant import SAWB_C1, SAWB_C2, int_levels
from qcompile.runtime.reference.luq import luq_levels
from qcompile.runtime.reference.scaling_groups import normalize_dims

DOMAIN = "qcompile"
OPSET = 21
F32 = torch.float32


def _group(b: OnnxGraphBuilder, op: str, x: str, dims: list[int], ndim: int) -> str:
    """Per-group reduction kept broadcastable (keepdims=1); ``dims == []`` means all dims."""
    if ndim == 0:
        return b.node("Identity", [x])
    axes = dims or list(range(ndim))
    return b.node(op, [x, b.ints(axes)], keepdims=1)


def _clip(b: OnnxGraphBuilder, x: str, scaling: str, dims: list[int], ndim: int) -> str:
    """Clip value per group: max|x|, or SAWB (statistics in float64, falling back to max)."""
    amax = _group(b, "ReduceMax", b.node("Abs", [x]), dims, ndim)
    if scaling == "max":
        return amax
    xd = b.node("Cast", [x], to=TensorProto.DOUBLE)
    m2 = _group(b, "ReduceMean", b.node("Mul", [xd, xd]), dims, ndim)
    m1 = _group(b, "ReduceMean", b.node("Abs", [xd]), dims, ndim)
    c1, c2 = b.const(SAWB_C1, torch.float64), b.const(SAWB_C2, torch.float64)
    sawb = b.node("Sub", [b.node("Mul", [c1, b.node("Sqrt", [m2])]), b.node("Mul", [c2, m1])])
    sawb = b.node("Cast", [sawb], to=TensorProto.FLOAT)
    bad = b.node("Or", [b.node("LessOrEqual", [sawb, b.const(0.0, F32)]), b.node("Greater", [sawb, amax])])
    return b.node("Where", [bad, amax, sawb])


def _nonzero(b: OnnxGraphBuilder, s: str) -> str:
    return b.node("Where", [b.node("Equal", [s, b.const(0.0, F32)]), b.const(1.0, F32), s])


def _qdq(
    b: OnnxGraphBuilder, x: str, clip: str, bits: int, unsigned: bool, dims: list[int], shape: list[int]
) -> str:
    """Clip, then standard QuantizeLinear/DequantizeLinear with an INT4/UINT4/INT8/UINT8 zero point."""
    lo, hi = int_levels(bits, unsigned)
    scale = _nonzero(b, b.node("Div", [clip, b.const(float(hi), F32)]))
    low = b.const(0.0, F32) if unsigned else b.node("Neg", [clip])
    xc = b.node("Min", [b.node("Max", [x, low]), clip])
    if bits <= 4:
        zp_type = TensorProto.UINT4 if unsigned else TensorProto.INT4
    else:
        zp_type = TensorProto.UINT8 if unsigned else TensorProto.INT8
    ndim = len(shape)
    kept = [d for d in range(ndim) if d not in dims] if dims else []
    if len(kept) <= 1:
        attrs = {}
        if kept:
            k = kept[0]
            scale = b.node("Reshape", [scale, b.ints([shape[k]])])
            zp_tensor = helper.make_tensor("zp", zp_type, [shape[k]], [0] * shape[k])
            attrs["axis"] = k
        else:
            scale = b.node("Reshape", [scale, b.ints([])])
            zp_tensor = helper.make_tensor("zp", zp_type, [], [0])
        zp = b.node("Constant", [], value=zp_tensor, hint="zero_point")
        q = b.node("QuantizeLinear", [xc, scale, zp], hint="q_int", **attrs)
        return b.node("DequantizeLinear", [q, scale, zp], hint="dq", **attrs)
    one = b.const(1.0, F32)
    zp = b.node("Constant", [], value=helper.make_tensor("zp", zp_type, [], [0]), hint="zero_point")
    q = b.node("QuantizeLinear", [b.node("Div", [xc, scale]), one, zp], hint="q_int")
    return b.node("Mul", [b.node("DequantizeLinear", [q, one, zp], hint="dq"), scale])


def emit_int_qdq(b: OnnxGraphBuilder, x: str, bits: int, scaling: str, signed: str, dims: list[int],
                 shape: list[int]) -> str:  # fmt: skip
    """Round-to-nearest INT quantization as standard Q/DQ nodes (x float32)."""
    ndim = len(shape)
    clip = _clip(b, x, scaling, dims, ndim)
    if signed != "auto":
        return _qdq(b, x, clip, bits, signed == "unsigned", dims, shape)
    unsigned_group = b.node("GreaterOrEqual", [_group(b, "ReduceMin", x, dims, ndim), b.const(0.0, F32)])
    uq = _qdq(b, x, clip, bits, True, dims, shape)
    sq = _qdq(b, x, clip, bits, False, dims, shape)
    return b.node("Where", [unsigned_group, uq, sq])


def _int_function_body(b: OnnxGraphBuilder, x: str, bits: int, scaling: str, signed: str, dims: list[int],
                       ndim: int, stochastic: bool) -> str:  # fmt: skip
    """`int_quantize_reference` in standard ops (used for stochastic rounding)."""
    clip = _clip(b, x, scaling, dims, ndim)
    if signed == "auto":
        unsigned_group = b.node("GreaterOrEqual", [_group(b, "ReduceMin", x, dims, ndim), b.const(0.0, F32)])
        hi = b.node(
            "Where",
            [unsigned_group, b.const(float(2**bits - 1), F32), b.const(float(2 ** (bits - 1) - 1), F32)],
        )
        lo = b.node("Where", [unsigned_group, b.const(0.0, F32), b.node("Neg", [hi])])
    else:
        lo_i, hi_i = int_levels(bits, signed == "unsigned")
        lo, hi = b.const(float(lo_i), F32), b.const(float(hi_i), F32)
    scale = _nonzero(b, b.node("Div", [clip, hi]))
    y = b.node("Div", [x, scale])
    if stochastic:
        u = b.node("RandomUniformLike", [x], dtype=TensorProto.FLOAT, low=0.0, high=1.0)
        y = b.node("Floor", [b.node("Add", [y, u])])
    else:
        y = b.node("Round", [y])
    q = b.node("Max", [b.node("Min", [y, hi]), lo])
    return b.node("Mul", [b.node("Div", [q, hi]), clip])


def _luq_function_body(b: OnnxGraphBuilder, g: str, bits: int, dims: list[int], ndim: int) -> str:
    """LUQ (Chmiel et al. 2023, Eq. 10 and 12; `luq_quantize_reference`) in standard ops.

    ``f = 2^floor(log2 x)`` comes from ``Log``/``Floor``/``Pow`` and is then corrected by one
    step either way, so it is exact at powers of two despite the rounding of ``Log``.
    """
    levels = luq_levels(bits)
    amax = _group(b, "ReduceMax", b.node("Abs", [g]), dims, ndim)
    alpha = _nonzero(b, b.node("Div", [amax, b.const(float(2 ** (levels - 1)), F32)]))
    x = b.node("Div", [b.node("Abs", [g]), alpha])
    u = b.node("RandomUniformLike", [g], dtype=TensorProto.FLOAT, low=0.0, high=1.0)
    one, two = b.const(1.0, F32), b.const(2.0, F32)
    xc = b.node("Max", [x, one])
    e = b.node("Floor", [b.node("Div", [b.node("Log", [xc]), b.const(math.log(2.0), F32)])])
    f = b.node("Pow", [two, e])
    f = b.node("Where", [b.node("Greater", [f, xc]), b.node("Div", [f, two]), f])
    f2 = b.node("Mul", [f, two])
    f = b.node("Where", [b.node("LessOrEqual", [f2, xc]), f2, f])
    f2 = b.node("Mul", [f, two])
    log_rounded = b.node("Where", [b.node("Less", [b.node("Mul", [u, f]), b.node("Sub", [x, f])]), f2, f])
    underflow = b.node("Cast", [b.node("Less", [u, x])], to=TensorProto.FLOAT)
    q = b.node("Where", [b.node("Less", [x, one]), underflow, log_rounded])
    q = b.node("Where", [b.node("IsNaN", [x]), x, q])
    return b.node("Mul", [b.node("Mul", [b.node("Sign", [g]), q]), alpha])


def _function(name: str, body) -> onnx.FunctionProto:
    fb = OnnxGraphBuilder()
    fb.reserve("x")
    y = body(fb, "x")
    fb.nodes.append(helper.make_node("Identity", [y], ["y"]))
    return helper.make_function(DOMAIN, name, ["x"], ["y"], fb.nodes, [helper.make_opsetid("", OPSET)])


def call_function(c: NodeContext, x_node, name: str, body) -> str:
    """Call function ``name`` (defined once per graph) on ``x_node`` as float32, cast back."""
    c.b.add_function(_function(name, body))
    dtype = c.dtype_of(x_node)
    y = c.b.node(name, [c.val(x_node, F32)], domain=DOMAIN, hint=c.node.name)
    return y if dtype == F32 else c.b.node("Cast", [y], to=onnx_dtype(dtype))


def _dims_label(dims: list[int]) -> str:
    return "all" if not dims else "_".join(str(d) for d in dims)


def int_quantize(c: NodeContext) -> str:
    x, bits, scaling, signed, reduce_dims, stochastic = c.node.args[:6]
    shape = [int(s) for s in c.meta(x).shape]
    dims = normalize_dims(reduce_dims, len(shape))
    if shape and int(np.prod(shape)) == 0:
        return c.emit("Identity", [c.val(x)])
    if not stochastic and bits <= 8:
        y = emit_int_qdq(c.b, c.val(x, F32), bits, scaling, signed, dims, shape)
        return y if c.dtype_of(x) == F32 else c.emit("Cast", [y], to=onnx_dtype(c.dtype_of(x)))
    name = (f"int{bits}_{scaling}_{signed}_{'sr' if stochastic else 'rdn'}_reduce_{_dims_label(dims)}"
            f"_rank{len(shape)}")  # fmt: skip
    return call_function(
        c, x, name, lambda b, v: _int_function_body(b, v, bits, scaling, signed, dims, len(shape), stochastic)
    )


def luq_quantize(c: NodeContext) -> str:
    g, bits, reduce_dims = c.node.args[:3]
    shape = [int(s) for s in c.meta(g).shape]
    dims = normalize_dims(reduce_dims, len(shape))
    if shape and int(np.prod(shape)) == 0:
        return c.emit("Identity", [c.val(g)])
    name = f"luq{bits}_reduce_{_dims_label(dims)}_rank{len(shape)}"
    return call_function(c, g, name, lambda b, v: _luq_function_body(b, v, bits, dims, len(shape)))
