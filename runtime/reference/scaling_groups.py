"""Which elements share one quantization scale.

Every quantizer op receives ``reduce_dims``: the dimensions its max (or SAWB statistics)
reduce over. An empty list means the whole tensor (per-tensor). Keeping the reduction explicit
in the graph lets the plan read back the granularity that really ran.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch


def normalize_dims(dims: Sequence[int], ndim: int) -> list[int]:
    """Positive, sorted, de-duplicated dims; the empty list means all dims (per-tensor)."""
    if ndim == 0:
        return []
    out = sorted({d % ndim for d in dims})
    return [] if len(out) == ndim else out


def all_dims_except(ndim: int, keep: Sequence[int]) -> list[int]:
    """Dims to reduce so that one scale remains per index of ``keep``."""
    kept = {k % ndim for k in keep} if ndim else set()
    return [d for d in range(ndim) if d not in kept]


def group_amax(x: torch.Tensor, reduce_dims: Sequence[int]) -> torch.Tensor:
    """max|x| per scaling group, broadcastable against ``x``; NaN propagates."""
    a = x.abs()
    if not reduce_dims or x.ndim == 0:
        return a.amax() if x.numel() else a.new_zeros(())
    return a.amax(dim=list(reduce_dims), keepdim=True)


def group_mean(x: torch.Tensor, reduce_dims: Sequence[int]) -> torch.Tensor:
    """Mean per scaling group, broadcastable against ``x``."""
    if not reduce_dims or x.ndim == 0:
        return x.mean()
    return x.mean(dim=list(reduce_dims), keepdim=True)


def group_amin(x: torch.Tensor, reduce_dims: Sequence[int]) -> torch.Tensor:
    if not reduce_dims or x.ndim == 0:
        return x.amin()
    return x.amin(dim=list(reduce_dims), keepdim=True)


def granularity_of(reduce_dims: Sequence[int], ndim: int, role: str) -> str:
    """Human label of a reduction, read back from a graph node for the plan.

    Kept dims that form a prefix (batch, tokens) are per-sample for activations and gradients;
    a weight keeps its output-channel dim; anything else is per-channel.
    """
    dims = normalize_dims(reduce_dims, ndim)
    if not dims:
        return "per-tensor"
    kept = [d for d in range(ndim) if d not in dims]
    if role == "weight":
        return "per-channel"
    if kept == list(range(len(kept))):
        return "per-sample"
    return "per-channel"


def gradient_reduce_dims(granularity: str, ndim: int, channel_dim: int) -> list[int]:
    """Dims a gradient scale reduces over.

    per-sample keeps every dim before ``channel_dim`` (batch, tokens): the dgrad GEMM contracts
    over channels (and, for convs, the kernel window), never over those. per-channel keeps only
    ``channel_dim``: the wgrad GEMM contracts over everything else. (SCQ, docs/algorithms.md.)
    """
    if granularity == "per-tensor" or ndim == 0:
        return []
    c = channel_dim % ndim
    if granularity == "per-sample":
        return list(range(c, ndim))
    return [d for d in range(ndim) if d != c]
