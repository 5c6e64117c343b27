"""Small real-model code used by the tests (and by ``python -m qcompile plan`` examples)."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F


class ResidualBlock(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(channels)
        self.conv2 = nn.Conv2d(channels, channels, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = F.relu(self.bn1(self.conv1(x)))
        return F.relu(x + self.bn2(self.conv2(y)))


class SmallResNet(nn.Module):
    """A ResNet-style conv net: stem, two residual blocks, global pooling, linear head."""

    def __init__(self, in_channels: int = 3, width: int = 8, classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Conv2d(in_channels, width, 3, padding=1, bias=False)
        self.bn = nn.BatchNorm2d(width)
        self.block1 = ResidualBlock(width)
        self.block2 = ResidualBlock(width)
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.bn(self.stem(x)))
        x = self.block2(self.block1(x))
        return self.head(x.mean((2, 3)))


def small_resnet() -> SmallResNet:
    return SmallResNet()


def mlp(width: int = 32, depth: int = 3, inputs: int = 16, classes: int = 4) -> nn.Sequential:
    layers: list[nn.Module] = []
    d = inputs
    for _ in range(depth - 1):
        layers += [nn.Linear(d, width), nn.ReLU()]
        d = width
    layers.append(nn.Linear(d, classes))
    return nn.Sequential(*layers)


class ResidualMLPBlock(nn.Module):
    def __init__(self, width: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(width, 2 * width)
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.fc2(F.relu(self.fc1(x)))


class BlockNet(nn.Module):
    """Input layer, a stack of residual MLP blocks, a head: the shape FSDP2 recipes shard per block."""

    def __init__(self, inputs: int = 16, width: int = 32, depth: int = 2, classes: int = 4) -> None:
        super().__init__()
        self.inp = nn.Linear(inputs, width)
        self.blocks = nn.ModuleList([ResidualMLPBlock(width) for _ in range(depth)])
        self.head = nn.Linear(width, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.inp(x)
        for block in self.blocks:
            x = block(x)
        return self.head(x)


class SubgraphBlockNet(BlockNet):
    """`BlockNet` whose blocks run inside a higher-order op, the ways users write it:
    ``"checkpoint"`` (torch.utils.checkpoint, non-reentrant), ``"selective"`` (selective
    activation checkpointing that saves the GEMM outputs), ``"nested"``
    (`torch.compiler.nested_compile_region`), ``"cond"`` (`torch.cond` on the activations' sign),
    or ``"plain"`` (no op: the reference)."""

    def __init__(self, mode: str = "checkpoint", **kwargs) -> None:
        super().__init__(**kwargs)
        self.mode = mode

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.utils.checkpoint import checkpoint

        x = self.inp(x)
        for block in self.blocks:
            if self.mode == "checkpoint":
                x = checkpoint(block, x, use_reentrant=False)
            elif self.mode == "selective":
                x = checkpoint(block, x, use_reentrant=False, context_fn=_save_gemms_context)
            elif self.mode == "nested":
                x = _nested_block(block, x)
            elif self.mode == "cond":
                x = torch.cond(x.sum() > -1e30, lambda y, b=block: b(y), lambda y, b=block: 2 * b(y), (x,))
            else:
                x = block(x)
        return self.head(x)


def _save_gemms_policy(ctx, op, *args, **kwargs):
    from torch.utils.checkpoint import CheckpointPolicy

    gemms = (torch.ops.qcompile.qmatmul.default, torch.ops.aten.mm.default, torch.ops.aten.addmm.default)
    return CheckpointPolicy.MUST_SAVE if op in gemms else CheckpointPolicy.PREFER_RECOMPUTE


def _save_gemms_context():
    from torch.utils.checkpoint import create_selective_checkpoint_contexts

    return create_selective_checkpoint_contexts(_save_gemms_policy)


@torch.compiler.nested_compile_region
def _nested_block(block: nn.Module, x: torch.Tensor) -> torch.Tensor:
    return block(x)


class QKVAttention(nn.Module):
    """The attention of timm's ViT and many GPT codes: one ``qkv`` projection viewed as
    ``[b, t, 3, heads, d]``, permuted and unbound into q, k, v, then SDPA and a projection."""

    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.mlp = nn.Sequential(nn.Linear(dim, 2 * dim), nn.GELU(), nn.Linear(2 * dim, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, t, d = x.shape
        q, k, v = self.qkv(x).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(y.transpose(1, 2).reshape(b, t, d))
        return x + self.mlp(x)


class EinsumMLP(nn.Module):
    """An MLP whose middle GEMM is an ``einsum`` (not rewritten by qcompile: high precision)."""

    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(16, 32)
        self.mid = nn.Parameter(torch.randn(32, 32) / 32**0.5)
        self.out = nn.Linear(32, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(torch.einsum("bi,ij->bj", self.inp(x), self.mid)))


def tiny_gpt2(checkpointing: bool = False) -> nn.Module:
    """HF GPT-2 from a config (2 layers, d=32), dropout off; optionally with Hugging Face's
    gradient checkpointing on."""
    import transformers

    cfg = transformers.GPT2Config(vocab_size=64, n_positions=16, n_embd=32, n_layer=2, n_head=2,
                                  attn_pdrop=0, resid_pdrop=0, embd_pdrop=0, use_cache=False)  # fmt: skip
    model = transformers.GPT2LMHeadModel(cfg)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model


def tiny_bert(checkpointing: bool = False) -> nn.Module:
    """HF BERT for sequence classification from a config (2 layers, d=32), dropout off."""
    import transformers

    cfg = transformers.BertConfig(vocab_size=64, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                  intermediate_size=64, max_position_embeddings=16, num_labels=2,
                                  hidden_dropout_prob=0, attention_probs_dropout_prob=0)  # fmt: skip
    model = transformers.BertForSequenceClassification(cfg)
    if checkpointing:
        model.gradient_checkpointing_enable()
    return model
