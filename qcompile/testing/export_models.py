"""Shared pieces of the export tests: the real models, and running our captured graphs eagerly."""

from __future__ import annotations

import torch

from qcompile.testing.models import SmallResNet, mlp


def tiny_gpt2() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    """Hugging Face GPT-2 from a one-layer config (no download), dropout off so the forward is
    deterministic and comparable across runtimes."""
    from transformers import GPT2Config, GPT2LMHeadModel
    from transformers.utils import logging

    logging.set_verbosity_error()
    cfg = GPT2Config(
        n_layer=1, n_embd=32, n_head=2, vocab_size=64, n_positions=16,
        resid_pdrop=0.0, embd_pdrop=0.0, attn_pdrop=0.0, bos_token_id=0, eos_token_id=0,
    )  # fmt: skip
    torch.manual_seed(0)
    return GPT2LMHeadModel(cfg), (torch.randint(0, 64, (2, 8)),)


def small_resnet() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return SmallResNet(width=8), (torch.randn(2, 3, 8, 8),)


def small_mlp() -> tuple[torch.nn.Module, tuple[torch.Tensor, ...]]:
    torch.manual_seed(0)
    return mlp(), (torch.randn(8, 16),)


MODELS = {"mlp": small_mlp, "resnet": small_resnet, "gpt2": tiny_gpt2}


def run_our_forward(result) -> dict[str, torch.Tensor]:
    """Our captured forward graph, run eagerly (quantizers: their PyTorch references), by output name."""
    primals = [t.detach().clone() for t in result.graphs.dynamo_inputs]
    with torch.no_grad():
        outs = result.graphs.forward(*primals)
    values = {o["name"]: v for o, v in zip(result.boundary.fw_outputs, outs, strict=True) if o["name"]}
    # Buffers the graph updates in place (BatchNorm running statistics), as the ONNX export names them.
    for p, value in zip(result.boundary.primals, primals, strict=True):
        if p["kind"] == "buffer" and not torch.equal(value, p["tensor"]):
            values[f"{p['name']}.updated"] = value
    return values


def backward_feeds(
    result, forward_values: dict[str, torch.Tensor], inputs: tuple[torch.Tensor, ...], seed: int = 1
):
    """Backward-graph arguments (in placeholder order) and the ONNX feed dict: saved values from
    our forward, parameters, model inputs, and random tangents."""
    gen = torch.Generator().manual_seed(seed)
    input_values = {
        p["name"]: inputs[i] for i, p in enumerate(p for p in result.boundary.primals if p["kind"] == "input")
    }
    args, feed = [], {}
    for e in result.boundary.bw_inputs:
        if e["kind"] == "saved":
            value = forward_values[e["name"]]
        elif e["kind"] in ("parameter", "buffer"):
            value = e["tensor"].detach()
        elif e["kind"] == "input":
            value = input_values[e["name"]]
        else:
            shape = forward_values[e["grad_of"]].shape
            value = torch.randn(shape, generator=gen)
        args.append(value)
        if e["kind"] not in ("parameter", "buffer"):
            feed[e["name"]] = value.numpy()
    return args, feed


def run_our_backward(result, args: list[torch.Tensor]) -> list[torch.Tensor]:
    with torch.no_grad():
        grads = result.graphs.backward(*[a.clone() for a in args])
    return [g for g in grads if g is not None]
