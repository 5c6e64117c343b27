"""The views a graph applies between a quantizer and its GEMM, as an ``int[]`` op argument.

The fused GEMM ops receive each operand's codes in the shape its quantizer produced plus these
views, so transposes stay strides and the per-group scales become the epilogue's row / column
vectors without a copy of the operand. A chain is a flat list of records ``[op, n, arg_1..arg_n]``:

* ``PERMUTE, n, p_1..p_n``: ``t.permute(p)`` (``t()`` and ``transpose(i, j)`` are recorded so);
* ``RESHAPE, n, s_1..s_n``: ``t.reshape(s)`` (the graph's ``view`` / ``reshape`` / ``_unsafe_view``).

An ``int[]`` (not a string to parse) keeps the op schema honest about what it takes and costs
nothing to read per call.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

PERMUTE = 0
RESHAPE = 1


def encode_views(chain: Sequence[tuple[str, object]], ndim: int) -> list[int]:
    """The records of a chain of ``(name, argument)`` views (``"permute"``, ``"transpose"``,
    ``"t"``, ``"view"``) applied to a tensor of rank ``ndim``."""
    out: list[int] = []
    for name, arg in chain:
        if name == "view":
            shape = [int(s) for s in arg]
            out += [RESHAPE, len(shape), *shape]
            ndim = len(shape)
            continue
        perm = list(range(ndim))
        if name == "permute":
            perm = [int(p) % ndim for p in arg]
        elif name == "t":
            perm = perm[::-1]
        elif name == "transpose":
            i, j = (int(d) % ndim for d in arg)
            perm[i], perm[j] = perm[j], perm[i]
        else:
            raise ValueError(f"encode_views: unknown view {name!r}; valid: permute, transpose, t, view")
        out += [PERMUTE, ndim, *perm]
    return out


def replay_views(t: torch.Tensor, views: Sequence[int]) -> torch.Tensor:
    """Apply `encode_views`'s records to ``t``."""
    i = 0
    while i < len(views):
        op, n = views[i], views[i + 1]
        arg = list(views[i + 2 : i + 2 + n])
        if op == PERMUTE:
            t = t.permute(arg)
        elif op == RESHAPE:
            t = t.reshape(arg)
        else:
            raise ValueError(
                f"replay_views: unknown record {op}; valid: {PERMUTE} (permute), {RESHAPE} (reshape)"
            )
        i += 2 + n
    return t


def operand_2d(
    codes: torch.Tensor, clip: torch.Tensor, top: torch.Tensor, views: Sequence[int], axis: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """(2-D codes, scale vector along ``axis``) of one GEMM operand: the codes through the
    graph's views, and ``clip/top`` broadcast to the operand and read along the free axis."""
    return scaled_operand_2d(codes, clip / top, views, axis)


def scaled_operand_2d(
    codes: torch.Tensor, scale: torch.Tensor, views: Sequence[int], axis: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """`operand_2d` for codes whose value is ``codes · scale`` (FP8 codes and their FP32 scale):
    ``scale`` (keepdim shape) is broadcast to the codes, taken through the same views and read
    along the free axis (``axis`` 0: one per row of ``[M, K]``; 1: one per column of ``[K, N]``)."""
    a = replay_views(codes, views)
    full = replay_views(scale.expand(codes.shape), views)
    vec = full[:, 0] if axis == 0 else full[0, :]
    return a, vec
