"""LBT's per-step update: declared in the op's schema, tensor ops only (no host sync)."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

import qcompile  # noqa: F401  (registers the ops)
from qcompile.runtime import quantizer_state
from qcompile.runtime.reference.lbt import initial_gamma, lbt_step_reference


def _heavy_tailed(n: int, seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    z = torch.randn(n, generator=gen)
    return z / (torch.randn(n, 2, generator=gen).pow(2).sum(1) / 2).sqrt()


class _HostReads(TorchDispatchMode):
    """Records every op that reads a tensor's value back to Python (``.item()``, ``float(t)``,
    ``bool(t)``, ``if t:`` all dispatch ``aten._local_scalar_dense``)."""

    def __init__(self) -> None:
        super().__init__()
        self.reads: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func is torch.ops.aten._local_scalar_dense.default:
            self.reads.append(str(func))
        return func(*args, **(kwargs or {}))


def test_lbt_step_declares_the_state_it_updates():
    schema = torch.ops.qcompile.lbt_step.default._schema
    assert schema.is_mutable
    written = {a.name for a in schema.arguments if a.alias_info is not None and a.alias_info.is_write}
    assert written == {"gamma", "updates", "clipped"}


def test_a_step_reads_nothing_back_to_the_host():
    g = _heavy_tailed(40_000, seed=3).view(200, 200)
    gamma = torch.tensor(1.0, dtype=torch.float64)
    updates = torch.tensor(0, dtype=torch.int64)
    noise = torch.rand(200, 200)
    with _HostReads() as mode:
        for _ in range(2):  # the first-batch initialisation, then an ordinary step
            _, gamma, updates, clipped = lbt_step_reference(g, gamma, updates, 4, [], noise)
    assert mode.reads == []
    assert int(updates) == 2 and clipped.dtype == torch.float64
    assert abs(float(gamma) - initial_gamma(g, 4)) <= 1e-3 + 1e-12


def test_the_step_compiles_as_one_graph_and_matches_the_op():
    """``fullgraph=True`` fails on any graph break: a ``.item()``, ``float(t)`` or Python branch on
    a tensor's value in the step would be one."""
    torch._dynamo.reset()
    step = torch.compile(lbt_step_reference, fullgraph=True, backend="eager")
    g = _heavy_tailed(40_000, seed=4).view(200, 200)
    noise = torch.rand(200, 200)
    gamma = torch.tensor(1.0, dtype=torch.float64)
    updates = torch.tensor(0, dtype=torch.int64)
    eager = lbt_step_reference(g, gamma, updates, 4, [1], noise)
    compiled = step(g, gamma, updates, 4, [1], noise)
    for a, b in zip(eager, compiled, strict=True):
        torch.testing.assert_close(a, b, rtol=0, atol=0, equal_nan=True)
    explained = torch._dynamo.explain(lbt_step_reference)(g, eager[1], eager[2], 4, [1], noise)
    assert explained.graph_break_count == 0 and explained.graph_count == 1


def test_the_op_updates_the_bound_tensors_in_place():
    state = quantizer_state.QuantizerState()
    quantizer_state.bind_tag("fc|grad_dgrad|step0", state, "fc/grad_dgrad")
    gamma, updates, _ = state.lbt_tensors("fc/grad_dgrad", torch.device("cpu"))
    g = _heavy_tailed(40_000, seed=5).view(200, 200)
    torch.ops.qcompile.lbt_quantize(g, 4, [], "fc|grad_dgrad|step0")
    assert state.gamma("fc/grad_dgrad") is gamma and int(updates) == 1
    assert float(gamma) == initial_gamma(g, 4)
    g[0, 0] = float("nan")  # a non-finite step: γ and the count stay, the clipped share is NaN
    torch.ops.qcompile.lbt_quantize(g, 4, [], "fc|grad_dgrad|step0")
    assert int(updates) == 1 and float(gamma) == initial_gamma(
        _heavy_tailed(40_000, seed=5).view(200, 200), 4
    )
    assert state.last_clipped["fc/grad_dgrad"] != state.last_clipped["fc/grad_dgrad"]
