"""Packed storage of what backward reads: round trips, bit-identity, saved-bytes accounting."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qcompile
from qcompile import PolicyError, Rule
from qcompile.policy.files import policy_from_dict
from qcompile.runtime.reference.int_quant import int_levels, int_quantize_reference
from qcompile.runtime.reference.packed_int import (
    int_dequantize_packed_reference,
    int_quantize_packed_reference,
    int_requantize_reference,
)
from qcompile.runtime.reference.packing import (
    pack_bits,
    pack_int4,
    packed_size,
    unpack_bits,
    unpack_int4,
)

ODD_SHAPES = [(1,), (3,), (2, 5), (4, 3, 7), (2, 1, 9), (3, 33), (2, 70), (2, 64)]


@pytest.mark.parametrize("shape", ODD_SHAPES)
@pytest.mark.parametrize(("lo", "hi"), [(-8, 7), (0, 15), (-1, 1), (0, 7), (-4, 3)])
def test_int4_round_trip(shape, lo, hi):
    g = torch.Generator().manual_seed(hash((shape, lo)) % 2**31)
    codes = torch.randint(lo, hi + 1, shape, generator=g, dtype=torch.int8)
    codes.view(-1)[0] = lo  # the extreme codes are always present
    codes.view(-1)[-1] = hi
    packed = pack_int4(codes)
    assert packed.dtype == torch.uint8
    assert packed.shape == (*shape[:-1], packed_size(shape[-1], 2))
    assert torch.equal(unpack_int4(packed, shape[-1], hi), codes)


def test_minus_eight_is_the_nibble_0x8_and_comes_back():
    codes = torch.tensor([[-8, 7, -1, 0, -7]], dtype=torch.int8)
    packed = pack_int4(codes)
    # one block of 3 bytes: elements 0-2 in the low nibbles, 3-4 in the high ones; -8 → 0x8,
    # -1 → 0xF, -7 → 0x9
    assert packed.tolist() == [[0x08, 0x97, 0x0F]]
    assert torch.equal(unpack_int4(packed, 5, 7), codes)


def test_int4_round_trip_with_a_top_code_per_group():
    """Auto-signed codes: one group signed (-7..7), the next unsigned (0..15)."""
    codes = torch.tensor([[-7, 7, -3, 0, 5], [15, 0, 8, 9, 1]], dtype=torch.int8)
    top = torch.tensor([[7.0], [15.0]])
    assert torch.equal(unpack_int4(pack_int4(codes), 5, top), codes)


@pytest.mark.parametrize("shape", [(1,), (7,), (8,), (9,), (3, 17), (2, 2, 3), (2, 128), (3, 200), (2, 1024)])
def test_bits_round_trip(shape):
    g = torch.Generator().manual_seed(sum(shape))
    n = shape[-1]
    for mask in (torch.rand(shape, generator=g) > 0.5, torch.ones(shape, dtype=torch.bool)):
        packed = pack_bits(mask)
        assert packed.dtype == torch.uint8 and packed.shape[-1] == packed_size(n, 8)
        assert torch.equal(unpack_bits(packed, n), mask)
    # one bit per element, up to a partial last block of 128 elements
    assert packed_size(n, 8) == (n + 7) // 8 if n <= 128 else packed_size(n, 8) == -(-n // 128) * 16


def test_bits_block_layout():
    """Blocks of 128 elements in 16 bytes: element ``16k + i`` of a block is bit ``k`` of byte
    ``i`` (the layout Inductor's CPU loops read as whole vectors)."""
    mask = torch.zeros(2, 300, dtype=torch.bool)
    mask[0, 16 * 3 + 5] = True  # block 0, bit 3 of byte 5
    mask[1, 128 + 16 * 7 + 15] = True  # block 1, bit 7 of byte 16 + 15
    mask[1, 299] = True  # block 2 (partial): element 43 = 16·2 + 11, bit 2 of byte 32 + 11
    packed = pack_bits(mask)
    expected = torch.zeros(2, 48, dtype=torch.uint8)
    expected[0, 5], expected[1, 31], expected[1, 43] = 1 << 3, 1 << 7, 1 << 2
    assert torch.equal(packed, expected)
    # a short row is one block of ceil(n/8) bytes: n = 10 → 2 bytes, element 2k + i in bit k of byte i
    short = torch.tensor([[True, False, False, False, False, True, True, True, True, True]])
    assert torch.equal(pack_bits(short), torch.tensor([[1 | 8 | 16, 4 | 8 | 16]], dtype=torch.uint8))


def test_int4_block_layout():
    """Blocks of 32 codes in 16 bytes: code ``16k + i`` of a block in nibble ``k`` of byte ``i``;
    a partial last block is padded with zero nibbles."""
    codes = torch.zeros(1, 40, dtype=torch.int8)
    codes[0, 3], codes[0, 16 + 3], codes[0, 32 + 7] = 1, -2, 5
    packed = pack_int4(codes)
    expected = torch.zeros(1, 32, dtype=torch.uint8)
    expected[0, 3], expected[0, 16 + 7] = 0x1 | (0xE << 4), 0x5
    assert torch.equal(packed, expected) and packed_size(40, 2) == 32
    assert torch.equal(unpack_int4(packed, 40), codes)


def test_packed_unpacking_compiles_to_the_same_values():
    """The unpacking as Inductor compiles it (vectorised loops) reads the same bits and nibbles."""
    g = torch.Generator().manual_seed(5)
    mask = torch.rand(4, 1000, generator=g) > 0.5
    codes = torch.randint(-7, 8, (4, 1000), generator=g, dtype=torch.int8)
    grad = torch.randn(4, 1000, generator=g)

    def backward_like(packed_mask, packed_codes, grad):
        return torch.where(unpack_bits(packed_mask, 1000), grad, 0.0) * unpack_int4(packed_codes, 1000, 7)

    compiled = torch.compile(backward_like, backend="inductor", fullgraph=True)
    got = compiled(pack_bits(mask), pack_int4(codes), grad)
    assert torch.equal(got, torch.where(mask, grad, 0.0) * codes)


@pytest.mark.parametrize("signed", ["signed", "unsigned", "auto"])
@pytest.mark.parametrize("bits", [2, 3, 4])
@pytest.mark.parametrize(("scaling", "dims"), [("sawb", []), ("max", [1]), ("sawb", [0, 2])])
@pytest.mark.parametrize("stochastic", [False, True])
def test_packed_quantizer_is_bit_identical_to_the_unpacked_one(signed, bits, scaling, dims, stochastic):
    g = torch.Generator().manual_seed(bits * 7 + len(dims))
    x = torch.randn(3, 5, 7, generator=g)
    if signed == "unsigned":
        x = x.abs()
    x[1] = x[1].abs() + 0.1  # auto: some groups all non-negative (unsigned grid), others not
    noise = torch.rand(x.shape, generator=g) if stochastic else None
    ref = int_quantize_reference(x, bits, scaling, signed, dims, stochastic, noise=noise)
    xq, packed, clip, hi = int_quantize_packed_reference(
        x, bits, scaling, signed, dims, stochastic, noise=noise
    )
    assert torch.equal(xq, ref)
    assert packed.dtype == torch.uint8 and packed.shape == (3, 5, 4)
    rebuilt = int_dequantize_packed_reference(packed, clip, hi, 7, bits, signed, x.dtype)
    assert torch.equal(rebuilt, ref)
    codes = unpack_int4(packed, 7, hi if signed == "auto" else int_levels(bits, signed == "unsigned")[1])
    assert codes.min() < 0 if signed == "signed" else codes.min() >= 0 or signed == "auto"


@pytest.mark.parametrize("signed", ["signed", "unsigned", "auto"])
@pytest.mark.parametrize("bits", [2, 4])
@pytest.mark.parametrize(("scaling", "dims"), [("sawb", []), ("max", [0]), ("sawb", [1])])
def test_requantized_weight_is_bit_identical_to_the_forward_one(signed, bits, scaling, dims):
    """Ŵ rebuilt in backward from W and the saved clip equals the forward's Ŵ bit for bit, for a
    transposed (non-contiguous) W too, in W's own layout."""
    g = torch.Generator().manual_seed(bits + len(dims))
    w = torch.randn(6, 9, generator=g)
    if signed == "unsigned":
        w = w.abs()
    w[2] = w[2].abs() + 0.05  # auto: one all-positive row
    for x in (w, w.t()):
        xq, _, clip, hi = int_quantize_packed_reference(x, bits, scaling, signed, dims, False)
        rebuilt = int_requantize_reference(x, clip, hi, bits, signed, x.dtype)
        assert torch.equal(rebuilt, xq) and rebuilt.stride() == xq.stride()
        assert torch.equal(rebuilt, int_quantize_reference(x, bits, scaling, signed, dims, False))


def test_graph_ops_fake_kernels_match_their_outputs():
    ops = torch.ops.qcompile
    x = torch.randn(4, 6) - 0.3
    cases = [
        (ops.int_quantize_packed.default, (x, 4, "sawb", "auto", [1], False, "t")),
        (ops.pack_bits.default, (x > 0,)),
        (ops.unpack_bits.default, (pack_bits(x > 0), 6)),
    ]
    xq, packed, clip, hi = ops.int_quantize_packed(x, 4, "sawb", "auto", [1], False, "t")
    cases.append((ops.int_dequantize_packed.default, (packed, clip, hi, 6, 4, "auto", torch.float32, "t")))
    cases.append((ops.int_requantize.default, (x, clip, hi, 4, "auto", torch.float32, "t")))
    cases.append((ops.int_requantize.default, (x.t(), clip.t(), hi.t(), 4, "auto", torch.float32, "t")))
    for op, args in cases:
        torch.library.opcheck(op, args, test_utils=("test_schema", "test_faketensor"))


def test_pack_saved_policy_field():
    assert qcompile.preset("luq-int4").pack_saved is True
    assert qcompile.preset("luq-int4").replace(pack_saved=False).pack_saved is False
    with pytest.raises(PolicyError, match="pack_saved"):
        qcompile.Policy(pack_saved="no")
    assert policy_from_dict({"pack_saved": False}).pack_saved is False


# ------------------------------------------------------------------------------- compiled

INT8_RULE = Rule(layer="4", weight="int8", activation="int8", reason="int8 layer (not packable)")


def _mlp() -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(16, 48), nn.ReLU(), nn.Linear(48, 40), nn.ReLU(), nn.Linear(40, 40), nn.ReLU(),
        nn.Linear(40, 24), nn.ReLU(), nn.Linear(24, 5),
    )  # fmt: skip


def _held(loss) -> list[torch.Tensor]:
    """The tensors the compiled forward handed to autograd for backward."""
    out, stack = [], [loss.grad_fn]
    while stack:
        fn = stack.pop()
        if fn is None:
            continue
        if type(fn).__name__ == "CompiledFunctionBackward":
            out.extend(fn.saved_tensors)
        stack.extend(f for f, _ in fn.next_functions)
    return out


def _train(pack: bool, steps: int = 2, recompute: str = "none"):
    """Packing alone by default (`tests/test_recompute_from_codes.py` covers ``recompute``)."""
    torch.manual_seed(0)
    model = _mlp()
    policy = qcompile.preset("luq-int4").replace(
        pack_saved=pack, keep_first_last=False, rules=(INT8_RULE,), recompute=recompute
    )
    compiled = torch.compile(model, backend="fqt", options={"policy": policy})
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    x, y = torch.randn(12, 16), torch.randint(0, 5, (12,))
    held = None
    for _ in range(steps):
        loss = nn.functional.cross_entropy(compiled(x), y)
        held = held or [(tuple(t.shape), t.dtype, t.untyped_storage().nbytes()) for t in _held(loss)]
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model, qcompile.plan(compiled), held


@pytest.fixture(scope="module")
def packed_and_unpacked():
    return _train(True), _train(False)


def test_packed_training_is_bit_identical_to_unpacked(packed_and_unpacked):
    (packed, _, _), (unpacked, _, _) = packed_and_unpacked
    for (name, a), b in zip(packed.named_parameters(), unpacked.parameters(), strict=True):
        assert torch.equal(a, b), name
    torch.manual_seed(0)
    initial = _mlp()
    assert all(not torch.equal(a, b) for a, b in zip(packed.parameters(), initial.parameters(), strict=True))


def test_forward_saves_packed_codes_and_bit_masks_nothing_twice(packed_and_unpacked):
    (_, plan, _), (_, plan_off, _) = packed_and_unpacked
    kinds = {t.kind for t in plan.saved}
    assert {"packed", "scale", "bits"} <= kinds
    packed = [t for t in plan.saved if t.kind == "packed"]
    assert all(t.dtype == "uint8" for t in packed)
    # every 4-bit X̂ and Ŵ of the three all-int4 layers is packed; nothing of them kept as float
    assert {(t.site, t.role) for t in packed} == {
        (r.graph, role)
        for r in plan.rows
        if r.layer in ("0", "2", "6", "8")
        for role in ("activation", "weight")
    } - {(plan.row("0").graph, "weight")}  # the input batch needs no gradient: no dgrad, no Ŵ saved
    quantized_sites = {t.site for t in plan.saved if t.kind == "quantized"}
    assert quantized_sites == {plan.row("4").graph}  # only the int8 layer keeps float X̂ / Ŵ
    assert all(t.dtype != "bool" for t in plan.saved)  # ReLU masks are bits
    assert not {"packed", "bits"} & {t.kind for t in plan_off.saved}
    assert plan.memory()["saved_bytes"] < 0.5 * plan_off.memory()["saved_bytes"]


def test_saved_bytes_accounting_matches_the_tensors_autograd_holds(packed_and_unpacked):
    for _, plan, held in packed_and_unpacked:
        from_plan = sorted((tuple(t.shape), str(t.dtype)) for t in plan.saved)
        from_autograd = sorted((shape, str(dtype).removeprefix("torch.")) for shape, dtype, _ in held)
        assert from_plan == from_autograd
        assert sum(t.bytes for t in plan.saved) == sum(nbytes for *_, nbytes in held)
        rows = sum(r.saved_bytes for r in plan.rows)
        memory = plan.memory()
        assert rows + memory["saved_outside_gemm_sites_bytes"] == memory["saved_bytes"]


def test_plan_shows_saved_bytes_per_layer_and_in_total(packed_and_unpacked):
    (_, plan, _), _ = packed_and_unpacked
    row = plan.row("2")
    # X̂ [12, 48] and Ŵ [40, 48] as codes: rows of 48 codes are two 16-byte blocks (the second
    # half empty), so 12·32 + 40·32 bytes, plus four 0-d scales
    assert row.saved_bytes == 12 * 32 + 40 * 32 + 4 * 4
    assert row.saved_fp32_bytes == 12 * 48 * 4 + 0  # Ŵ comes from a parameter: FP32 saves W itself
    text = str(plan)
    assert (
        "X̂ int4 packed as uint8 → float32" in text
        and "saved for backward:" in text
        and "FP32 would save" in text
    )
    data = plan.to_dict()
    assert data["memory"]["saved_bytes"] == plan.memory()["saved_bytes"] > 0
    assert data["rows"][1]["saved_bytes"] == row.saved_bytes


@pytest.mark.slow
def test_packed_conv_net_and_attention_are_bit_identical():
    """Conv operands (rebuilt channels-last, as the forward laid them out) and attention heads
    (rebuilt in their permuted layout) give the very same gradients as the unpacked path, with the
    default recomputation too (BatchNorm inputs from a replayed convolution, softmax outputs)."""
    from qcompile.testing.models import SmallResNet

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inp = nn.Linear(8, 16)
            self.attn = nn.MultiheadAttention(16, 2, batch_first=True)
            self.out = nn.Linear(16, 3)

        def forward(self, x):
            h = self.inp(x)
            return self.out(self.attn(h, h, h, need_weights=False)[0].mean(1))

    cases = [(SmallResNet, (torch.randn(2, 3, 6, 6),)), (Attention, (torch.randn(2, 5, 8),))]
    for make, inputs in cases:
        grads = []
        for pack in (True, False):
            torch.manual_seed(0)
            model = make()
            policy = qcompile.preset("luq-int4").replace(pack_saved=pack)
            compiled = torch.compile(model, backend="fqt", options={"policy": policy})
            compiled(*inputs).square().sum().backward()
            grads.append([p.grad for p in model.parameters()])
            if pack:
                assert "packed" in {t.kind for t in qcompile.plan(compiled).saved}
        for a, b in zip(*grads, strict=True):
            assert torch.equal(a, b), make.__name__


def _autocast_run(pack: bool, recompute: str):
    """One bf16-autocast step of a LayerNorm MLP: (output, gradients, plan)."""
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(32, 64), nn.ReLU(), nn.Linear(64, 64), nn.LayerNorm(64), nn.Linear(64, 64), nn.GELU(),
        nn.Linear(64, 8),
    )  # fmt: skip
    policy = qcompile.preset("luq-int4").replace(pack_saved=pack, recompute=recompute)
    compiled = torch.compile(model, backend="fqt", options={"policy": policy})
    x = torch.randn(16, 32, generator=torch.Generator().manual_seed(1))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = compiled(x)
    out.float().square().sum().backward()
    return out.detach(), [p.grad for p in model.parameters()], qcompile.plan(compiled)


def test_packing_applies_under_bf16_autocast():
    """Autocast casts X̂ and Ŵ to bf16 for their GEMMs and backward reads the casts: the casts are
    replayed on the rebuilt X̂ / requantized Ŵ, so what is saved is still codes and clips, and
    training is bit-identical to the unpacked path."""
    torch._dynamo.reset()
    out_p, grads_p, plan_p = _autocast_run(True, "pointwise")
    torch._dynamo.reset()
    out_u, grads_u, plan_u = _autocast_run(False, "none")
    assert torch.equal(out_p, out_u)
    for gp, gu in zip(grads_p, grads_u, strict=True):
        assert torch.equal(gp, gu)
    for layer in ("2", "4"):
        saved = plan_p.row(layer).saved
        assert "X̂ int4 packed as uint8 → bfloat16" in saved and "Ŵ int4 requantized from W" in saved, saved
    assert plan_p.memory()["saved_bytes"] <= 0.25 * plan_u.memory()["saved_bytes"]
