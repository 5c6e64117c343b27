"""MLIR export through torch-mlir: both graphs, raw torch dialect and linalg-on-tensors, parse and verify."""

from __future__ import annotations

import json

import pytest
import torch
from qcompile.runtime import luq_quantize_reference

from qcompile.export_mlir import luq_quantize_portable
from tests.export_helpers import small_resnet, tiny_gpt2


def test_portable_luq_equals_reference_for_the_same_noise():
    """The LUQ used for lowering (no float bit-cast) is the reference, bit for bit, incl. powers of two."""
    torch.manual_seed(0)
    g = torch.randn(16, 64) * torch.logspace(-4, 1, 64)
    g[0, :8] = torch.tensor([0.0, 1.0, 2.0, 4.0, -8.0, 0.5, 64.0, -64.0])
    for dims in ([], [1], [0]):
        noise = torch.rand_like(g)
        ref = luq_quantize_reference(g, 4, dims, noise=noise)
        assert torch.equal(luq_quantize_portable(g, 4, dims, noise=noise), ref)


@pytest.mark.parametrize("factory", [small_resnet, tiny_gpt2], ids=["resnet", "gpt2"])
def test_mlir_modules_parse_and_verify(factory, tmp_path):
    pytest.importorskip("torch_mlir", reason="MLIR export needs `pip install qcompile[export]`")
    import qcompile
    from qcompile.export_mlir import parse_and_verify

    model, inputs = factory()
    out = qcompile.export(model, inputs, tmp_path / "mlir", format="mlir")
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["format"] == "mlir" and set(manifest["graphs"]) == {"forward", "backward"}
    for kind, graph in manifest["graphs"].items():
        raw = (out / graph["torch_file"]).read_text()
        linalg = (out / graph["linalg_file"]).read_text()
        parse_and_verify(raw)
        parse_and_verify(linalg)
        assert f"func.func @{kind}(" in raw and f"func.func @{kind}(" in linalg
        # Raw form: quantizers stay recognisable custom ops; lowered form: nothing torch-level left.
        quantizer = "torch.qcompile.int_quantize" if kind == "forward" else "torch.qcompile.luq_quantize"
        assert f'torch.operator "{quantizer}"' in raw
        assert "torch.operator" not in linalg and "torch.aten" not in linalg and "linalg." in linalg
        n_args = linalg.split(f"func.func @{kind}(", 1)[1].split(")", 1)[0].count("%arg")
        assert n_args == len(graph["arguments"])
    fw_results = manifest["graphs"]["forward"]["results"]
    saved = {r["name"] for r in fw_results if r["kind"] == "saved"}
    assert saved and saved <= {a["name"] for a in manifest["graphs"]["backward"]["arguments"]}


def test_broken_module_fails_verification():
    pytest.importorskip("torch_mlir", reason="MLIR export needs `pip install qcompile[export]`")
    from qcompile.export_mlir import parse_and_verify

    with pytest.raises(Exception):  # noqa: B017  (the MLIR bindings raise their own error type)
        parse_and_verify("func.func @f(%a: tensor<2xf32>) -> tensor<3xf32> { return %a : tensor<2xf32> }")
