"""Shared helpers of the Triton kernels: is Triton usable, is it interpreting, the 2-D view a
quantizer kernel walks, and the key (seed, offset) of its in-kernel Philox draw.

Every kernel works on a 2-D (rows × columns) strided view with one scale per row, per column or
per tensor; `as_2d` finds that view for an N-d tensor and a scaling group (``reduce_dims``), so
the kernels never need an N-d index computation.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from qcompile.runtime.reference.scaling_groups import normalize_dims


@functools.cache
def triton_available() -> bool:
    """Triton imports (it is the optional ``cuda`` / ``test`` extra)."""
    try:
        import triton  # noqa: F401
        import triton.language  # noqa: F401
    except Exception:  # ImportError, or a broken install that fails at import
        return False
    return True


def interpreting() -> bool:
    """``TRITON_INTERPRET=1``: kernels run on CPU tensors through Triton's interpreter."""
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def kernels_can_run_on(device: torch.device) -> bool:
    """The Triton kernels can run on tensors of ``device``: CUDA with Triton, or any device
    under the interpreter (tests)."""
    if not triton_available():
        return False
    return device.type == "cuda" or (interpreting() and device.type == "cpu")


# Warps per quantizer / reduction program. A quantizer's GPU tile holds 4096 elements: at 4 warps
# (32 per thread) the sm_90 build took 222-241 registers per thread, two programs per SM. At 8
# warps it takes 79-124, no spills (`benchmarks/gpu_compile_report.py`): more warps in flight for
# these memory-bound kernels.
QUANTIZE_WARPS = 8


def gpu_tiles(device: torch.device) -> bool:
    """Launch with GPU tile sizes (and the GEMM's autotuning) rather than the interpreter's small
    ones: on CUDA, unless interpreting. One switch, so a check can compile every kernel as a GPU
    run would launch it (`tests/test_triton_gpu_compile.py`)."""
    return device.type == "cuda" and not interpreting()


def philox_key(
    device: torch.device, seed: int | None = None, offset: int = 0, generator: torch.Generator | None = None
) -> torch.Tensor:
    """The ``(seed, offset)`` of a kernel's `tl.rand` draw as an int64 ``[2]`` tensor on
    ``device``; the kernel loads it and draws element ``i``'s uniform at Philox counter
    ``offset + i``.

    Without ``seed`` both come from torch's generator of ``device`` by a ``randint`` on the
    device itself: reproducible under `torch.manual_seed`, fresh on every call, no host
    synchronisation, and safe under CUDA graphs (``mode="reduce-overhead"``), which replay the
    ``randint`` (advancing the generator) rather than a seed frozen at capture. The process rank
    is mixed into the seed (as `random_bits.draw_seed` does) so data-parallel ranks draw
    independent noise. An explicit ``seed``/``offset`` (tests, or splitting one stream) is used
    as given; it is copied from the host, so it is not for use under CUDA-graph capture."""
    from qcompile.runtime.reference.random_bits import RANK_MIX, process_rank

    if seed is not None:  # a host-to-device copy: for tests and explicit streams, not for capture
        return torch.tensor([seed, offset], dtype=torch.int64, device=device)
    key = torch.randint(0, 2**31 - 1, (2,), device=device, dtype=torch.int64, generator=generator)
    rank = process_rank()
    if rank:  # a scalar add on the device (no copy from the host), kept below 2^31 - 1
        key[:1] = (key[:1] + rank * RANK_MIX) % (2**31 - 1)
    return key


def alloc_codes(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """The int8 code buffer a quantizer kernel fills (tests replace it by a poisoned one to catch
    elements a kernel leaves unwritten)."""
    return torch.empty((rows, cols), device=device, dtype=torch.int8)


def alloc_packed(rows: int, cols: int, device: torch.device) -> torch.Tensor:
    """The uint8 buffer a quantizer kernel packs its codes into, ``cols`` bytes per row (tests
    replace it by a poisoned one)."""
    return torch.empty((rows, cols), device=device, dtype=torch.uint8)


@dataclass(frozen=True)
class View2d:
    """``x`` as a 2-D strided view: one scale per row (``axis=0``), per column (``axis=1``) or
    per tensor (``axis=None``). ``back`` maps a contiguous (rows, cols) result to ``x``'s shape."""

    x: torch.Tensor
    axis: int | None
    back: Callable[[torch.Tensor], torch.Tensor]
    group_shape: tuple[int, ...]


def as_2d(x: torch.Tensor, reduce_dims: Sequence[int]) -> View2d:
    """A 2-D view of ``x`` whose scaling groups (elements sharing one scale) are rows, columns
    or the whole tensor. 2-D inputs keep their strides (no copy: transposed operands stay
    transposed); other ranks are made contiguous and flattened, permuting the kept dims first
    when they are not a prefix or the last dim."""
    dims = normalize_dims(reduce_dims, x.ndim)
    shape = tuple(x.shape)
    kept = [d for d in range(x.ndim) if d not in dims] if dims else []
    group_shape = tuple(1 if (not dims or d in dims) else shape[d] for d in range(x.ndim))
    if x.ndim == 2:
        axis = None if not dims else (0 if kept == [0] else 1)
        return View2d(x, axis, lambda c: c, group_shape)
    if x.ndim < 2:
        v = x.reshape(1, -1)
        return View2d(v, None if not dims else 1, lambda c: c.reshape(shape), group_shape)
    if not dims:
        v = x.contiguous().view(-1, shape[-1])
        return View2d(v, None, lambda c: c.view(shape), group_shape)
    if kept == list(range(len(kept))):  # per-sample: kept dims lead
        v = x.contiguous().view(int(torch.tensor(shape[: len(kept)]).prod()), -1)
        return View2d(v, 0, lambda c: c.view(shape), group_shape)
    if kept == [x.ndim - 1]:  # per-channel on the last dim
        v = x.contiguous().view(-1, shape[-1])
        return View2d(v, 1, lambda c: c.view(shape), group_shape)
    perm = kept + dims
    inv = [perm.index(d) for d in range(x.ndim)]
    permuted_shape = tuple(shape[d] for d in perm)
    v = x.permute(perm).contiguous().view(int(torch.tensor(permuted_shape[: len(kept)]).prod()), -1)
    return View2d(v, 0, lambda c: c.view(permuted_shape).permute(inv), group_shape)
