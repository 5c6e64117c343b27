"""Run exported linalg-on-tensors modules on CPU, for the numerical MLIR tests.

torch-mlir's wheel has no RefBackend (``torch_mlir_e2e_test`` is not shipped), but it has MLIR's
upstream passes and ``ExecutionEngine``: bufferize, lower linalg to loops and everything to the
LLVM dialect, and JIT it. Enough for the ops these graphs use (``linalg``, ``arith``, ``math``,
``tensor``, the ``ml_program`` global seed); not for ``tm_tensor`` (GPT-2's scatter).
"""

from __future__ import annotations

import ctypes

import numpy as np

# Upstream passes only: one-shot bufferization across function boundaries, then loops -> LLVM.
TO_LLVM = (
    "builtin.module("
    "func.func(linalg-generalize-named-ops),"
    "one-shot-bufferize{bufferize-function-boundaries=true function-boundary-type-conversion=identity-layout-map},"
    "func.func(convert-linalg-to-loops),func.func(lower-affine),convert-scf-to-cf,"
    "expand-strided-metadata,lower-affine,finalize-memref-to-llvm,convert-math-to-llvm,"
    "convert-math-to-libm,convert-arith-to-llvm,convert-func-to-llvm,convert-cf-to-llvm,"
    "reconcile-unrealized-casts)"
)

_CTYPES = {
    "f32": (ctypes.c_float, np.float32),
    "f64": (ctypes.c_double, np.float64),
    "i64": (ctypes.c_int64, np.int64),
    "i32": (ctypes.c_int32, np.int32),
    "i1": (ctypes.c_bool, np.bool_),
}


def _descriptor_type(rank: int, ctype):
    fields = [
        ("allocated", ctypes.c_void_p),
        ("aligned", ctypes.POINTER(ctype)),
        ("offset", ctypes.c_longlong),
    ]
    if rank:
        fields += [("shape", ctypes.c_longlong * rank), ("strides", ctypes.c_longlong * rank)]
    return type(f"MemRef{rank}d", (ctypes.Structure,), {"_fields_": fields})


def _descriptor(array: np.ndarray, ctype):
    d = _descriptor_type(array.ndim, ctype)()
    d.allocated = array.ctypes.data
    d.aligned = array.ctypes.data_as(ctypes.POINTER(ctype))
    d.offset = 0
    if array.ndim:
        d.shape = (ctypes.c_longlong * array.ndim)(*array.shape)
        d.strides = (ctypes.c_longlong * array.ndim)(*[s // array.itemsize for s in array.strides])
    return d


def _to_numpy(d, shape: list[int], np_dtype) -> np.ndarray:
    """A copy of the memref ``d`` (static ``shape``) as a numpy array."""
    itemsize = np.dtype(np_dtype).itemsize
    strides = list(d.strides) if shape else []
    if 0 in shape:
        return np.zeros(shape, np_dtype)
    extent = 1 + sum((n - 1) * st for n, st in zip(shape, strides, strict=True))
    base = ctypes.cast(d.aligned, ctypes.c_void_p).value + d.offset * itemsize
    raw = np.frombuffer((ctypes.c_char * (extent * itemsize)).from_address(base), dtype=np_dtype)
    return np.lib.stride_tricks.as_strided(raw, shape, [st * itemsize for st in strides]).copy()


def _tensor_type(t) -> tuple[list[int], str]:
    from torch_mlir import ir

    rt = ir.RankedTensorType(t)
    return [int(s) for s in rt.shape], str(rt.element_type)


class _Unranked(ctypes.Structure):
    _fields_ = [("rank", ctypes.c_int64), ("descriptor", ctypes.c_void_p)]


def _strided_view(u: _Unranked, elem: int) -> np.ndarray:
    """A numpy byte view of a ranked memref descriptor {allocated, aligned, offset, sizes, strides}."""
    rank = u.rank
    header = ctypes.cast(u.descriptor, ctypes.POINTER(ctypes.c_int64 * (3 + 2 * rank))).contents
    aligned, offset = header[1], header[2]
    sizes, strides = list(header[3 : 3 + rank]), list(header[3 + rank :])
    span = 1 + sum((n - 1) * st for n, st in zip(sizes, strides, strict=True)) if all(sizes) else 0
    raw = np.ctypeslib.as_array((ctypes.c_byte * (span * elem)).from_address(aligned + offset * elem))
    return np.lib.stride_tricks.as_strided(
        raw.view(np.dtype((np.void, elem))), shape=sizes, strides=[st * elem for st in strides]
    )


@ctypes.CFUNCTYPE(None, ctypes.c_int64, ctypes.POINTER(_Unranked), ctypes.POINTER(_Unranked))
def _MEMREF_COPY(elem, src, dst):  # noqa: N802  (MLIR's C runner utility, which the wheel lacks)
    """``memrefCopy(elemSize, src, dst)`` of MLIR's c_runner_utils: a strided element copy, which
    bufferization emits for copies into non-identity layouts (padding, slices)."""
    out = _strided_view(dst.contents, elem)
    out[...] = _strided_view(src.contents, elem)


class LinalgRunner:
    """A linalg-on-tensors module, JIT-compiled; ``run(name, *arrays)`` calls one of its
    functions (private ones too) and returns its results as numpy arrays."""

    def __init__(self, text: str):
        from torch_mlir import ir
        from torch_mlir.dialects import torch as torch_d
        from torch_mlir.execution_engine import ExecutionEngine
        from torch_mlir.passmanager import PassManager

        self.ctx = ir.Context()
        torch_d.register_dialect(self.ctx)
        self.signatures: dict[str, tuple[list, list]] = {}
        with self.ctx:
            module = ir.Module.parse(text)
            for op in module.body.operations:
                if op.operation.name != "func.func":
                    continue
                name = ir.StringAttr(op.attributes["sym_name"]).value
                ftype = ir.FunctionType(ir.TypeAttr(op.attributes["function_type"]).value)
                self.signatures[name] = (
                    [_tensor_type(t) for t in ftype.inputs],
                    [_tensor_type(t) for t in ftype.results],
                )
                if "sym_visibility" in op.attributes:
                    del op.attributes["sym_visibility"]
                op.attributes["llvm.emit_c_interface"] = ir.UnitAttr.get()
            PassManager.parse(TO_LLVM).run(module.operation)
            self.engine = ExecutionEngine(module, opt_level=0)  # -O0: 20x quicker to compile here
            self.engine.raw_register_runtime("memrefCopy", ctypes.cast(_MEMREF_COPY, ctypes.c_void_p))

    def run(self, name: str, *arrays: np.ndarray) -> list[np.ndarray]:
        inputs, results = self.signatures[name]
        if len(arrays) != len(inputs):
            raise ValueError(f"@{name} takes {len(inputs)} arguments, got {len(arrays)}")
        keep, args = [], []
        for a, (shape, et) in zip(arrays, inputs, strict=True):
            ctype, np_dtype = _CTYPES[et]
            a = np.ascontiguousarray(np.array(a, dtype=np_dtype, copy=True))  # callee may write in place
            if list(a.shape) != shape:
                raise ValueError(f"@{name}: argument of shape {list(a.shape)}, expected {shape}")
            d = _descriptor(a, ctype)
            keep += [a, d]
            args.append(ctypes.pointer(ctypes.pointer(d)))
        types = [_descriptor_type(len(shape), _CTYPES[et][0]) for shape, et in results]
        if len(results) == 1:
            out = types[0]()
            self.engine.invoke(name, ctypes.pointer(ctypes.pointer(out)), *args)
            descriptors = [out]
        else:
            packed_t = type(
                "Results", (ctypes.Structure,), {"_fields_": [(f"r{i}", t) for i, t in enumerate(types)]}
            )
            packed = packed_t()
            self.engine.invoke(name, ctypes.pointer(ctypes.pointer(packed)), *args)
            descriptors = [getattr(packed, f"r{i}") for i in range(len(types))]
        return [
            _to_numpy(d, shape, _CTYPES[et][1]) for d, (shape, et) in zip(descriptors, results, strict=True)
        ]
