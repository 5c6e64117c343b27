"""MLIR export through torch-mlir: both graphs, raw torch dialect and linalg-on-tensors, parse and
verify; in the linalg form every quantizer is a call of a named function, and those functions
compute the quantizers (run through MLIR's ExecutionEngine)."""

from __future__ import annotations

import copy
import json
import re

import numpy as np
import pytest
import torch

from qcompile.exporters.mlir import luq_quantize_portable
from qcompile.runtime import luq_quantize_reference
from qcompile.runtime.reference.int_quant import int_quantize_reference
from qcompile.testing.export_models import MODELS

qops = torch.ops.qcompile


def test_portable_luq_equals_reference_for_the_same_noise():
    """The LUQ used for lowering (no float bit-cast) is the reference, bit for bit, incl. powers of two."""
    torch.manual_seed(0)
    g = torch.randn(16, 64) * torch.logspace(-4, 1, 64)
    g[0, :8] = torch.tensor([0.0, 1.0, 2.0, 4.0, -8.0, 0.5, 64.0, -64.0])
    for dims in ([], [1], [0]):
        noise = torch.rand_like(g)
        ref = luq_quantize_reference(g, 4, dims, noise=noise)
        assert torch.equal(luq_quantize_portable(g, 4, dims, noise=noise), ref)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """``exported(name)``: one MLIR export per test model, shared by this module's tests."""
    pytest.importorskip("torch_mlir", reason="MLIR export needs `pip install qcompile[export]`")
    from qcompile.exporters.api import export_with_graphs

    done = {}

    def get(name: str):
        if name not in done:
            torch._dynamo.reset()
            model, inputs = MODELS[name]()
            out = tmp_path_factory.mktemp(name) / "mlir"
            done[name] = export_with_graphs(model, inputs, out, format="mlir")
        return done[name]

    return get


def _functions(text: str) -> dict[str, str]:
    """Top-level ``func.func`` of a printed module: name -> its text (signature and body)."""
    out = {}
    for chunk in re.split(r"^  func\.func ", text, flags=re.M)[1:]:
        name = re.match(r"(?:private )?@([\w.$]+)\(", chunk).group(1)
        assert name not in out, f"@{name} defined twice"
        out[name] = chunk
    return out


def _quantizer_nodes(gm) -> list:
    from qcompile.exporters.mlir import QUANTIZERS

    return [n for n in gm.graph.nodes if n.op == "call_function" and n.target in QUANTIZERS]


@pytest.mark.parametrize("model", ["mlp", "resnet", "gpt2"])
def test_mlir_modules_parse_and_verify(model, exported):
    from qcompile.exporters.mlir import parse_and_verify

    result = exported(model)
    out = result.path
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

        # Lowered form: one call per quantizer node of the FX graph, each to a named function
        # defined once, private, with a linalg body and its configuration attached.
        nodes = _quantizer_nodes(getattr(result.graphs, kind))
        assert nodes
        functions = _functions(linalg)
        main = functions.pop(kind)
        callees = re.findall(r"call @([\w.$]+)\(", main)
        assert len(callees) == len(nodes) and all(c.startswith("qcompile.") for c in callees)
        assert sorted(re.findall(r'qcompile\.tag = "([^"]*)"', main)) == sorted(n.args[-1] for n in nodes)
        assert set(functions) == set(callees)
        for name, body in functions.items():
            op = name.split(".")[1]
            assert body.startswith(f"private @{name}(") and "linalg.generic" in body and "call @" not in body
            assert (
                re.search(r'qcompile\.quantizer = \{[^}]*op = "(\w+)"', body.split("\n", 1)[0]).group(1) == op
            )
        # The manifest lists the same functions, their configurations and call sites.
        listed = graph["quantizer_functions"]
        assert {f["name"] for f in listed} == set(functions)
        assert sum(f["calls"] for f in listed) == len(nodes)
        assert sorted(s["tag"] for f in listed for s in f["call_sites"]) == sorted(n.args[-1] for n in nodes)
        for f in listed:
            assert f["name"] == f"qcompile.{f['op']}.{f['name'].split('.')[2]}." + "x".join(
                [*map(str, f["shape"]), "f32"]
            )
            assert f["calls"] == callees.count(f["name"]) and {"bits", "reduce_dims"} <= set(f["config"])
    fw_results = manifest["graphs"]["forward"]["results"]
    saved = {r["name"] for r in fw_results if r["kind"] == "saved"}
    assert saved and saved <= {a["name"] for a in manifest["graphs"]["backward"]["arguments"]}


def _quantizers_graph(x: torch.Tensor):
    """Five quantizer calls, two of them of one configuration and shape (one shared function)."""
    from torch.fx.experimental.proxy_tensor import make_fx

    def f(x):
        return (
            qops.int_quantize(x, 4, "sawb", "signed", [], False, "a|weight|s0"),
            qops.int_quantize(x * 3, 4, "sawb", "signed", [], False, "b|weight|s1"),
            qops.int_quantize(x, 4, "max", "auto", [1], False, "c|activation|s2"),
            qops.int_quantize(x, 4, "sawb", "signed", [], True, "d|activation|s3"),
            qops.luq_quantize(x, 4, [1], 0, "e|grad_dgrad|s4"),
        )

    return make_fx(f, tracing_mode="fake")(x)


def test_quantizer_functions_compute_the_reference():
    """The lowered quantizer functions, JIT-compiled by MLIR's ExecutionEngine, equal the PyTorch
    references: exactly for round-to-nearest; for stochastic rounding and LUQ, exactly for the
    noise the module draws (read back from an identical module that returns its first draw)."""
    pytest.importorskip("torch_mlir", reason="MLIR export needs `pip install qcompile[export]`")
    from torch.fx.experimental.proxy_tensor import make_fx

    from qcompile.exporters.mlir import lower_linalg
    from tests.mlir_runner import LinalgRunner

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(16, 32, generator=gen) * torch.logspace(-3, 1, 32)
    x[3] = x[3].abs()  # a non-negative row: "auto" picks the unsigned grid there
    x[5, :4] = torch.tensor([0.0, 1.0, -2.0, 4.0])
    lowered = lower_linalg(_quantizers_graph(x), "f")
    names = [f.name for f in lowered.functions]
    assert names == [
        "qcompile.int_quantize.int4_sawb_signed_rdn_reduce_all.16x32xf32",
        "qcompile.int_quantize.int4_max_auto_rdn_reduce_1.16x32xf32",
        "qcompile.int_quantize.int4_sawb_signed_sr_reduce_all.16x32xf32",
        "qcompile.luq_quantize.luq4_reduce_1.16x32xf32",
    ]
    assert [f.manifest()["calls"] for f in lowered.functions] == [2, 1, 1, 1]
    assert lowered.functions[0].call_sites[1] == {
        "tag": "b|weight|s1",
        "layer": "b",
        "role": "weight",
        "site": "s1",
    }

    runner = LinalgRunner(lowered.text)
    xn = x.numpy()
    rdn, rdn3, per_row, sr, luq = (torch.from_numpy(y) for y in runner.run("f", xn))
    assert torch.count_nonzero(rdn) > 50 and rdn.unique().numel() > 5
    assert torch.equal(rdn, int_quantize_reference(x, 4, "sawb", "signed", []))
    assert torch.equal(rdn3, int_quantize_reference(x * 3, 4, "sawb", "signed", []))
    assert torch.equal(per_row, int_quantize_reference(x, 4, "max", "auto", [1]))
    # The first draw of a fresh module, of this shape: what each stochastic function used as
    # its noise when it was the module's first draw.
    noise_module = lower_linalg(make_fx(torch.rand_like, tracing_mode="fake")(x), "noise").text
    u = torch.from_numpy(LinalgRunner(noise_module).run("noise", xn)[0])
    assert 0 <= u.min() and u.max() < 1 and abs(u.mean() - 0.5) < 0.05
    sr_ref = int_quantize_reference(x, 4, "sawb", "signed", [], True, noise=u)
    luq_ref = luq_quantize_reference(x, 4, [1], noise=u)
    for name, ref in ((names[2], sr_ref), (names[3], luq_ref)):
        fresh = LinalgRunner(lowered.text)
        first, second = (torch.from_numpy(fresh.run(name, xn)[0]) for _ in range(2))
        assert torch.equal(first, ref), name
        assert not torch.equal(second, first)  # each call draws anew: the global seed advances
    # In @f the draws follow the calls: stochastic rounding made the first draw, LUQ the second.
    assert torch.equal(sr, sr_ref) and not torch.equal(sr, rdn)
    assert not torch.equal(luq, luq_ref)


def _random_args(gm, seed: int) -> list[np.ndarray]:
    gen = torch.Generator().manual_seed(seed)
    args = []
    for n in gm.graph.nodes:
        if n.op == "placeholder":
            v = n.meta["val"]
            a = (
                torch.rand(v.shape, generator=gen) < 0.5
                if v.dtype == torch.bool
                else torch.randn(v.shape, generator=gen)
            )
            args.append(a.to(v.dtype).numpy())
    return args


def test_named_functions_keep_the_flat_semantics(exported):
    """The MLP's lowered graphs with quantizers as named functions compute exactly what the flat
    lowering (quantizers decomposed in place) computes, LUQ's random draws included; the forward
    equals our FX forward graph."""
    from qcompile.exporters.mlir import functional_outputs, lower_linalg
    from tests.mlir_runner import LinalgRunner

    result = exported("mlp")
    for kind in ("forward", "backward"):
        gm = copy.deepcopy(getattr(result.graphs, kind))
        functional_outputs(gm)
        named = (result.path / f"{kind}.linalg.mlir").read_text()
        flat = lower_linalg(copy.deepcopy(gm), kind, named_quantizers=False).text
        assert "call @" not in flat and "call @qcompile." in named
        args = _random_args(gm, seed=1)
        got = LinalgRunner(named).run(kind, *args)
        want = LinalgRunner(flat).run(kind, *args)
        assert len(got) == len(want) == len(gm.graph.output_node().args[0])
        for g, w in zip(got, want, strict=True):
            assert np.array_equal(g, w)
        if kind == "forward":
            with torch.no_grad():
                ours = gm(*[torch.from_numpy(a) for a in args])
            for g, o in zip(got, ours, strict=True):
                torch.testing.assert_close(torch.from_numpy(g), o, rtol=1e-5, atol=1e-5)


def test_quantizer_without_portable_lowering_is_an_export_error():
    pytest.importorskip("torch_mlir", reason="MLIR export needs `pip install qcompile[export]`")
    from torch.fx.experimental.proxy_tensor import make_fx

    from qcompile.exporters.mlir import lower_linalg
    from qcompile.exporters.onnx_graph import ExportError

    gm = make_fx(lambda g: qops.lbt_quantize(g, 4, [1], "fc|grad_dgrad|g0s0"), tracing_mode="fake")(
        torch.randn(4, 8)
    )
    with pytest.raises(ExportError, match=r"qcompile\.lbt_quantize\.default .* of layer 'fc' to MLIR"):
        lower_linalg(gm, "backward")


def test_broken_module_fails_verification():
    pytest.importorskip("torch_mlir", reason="MLIR export needs `pip install qcompile[export]`")
    from qcompile.exporters.mlir import parse_and_verify

    with pytest.raises(Exception):  # noqa: B017  (the MLIR bindings raise their own error type)
        parse_and_verify("func.func @f(%a: tensor<2xf32>) -> tensor<3xf32> { return %a : tensor<2xf32> }")


def test_block_format_quantizers_lower_to_named_functions_that_compute_the_reference():
    """MXFP8, NVFP4 (1-D and 16×16 tiles, partial blocks), FP8 per row and a Hadamard-rotated
    operand: each `fp_quantize` becomes one named linalg function whose JIT-compiled result equals
    `block_quantize_reference` bit for bit (round-to-nearest)."""
    pytest.importorskip("torch_mlir", reason="MLIR export needs `pip install qcompile[export]`")
    from torch.fx.experimental.proxy_tensor import make_fx

    from qcompile.exporters.mlir import lower_linalg
    from qcompile.runtime.reference.block_scaled import block_quantize_reference
    from qcompile.runtime.reference.hadamard import hadamard_reference
    from tests.mlir_runner import LinalgRunner

    configs = [("e4m3", "mx", [32], 1), ("e2m1", "nv", [16], 0), ("e2m1", "nv", [16, 16], 1), ("e4m3", "max", [0], 1)]
    signs = torch.tensor([1.0, -1.0, -1.0, 1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0, -1.0, 1.0, -1.0, 1.0, 1.0])

    def f(x, signs):
        outs = [qops.fp_quantize(x, e, s, b, a, False, f"l{i}|weight|s{i}") for i, (e, s, b, a) in enumerate(configs)]
        rotated = qops.hadamard(x, signs, 1, 16, False, "r|forward|s9")
        return (*outs, qops.fp_quantize(rotated, "e2m1", "mx", [32], 1, False, "r|activation|s9"))

    gen = torch.Generator().manual_seed(0)
    x = torch.randn(24, 48, generator=gen) * torch.logspace(-2, 1, 48)  # 48: a partial 32-block
    lowered = lower_linalg(make_fx(f, tracing_mode="fake")(x, signs), "f")
    assert [fn.op for fn in lowered.functions] == ["fp_quantize"] * 5
    assert lowered.functions[0].name == "qcompile.fp_quantize.e4m3_mx32_axis1_rdn.24x48xf32"
    got = [torch.from_numpy(y) for y in LinalgRunner(lowered.text).run("f", x.numpy(), signs.numpy())]
    for (e, s, b, a), y in zip(configs, got, strict=False):
        assert torch.equal(y, block_quantize_reference(x, e, s, b, a)), (e, s, b)
    rotated = block_quantize_reference(hadamard_reference(x, 1, 16, signs), "e2m1", "mx", [32], 1)
    torch.testing.assert_close(got[-1], rotated, rtol=0, atol=1e-6)
