"""No silent high precision: a GEMM the policy quantizes that runs in high precision raises under
``options={"strict": True}`` and warns once per graph otherwise; what the policy itself keeps
in high precision (``keep_first_last``, rules) is never reported."""

from __future__ import annotations

import warnings

import pytest
import torch

import qcompile
from qcompile.compiler.compiled_graphs import CompiledGraph
from qcompile.passes import SiteRecord
from qcompile.passes.analysis.read_quantized_graph import OperandFact
from qcompile.report.shortfalls import Shortfall, shortfalls
from qcompile.runtime.spec import QuantSpec
from qcompile.testing.models import EinsumMLP, mlp


def _run(model, steps=1, **options):
    compiled = torch.compile(model, backend="fqt", options=options or None)
    for _ in range(steps):
        compiled(torch.randn(4, 16)).sum().backward()
    return compiled


def _shortfall_warnings(caught):
    return [w for w in caught if issubclass(w.category, qcompile.HighPrecisionGemmWarning)]


def test_strict_fails_the_compile_naming_each_high_precision_gemm():
    with pytest.raises(torch._dynamo.exc.BackendCompilerFailed, match="strict mode") as info:
        _run(EinsumMLP(), strict=True)
    assert isinstance(info.value.inner_exception, qcompile.HighPrecisionGemmError)
    assert "<root> (einsum) weight/activation: einsum is not supported by qcompile yet" in str(info.value)


def test_without_strict_one_warning_per_graph_and_training_goes_on():
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(EinsumMLP(), steps=3)
    found = _shortfall_warnings(caught)
    assert len(found) == 1
    assert "einsum" in str(found[0].message) and "luq-int4" in str(found[0].message)


def test_what_the_policy_keeps_in_high_precision_is_not_a_shortfall():
    policy = qcompile.preset("luq-int4").replace(rules=(qcompile.Rule.high_precision(op="einsum"),))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        _run(EinsumMLP(), strict=True, policy=policy)  # keep_first_last and the rule: no error
        _run(mlp(), strict=True)
    assert _shortfall_warnings(caught) == []


def test_strict_must_be_a_bool():
    with pytest.raises(Exception, match="strict must be True or False"):
        _run(mlp(), strict="yes")


def test_an_operand_the_graph_runs_unquantized_is_reported_with_its_roles():
    """A rewritten site whose graph shows a high-precision operand (a pass that lost a quantizer)
    is a shortfall of that role only; an operand that ran quantized is not."""
    policy = qcompile.preset("luq-int4").replace(keep_first_last=False)
    decision = policy.decide("fc", "linear")
    record = SiteRecord("g0s0", "fc", "linear", [[4, 16], [8, 16]], 1024, decision, rewritten=True)
    graph = CompiledGraph(policy, [record])
    graph.facts[("g0s0", "weight")] = OperandFact(decision.weight, "qmatmul", "forward")
    graph.facts[("g0s0", "activation")] = OperandFact(QuantSpec(), "qmatmul", "forward")
    graph.facts[("g0s0", "grad_dgrad")] = OperandFact(decision.grad_dgrad, "mm", "backward")
    assert shortfalls(graph, "forward") == [
        Shortfall("fc", "linear", ("activation",), "the compiled graph runs it unquantized")
    ]
    assert shortfalls(graph, "backward") == []
