"""Which kernel runs each GEMM of an AOT forward/backward graph: Inductor (float), the Triton int8
GEMM (CUDA), the Triton FP8 GEMM (CUDA with FP8 tensor cores) or the CPU int8 GEMM.

`annotate_gemm_kernels` decides, for every GEMM node (``aten.mm``, ``qcompile::qmatmul``), which
kernel runs it and why, and writes it to ``node.meta["qcompile_kernel"]`` (the plan reads it back
from there; `fuse_triton_gemms` rewrites what it marked). The decision itself is
`choose_gemm_kernel`, a pure function of device, dtype, shapes and the two operands' quantizers,
testable without a GPU. Operands are followed up through views and dtype casts to their quantizer
(`find_source`), and their scale groups through those views (`track_kept_dims`): a scale must not
vary along the axis the GEMM contracts (the SCQ split), or it cannot move to the epilogue.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Sequence
from dataclasses import dataclass, field

import torch
from torch import fx

from qcompile.passes.fx_utils import is_smp_draws
from qcompile.passes.joint.pack_saved import is_dtype_cast
from qcompile.runtime.kernels.triton_support import triton_available
from qcompile.runtime.reference.minifloat import element_format

aten = torch.ops.aten
qops = torch.ops.qcompile

KERNEL_TRITON = "triton-int8"
KERNEL_CPU = "cpu-int8"
KERNEL_FP8 = "triton-fp8"
KERNEL_INDUCTOR = "inductor"
INT8_KERNELS = (KERNEL_TRITON, KERNEL_CPU)
#: Every kernel `fuse_triton_gemms` rewrites a GEMM onto (the rest stay Inductor's float GEMMs).
FUSED_KERNELS = (*INT8_KERNELS, KERNEL_FP8)
#: FP8 tensor cores (E4M3/E5M2 ``mma``) start at compute capability 8.9 (Ada; Hopper is 9.0).
FP8_MIN_CAPABILITY = (8, 9)
# The backend's ``kernels`` option: "auto" runs integer GEMMs where the hardware has them and the
# GEMM is large enough to gain; "int8" wherever the codes allow (any size: tests, and users who
# want every qualifying GEMM in integers); "reference" keeps every GEMM a float simulation.
KERNEL_MODES = ("auto", "int8", "reference")
# Below this many multiply-adds a CPU int8 GEMM does not pay for its packing and call. Measured on
# the 2-core AMD EPYC (Zen 3, AVX2), kernel against float32 mm of the same layout: 0.3-0.44x at 64^3,
# 0.8-0.9x at 128^3, 1.1-1.3x at 256^3, 1.05-1.4x at 256x512x512, 1.5-1.7x at 256x1024x1024
# (`benchmarks/cpu_perf.py` section 2b); the margin covers the call from the compiled graph. On an
# Intel Xeon with AVX-512 VNNI (`aten._int_mm` with its epilogue compiled by Inductor, against the
# compiled float32 mm): 0.64-0.96x at 64^3, 0.64-1.29x at 128^3, 0.88-1.0x at 256^3, 1.40-1.46x at
# 256x512x512, 1.7-1.9x at 256x1024x1024, and 0.38-0.44x at 512x64x512 (the epilogue over M*N
# outweighs a short contraction): the same threshold serves both.
CPU_MIN_MACS = 256 * 512 * 512
MIN_DIM = 16  # int8 tl.dot needs tiles of at least 16 along every axis
KERNEL_META = "qcompile_kernel"
BOUNDS_META = "qcompile_code_bounds"  # (max |A code|, max |B code|) of a cpu-int8 GEMM
_FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16)
# Device types whose GEMMs may be routed to the kernels. Tests add "cpu" to run the whole fused
# path through Triton's interpreter (TRITON_INTERPRET=1); in real use only CUDA qualifies.
FUSE_ON_DEVICES: tuple[str, ...] = ("cuda",)


# View ops a chain from a quantizer to its GEMM may go through: (name, argument reader).
_VIEWS = {
    aten.permute.default: "permute",
    aten.t.default: "t",
    aten.transpose.int: "transpose",
    aten.view.default: "view",
    aten._unsafe_view.default: "view",
    aten.reshape.default: "view",
}
_SKIP = {qops.mark_layer.default, aten.alias.default}
# Nodes that hold an INT quantizer's value and are its codes' source: the forward's packed
# quantizer (`int_quantize_packed`, output 0), and the backward's rebuilds of a packed X̂
# (`int_dequantize_packed`) or a requantized Ŵ (`int_requantize`).
_QUANTIZERS = (qops.int_quantize.default, qops.luq_quantize.default)
FP = "fp"  # OperandCheck.kind of a block-scaled FP operand (``fp_quantize``)
_REBUILDS = (qops.int_dequantize_packed.default, qops.int_requantize.default)
# GEMM-class nodes the kernels do not cover yet: they stay Inductor's, and the plan says why.
_NOT_ROUTED = {
    aten.bmm.default: "batched or 1-D GEMM",
    aten.baddbmm.default: "batched or 1-D GEMM",
    aten.addmm.default: "addmm not routed",
    aten.matmul.default: "batched or 1-D GEMM",
    aten.convolution.default: "convolution not routed",
    aten.convolution_backward.default: "convolution not routed",
    qops.qconv.default: "convolution not routed",
}


@dataclass(frozen=True)
class OperandCheck:
    """What `choose_gemm_kernel` needs to know of one GEMM operand."""

    # "quantizer" (in this graph), "packed" / "requantized" (rebuilt from saved codes or a clip),
    # "saved" (a forward quantizer's saved float output), "none"
    source: str
    kind: str = ""  # "int", "luq" or "fp"
    bits: int = 0
    stochastic: bool = False
    signed: str = "signed"
    scale_varies_on_contracted_axis: bool = False
    why_not: str = ""  # set when the operand's chain or source cannot be followed
    element: str = ""  # FP only: "e4m3", "e5m2" or "e2m1"
    block: str = ""  # FP only: where its scales apply ("row", "tensor", "mx32", "nv16x16", ...)


#: Why a GEMM on block-scaled FP operands stays a float GEMM on the CPU: no CPU here has FP4 or
#: FP8 dot products, so the quantized values go into a float32 GEMM.
FP_SIMULATED = "FP4/FP8 simulated in float32 (no FP4/FP8 dot products on the CPU)"


def fp_simulated(why: str, bits: int = 8) -> str:
    """The plan's reason for an FP4/FP8 GEMM left to Inductor on a GPU: simulated, and why."""
    return f"FP{bits} simulated in float32 ({why})"


def fp_operand_problem(op: OperandCheck, name: str) -> str:
    """Why this block-scaled FP operand cannot feed the FP8 kernel ('' when it can). The format's
    own reasons name no operand: both operands of a site share them, so its three GEMMs give
    one reason."""
    if op.bits != 8:
        return fp_simulated("no FP4 GEMM kernel yet", op.bits)
    if op.block not in ("row", "tensor"):
        return fp_simulated(f"block scales vary along the contraction ({op.block})")
    if op.source == "saved" and op.stochastic:
        return fp_simulated(
            f"{name} saved by the forward with stochastic rounding: its codes cannot be re-coded"
        )
    if op.why_not:
        return fp_simulated(f"{name}: {op.why_not}")
    if op.scale_varies_on_contracted_axis:
        return fp_simulated(f"{name}: its scale varies along the contracted axis")
    return ""


def operand_problem(op: OperandCheck, name: str) -> str:
    """Why this operand cannot feed the int8 kernel ('' when it can)."""
    if op.kind == FP:
        return fp_simulated("no int8 codes")
    if op.why_not:
        return f"{name}: {op.why_not}"
    if op.source == "none":
        return f"{name} is not quantized"
    if (op.kind == "int" and op.bits > 7) or (op.kind == "luq" and op.bits > 4):
        return f"{name}: {op.kind}{op.bits} codes do not fit int8"
    if op.scale_varies_on_contracted_axis:
        return f"{name}: its scale varies along the contracted axis"
    if op.source == "saved" and (op.kind != "int" or op.stochastic or op.signed == "unsigned"):
        return f"{name}: saved {op.kind} operand (stochastic or unsigned) cannot be re-coded exactly"
    return ""


def code_bound(op: OperandCheck) -> int:
    """The largest ``|code|`` an operand's quantizer can produce (LUQ: ``2^(levels-1)``; INT:
    its top code, unsigned ``2^bits - 1`` for ``"auto"`` groups)."""
    if op.kind == "luq":
        return 2 ** (2 ** (op.bits - 1) - 2)
    return 2**op.bits - 1 if op.signed in ("unsigned", "auto") else 2 ** (op.bits - 1) - 1


def _cpu_choice(dtype, m, n, k, a: OperandCheck, b: OperandCheck, kernels: str) -> tuple[str, str]:
    from qcompile.runtime.kernels.cpu_int8_gemm import cpu_int8_kernel, saturation_free_steps

    if kernels == "reference":
        return KERNEL_INDUCTOR, "kernels='reference'"
    kernel, why = cpu_int8_kernel()
    if not kernel:
        return KERNEL_INDUCTOR, why
    if dtype not in _FLOAT_DTYPES:
        return KERNEL_INDUCTOR, f"output dtype {dtype}"
    if not all(isinstance(d, int) for d in (m, n, k)):
        return KERNEL_INDUCTOR, "dynamic shape"
    for op, name in ((a, "A"), (b, "B")):
        problem = operand_problem(op, name)
        if problem:
            return KERNEL_INDUCTOR, problem
    if kernel == "avx2-maddubs" and saturation_free_steps(code_bound(a), code_bound(b)) < 1:
        return KERNEL_INDUCTOR, f"codes up to {code_bound(a)} x {code_bound(b)} saturate the AVX2 kernel"
    if kernels == "auto" and m * n * k < CPU_MIN_MACS:
        return KERNEL_INDUCTOR, f"too small for int8 to gain ({m}x{k}x{n})"
    return KERNEL_CPU, ""


def device_capability(device: torch.device | str) -> tuple[int, int] | None:
    """The CUDA compute capability of ``device``; None for other devices, or without a GPU
    (a graph traced for CUDA on a machine without one)."""
    device = torch.device(device)
    if device.type != "cuda" or not torch.cuda.is_available():
        return None
    return torch.cuda.get_device_capability(device)


def _triton_gemm_problem(dtype, m, n, k, triton_ok: bool | None) -> str:
    """Why a Triton GEMM kernel (int8 or FP8) cannot take this GEMM ('' when it can): Triton
    missing, a non-float output, dynamic shapes, or a dim below the kernels' smallest tile."""
    triton_ok = triton_available() if triton_ok is None else triton_ok
    if not triton_ok:
        return "triton not installed"
    if dtype not in _FLOAT_DTYPES:
        return f"output dtype {dtype}"
    if not all(isinstance(d, int) for d in (m, n, k)):
        return "dynamic shape"
    if min(m, n, k) < MIN_DIM:
        return f"a GEMM dim below {MIN_DIM} ({m}x{k}x{n})"
    return ""


def _fp8_choice(
    device, dtype, m, n, k, a: OperandCheck, b: OperandCheck, triton_ok, kernels, capability
) -> tuple[str, str]:
    """`choose_gemm_kernel` for a GEMM with a block-scaled FP operand: ``triton-fp8`` or why not."""
    device_type = torch.device(device).type
    if device_type not in FUSE_ON_DEVICES:
        return KERNEL_INDUCTOR, FP_SIMULATED if device_type == "cpu" else f"tensors on {device_type}"
    if kernels == "reference":
        return KERNEL_INDUCTOR, "kernels='reference'"
    for op, name in ((a, "A"), (b, "B")):
        if op.kind != FP:
            problem = operand_problem(op, name) or f"{name} is {op.kind}{op.bits}, the other operand FP"
            return KERNEL_INDUCTOR, problem
    for op, name in ((a, "A"), (b, "B")):
        problem = fp_operand_problem(op, name)
        if problem:
            return KERNEL_INDUCTOR, problem
    capability = device_capability(device) if capability is None else capability
    if capability is None or tuple(capability) < FP8_MIN_CAPABILITY:
        found = "no CUDA device" if capability is None else "found {}.{}".format(*capability)
        return KERNEL_INDUCTOR, fp_simulated(f"FP8 tensor cores need compute capability 8.9, {found}")
    problem = _triton_gemm_problem(dtype, m, n, k, triton_ok)
    if problem:
        return KERNEL_INDUCTOR, problem
    return KERNEL_FP8, ""


def choose_gemm_kernel(
    device: torch.device | str,
    dtype: torch.dtype,
    m: object,
    n: object,
    k: object,
    a: OperandCheck,
    b: OperandCheck,
    triton_ok: bool | None = None,
    kernels: str = "auto",
    capability: tuple[int, int] | None = None,
) -> tuple[str, str]:
    """(kernel, reason) for a GEMM ``[M,K]·[K,N]``, on every device:

    * ``triton-int8`` on CUDA with Triton: a float output, static shapes of at least 16 along
      every axis, both operands quantized with codes that fit int8 and scales that factor out of
      the contraction;
    * ``triton-fp8`` on CUDA with FP8 tensor cores (compute capability 8.9 or more; ``capability``
      overrides the device's, for tests) under the same rules, both operands FP8 (E4M3 or E5M2,
      either) with one scale per row or per tensor along the contraction (MX and NVFP4 blocks
      put scales inside the sum);
    * ``cpu-int8`` on a CPU with an integer kernel (`cpu_int8_kernel`), under the same operand
      rules, when ``kernels`` is ``"int8"``, or ``"auto"`` and the GEMM is large enough to gain;
    * else ``inductor`` (the float simulation), with the reason. FP4/FP8 operands on the CPU are
      always that: `FP_SIMULATED`.
    """
    if kernels not in KERNEL_MODES:
        raise ValueError(f"kernels={kernels!r}; valid choices: {KERNEL_MODES}")
    if FP in (a.kind, b.kind):
        return _fp8_choice(device, dtype, m, n, k, a, b, triton_ok, kernels, capability)
    device_type = torch.device(device).type
    if device_type not in FUSE_ON_DEVICES:
        if device_type == "cpu":
            return _cpu_choice(dtype, m, n, k, a, b, kernels)
        return KERNEL_INDUCTOR, f"tensors on {device_type}"
    if kernels == "reference":
        return KERNEL_INDUCTOR, "kernels='reference'"
    problem = _triton_gemm_problem(dtype, m, n, k, triton_ok)
    if problem:
        return KERNEL_INDUCTOR, problem
    for op, name in ((a, "A"), (b, "B")):
        problem = operand_problem(op, name)
        if problem:
            return KERNEL_INDUCTOR, problem
    return KERNEL_TRITON, ""


# ---------------------------------------------------------------------------------------------
# Following an operand back to its quantizer, and its scale groups through the views.


@dataclass
class Source:
    """An operand's quantizer (or saved placeholder) and the views between it and the GEMM."""

    node: fx.Node | None
    chain: list[tuple[str, object]] = field(default_factory=list)
    why_not: str = ""
    cast: bool = False  # a dtype cast lies between the quantizer and the GEMM


@dataclass(frozen=True)
class SavedQuantized:
    """A forward output that is an INT or FP8 quantizer's value seen through views: enough to
    re-code it in the backward graph. ``reduce_dims`` are in the output's own shape (None: not
    expressible)."""

    kind: str
    bits: int
    signed: str
    stochastic: bool
    reduce_dims: tuple[int, ...] | None
    cast: bool = False  # saved after a dtype cast (autocast): re-coded with the cast clip
    element: str = ""  # FP only, as in `OperandCheck`
    block: str = ""


#: Saved copies of FP8 values that re-code exactly (`saved_fp8_grouping`): float16 could underflow.
FP8_SAVED_DTYPES = (torch.float32, torch.bfloat16)


def saved_fp8_grouping(info: SavedQuantized, shape: Sequence[int]) -> tuple[list[int], int] | None:
    """``(block, axis)`` that re-quantizes a saved FP8 operand (row or tensor scales) of ``shape``
    into its own codes: ``fp8_quantize_codes(x̂, element, block, axis, False)``. None when its
    scale groups are not one axis.

    Exact for a round-to-nearest quantizer: each group's largest element was coded ``±max_value``
    (``amax / (amax / max_value)`` rounds to the top of the grid), so ``max|x̂| / max_value`` is
    the scale up to the saved copy's rounding (float32: an ulp or two; bf16: 2^-8), and
    ``x̂ / scale`` is each code within far less than half of FP8's grid spacing (2^-5 of the value
    at least): the same codes, scaled by that near-equal scale, as `recover_codes` does for INT."""
    if info.reduce_dims is None:
        return None
    wide = [d for d in info.reduce_dims if shape[d] > 1]
    if len(info.reduce_dims) == len(shape) or not wide:
        return [], -1  # one group: per tensor
    if len(wide) != 1:
        return None
    return [0], wide[0]


def _static_shape(node: fx.Node) -> tuple[int, ...] | None:
    val = node.meta.get("val")
    if not isinstance(val, torch.Tensor) or not all(isinstance(s, int) for s in val.shape):
        return None
    return tuple(val.shape)


def _view_arg(node: fx.Node, name: str):
    if name == "permute":
        return list(node.args[1])
    if name == "transpose":
        return [node.args[1], node.args[2]]
    if name == "view":
        return list(_static_shape(node) or node.args[1])
    return None


#: Why a `qmatmul_rq` on INT operands (a Hadamard transform in front of INT quantizers) stays a
#: float GEMM.
REQUANT_NOT_ROUTED = "requantizing GEMM (Hadamard transform) not routed to int8"


def _is_fp_source(src: Source) -> bool:
    return src.node is not None and src.node.target is qops.fp_quantize.default


def _requant_gemm_reason(node: fx.Node) -> str:
    """Why a batched `qmatmul_rq` (attention in a block format, or after a Hadamard) runs as
    Inductor's float GEMM."""
    for operand in node.args[:2]:
        if isinstance(operand, fx.Node) and _is_fp_source(find_source(operand)):
            out = node.meta.get("val")
            on_cpu = not isinstance(out, torch.Tensor) or out.device.type == "cpu"
            return FP_SIMULATED if on_cpu else fp_simulated("batched GEMM not routed")
    return REQUANT_NOT_ROUTED


def find_source(node: fx.Node) -> Source:
    """Walk up from a GEMM operand through views to a quantizer node or a placeholder."""
    chain: list[tuple[str, object]] = []
    cast = False
    while True:
        if node.op == "placeholder":
            return Source(node, chain[::-1], cast=cast)
        if node.op != "call_function":
            return Source(None, why_not="not a quantizer output")
        if node.target in _QUANTIZERS or node.target in _REBUILDS:
            return Source(node, chain[::-1], cast=cast)
        if node.target is qops.fp_quantize.default:
            return Source(node, chain[::-1], cast=cast)
        if node.target is operator.getitem and _is_packed_quantizer(node.args[0]) and node.args[1] == 0:
            return Source(node.args[0], chain[::-1], cast=cast)
        if node.target in _SKIP or _is_relayout(node):
            node = node.args[0]
            continue
        if is_dtype_cast(node):  # codes carry no dtype; the GEMM writes its own output dtype
            cast = True
            node = node.args[0]
            continue
        name = _VIEWS.get(node.target)
        if name is None and _averages_smp_draws(node):
            n = len(node.args[0].args[0].args[0])
            return Source(None, why_not=f"SMP: the mean of {n} draws is not one int8 code grid")
        if name is None:
            what = getattr(node.target, "__name__", str(node.target))
            return Source(None, why_not=f"not quantized (from {what})")
        if name == "view" and _static_shape(node) is None:
            return Source(None, why_not="dynamic shape")
        chain.append((name, _view_arg(node, name)))
        node = node.args[0]


def _averages_smp_draws(node: fx.Node) -> bool:
    """``mean(view(cat(draws)), 0)``: SMP's average of LUQ draws of one tensor."""
    if node.target is not aten.mean.dim:
        return False
    inner = node.args[0]
    return (
        isinstance(inner, fx.Node)
        and inner.op == "call_function"
        and inner.target in (aten.view.default, aten._unsafe_view.default)
        and is_smp_draws(inner.args[0], _QUANTIZERS)
    )


def _is_packed_quantizer(node) -> bool:
    return isinstance(node, fx.Node) and node.target is qops.int_quantize_packed.default


def _is_relayout(node: fx.Node) -> bool:
    """A copy into another memory layout (packing restores the forward's strides this way): the
    values, and so the codes, are the same."""
    return node.target is aten.clone.default and set(node.kwargs) <= {"memory_format"}


def track_kept_dims(shape: Sequence[int], kept: Sequence[bool], chain) -> tuple[list[int], list[str]] | None:
    """Push "does the scale vary along this dim" through a chain of views.

    Returns the final shape and one flag per dim: ``"kept"`` (the scale varies along it),
    ``"reduced"`` (constant along it) or ``"mixed"`` (a merge of both). None if a view's sizes
    cannot be matched."""
    shape = list(shape)
    flags = ["kept" if k and s > 1 else "reduced" for s, k in zip(shape, kept, strict=True)]
    for op, arg in chain:
        if op in ("permute", "t", "transpose"):
            perm = list(range(len(shape)))
            if op == "permute":
                perm = [p % len(shape) for p in arg]
            elif op == "t":
                perm = perm[::-1]
            else:
                i, j = (x % len(shape) for x in arg)
                perm[i], perm[j] = perm[j], perm[i]
            shape, flags = [shape[p] for p in perm], [flags[p] for p in perm]
            continue
        new = list(arg)
        if -1 in new:
            known = math.prod(s for s in new if s != -1)
            new[new.index(-1)] = math.prod(shape) // known if known else 0
        new_flags = _regroup(shape, flags, new)
        if new_flags is None:
            return None
        shape, flags = new, new_flags
    return shape, flags


def _regroup(old: list[int], flags: list[str], new: list[int]) -> list[str] | None:
    """Flags of a reshape's output dims: chunks of old and new dims with equal products share
    the union of their old flags."""
    if math.prod(old) != math.prod(new):
        return None
    out: list[str] = []
    i = j = 0
    while j < len(new):
        if new[j] == 1:
            out.append("reduced")
            j += 1
            continue
        while i < len(old) and old[i] == 1:
            i += 1
        chunk_old, chunk_new = [i], [j]
        po, pn = old[i], new[j]
        while po != pn:
            if po < pn:
                i += 1
                chunk_old.append(i)
                po *= old[i]
            else:
                j += 1
                chunk_new.append(j)
                pn *= new[j]
        kinds = {flags[c] for c in chunk_old if old[c] > 1}
        flag = "mixed" if len(kinds) > 1 or "mixed" in kinds else (kinds.pop() if kinds else "reduced")
        if flag == "kept" and len(chunk_new) > 1:
            flag = "mixed"  # a split of a kept dim: each piece varies, but not as one group
        out += [flag] * len(chunk_new)
        i += 1
        j += 1
    return out


def fp_block_label(block: Sequence[int], scaling: str) -> str:
    """Where an ``fp_quantize``'s scales apply, as the plan writes it: ``tensor``, ``row``,
    or the block (``mx32``, ``nv16x16``)."""
    block = list(block)
    if not block:
        return "tensor"
    return "row" if block == [0] else scaling + "x".join(str(b) for b in block)


def quantizer_facts(q: fx.Node) -> tuple[str, int, str, bool, list[int]]:
    """(kind, bits, signed, stochastic, reduce_dims) of a quantizer node, or of a node rebuilding
    a quantizer's value from what the forward saved (its codes are exact: not stochastic).
    An ``fp_quantize`` with one scale per row along ``axis`` reduces that axis; per tensor, and
    blocks (whose scales vary along ``axis``: `fp_block_label` says so), give ``[]``."""
    if q.target is qops.fp_quantize.default:
        x, element, _, block, axis, stochastic, _ = q.args
        dims = [axis % x.meta["val"].ndim] if list(block) == [0] else []
        return FP, element_format(element).bits, "signed", stochastic, dims
    if q.target is qops.luq_quantize.default:
        _, bits, dims, _, _ = q.args
        return "luq", bits, "signed", True, list(dims)
    if q.target is qops.int_dequantize_packed.default:
        _, clip, _, _, bits, signed, _, _ = q.args
        return "int", bits, signed, False, _group_dims(clip)
    if q.target is qops.int_requantize.default:
        _, clip, _, bits, signed, _, _ = q.args
        return "int", bits, signed, False, _group_dims(clip)
    _, bits, _, signed, dims, stochastic, _ = q.args  # int_quantize, int_quantize_packed
    return "int", bits, signed, stochastic, list(dims)


def _group_dims(clip: fx.Node) -> list[int]:
    """The reduced dims of a saved per-group clip (keepdim shape; 0-d: per tensor, ``[]``)."""
    shape = clip.meta["val"].shape
    return [d for d, s in enumerate(shape) if s == 1] if len(shape) else []


def _source_kind(q: fx.Node) -> str:
    if q.target is qops.int_dequantize_packed.default:
        return "packed"
    if q.target is qops.int_requantize.default:
        return "requantized"
    return "quantizer"


def value_shape(q: fx.Node) -> tuple[int, ...] | None:
    """Static shape of the value a quantizer (or rebuild) node stands for, the codes' shape."""
    return _static_shape(q) if q.target in _REBUILDS else _static_shape(q.args[0])


def _kept_flags(shape: Sequence[int], reduce_dims: Sequence[int]) -> list[bool]:
    from qcompile.runtime.reference.scaling_groups import normalize_dims

    dims = normalize_dims(reduce_dims, len(shape))
    return [bool(dims) and d not in dims for d in range(len(shape))]


def saved_quantized_outputs(gm: fx.GraphModule) -> dict[str, SavedQuantized]:
    """Forward graph: output name → how to re-code it, for outputs that are an INT quantizer's
    value through views (what the backward graph receives as saved X̂ / Ŵ)."""
    out: dict[str, SavedQuantized] = {}
    outputs = next(n for n in gm.graph.nodes if n.op == "output").args[0]
    for node in outputs if isinstance(outputs, (list, tuple)) else [outputs]:
        if not isinstance(node, fx.Node):
            continue
        src = find_source(node)
        if src.node is None or src.node.op == "placeholder":
            continue
        kind, bits, signed, stochastic, dims = quantizer_facts(src.node)
        shape = value_shape(src.node)
        tracked = track_kept_dims(shape, _kept_flags(shape, dims), src.chain) if shape else None
        reduce_dims = None
        if tracked is not None and "mixed" not in tracked[1]:
            reduce_dims = tuple(d for d, f in enumerate(tracked[1]) if f == "reduced")
            if len(reduce_dims) == len(tracked[1]):
                reduce_dims = ()
        fp = _fp_facts(src.node) if kind == FP else {}
        out[node.name] = SavedQuantized(kind, bits, signed, stochastic, reduce_dims, src.cast, **fp)
    return out


def _fp_facts(q: fx.Node) -> dict[str, str]:
    """``element`` and ``block`` of an ``fp_quantize`` node, as `OperandCheck` takes them."""
    return {"element": q.args[1], "block": fp_block_label(q.args[3], q.args[2])}


# ---------------------------------------------------------------------------------------------
# Decisions


@dataclass
class GemmOperands:
    """A GEMM node seen as ``[M,K]·[K,N]``: its two operand nodes and the views to make them 2-D."""

    a: fx.Node
    b: fx.Node
    a_extra: list[tuple[str, object]]
    m: object
    n: object
    k: object


def gemm_operands(node: fx.Node) -> GemmOperands | None:
    if node.op != "call_function":
        return None
    if node.target is aten.mm.default:
        a, b = node.args[0], node.args[1]
        sa, sb = a.meta["val"].shape, b.meta["val"].shape
        return GemmOperands(a, b, [], sa[0], sb[1], sa[1])
    if node.target in (qops.qmatmul.default, qops.qmatmul_rq.default):
        a, b = node.args[0], node.args[1]
        va, vb = a.meta["val"], b.meta["val"]
        if vb.ndim != 2 or va.ndim < 2:
            return None
        k = va.shape[-1]
        m = math.prod(va.shape[:-1]) if all(isinstance(s, int) for s in va.shape) else None
        extra = [("view", [m, k])] if va.ndim != 2 else []
        return GemmOperands(a, b, extra, m, vb.shape[1], k)
    return None


def _check(src: Source, extra, axis: int, saved: dict[str, SavedQuantized]) -> OperandCheck:
    """Operand facts; ``axis`` is the operand's contracted axis (1 for A, 0 for B)."""
    if src.node is None:
        return OperandCheck("none", why_not=src.why_not)
    chain = src.chain + extra
    if src.node.op == "placeholder":
        info = saved.get(src.node.name)
        if info is None:
            return OperandCheck("none")
        fp = {"element": info.element, "block": info.block} if info.kind == FP else {}
        if info.reduce_dims is None:
            why = "saved operand's scale groups unknown"
            return OperandCheck("saved", info.kind, info.bits, info.stochastic, why_not=why, **fp)
        kind, bits, signed, stochastic, dims = (
            info.kind,
            info.bits,
            info.signed,
            info.stochastic,
            info.reduce_dims,
        )
        shape = _static_shape(src.node)
        source = "saved"
        if kind == FP and shape is not None:
            dtype = src.node.meta["val"].dtype
            if dtype not in FP8_SAVED_DTYPES:
                why = f"saved as {dtype}, which may not hold its FP8 values"
                return OperandCheck(source, kind, bits, stochastic, why_not=why, **fp)
            if saved_fp8_grouping(info, shape) is None:
                why = "saved operand's scales span more than one axis"
                return OperandCheck(source, kind, bits, stochastic, why_not=why, **fp)
    else:
        kind, bits, signed, stochastic, dims = quantizer_facts(src.node)
        shape = value_shape(src.node)
        source = _source_kind(src.node)
        fp = _fp_facts(src.node) if kind == FP else {}
    if shape is None:
        return OperandCheck(source, kind, bits, why_not="dynamic shape", **fp)
    tracked = track_kept_dims(shape, _kept_flags(shape, dims), chain)
    if tracked is None or len(tracked[0]) != 2:
        return OperandCheck(source, kind, bits, why_not="views could not be followed", **fp)
    varies = tracked[1][axis] != "reduced"
    return OperandCheck(source, kind, bits, stochastic, signed, varies, **fp)


def annotate_gemm_kernels(
    gm: fx.GraphModule,
    saved: dict[str, SavedQuantized] | None = None,
    triton_ok: bool | None = None,
    kernels: str = "auto",
) -> dict[str, tuple[str, str]]:
    """Decide the kernel of every GEMM node; store ``(kernel, reason)`` in its meta. Returns
    node name → decision. Never raises on unexpected graphs: undecidable GEMMs stay Inductor's."""
    saved = saved or {}
    decisions: dict[str, tuple[str, str]] = {}
    for node in gm.graph.nodes:
        try:
            ops = gemm_operands(node)
        except (KeyError, AttributeError, IndexError):
            ops = None
        if ops is None:
            if node.op == "call_function" and node.target is qops.qmatmul_rq.default:
                node.meta[KERNEL_META] = decisions[node.name] = (KERNEL_INDUCTOR, _requant_gemm_reason(node))
            elif node.op == "call_function" and node.target in (aten.mm.default, qops.qmatmul.default):
                node.meta[KERNEL_META] = decisions[node.name] = (KERNEL_INDUCTOR, "batched or 1-D GEMM")
            elif node.op == "call_function" and node.target in _NOT_ROUTED:
                node.meta[KERNEL_META] = decisions[node.name] = (KERNEL_INDUCTOR, _NOT_ROUTED[node.target])
            continue
        out = node.meta.get("val")
        try:
            a = _check(find_source(ops.a), ops.a_extra, 1, saved)
            b = _check(find_source(ops.b), [], 0, saved)
        except Exception as exc:  # an unforeseen graph: keep it on Inductor and say so
            node.meta[KERNEL_META] = decisions[node.name] = (
                KERNEL_INDUCTOR,
                f"not analysed ({type(exc).__name__})",
            )
            continue
        device = out.device if isinstance(out, torch.Tensor) else "cpu"
        dtype = out.dtype if isinstance(out, torch.Tensor) else torch.float32
        if node.target is qops.qmatmul_rq.default and FP not in (a.kind, b.kind):
            decision = (KERNEL_INDUCTOR, REQUANT_NOT_ROUTED)
        else:
            decision = choose_gemm_kernel(device, dtype, ops.m, ops.n, ops.k, a, b, triton_ok, kernels)
        node.meta[KERNEL_META] = decisions[node.name] = decision
        if decision[0] == KERNEL_CPU:
            node.meta[BOUNDS_META] = (code_bound(a), code_bound(b))
    return decisions


def demote_triton_gemms(gm: fx.GraphModule, reason: str) -> None:
    """Send every GEMM annotated with an int8 or FP8 kernel back to Inductor, saying why (a failed
    rewrite)."""
    for node in gm.graph.nodes:
        if node.meta.get(KERNEL_META, ("",))[0] in FUSED_KERNELS:
            node.meta[KERNEL_META] = (KERNEL_INDUCTOR, reason)


def kernel_label(decision: tuple[str, str] | None) -> str:
    """``triton-int8``, ``triton-fp8``, ``cpu-int8`` or ``inductor (reason)`` for the plan."""
    if decision is None:
        return KERNEL_INDUCTOR
    kernel, reason = decision
    return f"{kernel} ({reason})" if reason else kernel
