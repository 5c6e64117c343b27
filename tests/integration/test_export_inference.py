"""Inference export of a model trained with fqt: one eval forward graph, no saved-for-backward
outputs, each weight stored as INT4 codes (DequantizeLinear) with its scale, activations Q/DQ as
in training. ONNX Runtime's output equals the compiled model's eval forward to float rounding,
and the file is a fraction of the FP32 export's."""

from __future__ import annotations

import json
import os

import pytest
import torch

import qcompile
from qcompile.testing.models import mlp, small_resnet

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def _ort_output(path, x: torch.Tensor) -> torch.Tensor:
    session = ort.InferenceSession(str(path))
    (name,) = [i.name for i in session.get_inputs()]
    return torch.from_numpy(session.run(None, {name: x.numpy()})[0])


@pytest.mark.parametrize("make, shape", [(lambda: mlp(width=64), (8, 16)), (small_resnet, (4, 3, 8, 8))])
def test_onnx_runtime_equals_the_compiled_eval_forward(tmp_path, make, shape):
    torch.manual_seed(0)
    model, x = make(), torch.randn(*shape)
    torch.compile(model, backend="fqt")(x).square().mean().backward()  # a training step first
    out = qcompile.export(model, (x,), tmp_path / "inf", graphs="inference")
    model.eval()
    with torch.no_grad():
        expected = torch.compile(model, backend="fqt")(x)
    got = _ort_output(out / "inference.onnx", x)
    assert torch.allclose(got, expected, rtol=1e-5, atol=1e-6), (got - expected).abs().max()

    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["graph_kind"] == "inference"
    assert [o["name"] for o in manifest["graphs"]["inference"]["outputs"]] == ["output_0"]  # nothing saved
    folded = {w["parameter"]: w for w in manifest["weights"]}
    quantized = [r.layer for r in qcompile.plan(model).rows if r.weight.ran and r.weight.spec.bits == 4]
    assert {p.rsplit(".", 1)[0] for p in folded} == set(quantized) and quantized
    graph = onnx.load(str(out / "inference.onnx")).graph
    inits = {t.name: t for t in graph.initializer}
    for name, w in folded.items():
        assert w["format"] == "int4" and inits[f"{name}.codes"].data_type == onnx.TensorProto.INT4
        assert name not in inits  # the float32 weight is not written
        assert len(inits[f"{name}.codes"].raw_data) == (w["fp32_bytes"] // 4 + 1) // 2
    assert any(n.op_type == "DequantizeLinear" for n in graph.node)


def test_int4_weights_shrink_the_file_against_the_fp32_export(tmp_path):
    torch.manual_seed(0)
    model, x = mlp(width=256), torch.randn(4, 16)
    policy = qcompile.preset("luq-int4").replace(keep_first_last=False)
    quantized = qcompile.export(model, (x,), tmp_path / "q", graphs="inference", policy=policy)
    fp32 = qcompile.export(model, (x,), tmp_path / "f", graphs="inference", policy="fp32")
    ratio = os.path.getsize(quantized / "inference.onnx") / os.path.getsize(fp32 / "inference.onnx")
    assert 0.12 < ratio < 0.2  # 4-bit weights: 1/8 of float32, plus the activation quantizers


def test_bad_graphs_values_name_the_choices(tmp_path):
    with pytest.raises(ValueError, match="valid choices: training, inference"):
        qcompile.export(mlp(), (torch.randn(2, 16),), tmp_path / "x", graphs="eval")
    with pytest.raises(ValueError, match="ONNX only"):
        qcompile.export(mlp(), (torch.randn(2, 16),), tmp_path / "x", format="mlir", graphs="inference")


def test_cli_writes_the_inference_graph(tmp_path, capsys):
    from qcompile.cli import main as cli_main

    out = tmp_path / "cli"
    args = ["export", "qcompile/testing/models.py:mlp", "--input-shape", "4,16", "--out", str(out)]
    assert cli_main([*args, "--graphs", "inference"]) == 0
    assert "inference.onnx" in capsys.readouterr().out
    assert (out / "inference.onnx").is_file() and not (out / "backward.onnx").exists()
