"""Where the Triton kernel tests run.

By default (CI, any machine): on CPU tensors through Triton's interpreter, ``TRITON_INTERPRET=1``,
which must be set before Triton is imported because ``@triton.jit`` reads it when a kernel module is
imported. It concerns Triton kernels only; Inductor's CPU code generation does not read it.

``QCOMPILE_TEST_DEVICE=cuda`` (a session lent a GPU): the same tests run the kernels compiled on the
GPU. Inputs are still made and checked on CPU; `on_device` moves each kernel call's tensors there
and its results back, so every assertion, reference and seed stays as it is.
"""

from __future__ import annotations

import dataclasses
import functools
import os

DEVICE = os.environ.get("QCOMPILE_TEST_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    raise ValueError(f"QCOMPILE_TEST_DEVICE must be 'cpu' or 'cuda', got {DEVICE!r}")
if DEVICE == "cpu":
    os.environ.setdefault("TRITON_INTERPRET", "1")


def kernels_testable() -> tuple[bool, str]:
    """(can the kernel tests run here, why not)."""
    if DEVICE == "cuda":
        import torch

        if os.environ.get("TRITON_INTERPRET", "0") not in ("", "0"):
            return False, "QCOMPILE_TEST_DEVICE=cuda with TRITON_INTERPRET set"
        return torch.cuda.is_available(), "QCOMPILE_TEST_DEVICE=cuda but no CUDA device"
    return os.environ.get("TRITON_INTERPRET") == "1", "kernel tests run on CPU under TRITON_INTERPRET=1"


def _move(obj, device: str):
    """Tensors (also inside tuples, lists and dataclasses such as `Codes`, `Packed`, `View2d`)
    moved to ``device``; everything else as it is."""
    import torch

    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, (tuple, list)):
        return type(obj)(_move(o, device) for o in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.replace(
            obj, **{f.name: _move(getattr(obj, f.name), device) for f in dataclasses.fields(obj)}
        )
    return obj


def on_device(fn):
    """``fn`` run on `DEVICE`: arguments moved there, results moved back to CPU."""
    if DEVICE == "cpu":
        return fn

    @functools.wraps(fn)
    def run(*args, **kwargs):
        args, kwargs = _move(args, DEVICE), {k: _move(v, DEVICE) for k, v in kwargs.items()}
        return _move(fn(*args, **kwargs), "cpu")

    return run


def epilogue_with_bias_matches(y, reference, a, b, rs, cs, bias) -> bool:
    """A scaled GEMM's ``(acc·rs)·cs + bias`` bit for bit, rounded after each operation (the
    interpreter) or with the bias add fused into the last multiply: a GPU build contracts
    ``t·cs + bias`` into one FMA (on an H200 the three-rounding comparison alone failed, for the
    int8 and the FP8 kernel). The float64 ``t·cs + bias`` is exact for these test sizes, so
    rounding it once is the FMA. ``reference(a, b)`` without scales is the accumulator."""
    plain = reference(a, b, rs, cs, bias)
    t = reference(a, b).float() * rs.float()[:, None]
    fma = (t.double() * cs.double()[None, :] + bias.double()[None, :]).float()
    return bool(((y == plain) | (y == fma)).all())
