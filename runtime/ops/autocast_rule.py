"""Autocast for our GEMM ops: cast floating inputs to the *current* autocast dtype.

`torch.library.register_autocast` casts to one fixed dtype; autocast on CPU may be bf16 or fp16,
so this rule reads `torch.get_autocast_dtype` at call time, like ATen's own rule for `mm`.
"""

from __future__ import annotations

import torch

_LIB = torch.library.Library("qcompile", "FRAGMENT")


def _cast(value, dtype):
    if isinstance(value, torch.Tensor) and value.is_floating_point():
        return value.to(dtype)
    return value


def register_dynamic_autocast(op: torch._ops.OpOverload, device_type: str) -> None:
    key_name = "Autocast" + torch._C._dispatch_key_for_device(device_type)
    key = getattr(torch._C.DispatchKey, key_name)

    def run(*args):
        dtype = torch.get_autocast_dtype(device_type)
        with torch._C._ExcludeDispatchKeyGuard(torch._C.DispatchKeySet(key)):
            return op(*(_cast(a, dtype) for a in args))

    if op.has_kernel_for_dispatch_key(key):
        op.py_kernels.pop(key)
    op.py_impl(key)(run)
    _LIB.impl(op._schema.name.split("::")[1], lambda _keyset, *args: run(*args), key_name, with_keyset=True)


def register_gemm_autocast(op: torch._ops.OpOverload) -> None:
    for device_type in ("cpu", "cuda"):
        if torch._C._is_autocast_available(device_type):
            register_dynamic_autocast(op, device_type)


def common_gemm_dtype(a: torch.Tensor, b: torch.Tensor) -> torch.dtype:
    """The dtype a GEMM of ``a`` and ``b`` runs in: the lower-precision one when they differ."""
    if a.dtype == b.dtype:
        return a.dtype
    for low in (torch.bfloat16, torch.float16):
        if low in (a.dtype, b.dtype):
            return low
    return torch.promote_types(a.dtype, b.dtype)
