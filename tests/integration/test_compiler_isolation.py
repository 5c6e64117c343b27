"""qcompile leaves the rest of the process alone: importing it changes nothing in Dynamo, the
attention tracing rule holds only for frames compiled with ``fqt``, an export keeps the user's
compiled code, and AOTAutograd's cache is on with the plan surviving a hit."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import torch.nn as nn

import qcompile
from qcompile.testing.models import mlp


def _python(code: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run ``code`` in a fresh interpreter (nothing imported yet), failing the test on an error."""
    result = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, **(env or {})},
    )
    assert result.returncode == 0, result.stderr[-4000:]
    return result


def _opaque_attention(gm: torch.fx.GraphModule) -> bool:
    return any(n.target is torch.nn.functional.multi_head_attention_forward for n in gm.graph.nodes)


def test_import_changes_nothing_in_dynamo():
    out = _python(
        """
        import torch
        from torch._dynamo import trace_rules
        from torch._dynamo.backends import registry

        rules = dict(trace_rules.torch_non_c_binding_in_graph_functions)
        rule_map = dict(trace_rules.get_torch_obj_rule_map())
        compilers = dict(registry._COMPILER_FNS)
        starts = list(torch._dynamo.callback_handler.start_callbacks)
        import qcompile, sys

        assert trace_rules.torch_non_c_binding_in_graph_functions == rules
        assert trace_rules.get_torch_obj_rule_map() == rule_map
        assert registry._COMPILER_FNS == compilers
        assert torch._dynamo.callback_handler.start_callbacks == starts
        assert "qcompile.compiler.backend" not in sys.modules
        qcompile.register()
        qcompile.register()  # idempotent
        assert registry.lookup_backend("fqt") is qcompile.fqt_backend
        print("ok")
        """
    )
    assert out.stdout.strip() == "ok"


def test_attention_rule_only_for_fqt_frames():
    # The hooks are in place once the backend has been resolved (here by hand: the conftest's
    # `torch._dynamo.reset` drops Dynamo's compile callbacks, see `qcompile.compiler.trace_rules`).
    qcompile.register()
    torch.manual_seed(0)
    layer = nn.TransformerEncoderLayer(16, 2, 32, dropout=0.0, batch_first=True)
    x = torch.randn(2, 5, 16)
    graphs: list[torch.fx.GraphModule] = []

    def counting(gm, example_inputs):
        graphs.append(gm)
        return gm.forward

    torch.compile(layer, backend=counting)(x)
    assert graphs and any(_opaque_attention(g) for g in graphs)

    plan = qcompile.plan(layer, x, policy=qcompile.preset("luq-int4").replace(keep_first_last=False))
    projections = [r for r in plan if r.layer.startswith("self_attn") and r.op == "linear"]
    assert {r.layer for r in projections} == {"self_attn.in_proj", "self_attn.out_proj"}
    assert all(r.weight.bits == 4 for r in projections)

    # Other backends' graphs after an fqt compile are still as torch makes them.
    graphs.clear()
    torch.compile(copy.deepcopy(layer), backend=lambda gm, inputs: counting(gm, inputs))(x)
    assert graphs and any(_opaque_attention(g) for g in graphs)


def test_fqt_traces_into_attention_right_after_a_dynamo_reset():
    torch.manual_seed(0)
    mha = nn.MultiheadAttention(16, 2, batch_first=True)
    x = torch.randn(2, 5, 16)
    qcompile.plan(mha, (x, x, x))  # the backend is resolved and has run once
    torch._dynamo.reset()  # drops Dynamo's compile callbacks
    compiled = torch.compile(mha, backend="fqt", options={"policy": "luq-int4"})
    compiled(x, x, x)[0].sum().backward()
    assert [r.op for r in qcompile.plan(compiled)] == ["linear", "bmm", "bmm", "linear"]


def test_export_keeps_the_users_compiled_code(tmp_path):
    pytest.importorskip("onnx", reason="ONNX export needs `pip install qcompile[export]`")
    torch.manual_seed(0)
    model = mlp()
    x = torch.randn(8, 16)
    calls = []

    def counting(gm, example_inputs):
        calls.append(gm)
        return gm.forward

    compiled = torch.compile(model, backend=counting)
    compiled(x)
    assert len(calls) == 1
    qcompile.export(model, x, tmp_path / "onnx")
    compiled(x)
    assert len(calls) == 1, "the user's model recompiled after qcompile.export"


def _compile_in_fresh_process(cache_dir: Path) -> dict:
    out = _python(
        """
        import json, torch, qcompile
        from torch._dynamo.utils import counters
        from qcompile.testing.models import mlp

        torch.manual_seed(0)
        model = mlp()
        compiled = torch.compile(model, backend="fqt")
        compiled(torch.randn(8, 16)).sum().backward()
        print(json.dumps({"plan": str(qcompile.plan(compiled)), "aot": dict(counters["aot_autograd"])}))
        """,
        # The FX graph cache on, whatever the calling process's environment says (the AOTAutograd
        # cache needs it; a benchmark imported earlier may have switched it off for its timing).
        # The AOTAutograd cache is left to its default: forcing it by environment would also
        # override the backend's own "compile again without the cache" fallback.
        env={"TORCHINDUCTOR_CACHE_DIR": str(cache_dir), "TORCHINDUCTOR_FX_GRAPH_CACHE": "1"},
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_plan_survives_an_aot_autograd_cache_hit(tmp_path):
    cold = _compile_in_fresh_process(tmp_path)
    assert cold["aot"].get("autograd_cache_saved") == 1
    warm = _compile_in_fresh_process(tmp_path)
    assert warm["aot"].get("autograd_cache_hit") == 1
    assert warm["plan"] == cold["plan"]
    # A hit whose stored plan is gone compiles again (the plan must never come out empty).
    for f in (tmp_path / "qcompile_plans").iterdir():
        f.unlink()
    again = _compile_in_fresh_process(tmp_path)
    assert again["aot"].get("autograd_cache_hit") == 1
    assert again["plan"] == cold["plan"]


def test_mlir_export_never_imports_onnx(tmp_path):
    pytest.importorskip("torch_mlir", reason="MLIR export needs `pip install qcompile[export]`")
    out = _python(
        f"""
        import sys
        sys.modules["onnx"] = None  # any `import onnx` now fails
        import torch, qcompile
        from qcompile.testing.models import mlp

        torch.manual_seed(0)
        qcompile.export(mlp(), torch.randn(8, 16), {str(tmp_path / "mlir")!r}, format="mlir")
        print("ok")
        """
    )
    assert out.stdout.strip().splitlines()[-1] == "ok"
