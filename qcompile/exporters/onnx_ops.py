"""ATen → ONNX (opset 21) translations for the ops that appear in AOTAutograd's training graphs.

One small function per ATen op; each returns the ONNX value name(s) of the node's output(s).
Shapes are static (the graphs were traced at the example inputs' shapes), so views become
``Reshape`` to the node's recorded output shape. An op missing here raises `ExportError`
naming the op and the layer (`qcompile.exporters.onnx_model.translate_graph`).
"""

from __future__ import annotations

import operator
from collections.abc import Callable

import numpy as np
import torch
import torch._inductor.inductor_prims  # noqa: F401  (registers prims.fma and the inductor_* random prims)
from torch import fx

from qcompile.exporters.onnx_graph import ExportError, NodeContext, onnx_dtype

aten = torch.ops.aten
prims = torch.ops.prims
Handler = Callable[[NodeContext], object]
HANDLERS: dict[object, Handler] = {}


def _on(*targets: object) -> Callable[[Handler], Handler]:
    def register(fn: Handler) -> Handler:
        for t in targets:
            HANDLERS[t] = fn
        return fn

    return register


def _arg(c: NodeContext, i: int, name: str, default: object = None) -> object:
    n = c.node
    if i < len(n.args):
        return n.args[i]
    return n.kwargs.get(name, default)


# ---- elementwise arithmetic: operands cast to the output dtype (ATen's type promotion result)
def _binary(op: str) -> Handler:
    def h(c: NodeContext) -> str:
        dt = c.out_dtype
        a, b = c.node.args[0], c.node.args[1]
        alpha = c.node.kwargs.get("alpha", 1)
        bv = c.val(b, dt)
        if alpha != 1:
            bv = c.emit("Mul", [bv, c.val(alpha, dt)])
        return c.emit(op, [c.val(a, dt), bv])

    return h


for _t, _op in [
    (aten.add.Tensor, "Add"), (aten.add.Scalar, "Add"), (aten.sub.Tensor, "Sub"), (aten.sub.Scalar, "Sub"),
    (aten.mul.Tensor, "Mul"), (aten.mul.Scalar, "Mul"), (aten.div.Scalar, "Div"),
    (aten.maximum.default, "Max"), (aten.minimum.default, "Min"), (aten.pow.Tensor_Tensor, "Pow"),
]:  # fmt: skip
    HANDLERS[_t] = _binary(_op)


@_on(aten.rsub.Scalar, aten.rsub.Tensor)
def _rsub(c: NodeContext) -> str:
    dt = c.out_dtype
    return c.emit("Sub", [c.val(c.node.args[1], dt), c.val(c.node.args[0], dt)])


@_on(aten.div.Tensor, aten.div.Tensor_mode)
def _div(c: NodeContext) -> str:
    mode = c.node.kwargs.get("rounding_mode")
    dt = c.out_dtype
    if mode is None:
        return c.emit("Div", [c.val(c.node.args[0], dt), c.val(c.node.args[1], dt)])
    if mode == "floor" and dt.is_floating_point:
        return c.emit("Floor", [c.emit("Div", [c.val(c.node.args[0], dt), c.val(c.node.args[1], dt)])])
    raise ExportError(f"{c.where()}: rounding_mode={mode!r} on {dt} is not exportable")


@_on(aten.pow.Tensor_Scalar)
def _pow(c: NodeContext) -> str:
    dt = c.out_dtype
    return c.emit("Pow", [c.val(c.node.args[0], dt), c.val(c.node.args[1], dt)])


@_on(prims.fma.default)
def _fma(c: NodeContext) -> str:
    dt = c.out_dtype
    a, b, d = (c.val(x, dt) for x in c.node.args[:3])
    return c.emit("Add", [c.emit("Mul", [a, b]), d])


def _unary(op: str) -> Handler:
    return lambda c: c.emit(op, [c.val(c.node.args[0], c.out_dtype)])


for _t, _op in [
    (aten.neg.default, "Neg"), (aten.exp.default, "Exp"), (aten.log.default, "Log"), (aten.tanh.default, "Tanh"),
    (aten.sqrt.default, "Sqrt"), (aten.abs.default, "Abs"), (aten.relu.default, "Relu"),
    (aten.sigmoid.default, "Sigmoid"), (aten.sign.default, "Sign"), (aten.floor.default, "Floor"),
    (aten.round.default, "Round"), (aten.reciprocal.default, "Reciprocal"), (aten.erf.default, "Erf"),
    (aten.sin.default, "Sin"), (aten.cos.default, "Cos"),
]:  # fmt: skip
    HANDLERS[_t] = _unary(_op)


@_on(aten.rsqrt.default)
def _rsqrt(c: NodeContext) -> str:
    return c.emit("Reciprocal", [c.emit("Sqrt", [c.val(c.node.args[0], c.out_dtype)])])


@_on(aten.gelu.default)
def _gelu(c: NodeContext) -> str:
    approximate = c.node.kwargs.get("approximate", c.node.args[1] if len(c.node.args) > 1 else "none")
    return c.emit("Gelu", [c.val(c.node.args[0], c.out_dtype)], approximate=approximate)


@_on(aten.clamp_min.default, aten.clamp_max.default, aten.clamp.default)
def _clamp(c: NodeContext) -> str:
    dt = c.out_dtype
    x = c.val(c.node.args[0], dt)
    t = c.node.target
    lo = c.node.args[1] if t != aten.clamp_max.default else None
    hi = c.node.args[1] if t == aten.clamp_max.default else (c.node.args[2] if len(c.node.args) > 2 else None)
    if lo is not None:
        x = c.emit("Max", [x, c.val(lo, dt)])
    if hi is not None:
        x = c.emit("Min", [x, c.val(hi, dt)])
    return x


# ---- comparisons and logic
def _compare(op: str, negate: bool = False) -> Handler:
    def h(c: NodeContext) -> str:
        dt = c.promoted(c.node.args[0], c.node.args[1])
        out = c.emit(op, [c.val(c.node.args[0], dt), c.val(c.node.args[1], dt)])
        return c.emit("Not", [out]) if negate else out

    return h


for _name, _op, _neg in [("le", "LessOrEqual", False), ("lt", "Less", False), ("ge", "GreaterOrEqual", False),
                         ("gt", "Greater", False), ("eq", "Equal", False), ("ne", "Equal", True)]:  # fmt: skip
    HANDLERS[getattr(aten, _name).Scalar] = _compare(_op, _neg)
    HANDLERS[getattr(aten, _name).Tensor] = _compare(_op, _neg)


def _logic(bool_op: str, int_op: str) -> Handler:
    def h(c: NodeContext) -> str:
        dt = c.out_dtype
        op = bool_op if dt == torch.bool else int_op
        return c.emit(op, [c.val(a, dt) for a in c.node.args[:2]])

    return h


HANDLERS[aten.logical_and.default] = _logic("And", "And")
HANDLERS[aten.logical_or.default] = _logic("Or", "Or")
HANDLERS[aten.bitwise_and.Tensor] = _logic("And", "BitwiseAnd")
HANDLERS[aten.bitwise_or.Tensor] = _logic("Or", "BitwiseOr")


@_on(aten.bitwise_not.default, aten.logical_not.default)
def _not(c: NodeContext) -> str:
    x = c.node.args[0]
    if c.dtype_of(x) == torch.bool or c.node.target == aten.logical_not.default:
        return c.emit("Not", [c.val(x, torch.bool)])
    return c.emit("BitwiseNot", [c.val(x)])


@_on(aten.isnan.default)
def _isnan(c: NodeContext) -> str:
    return c.emit("IsNaN", [c.val(c.node.args[0])])


@_on(aten.where.self)
def _where(c: NodeContext) -> str:
    dt = c.out_dtype
    cond, a, b = c.node.args
    return c.emit("Where", [c.val(cond, torch.bool), c.val(a, dt), c.val(b, dt)])


@_on(aten.threshold_backward.default)
def _threshold_backward(c: NodeContext) -> str:
    grad, x, threshold = c.node.args
    dt = c.out_dtype
    mask = c.emit("LessOrEqual", [c.val(x), c.val(threshold, c.dtype_of(x))])
    return c.emit("Where", [mask, c.val(0, dt), c.val(grad, dt)])


# ---- constants
@_on(aten.full.default, aten.scalar_tensor.default)
def _full(c: NodeContext) -> str:
    if c.node.target == aten.scalar_tensor.default:
        shape, value = [], c.node.args[0]
    else:
        shape, value = c.node.args[0], c.node.args[1]
    return c.b.const(np.full([int(s) for s in shape], value), c.out_dtype, hint=c.node.name)


@_on(prims.iota.default)
def _iota(c: NodeContext) -> str:
    length = int(c.node.args[0])
    start, step = c.node.kwargs.get("start", 0), c.node.kwargs.get("step", 1)
    return c.b.const(np.arange(length) * step + start, c.out_dtype, hint=c.node.name)


# ---- views, layout, casts
@_on(aten.view.default, aten._unsafe_view.default, aten.reshape.default, aten.unsqueeze.default,
     aten.squeeze.default, aten.squeeze.dim, aten.squeeze.dims, aten.flatten.using_ints)  # fmt: skip
def _reshape(c: NodeContext) -> str:
    return c.emit("Reshape", [c.val(c.node.args[0]), c.b.ints(c.out_shape)])


@_on(aten.expand.default)
def _expand(c: NodeContext) -> str:
    return c.emit("Expand", [c.val(c.node.args[0]), c.b.ints(c.out_shape)])


@_on(aten.clone.default, aten.alias.default, aten.contiguous.default, aten.lift_fresh_copy.default,
     aten.detach.default)  # fmt: skip
def _identity(c: NodeContext) -> str:
    return c.emit("Identity", [c.val(c.node.args[0])])


@_on(aten._to_copy.default, prims.convert_element_type.default)
def _cast(c: NodeContext) -> str:
    return c.emit("Cast", [c.val(c.node.args[0])], to=onnx_dtype(c.out_dtype))


@_on(aten.permute.default)
def _permute(c: NodeContext) -> str:
    ndim = len(c.out_shape)
    perm = [int(p) % ndim for p in c.node.args[1]] if ndim else []
    return c.emit("Transpose", [c.val(c.node.args[0])], perm=perm)


@_on(aten.t.default, aten.transpose.int)
def _transpose(c: NodeContext) -> str:
    ndim = len(c.out_shape)
    if ndim < 2:
        return c.emit("Identity", [c.val(c.node.args[0])])
    d0, d1 = (0, 1) if c.node.target == aten.t.default else (c.node.args[1] % ndim, c.node.args[2] % ndim)
    perm = list(range(ndim))
    perm[d0], perm[d1] = perm[d1], perm[d0]
    return c.emit("Transpose", [c.val(c.node.args[0])], perm=perm)


@_on(aten.slice.Tensor)
def _slice(c: NodeContext) -> str:
    x = c.node.args[0]
    ndim = len(c.meta(x).shape)
    dim = int(_arg(c, 1, "dim", 0)) % ndim
    start = _arg(c, 2, "start", None)
    end = _arg(c, 3, "end", None)
    step = _arg(c, 4, "step", 1)
    start = 0 if start is None else int(start)
    end = 2**62 if end is None else min(int(end), 2**62)
    return c.emit(
        "Slice", [c.val(x), c.b.ints([start]), c.b.ints([end]), c.b.ints([dim]), c.b.ints([int(step)])]
    )


@_on(aten.select.int)
def _select(c: NodeContext) -> str:
    x, dim, index = c.node.args
    return c.emit("Gather", [c.val(x), c.b.const(int(index), torch.int64)], axis=int(dim))


@_on(aten.split.Tensor, aten.split_with_sizes.default)
def _split(c: NodeContext) -> list[str]:
    x = c.node.args[0]
    dim = int(_arg(c, 2, "dim", 0))
    sizes = [int(v.shape[dim]) for v in c.out_val]
    outs = c.emit("Split", [c.val(x), c.b.ints(sizes)], outputs=len(sizes), axis=dim)
    return [outs] if isinstance(outs, str) else list(outs)


@_on(aten.cat.default)
def _cat(c: NodeContext) -> str:
    dt = c.out_dtype
    tensors = [t for t in c.node.args[0] if c.meta(t) is not None and c.meta(t).numel() > 0]
    dim = int(_arg(c, 1, "dim", 0)) % len(c.out_shape)
    return c.emit("Concat", [c.val(t, dt) for t in tensors], axis=dim)


@_on(aten.stack.default)
def _stack(c: NodeContext) -> str:
    dt = c.out_dtype
    dim = int(_arg(c, 1, "dim", 0)) % len(c.out_shape)
    parts = [c.emit("Unsqueeze", [c.val(t, dt), c.b.ints([dim])]) for t in c.node.args[0]]
    return c.emit("Concat", parts, axis=dim)


@_on(operator.getitem)
def _getitem(c: NodeContext) -> object:
    return c.env[c.node.args[0]][c.node.args[1]]


# ---- reductions
def _axes(c: NodeContext, dims: object, ndim: int) -> list[int]:
    if dims is None or (isinstance(dims, (list, tuple)) and len(dims) == 0):
        return list(range(ndim))
    dims = [dims] if isinstance(dims, int) else dims
    return [int(d) % ndim for d in dims]


def _reduce(op: str) -> Handler:
    def h(c: NodeContext) -> str:
        x = c.node.args[0]
        ndim = len(c.meta(x).shape)
        dims = _arg(c, 1, "dim", None)
        keep = bool(_arg(c, 2, "keepdim", False))
        xv = c.val(x, c.out_dtype)
        if ndim == 0:
            return c.emit("Identity", [xv])
        return c.emit(op, [xv, c.b.ints(_axes(c, dims, ndim))], keepdims=int(keep))

    return h


for _t, _op in [(aten.sum.dim_IntList, "ReduceSum"), (aten.mean.dim, "ReduceMean"),
                (aten.amax.default, "ReduceMax"), (aten.amin.default, "ReduceMin")]:  # fmt: skip
    HANDLERS[_t] = _reduce(_op)


@_on(aten.sum.default, aten.mean.default)
def _reduce_all(c: NodeContext) -> str:
    x = c.node.args[0]
    ndim = len(c.meta(x).shape)
    op = "ReduceSum" if c.node.target == aten.sum.default else "ReduceMean"
    xv = c.val(x, c.out_dtype)
    if ndim == 0:
        return c.emit("Identity", [xv])
    return c.emit(op, [xv, c.b.ints(range(ndim))], keepdims=0)


@_on(aten.var_mean.correction, aten.var.correction)
def _var_mean(c: NodeContext) -> object:
    x = c.node.args[0]
    shape = list(c.meta(x).shape)
    axes = _axes(c, _arg(c, 1, "dim", None), len(shape))
    correction = c.node.kwargs.get("correction", 1)
    correction = 1 if correction is None else correction
    keep = int(bool(c.node.kwargs.get("keepdim", False)))
    count = int(np.prod([shape[a] for a in axes])) if axes else 1
    dt = c.meta(x).dtype
    xv = c.val(x)
    ax = c.b.ints(axes)
    mean_k = c.emit("ReduceMean", [xv, ax], keepdims=1)
    d = c.emit("Sub", [xv, mean_k])
    var = c.emit("ReduceMean", [c.emit("Mul", [d, d]), ax], keepdims=keep)
    if correction:
        var = c.emit(
            "Mul",
            [var, c.val(count / max(count - correction, 0) if count > correction else float("nan"), dt)],
        )
    if c.node.target == aten.var.correction:
        return var
    mean = mean_k if keep else c.emit("ReduceMean", [xv, ax], keepdims=0)
    return [var, mean]


@_on(aten._softmax.default, aten._log_softmax.default)
def _softmax(c: NodeContext) -> str:
    op = "Softmax" if c.node.target == aten._softmax.default else "LogSoftmax"
    return c.emit(op, [c.val(c.node.args[0], c.out_dtype)], axis=int(c.node.args[1]))


# ---- GEMMs and convolutions
@_on(aten.mm.default, aten.bmm.default, aten.matmul.default)
def _matmul(c: NodeContext) -> str:
    dt = c.out_dtype
    return c.emit("MatMul", [c.val(c.node.args[0], dt), c.val(c.node.args[1], dt)])


@_on(aten.addmm.default)
def _addmm(c: NodeContext) -> str:
    dt = c.out_dtype
    bias, a, b = c.node.args[:3]
    beta, alpha = c.node.kwargs.get("beta", 1), c.node.kwargs.get("alpha", 1)
    prod = c.emit("MatMul", [c.val(a, dt), c.val(b, dt)])
    if alpha != 1:
        prod = c.emit("Mul", [prod, c.val(alpha, dt)])
    bv = c.val(bias, dt)
    if beta != 1:
        bv = c.emit("Mul", [bv, c.val(beta, dt)])
    return c.emit("Add", [prod, bv])


def conv(c: NodeContext, x: fx.Node, w: fx.Node, bias: object, stride, padding, dilation, transposed,
         output_padding, groups) -> str:  # fmt: skip
    """`aten.convolution` as ONNX ``Conv`` / ``ConvTranspose``."""
    dt = c.out_dtype
    nd = len(c.meta(w).shape) - 2
    inputs = [c.val(x, dt), c.val(w, dt)] + ([c.val(bias, dt)] if isinstance(bias, fx.Node) else [])
    attrs = dict(
        strides=[int(s) for s in _expand_to(stride, nd)],
        pads=[int(p) for p in _expand_to(padding, nd)] * 2,
        dilations=[int(d) for d in _expand_to(dilation, nd)],
        group=int(groups),
        kernel_shape=[int(k) for k in c.meta(w).shape[2:]],
    )
    if transposed:
        return c.emit(
            "ConvTranspose", inputs, output_padding=[int(p) for p in _expand_to(output_padding, nd)], **attrs
        )
    return c.emit("Conv", inputs, **attrs)


def _expand_to(values: object, n: int) -> list[int]:
    values = list(values) if isinstance(values, (list, tuple)) else [values]
    return values * n if len(values) == 1 else values


@_on(aten.convolution.default)
def _convolution(c: NodeContext) -> str:
    return conv(c, *c.node.args[:9])


@_on(aten.convolution_backward.default)
def _convolution_backward(c: NodeContext) -> list[str | None]:
    """Input gradient as ``ConvTranspose``; weight gradient as a ``Conv`` of the input with dY
    as kernel (batch and channels swapped), cropped to the kernel size; bias gradient a sum."""
    gy, x, w, _bias_sizes, stride, padding, dilation, transposed, output_padding, groups, mask = c.node.args[
        :11
    ]
    if transposed or int(groups) != 1:
        raise ExportError(
            f"{c.where()}: convolution_backward is exportable for groups=1, non-transposed only"
        )
    dt = c.out_dtype
    x_shape, w_shape = list(c.meta(x).shape), list(c.meta(w).shape)
    nd = len(w_shape) - 2
    stride, padding, dilation = (_expand_to(v, nd) for v in (stride, padding, dilation))
    out: list[str | None] = [None, None, None]
    gyv = c.val(gy, dt)
    if mask[0]:
        gy_shape = list(c.meta(gy).shape)
        extra = [
            x_shape[2 + i]
            - ((gy_shape[2 + i] - 1) * stride[i] - 2 * padding[i] + dilation[i] * (w_shape[2 + i] - 1) + 1)
            for i in range(nd)
        ]
        out[0] = c.emit(
            "ConvTranspose", [gyv, c.val(w, dt)], strides=stride, pads=padding * 2, dilations=dilation,
            output_padding=extra, kernel_shape=w_shape[2:], group=1,
        )  # fmt: skip
    if mask[1]:
        perm = [1, 0] + list(range(2, nd + 2))
        xt = c.emit("Transpose", [c.val(x, dt)], perm=perm)
        gt = c.emit("Transpose", [gyv], perm=perm)
        full = c.emit("Conv", [xt, gt], strides=dilation, dilations=stride, pads=padding * 2, group=1)
        full = c.emit("Transpose", [full], perm=perm)
        out[1] = c.emit(
            "Slice", [full, c.b.ints([0] * nd), c.b.ints(w_shape[2:]), c.b.ints(list(range(2, nd + 2)))]
        )
    if mask[2]:
        axes = [0] + list(range(2, nd + 2))
        out[2] = c.emit("ReduceSum", [gyv, c.b.ints(axes)], keepdims=0)
    return out


# ---- embeddings and scatter
@_on(aten.embedding.default)
def _embedding(c: NodeContext) -> str:
    return c.emit("Gather", [c.val(c.node.args[0]), c.val(c.node.args[1], torch.int64)], axis=0)


@_on(aten._unsafe_masked_index_put_accumulate.default)
def _masked_index_put_accumulate(c: NodeContext) -> str:
    """``x[idx] += where(mask, values, 0)`` for one index tensor on dim 0 (embedding backward)."""
    x, mask, indices, values = c.node.args
    if len(indices) != 1 or indices[0] is None:
        raise ExportError(f"{c.where()}: only a single index tensor on dim 0 is exportable")
    dt = c.out_dtype
    rows = int(c.meta(x).shape[0])
    idx = c.val(indices[0], torch.int64)
    idx = c.emit("Add", [idx, c.emit("Mul", [c.emit("Cast", [c.emit("Less", [idx, c.b.const(0, torch.int64)])],
                                                      to=onnx_dtype(torch.int64)), c.b.const(rows, torch.int64)])])  # fmt: skip
    idx = c.emit("Max", [c.emit("Min", [idx, c.b.const(rows - 1, torch.int64)]), c.b.const(0, torch.int64)])
    vals = c.emit("Where", [c.val(mask, torch.bool), c.val(values, dt), c.val(0, dt)])
    idx = c.emit("Unsqueeze", [idx, c.b.ints([-1])])
    return c.emit("ScatterND", [c.val(x, dt), idx, vals], reduction="add")


# ---- Inductor's random ops (dropout): fresh uniforms per run, like the compiled graph
@_on(prims.inductor_seeds.default, prims.inductor_lookup_seed.default)
def _seed(c: NodeContext) -> object:
    return ("seed",)


@_on(prims.inductor_random.default)
def _random(c: NodeContext) -> str:
    shape, _seed, mode = c.node.args[:3]
    op = {"rand": "RandomUniform", "randn": "RandomNormal"}.get(mode)
    if op is None:
        raise ExportError(f"{c.where()}: random mode {mode!r} is not exportable")
    return c.emit(op, [], shape=[int(s) for s in shape], dtype=onnx_dtype(c.out_dtype))
