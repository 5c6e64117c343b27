"""Triton is an optional extra: without it qcompile imports, compiles and trains on the CPU.

Each check runs in a fresh interpreter where ``import triton`` fails (``sys.modules["triton"] =
None``), so a module that imports Triton at import time, rather than when a Triton path is taken,
fails here even on a machine that has Triton installed.
"""

from __future__ import annotations

import ast
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import qcompile.runtime.reference

REFERENCE_DIR = Path(qcompile.runtime.reference.__file__).parent

BLOCK_TRITON = """
import sys
sys.modules["triton"] = None  # `import triton` (and `import triton.language`) now raises ImportError
"""
NO_TRITON_LOADED = """
assert not [m for m, v in sys.modules.items() if m.split(".")[0] == "triton" and v is not None]
print("ok")
"""


def _run_without_triton(body: str) -> None:
    code = BLOCK_TRITON + textwrap.dedent(body) + NO_TRITON_LOADED
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-4000:]
    assert done.stdout.strip().endswith("ok")


def test_blocking_triton_makes_its_import_fail():
    """The harness itself: with the block in place ``import triton`` raises."""
    _run_without_triton(
        """
        try:
            import triton  # noqa: F401
        except ImportError:
            pass
        else:
            raise AssertionError("triton imported despite the block")
        """
    )


def test_references_import_without_triton():
    """Every reference module imports in an interpreter without Triton."""
    names = sorted(f.stem for f in REFERENCE_DIR.glob("*.py") if f.stem != "__init__")
    _run_without_triton(
        "import qcompile.runtime.reference\n"
        + "".join(f"import qcompile.runtime.reference.{n}\n" for n in names)
    )


def test_references_import_only_torch_and_each_other():
    """`runtime/reference/*` is pure PyTorch: no module of it imports (at any depth of the file)
    the ops, the kernels, Inductor or Triton, so it stays readable and importable on its own."""
    forbidden = ("qcompile.runtime.ops", "qcompile.runtime.kernels", "torch._inductor", "triton")
    for path in sorted(REFERENCE_DIR.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                names = [node.module or ""]
            else:
                continue
            bad = [n for n in names if n.startswith(forbidden)]
            assert not bad, f"{path.name} imports {bad}"


@pytest.mark.parametrize("kernels", ["reference", "int8"])
def test_compile_train_and_plan_without_triton(kernels):
    """`import qcompile`, a CPU ``torch.compile(mlp, backend="fqt")`` forward and backward, and
    `qcompile.plan`, with Triton unimportable; ``kernels="int8"`` also routes the middle layer
    (the first and last stay high precision) to the CPU int8 GEMM where this CPU has one, so the
    codes ops and their decompositions run too."""
    _run_without_triton(
        f"""
        import torch
        import qcompile
        from torch import nn
        from qcompile.runtime.kernels.cpu_int8_gemm import cpu_int8_kernel

        torch.manual_seed(0)
        model = nn.Sequential(nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 48), nn.ReLU(), nn.Linear(48, 10))
        compiled = torch.compile(model, backend="fqt", options={{"kernels": {kernels!r}}})
        loss = compiled(torch.randn(16, 32)).square().mean()
        loss.backward()
        assert torch.isfinite(loss)
        assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
        plan = qcompile.plan(compiled)
        assert {{row.layer for row in plan.rows}} == {{"0", "2", "4"}}, [row.layer for row in plan.rows]
        on_int8 = set(plan.row("2").kernels().values()) == {{"cpu-int8"}}
        assert on_int8 == ({kernels!r} == "int8" and bool(cpu_int8_kernel()[0])), plan.row("2").kernels()
        """
    )
