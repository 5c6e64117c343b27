"""The block-scaled FP formats and the Hadamard transform in ONNX (opset 21).

Each ``fp_quantize`` becomes one ``qcompile``-domain function per configuration and shape whose
body is standard ops: the block statistic (``Pad`` to whole blocks, ``Reshape``, ``ReduceMax``),
the scale rule of `block_quantize_reference` (MX: ``2^(⌊log2 amax⌋ − emax)``; NV: the FP32 tensor
scale times the block scale rounded to E4M3; max: ``amax / max``) and the element rounding:

* FP8 round-to-nearest: the standard ``QuantizeLinear``/``DequantizeLinear`` pair with a
  ``FLOAT8E4M3FN`` / ``FLOAT8E5M2`` zero point (``saturate=1``), the ONNX FP8 types;
* FP4 (E2M1) and stochastic rounding: ``Floor``/``Round`` on the binade's grid spacing
  ``2^(max(⌊log2|x|⌋, 1−bias) − mantissa)``, exact at powers of two (``⌊log2⌋`` corrected by one
  step either way, as for LUQ). ONNX's ``FLOAT4E2M1`` type needs opset 23, which ONNX Runtime's
  CPU provider does not implement for ``QuantizeLinear``/``DequantizeLinear``/``Cast`` (1.32): a
  file using it would not run, so FP4 elements are computed in float32.

``hadamard`` is a ``MatMul`` of the blocks with ``diag(s)·H/√k`` (``s`` the graph's sign vector);
``hadamard_signs`` is ``RandomUniform`` thresholded at 1/2, or the run's fixed vector as a constant.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from onnx import TensorProto, helper

from qcompile.exporters.onnx_graph import NodeContext, OnnxGraphBuilder, onnx_dtype
from qcompile.exporters.onnx_quantizers import DOMAIN, F32, call_function
from qcompile.runtime.ops.block_formats import FIXED_SIGNS_SEED
from qcompile.runtime.reference.hadamard import random_signs_reference
from qcompile.runtime.reference.minifloat import ELEMENT_FORMATS, ElementFormat

_FP8_TYPES = {"e4m3": TensorProto.FLOAT8E4M3FN, "e5m2": TensorProto.FLOAT8E5M2}
_LN2 = math.log(2.0)


def _floor_log2(b: OnnxGraphBuilder, a: str) -> str:
    """``⌊log2 a⌋`` for a > 0, exact: ``Log`` then one correcting step either way."""
    two = b.const(2.0, F32)
    e = b.node("Floor", [b.node("Div", [b.node("Log", [a]), b.const(_LN2, F32)])])
    e = b.node("Where", [b.node("Greater", [b.node("Pow", [two, e]), a]), b.node("Sub", [e, b.const(1.0, F32)]), e])
    up = b.node("Add", [e, b.const(1.0, F32)])
    return b.node("Where", [b.node("LessOrEqual", [b.node("Pow", [two, up]), a]), up, e])


def _round_element(b: OnnxGraphBuilder, v: str, fmt: ElementFormat, stochastic: bool) -> str:
    """``round_to_element``: ``v`` (float32) onto the element grid, saturating at ±max."""
    if fmt.name in _FP8_TYPES and not stochastic:
        zp = b.node("Constant", [], value=helper.make_tensor("zp", _FP8_TYPES[fmt.name], [], [0.0]), hint="fp8_zero")
        one = b.const(1.0, F32)
        q = b.node("QuantizeLinear", [v, one, zp], saturate=1, hint="q_fp8")
        return b.node("DequantizeLinear", [q, one, zp], hint="dq_fp8")
    a = b.node("Abs", [v])
    e = _floor_log2(b, b.node("Max", [a, b.const(2.0**-126, F32)]))
    e = b.node("Max", [e, b.const(float(fmt.min_normal_exponent), F32)])
    ulp = b.node("Pow", [b.const(2.0, F32), b.node("Sub", [e, b.const(float(fmt.mantissa_bits), F32)])])
    steps = b.node("Div", [a, ulp])
    if stochastic:
        u = b.node("RandomUniformLike", [v], dtype=TensorProto.FLOAT, low=0.0, high=1.0)
        steps = b.node("Floor", [b.node("Add", [steps, u])])
    else:
        steps = b.node("Round", [steps])  # half to even, as the reference
    q = b.node("Min", [b.node("Mul", [steps, ulp]), b.const(fmt.max_value, F32)])
    return b.node("Mul", [b.node("Sign", [v]), q])


def _blocks(shape: list[int], block: list[int], axis: int) -> tuple[list[int], list[int], list[int], list[int]]:
    """(permutation putting the blocked axis last, padded shape after it, blocked shape, reduce
    axes) for a tensor of ``shape``."""
    ndim = len(shape)
    if len(block) == 2:
        perm = list(range(ndim))
        rows, cols = shape[-2], shape[-1]
        pr, pc = -(-rows // block[0]) * block[0], -(-cols // block[1]) * block[1]
        padded = [*shape[:-2], pr, pc]
        blocked = [*shape[:-2], pr // block[0], block[0], pc // block[1], block[1]]
        return perm, padded, blocked, [ndim - 1, ndim + 1]
    axis %= max(ndim, 1)
    perm = [d for d in range(ndim) if d != axis] + [axis]
    moved = [shape[d] for d in perm]
    length = moved[-1]
    n = block[0] or length if block else None
    if n is None:  # per tensor
        return perm, moved, [*moved], list(range(ndim))
    padded = [*moved[:-1], -(-length // n) * n]
    return perm, padded, [*moved[:-1], padded[-1] // n, n], [ndim]


def _fp_body(b: OnnxGraphBuilder, x: str, shape: list[int], element: str, scaling: str, block: list[int],
             axis: int, stochastic: bool) -> str:  # fmt: skip
    """`block_quantize_reference` in standard ops (static shapes)."""
    fmt = ELEMENT_FORMATS[element]
    perm, padded, blocked, reduce_axes = _blocks(shape, block, axis)
    moved = [shape[d] for d in perm]
    identity = perm == list(range(len(shape)))
    v = x if identity else b.node("Transpose", [x], perm=perm)
    if padded != moved:
        pads = [0] * len(moved) + [p - m for p, m in zip(padded, moved, strict=True)]
        v = b.node("Pad", [v, b.ints(pads)])
    v = b.node("Reshape", [v, b.ints(blocked)])
    amax = b.node("ReduceMax", [b.node("Abs", [v]), b.ints(reduce_axes)], keepdims=1)
    zero = b.const(0.0, F32)
    if scaling == "mx":
        e = _floor_log2(b, b.node("Max", [amax, b.const(2.0**-149, F32)]))
        e = b.node("Min", [b.node("Max", [b.node("Sub", [e, b.const(float(fmt.emax), F32)]), b.const(-127.0, F32)]),
                           b.const(127.0, F32)])  # fmt: skip
        inv = b.node("Pow", [b.const(2.0, F32), b.node("Neg", [e])])
        q = b.node("Div", [_round_element(b, b.node("Mul", [v, inv]), fmt, stochastic), inv])
    elif scaling == "nv":
        tensor_amax = b.node("ReduceMax", [b.node("Abs", [v])], keepdims=1)
        s_t = b.node("Div", [tensor_amax, b.const(fmt.max_value * 448.0, F32)])
        s_t_safe = b.node("Where", [b.node("Equal", [s_t, zero]), b.const(1.0, F32), s_t])
        s_b = _round_element(b, b.node("Div", [amax, b.node("Mul", [b.const(fmt.max_value, F32), s_t_safe])]),
                             ELEMENT_FORMATS["e4m3"], False)  # fmt: skip
        scale = b.node("Mul", [s_b, s_t_safe])
        safe = b.node("Where", [b.node("Equal", [scale, zero]), b.const(1.0, F32), scale])
        q = _round_element(b, b.node("Div", [v, safe]), fmt, stochastic)
        q = b.node("Mul", [b.node("Mul", [q, s_b]), s_t_safe])
    else:
        positive = b.node("Greater", [amax, zero])
        safe = b.node("Where", [positive, b.node("Div", [amax, b.const(fmt.max_value, F32)]), b.const(1.0, F32)])
        q = b.node("Mul", [_round_element(b, b.node("Div", [v, safe]), fmt, stochastic), safe])
    # A block holding NaN or ±inf is all NaN (ReduceMax skips NaN in ONNX Runtime, so count them).
    bad = b.node("Cast", [b.node("Or", [b.node("IsNaN", [v]), b.node("IsInf", [v])])], to=TensorProto.FLOAT)
    bad_block = b.node("ReduceMax", [bad, b.ints(reduce_axes)], keepdims=1)
    if scaling == "nv":  # one non-finite value anywhere makes the tensor scale, so every block, NaN
        bad_block = b.node("ReduceMax", [bad], keepdims=1)
    q = b.node("Where", [b.node("Greater", [bad_block, zero]), b.const(float("nan"), F32), q])
    q = b.node("Reshape", [q, b.ints(padded)])
    if padded != moved:
        q = b.node("Slice", [q, b.ints([0] * len(moved)), b.ints(moved)])
    if identity:
        return q
    inverse = [perm.index(d) for d in range(len(shape))]
    return b.node("Transpose", [q], perm=inverse)


def fp_quantize(c: NodeContext) -> str:
    x, element, scaling, block, axis, stochastic = c.node.args[:6]
    shape = [int(s) for s in c.meta(x).shape]
    if shape and int(np.prod(shape)) == 0:
        return c.emit("Identity", [c.val(x)])
    block = [int(n) for n in block]
    axis = int(axis) % max(len(shape), 1)
    label = "x".join(str(n) for n in block) or "tensor"
    name = (f"fp_{element}_{scaling}{label}_axis{axis}_{'sr' if stochastic else 'rdn'}_"
            f"{'x'.join(str(s) for s in shape)}")  # fmt: skip
    return call_function(c, x, name, lambda b, v: _fp_body(b, v, shape, element, scaling, block, axis, stochastic))


def _sylvester(k: int) -> np.ndarray:
    h = np.ones((1, 1), dtype=np.float32)
    while h.shape[0] < k:
        h = np.block([[h, h], [h, -h]])
    return h


def hadamard(c: NodeContext) -> str:
    """Blocks of ``k`` along ``axis`` times ``diag(s)·H/√k`` (``Hᵀ·diag(s)/√k``-transposed for
    the inverse), as a ``MatMul`` on the reshaped tensor."""
    x, signs, axis, k, inverse = c.node.args[:5]
    shape = [int(s) for s in c.meta(x).shape]
    ndim = len(shape)
    axis = int(axis) % ndim
    perm = [d for d in range(ndim) if d != axis] + [axis]
    moved = [shape[d] for d in perm]
    b = c.b
    v = c.val(x, F32)
    if perm != list(range(ndim)):
        v = b.node("Transpose", [v], perm=perm)
    v = b.node("Reshape", [v, b.ints([*moved[:-1], moved[-1] // k, k])])
    h = b.const(_sylvester(k) / np.float32(math.sqrt(k)), F32)
    s = c.val(signs, F32)
    if inverse:  # x = diag(s)·H·y/√k: rows of y times H/√k, then times s
        y = b.node("Mul", [b.node("MatMul", [v, h], hint=c.node.name), s])
    else:  # y = H·diag(s)·x/√k: rows of x times diag(s)·H/√k
        y = b.node("MatMul", [v, b.node("Mul", [h, b.node("Unsqueeze", [s, b.ints([1])])])], hint=c.node.name)
    y = b.node("Reshape", [y, b.ints(moved)])
    if perm != list(range(ndim)):
        y = b.node("Transpose", [y], perm=[perm.index(d) for d in range(ndim)])
    dtype = c.dtype_of(x)
    return y if dtype == F32 else b.node("Cast", [y], to=onnx_dtype(dtype))


def hadamard_signs(c: NodeContext) -> str:
    _, k, fixed = c.node.args[:3]
    if fixed:
        return c.b.const(random_signs_reference(int(k), FIXED_SIGNS_SEED).numpy(), torch.float32, hint="signs")
    u = c.b.node("RandomUniform", [], dtype=TensorProto.FLOAT, shape=[int(k)], low=0.0, high=1.0)
    return c.b.node("Where", [c.b.node("Less", [u, c.b.const(0.5, F32)]), c.b.const(-1.0, F32), c.b.const(1.0, F32)])


__all__ = ["DOMAIN", "fp_quantize", "hadamard", "hadamard_signs"]
