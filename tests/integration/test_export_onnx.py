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

import qcompile  # noqa: E402
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


def _check_runs_in_onnxruntime(result, manifest, inputs) -> None:
    """The exported forward equals our FX forward; the backward runs and gives finite gradients
    of the right shapes."""
    feed = {manifest["forward"]["inputs"][0]["name"]: inputs[0].numpy()}
    (out,) = _session(result.path / "forward.onnx").run(["output_0"], feed)
    torch.testing.assert_close(torch.from_numpy(out), run_our_forward(result)["output_0"], rtol=1e-5, atol=1e-5)
    args, bfeed = backward_feeds(result, run_our_forward(result), inputs)
    names = [o["name"] for o in manifest["backward"]["outputs"]]
    grads = _session(result.path / "backward.onnx").run(names, bfeed)
    ours = run_our_backward(result, args)
    assert [g.shape for g in grads] == [tuple(o.shape) for o in ours]
    assert all(np.isfinite(g).all() for g in grads)


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
    _check_runs_in_onnxruntime(result, manifest, inputs)


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


# ----------------------------------------------------------------------------- block-scaled FP


BLOCK_CONFIGS = [
    ("e4m3", "mx", [32], 1), ("e2m1", "mx", [32], 1), ("e2m1", "nv", [16], 0), ("e2m1", "nv", [16, 16], 1),
    ("e4m3", "max", [0], 1), ("e5m2", "max", [], 1), ("e5m2", "mx", [32], 0),
]  # fmt: skip


@pytest.mark.parametrize("config", BLOCK_CONFIGS, ids=lambda c: f"{c[0]}-{c[1]}{'x'.join(map(str, c[2]))}-ax{c[3]}")
def test_block_format_quantizer_in_onnx_runtime_equals_the_reference(config):
    """Each `fp_quantize` configuration as a `qcompile` function of standard ops (FP8 elements
    through the standard FLOAT8 Q/DQ types) passes the checker, and ONNX Runtime computes
    `block_quantize_reference` bit for bit: partial blocks, 2-D tiles, a NaN block, zeros."""
    from qcompile.runtime.reference.block_scaled import block_quantize_reference

    element, scaling, block, axis = config
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 48, generator=gen) * torch.logspace(-3, 2, 48)  # 48: a partial 32-block
    x[0, 0] = 1e4  # saturates E4M3/E2M1 after an MX floor scale
    x[5] = 0.0
    model = _single_op_model(lambda t: qops.fp_quantize(t, element, scaling, block, axis, False, "l|weight|s0"), x)
    onnx.checker.check_model(model, full_check=True)
    ops = {n.op_type for f in model.functions for n in f.node}
    # FP8 elements (and NVFP4's E4M3 block scales) go through the standard FLOAT8 Q/DQ types.
    assert ("QuantizeLinear" in ops) == (element != "e2m1" or scaling == "nv")
    (y,) = _session(model.SerializeToString()).run(None, {"x": x.numpy()})
    assert np.array_equal(y, block_quantize_reference(x, element, scaling, block, axis).numpy())
    x[7, 3] = float("nan")
    (y,) = _session(model.SerializeToString()).run(None, {"x": x.numpy()})
    want = block_quantize_reference(x, element, scaling, block, axis).numpy()
    assert np.array_equal(np.isnan(y), np.isnan(want)) and np.isnan(want).any()


@pytest.mark.parametrize("policy", ["nvfp4", "mxfp8"])
def test_block_format_training_graphs_export_and_run(policy, tmp_path):
    """A block-format MLP's forward and backward graphs (blocks along each GEMM's own axis;
    NVFP4: stochastic gradients, Hadamards) export, pass the checker and run
    in ONNX Runtime: the forward equals our FX graph's, the backward gives finite gradients."""
    from qcompile.testing.export_models import small_mlp

    model, inputs = small_mlp()
    pol = qcompile.preset(policy).replace(keep_first_last=False)
    if policy == "nvfp4":  # the MLP's batch (8) is below NVFP4's 16: a 4-point transform on every GEMM
        pol = pol.replace(hadamard="had4-all-fixed")  # fixed signs: the forward compares exactly
    result = export_with_graphs(model, inputs, tmp_path / "out", policy=pol)
    manifest = json.loads((result.path / "manifest.json").read_text())["graphs"]
    forward, backward = (onnx.load(str(result.path / f"{k}.onnx")) for k in ("forward", "backward"))
    for m in (forward, backward):
        onnx.checker.check_model(m, full_check=True)
    element = "e2m1" if policy == "nvfp4" else "e4m3"
    assert any(f.name.startswith(f"fp_{element}") for f in forward.functions)
    assert any("axis0" in f.name for f in backward.functions)  # wgrad: blocks along the tokens
    for m in (forward, backward):
        assert (policy == "nvfp4") == any(n.op_type == "MatMul" and "hadamard" in n.name for n in m.graph.node)
    _check_runs_in_onnxruntime(result, manifest, inputs)


def _signs_and_transform(fixed: bool, inverse: bool, axis: int):
    def f(t):
        s = qops.hadamard_signs(t, 8, fixed, "l|forward|s0")
        return qops.hadamard(t, s, axis, 8, inverse, "l|forward|s0"), s

    return f


def test_hadamard_translations_are_exact_transforms():
    """`hadamard` as a MatMul with diag(s)·H/√k equals the butterfly reference (and its inverse);
    random `hadamard_signs` give ±1 draws, the fixed ones the run's constant vector."""
    from qcompile.runtime.ops.block_formats import FIXED_SIGNS_SEED
    from qcompile.runtime.reference.hadamard import hadamard_reference, random_signs_reference

    x = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    for fixed, inverse, axis in ((True, False, 1), (True, True, 0), (False, False, 1)):

        gm = make_fx(_signs_and_transform(fixed, inverse, axis), tracing_mode="fake")(x)
        ph = next(n for n in gm.graph.nodes if n.op == "placeholder")
        model = translate_graph(gm, GraphIO(inputs={ph.name: "x"}, outputs=["y", "s"]), "hadamard").model
        onnx.checker.check_model(model, full_check=True)
        y, s = _session(model.SerializeToString()).run(["y", "s"], {"x": x.numpy()})
        assert set(np.unique(s)) <= {-1.0, 1.0}
        if fixed:
            assert np.array_equal(s, random_signs_reference(8, FIXED_SIGNS_SEED).numpy())
        ref = hadamard_reference(x, axis, 8, torch.from_numpy(s), inverse=inverse)
        np.testing.assert_allclose(y, ref.numpy(), rtol=1e-5, atol=1e-6)
