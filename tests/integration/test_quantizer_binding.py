"""Finding the compiled model's parameters from Dynamo's sources, without ``eval``."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import qcompile
from qcompile.compiler.quantizer_binding import resolve_source, root_source


class Inner(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


class Nested(nn.Module):
    """Parameters under a submodule, a ModuleList index and a ModuleDict key."""

    def __init__(self) -> None:
        super().__init__()
        self.inner = Inner()
        self.blocks = nn.ModuleList([nn.Linear(4, 4), nn.Linear(4, 4)])
        self.heads = nn.ModuleDict({"main": nn.Linear(4, 4)})

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for block in self.blocks:
            x = torch.relu(block(x))
        return self.heads["main"](self.inner(x))


MODEL = Nested()  # a global: reached from a compiled function as G['MODEL']


def _resolving_backend(found: list[tuple[str, object]]):
    """A backend that resolves every graph input's source in the frame being compiled."""

    def backend(gm, example_inputs):
        from torch._dynamo.symbolic_convert import InstructionTranslator

        tx = InstructionTranslator.current_tx()
        for node in gm.graph.find_nodes(op="placeholder"):
            arg = node.meta["grapharg"]
            found.append(
                (arg.source.name, resolve_source(arg.source, tx.f_locals, tx.f_globals), arg.example)
            )
            found.append(("root", resolve_source(root_source(arg.source), tx.f_locals, tx.f_globals), None))
        return gm.forward

    return backend


@pytest.mark.parametrize("how", ["torch.compile(model)", "model.compile()", "compiled function"])
def test_every_parameter_source_resolves_to_that_parameter(how):
    torch._dynamo.reset()
    found: list = []
    backend = _resolving_backend(found)
    x = torch.randn(2, 4)
    if how == "torch.compile(model)":
        torch.compile(MODEL, backend=backend)(x)
    elif how == "model.compile()":
        model = Nested()
        model.load_state_dict(MODEL.state_dict())
        model.compile(backend=backend)
        model(x)
    else:
        torch.compile(lambda t: MODEL(t), backend=backend)(x)
    params = [(name, obj, example) for name, obj, example in found if isinstance(example, nn.Parameter)]
    names = [name for name, _, _ in params]
    assert len(params) == 8, names
    assert any("['blocks']" in n and "['1']" in n for n in names)  # a ModuleList index
    assert any("['heads']" in n and "['main']" in n for n in names)  # a ModuleDict key
    assert any("['inner']" in n and "['fc']" in n for n in names)  # a nested submodule
    for name, obj, example in params:
        assert obj is example, name
    roots = [obj for name, obj, _ in found if name == "root"]
    assert all(isinstance(r, Nested) for r in roots if isinstance(r, nn.Module))
    assert any(isinstance(r, Nested) for r in roots)


def test_unknown_sources_raise_lookup_error():
    from torch._dynamo.source import ConstantSource

    with pytest.raises(LookupError):
        resolve_source(ConstantSource("c"), {}, {})


def test_fqt_binds_the_state_of_a_model_nobody_attached():
    """No `attach_state`: the backend finds the model from a parameter's source and attaches it."""
    torch._dynamo.reset()
    model = Nested()
    policy = qcompile.preset("lbt-int4").replace(keep_first_last=False)
    compiled = torch.compile(model, backend="fqt", options={"policy": policy})
    compiled(torch.randn(64, 4)).sum().backward()
    state = qcompile.state_of(model)
    assert state is not None and state.gammas()
