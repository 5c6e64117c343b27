"""The CPU integer GEMM: int8 codes × int8 codes → exact int32 sums → scaled float32.

``qcompile::cpu_int8_mm(a, b, row_scale, col_scale, a_bound, b_bound)`` computes
``row_scale[m] · col_scale[n] · Σ_k a[m,k]·b[k,n]`` for int8 code matrices of any strides (the
transposed views of the dgrad and wgrad GEMMs are read in place by the kernel's packing, never
copied first). The sum is exact in int32 and the epilogue runs in float64, so the result is the
float64 product of the same codes and scales rounded once to float32. Compiled, the epilogue is
`scale_int32_fma` (float32 error-free products, vectorised) wherever the sums fit float32 exactly.

Which kernel runs (`cpu_int8_kernel`):

* ``avx2-maddubs``: `cpu_int8_gemm.cpp`, compiled at first use by Inductor's own C++ code cache.
  On x86 CPUs without VNNI (AVX2 only; e.g. AMD Zen 3) ``aten._int_mm`` has no fast kernel
  (measured 20-50x slower than float32 ``mm`` there) and oneDNN's u8s8 linear pays a weight
  prepack per call (0.02x of float32 at 64³, break-even near 256×1024×1024).
* ``int-mm``: ``aten._int_mm`` (oneDNN's VNNI / AMX kernels) where the CPU has VNNI.
* none elsewhere (the GEMM stays a float simulation, and the plan says why).

`cpu_int8_mm_reference` is the float64 definition both are tested against.
"""

from __future__ import annotations

import ctypes
import functools
from pathlib import Path

import torch

from qcompile.runtime.ops.gemm_codes import SCALED_GEMM_ARGS, scaled_gemm_fake
from qcompile.runtime.reference.view_chains import operand_2d

_SOURCE = Path(__file__).with_name("cpu_int8_gemm.cpp")
INT16_MAX = 32767


def cpu_int8_mm_reference(
    a: torch.Tensor, b: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor
) -> torch.Tensor:
    """The definition: the float64 product of the codes, scaled in float64, rounded once."""
    acc = a.double() @ b.double()
    return (acc * row_scale.double()[:, None] * col_scale.double()[None, :]).float()


def saturation_free_steps(a_bound: int, b_bound: int) -> int:
    """k-groups of 4 the AVX2 kernel may add in int16 before widening: A is shifted by
    ``a_bound`` to ``0..2·a_bound``, each `vpmaddubsw` lane adds two products, so one step adds
    at most ``2·(2·a_bound)·b_bound``. 0 when even one step could saturate (the kernel cannot
    take these codes)."""
    per_step = 2 * (2 * a_bound) * b_bound
    return INT16_MAX // per_step if per_step else 1 << 20


@functools.cache
def _library():
    from torch._inductor.codecache import CppCodeCache

    return CppCodeCache.load(_SOURCE.read_text())


@functools.cache
def avx2_kernel_available() -> bool:
    """Whether this CPU runs the AVX2 kernel (AVX2 present and the C++ source compiled), whether
    or not `cpu_int8_kernel` picks it: a VNNI CPU prefers ``aten._int_mm`` but runs this kernel
    too, so its exactness is tested on every x86 machine."""
    if not getattr(torch.cpu, "_is_avx2_supported", lambda: False)():
        return False
    try:
        return bool(_library().qc_int8_mm_has_avx2())
    except Exception:  # no C++ compiler
        return False


@functools.cache
def cpu_int8_kernel() -> tuple[str, str]:
    """(kernel, why): the integer GEMM this CPU runs fast, or ``("", reason)`` if none.

    Read from the CPU's instruction sets (``torch.cpu``): VNNI (AVX512-VNNI, AVX-VNNI or AMX)
    → ``int-mm``; AVX2 → ``avx2-maddubs`` (if the C++ kernel compiles); else none."""
    cpu = torch.cpu
    if (
        getattr(cpu, "_is_vnni_supported", lambda: False)()
        or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
    ):
        return "int-mm", "VNNI: aten._int_mm (oneDNN)"
    if not getattr(cpu, "_is_avx2_supported", lambda: False)():
        return "", f"no int8 dot-product instructions ({torch.backends.cpu.get_cpu_capability()})"
    try:
        lib = _library()
    except Exception as exc:  # no C++ compiler: the GEMMs stay simulated, and the plan says why
        return "", f"AVX2 kernel did not compile ({type(exc).__name__})"
    if not lib.qc_int8_mm_has_avx2():
        return "", "AVX2 kernel built without AVX2"
    return "avx2-maddubs", "AVX2 without VNNI: vpmaddubsw kernel"


def _ptr(t: torch.Tensor) -> ctypes.c_void_p:
    return ctypes.c_void_p(t.data_ptr())


def avx2_int8_mm(a, b, row_scale, col_scale, a_bound: int, b_bound: int) -> torch.Tensor:
    """`cpu_int8_gemm.cpp`'s kernel (A shifted by ``a_bound``, int16 sums for the steps
    `saturation_free_steps` allows)."""
    steps = saturation_free_steps(a_bound, b_bound)
    if steps < 1 or a_bound > 127:
        raise ValueError(f"codes bounded by {a_bound} and {b_bound} would saturate the AVX2 kernel")
    m, k = a.shape
    n = b.shape[1]
    kp, np_ = -(-k // 4) * 4, -(-n // 16) * 16
    out = torch.empty(m, n, dtype=torch.float32)
    bp = torch.empty(np_ * kp, dtype=torch.int8)
    colsum = torch.empty(np_, dtype=torch.int32)
    ap = torch.empty(m * kp, dtype=torch.uint8)
    rs = row_scale.float().contiguous()
    cs = col_scale.float().contiguous()
    i64 = ctypes.c_int64
    _library().qc_int8_mm(
        _ptr(a), i64(m), i64(k), i64(a.stride(0)), i64(a.stride(1)),
        _ptr(b), i64(n), i64(b.stride(0)), i64(b.stride(1)),
        _ptr(rs), _ptr(cs), _ptr(out), ctypes.c_int32(a_bound), i64(steps),
        _ptr(bp), _ptr(colsum), _ptr(ap),
    )  # fmt: skip
    return out


def int_mm_scaled(a, b, row_scale, col_scale) -> torch.Tensor:
    """``aten._int_mm`` (int32 sums; oneDNN's VNNI kernel) with the float64 epilogue: the eager
    path, bit for bit `cpu_int8_mm_reference`."""
    acc = torch._int_mm(a, b)
    return (acc.double() * row_scale.double()[:, None] * col_scale.double()[None, :]).float()


# Largest |int32 sum| that converts to float32 exactly (24-bit significand).
FLOAT32_EXACT_INT = 1 << 24


def float32_epilogue_is_exact(a_bound: int, b_bound: int, k) -> bool:
    """Whether every sum of ``k`` products of codes bounded by ``a_bound``/``b_bound`` is an
    integer float32 holds exactly (the condition of `scale_int32_fma`)."""
    return isinstance(k, int) and a_bound * b_bound * k < FLOAT32_EXACT_INT


def scale_int32_fma(acc: torch.Tensor, row_scale: torch.Tensor, col_scale: torch.Tensor) -> torch.Tensor:
    """``acc · r[:, None] · c[None, :]`` to float32 in float32 arithmetic, for Inductor to fuse.

    Why not float64: ATen's CPU vectors have no int32/float ↔ double conversion, so Inductor's
    float64 epilogue converts one element at a time (weight-gradient epilogue of a 1024×1024
    layer: 0.95 ms against 0.44 ms vectorised). Why it is still the float64 product up to the
    final rounding: with ``|acc| < 2^24`` (`float32_epilogue_is_exact`) ``a = float(acc)`` is
    exact; ``q + e = r·c`` and ``h + l = a·q`` are exact error-free products (TwoProduct with a
    fused multiply-add; Ogita, Rump & Oishi, "Accurate sum and dot product", SIAM J. Sci. Comput.
    26(6), 2005), so ``a·r·c = h + l + a·e`` exactly, and ``h + fma(a, e, l)`` rounds it with a
    relative error below 2^-47 before the final rounding: it equals the correctly rounded product
    except within 2^-47 of a rounding tie (1 element in 16.8M differed from the float64 path, by
    one ulp, on random sums up to 2^24 and scales over eight decades). Inductor emits the fused
    multiply-adds as ``fmadd`` / ``std::fma``; run eagerly, its ``fma`` prim rounds the product
    first, so only the compiled path uses this function. The products are error-free while
    ``r·c`` and ``a·q`` stay normal floats (above 2^-126); scales whose product is that small
    (gradients below ~1e-36) lose precision here that the float64 path keeps."""
    from torch._inductor.inductor_prims import fma

    a = acc.float()
    r, c = row_scale.float()[:, None], col_scale.float()[None, :]
    q = r * c
    e = fma(r, c, -q)
    h = a * q
    return h + fma(a, e, fma(a, q, -h))


@torch.library.custom_op("qcompile::cpu_int8_mm", mutates_args=())
def cpu_int8_mm(
    a: torch.Tensor,
    b: torch.Tensor,
    row_scale: torch.Tensor,
    col_scale: torch.Tensor,
    a_bound: int,
    b_bound: int,
) -> torch.Tensor:
    """``row_scale[:, None] · (a @ b) · col_scale[None, :]`` for int8 codes ``a`` [M, K] and
    ``b`` [K, N] with ``|a| <= a_bound``, ``|b| <= b_bound``, on the CPU's integer kernel
    (`cpu_int8_kernel`), float32 out. Without one it computes the reference."""
    kernel, _ = cpu_int8_kernel()
    if a.device.type != "cpu" or a.numel() == 0 or b.numel() == 0:
        kernel = ""
    if kernel == "avx2-maddubs" and saturation_free_steps(a_bound, b_bound) >= 1 and a_bound <= 127:
        return avx2_int8_mm(a, b, row_scale, col_scale, a_bound, b_bound)
    if kernel == "int-mm":
        return int_mm_scaled(a, b, row_scale, col_scale)
    return cpu_int8_mm_reference(a, b, row_scale, col_scale)


@cpu_int8_mm.register_fake
def _cpu_int8_mm_fake(a, b, row_scale, col_scale, a_bound, b_bound):
    return a.new_empty((a.shape[0], b.shape[1]), dtype=torch.float32)


@torch.library.custom_op(
    "qcompile::scaled_int8_gemm_cpu",
    mutates_args=(),
    schema=f"({SCALED_GEMM_ARGS}, int a_bound, int b_bound) -> Tensor",
)
def scaled_int8_gemm_cpu(
    a_codes: torch.Tensor,
    a_clip: torch.Tensor,
    a_top: torch.Tensor,
    b_codes: torch.Tensor,
    b_clip: torch.Tensor,
    b_top: torch.Tensor,
    bias: torch.Tensor | None,
    a_views: list[int],
    b_views: list[int],
    out_shape: list[int],
    out_dtype: torch.dtype,
    a_bound: int,
    b_bound: int,
) -> torch.Tensor:
    """`scaled_int8_gemm` (same arguments: codes, scales, views and bias) on the CPU's integer
    GEMM, plus the code bounds ``a_bound``/``b_bound`` (largest ``|code|`` each operand's
    quantizer can give) that let the AVX2 kernel add in int16 without saturating. Inductor
    receives its decomposition: views and scale vectors inline, `cpu_int8_mm` as one call, the
    bias and cast fused into whatever consumes the output."""
    return scaled_int8_gemm_cpu_decomposition(
        a_codes, a_clip, a_top, b_codes, b_clip, b_top, bias, a_views, b_views, out_shape, out_dtype, a_bound,
        b_bound, compiled=False,
    )  # fmt: skip


def scaled_int8_gemm_cpu_decomposition(
    a_codes, a_clip, a_top, b_codes, b_clip, b_top, bias, a_views, b_views, out_shape, out_dtype, a_bound, b_bound,
    compiled: bool = True,
):  # fmt: skip
    """`scaled_int8_gemm_cpu` as Inductor receives it (``compiled``), or as it runs eagerly."""
    a, rs = operand_2d(a_codes, a_clip, a_top, a_views, 0)
    b, cs = operand_2d(b_codes, b_clip, b_top, b_views, 1)
    if cpu_int8_kernel()[0] == "int-mm" and a_codes.device.type == "cpu":
        # `aten._int_mm` as Inductor's own extern GEMM, and the scale epilogue fused into the
        # loops that read the product (bias, activation, the next quantizer), not three eager
        # passes through float64 temporaries: those cost more than the GEMM itself (measured at
        # 1024x256x1024: 0.55x the float32 `mm` eager, the bare `_int_mm` 3.5x). An opaque C++
        # epilogue (one vectorised float64 pass) was tried and lost in the step (MLP width 1024:
        # 1.42x FP32 against 1.11x fused): the product is then written and read again instead of
        # being recomputed inside the backward quantizer's loops.
        if compiled and float32_epilogue_is_exact(a_bound, b_bound, a.shape[1]):
            out = scale_int32_fma(torch._int_mm(a, b), rs, cs)
        else:
            out = int_mm_scaled(a, b, rs, cs)
    else:
        out = torch.ops.qcompile.cpu_int8_mm(a, b, rs, cs, a_bound, b_bound)
    if bias is not None:
        out = out + bias.float()[None, :]
    return out.to(out_dtype).reshape(out_shape)


scaled_int8_gemm_cpu.register_fake(scaled_gemm_fake)
