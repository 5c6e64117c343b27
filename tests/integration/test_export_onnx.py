"""ONNX export of the quantized training graphs, validated by ONNX Runtime.

Forward: ONNX Runtime's output equals our forward graph's (deterministic INT4 quantizers) to float
rounding. Backward: LUQ draws differ between runtimes, so the gradients are compared in
distribution: same shapes, and per-element means over repeated runs agree within a few
standard errors (LUQ is unbiased, so both means estimate the same expected gradient).
"""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

onnx = pytest.importorskip("onnx", reason="ONNX export tests need `pip install qcompile[export]`")
ort = pytest.importorskip("onnxruntime", reason="ONNX export tests need `pip install qcompile[export]`")

from torch.fx.experimental.proxy_tensor import make_fx  # noqa: E402

from qcompile.exporters.api import export as qcompile_export  # noqa: E402
from qcompile.exporters.api import export_with_graphs  # noqa: E402
from qcompile.exporters.onnx_model import GraphIO, translate_graph  # noqa: E402
from qcompile.runtime import int_quantize_reference  # noqa: E402
from qcompile.testing.export_models import MODELS, backward_feeds, run_our_backward, run_our_forward  # noqa: E402

qops = torch.ops.qcompile
RUNS = 16


@pytest.fixture(autouse=True)
def _seeded_onnxruntime():
    """ONNX Runtime's random ops (RandomUniformLike without a seed attribute) draw from a global
    generator: seed it so these tests are reproducible."""
    ort.set_seed(0)


def _session(model) -> ort.InferenceSession:
    """A CPU session for a file path or serialized model bytes."""
    source = model if isinstance(model, bytes) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"])


def _single_op_model(fn, x: torch.Tensor) -> onnx.ModelProto:
    """ONNX model of ``fn(x)`` traced to ATen (qcompile ops kept), input "x", output "y"."""
    gm = make_fx(fn, tracing_mode="fake")(x)
    ph = next(n for n in gm.graph.nodes if n.op == "placeholder")
    return translate_graph(gm, GraphIO(inputs={ph.name: "x"}, outputs=["y"]), "quantizer").model


@pytest.fixture(scope="module", params=sorted(MODELS))
def exported(request, tmp_path_factory):
    torch._dynamo.reset()
    model, inputs = MODELS[request.param]()
    out = tmp_path_factory.mktemp("export") / request.param
    result = export_with_graphs(model, inputs, out, format="onnx")
    return request.param, result, inputs


def test_files_manifest_and_checker(exported):
    name, result, _ = exported
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert sorted(p.name for p in result.path.iterdir()) == ["backward.onnx", "forward.onnx", "manifest.json"]
    fw, bw = manifest["graphs"]["forward"], manifest["graphs"]["backward"]
    for graph in (fw, bw):
        onnx.checker.check_model(str(result.path / graph["file"]), full_check=True)
    # Every saved activation the backward reads is a forward output of the same shape and dtype.
    fw_out = {o["name"]: o for o in fw["outputs"]}
    saved = [i for i in bw["inputs"] if i["kind"] == "saved"]
    assert saved and all(fw_out[s["name"]]["shape"] == s["shape"] for s in saved)
    assert any(i["kind"] == "tangent" for i in bw["inputs"])
    feeds = {f["backward_input"]: f for f in manifest["feeds"]}
    assert all(feeds[s["name"]]["forward_output"] in fw_out for s in saved)
    assert set(feeds) == {i["name"] for i in bw["inputs"]} | {i["name"] for i in bw["initializers"]}
    params = dict(result.model.named_parameters())
    grads = {o["grad_of"]: o for o in bw["outputs"] if o["kind"] == "gradient"}
    assert set(grads) == {n for n, p in params.items() if p.requires_grad}
    assert all(grads[n]["shape"] == list(params[n].shape) for n in grads)
    assert manifest["policy"]["name"] == "luq-int4" and manifest["plan"]["rows"]
    model = onnx.load(str(result.path / "forward.onnx"))
    assert {t.name for t in model.graph.initializer} <= set(params) | {
        b for b, _ in result.model.named_buffers()
    }
    # INT4 forward quantization as standard Q/DQ; LUQ as qcompile-domain functions in the backward.
    zero_points = [n for n in model.graph.node if n.op_type == "Constant" and n.attribute[0].t.data_type in (
        onnx.TensorProto.INT4, onnx.TensorProto.UINT4)]  # fmt: skip
    assert zero_points and any(n.op_type == "QuantizeLinear" for n in model.graph.node)
    backward = onnx.load(str(result.path / "backward.onnx"))
    luq_calls = [n for n in backward.graph.node if n.domain == "qcompile" and n.op_type.startswith("luq4")]
    assert luq_calls and {f.name for f in backward.functions} >= {n.op_type for n in luq_calls}


def test_onnxruntime_forward_matches_ours(exported):
    name, result, inputs = exported
    manifest = json.loads((result.path / "manifest.json").read_text())["graphs"]["forward"]
    feed = {spec["name"]: x.numpy() for spec, x in zip(manifest["inputs"], inputs, strict=True)}
    names = [o["name"] for o in manifest["outputs"]]
    theirs = dict(zip(names, _session(result.path / "forward.onnx").run(names, feed), strict=True))
    ours = run_our_forward(result)
    for out_name, value in ours.items():
        got = torch.from_numpy(theirs[out_name])
        if value.dtype == torch.bool:
            assert torch.equal(got, value), out_name
        else:
            torch.testing.assert_close(got, value, rtol=1e-5, atol=1e-5, msg=f"{name}: {out_name}")
    updates = [o["name"] for o in manifest["outputs"] if o["kind"] == "buffer_update"]
    assert (name == "resnet") == bool(updates)  # BatchNorm running statistics, compared above
    assert set(updates) <= set(ours)


def test_onnxruntime_backward_agrees_in_distribution(exported):
    name, result, inputs = exported
    manifest = json.loads((result.path / "manifest.json").read_text())["graphs"]["backward"]
    args, feed = backward_feeds(result, run_our_forward(result), inputs)
    names = [o["name"] for o in manifest["outputs"]]
    session = _session(result.path / "backward.onnx")
    theirs = [session.run(names, feed) for _ in range(RUNS)]
    torch.manual_seed(0)
    ours = [run_our_backward(result, args) for _ in range(RUNS)]
    for k, grad_name in enumerate(names):
        a = np.stack([r[k] for r in theirs]).astype(np.float64)
        b = torch.stack([r[k] for r in ours]).double().numpy()
        assert a.shape == b.shape, grad_name
        se = np.sqrt(a.var(0, ddof=1) / RUNS + b.var(0, ddof=1) / RUNS)
        scale = np.abs(b.mean(0)).max() + 1e-12
        excess = np.abs(a.mean(0) - b.mean(0)) - 5 * se - 1e-4 * scale
        assert (excess > 0).mean() <= 0.002, f"{name}: {grad_name} means disagree beyond 5 standard errors"
    # The stochastic quantizers really draw fresh noise per run (not a constant folded away).
    assert any(not np.array_equal(theirs[0][k], theirs[1][k]) for k in range(len(names)))


@pytest.mark.parametrize(
    "signed,dims,shape",
    [("signed", [], (6, 10)), ("unsigned", [], (6, 10)), ("auto", [1], (6, 10)), ("signed", [2], (3, 4, 5))],
)
def test_int4_qdq_matches_reference(signed, dims, shape):
    torch.manual_seed(0)
    x = torch.randn(shape) * 3
    x[0] = x[0].abs()  # a non-negative group, so "auto" takes its unsigned branch there
    model = _single_op_model(
        lambda t: qops.int_quantize(t, 4, "sawb", signed, dims, False, "l|activation|s"), x
    )
    onnx.checker.check_model(model, full_check=True)
    assert [n.op_type for n in model.graph.node].count("QuantizeLinear") >= 1
    (y,) = _session(model.SerializeToString()).run(["y"], {"x": x.numpy()})
    ref = int_quantize_reference(x, 4, "sawb", signed, dims)
    torch.testing.assert_close(torch.from_numpy(y), ref, rtol=1e-6, atol=1e-6)


def test_luq_function_is_unbiased_on_its_grid():
    """LUQ as a qcompile-domain ONNX function: outputs on the grid ±α·{0, 2^0..2^6}, mean → g."""
    torch.manual_seed(0)
    g = torch.randn(4, 32) * torch.logspace(-3, 0, 32)
    model = _single_op_model(lambda t: qops.luq_quantize(t, 4, [1], 0, "l|grad_dgrad|s"), g)
    onnx.checker.check_model(model, full_check=True)
    assert model.functions and all(n.domain in ("", "ai.onnx") for f in model.functions for n in f.node)
    session = _session(model.SerializeToString())
    draws = np.stack([session.run(["y"], {"x": g.numpy()})[0] for _ in range(400)]).astype(np.float64)
    alpha = (g.abs().amax(1, keepdim=True) / 64).double().numpy()
    levels = np.abs(draws) / alpha
    on_grid = np.isclose(levels[..., None], [0] + [2.0**k for k in range(7)], rtol=1e-5, atol=1e-6).any(-1)
    assert on_grid.all()
    # The floor keeps always-exact elements (the group maximum) from dividing float noise by zero.
    se = draws.std(0, ddof=1) / np.sqrt(len(draws)) + 1e-6 * g.abs().max().item()
    z = np.abs(draws.mean(0) - g.double().numpy()) / se
    assert (z > 4.5).mean() < 0.01


def test_stochastic_int_function_is_unbiased():
    torch.manual_seed(0)
    x = torch.randn(8, 16)
    model = _single_op_model(
        lambda t: qops.int_quantize(t, 4, "max", "signed", [], True, "l|grad_dgrad|s"), x
    )
    onnx.checker.check_model(model, full_check=True)
    assert any(f.name.startswith("int4_max_signed_sr") for f in model.functions)
    session = _session(model.SerializeToString())
    draws = np.stack([session.run(["y"], {"x": x.numpy()})[0] for _ in range(300)]).astype(np.float64)
    step = x.abs().max().item() / 7
    assert np.allclose(np.round(draws / step), draws / step, atol=1e-4)
    # Stochastic rounding is a Bernoulli draw between neighbouring levels: its exact standard error
    # (not the sample one, which is 0 for elements that never rounded up in 300 draws).
    frac = x.double().numpy() / step - np.floor(x.double().numpy() / step)
    se = np.sqrt(frac * (1 - frac) / len(draws)) * step + 1e-6 * step
    assert (np.abs(draws.mean(0) - x.double().numpy()) / se > 4.5).mean() < 0.01


def test_large_models_keep_weights_as_external_data(tmp_path):
    from qcompile.testing.export_models import small_mlp

    model, inputs = small_mlp()
    result = export_with_graphs(model, inputs, tmp_path / "ext", external_data_threshold=1024)
    manifest = json.loads((result.path / "manifest.json").read_text())
    assert manifest["graphs"]["forward"]["external_data"] == "forward.onnx.data"
    assert (result.path / "forward.onnx.data").stat().st_size > 0
    onnx.checker.check_model(str(result.path / "forward.onnx"), full_check=True)
    names = [o["name"] for o in manifest["graphs"]["forward"]["outputs"]]
    out = _session(result.path / "forward.onnx").run(
        names, {manifest["graphs"]["forward"]["inputs"][0]["name"]: inputs[0].numpy()}
    )
    torch.testing.assert_close(
        torch.from_numpy(out[0]), run_our_forward(result)["output_0"], rtol=1e-5, atol=1e-5
    )


@pytest.mark.parametrize(
    "policy",
    ["luq-smp2", {"weight": "int4-channel", "activation": "int4-sample", "grad_dgrad": "int8-sr-sample",
                  "grad_wgrad": "luq4", "keep_first_last": False}],
    ids=["luq-smp2", "per-axis+int8-sr"],
)  # fmt: skip
def test_other_policies_export_and_run(policy, tmp_path):
    """SMP averaging, per-axis Q/DQ (per-channel weights, per-sample activations) and a
    stochastic-rounding INT8 gradient function all export, check and run."""
    from qcompile.testing.export_models import small_mlp

    model, inputs = small_mlp()
    result = export_with_graphs(model, inputs, tmp_path / "out", policy=policy)
    manifest = json.loads((result.path / "manifest.json").read_text())["graphs"]
    forward = onnx.load(str(result.path / "forward.onnx"))
    if isinstance(policy, dict):
        assert any(
            a.name == "axis" for n in forward.graph.node if n.op_type == "QuantizeLinear" for a in n.attribute
        )
        assert any(
            f.name.startswith("int8_max_signed_sr")
            for f in onnx.load(str(result.path / "backward.onnx")).functions
        )
    feed = {manifest["forward"]["inputs"][0]["name"]: inputs[0].numpy()}
    (out,) = _session(result.path / "forward.onnx").run(["output_0"], feed)
    torch.testing.assert_close(
        torch.from_numpy(out), run_our_forward(result)["output_0"], rtol=1e-5, atol=1e-5
    )
    args, bfeed = backward_feeds(result, run_our_forward(result), inputs)
    names = [o["name"] for o in manifest["backward"]["outputs"]]
    grads = _session(result.path / "backward.onnx").run(names, bfeed)
    ours = run_our_backward(result, args)
    assert [g.shape for g in grads] == [tuple(o.shape) for o in ours]
    assert all(np.isfinite(g).all() for g in grads)


def test_onnx_forward_matches_the_inductor_compiled_model(tmp_path):
    """The exported forward against what training really runs: the model compiled with
    ``backend="fqt"`` by Inductor (quantizers fused into its generated loops)."""
    from qcompile.testing.export_models import small_mlp

    model, inputs = small_mlp()
    out = qcompile_export(model, inputs, tmp_path / "out")
    manifest = json.loads((out / "manifest.json").read_text())["graphs"]["forward"]
    (theirs,) = _session(out / "forward.onnx").run(
        ["output_0"], {manifest["inputs"][0]["name"]: inputs[0].numpy()}
    )
    torch._dynamo.reset()
    compiled = torch.compile(model, backend="fqt")
    with torch.no_grad():
        ours = compiled(*inputs)
    torch.testing.assert_close(torch.from_numpy(theirs), ours, rtol=1e-5, atol=1e-5)
