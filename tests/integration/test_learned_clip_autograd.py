"""A compiled model's learned clips get their gradient from autograd, as parameters do."""

from __future__ import annotations

import torch
import torch.nn.functional as F

import qcompile
from qcompile.testing.models import mlp


def test_alpha_gradient_is_accumulated_by_autograd():
    """DDP and FSDP reduce a gradient from the hook autograd runs after accumulating it into
    ``.grad``; a gradient written by hand would never run it."""
    torch.manual_seed(0)
    model = mlp(width=32)
    policy = qcompile.preset("lbt-int4-learned").replace(keep_first_last=False)
    compiled = torch.compile(model, backend="fqt", options={"policy": policy})
    x, y = torch.randn(16, 16), torch.randint(0, 4, (16,))
    compiled(x)  # the clips exist once the model compiled
    state = qcompile.state_of(model)
    clips = dict(state.named_parameters())
    assert set(clips) == {f"lbt_clip/{i}/{role}" for i in (0, 2, 4) for role in ("weight", "activation")}
    accumulated: list[str] = []
    for name, p in clips.items():
        p.register_post_accumulate_grad_hook(lambda _, name=name: accumulated.append(name))
    F.cross_entropy(compiled(x), y).backward()
    assert sorted(accumulated) == sorted(clips)
    assert any(float(p.grad) != 0 for p in clips.values())
