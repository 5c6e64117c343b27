"""State that quantizers carry from step to step, kept where checkpoints see it.

LBT's clip ratio γ is per layer and changes after every step (docs/algorithms.md, LBT step 3-4).
It lives in a `QuantizerState` module whose buffers are saved and loaded with the model's own
``state_dict`` under stable names::

    qcompile_state.lbt_gamma/<layer path, dots as slashes>/<role>     float64, 0-d
    qcompile_state.lbt_updates/<layer path>/<role>                     int64, 0-d (steps seen)
    qcompile_state.lbt_clip/<layer path>/<role>                        Parameter (lbt-int4-learned)
    qcompile_state.lbt_clip_ready/<layer path>/<role>                  bool (initialised from data)

Why γ is not a graph input: the quantizer runs inside AOTAutograd's compiled backward, and a
buffer would have to be read by the model's own forward code for Dynamo to lift it. Instead the
LBT graph op is an opaque custom op (Inductor calls it as an extern kernel) that finds its slot
by the tag baked into the graph and hands the slot's tensors to ``qcompile::lbt_step``, whose
schema declares the in-place update; the tag → slot binding is remade on every compile, so
recompilation keeps the state, and a checkpoint restores it bit for bit. A learned clip α *is*
a graph input (the binding adds it to the forward graph), so its gradient flows through autograd.

The same registry counts the bits AQ really spends (kept elements x bits), for the plan.
"""

from __future__ import annotations

import functools
import threading
import weakref
from collections.abc import Iterable

import torch

from qcompile.runtime.quant_tag import QuantTag

STATE_PREFIX = "qcompile_state."
_GAMMA = "lbt_gamma/"
_UPDATES = "lbt_updates/"
_CLIP = "lbt_clip/"
_CLIP_READY = "lbt_clip_ready/"


class QuantizerState(torch.nn.Module):
    """Buffers of stateful quantizers for one model (see the module docstring for names)."""

    def __init__(self) -> None:
        super().__init__()
        self.clipped_now: dict[str, torch.Tensor] = {}  # share clipped at the last step (not saved)

    @staticmethod
    def slot_name(layer: str, role: str) -> str:
        return f"{(layer or '_root').replace('.', '/')}/{role}"

    def ensure_lbt(self, name: str) -> None:
        """Create γ = 1 (and an update count of 0) for ``name`` unless it exists (loaded or live)."""
        if _GAMMA + name not in self._buffers:
            self.register_buffer(_GAMMA + name, torch.tensor(1.0, dtype=torch.float64))
            self.register_buffer(_UPDATES + name, torch.tensor(0, dtype=torch.int64))

    def ensure_clip(self, name: str) -> None:
        """Create the learned clip α of ``name`` (a Parameter, set from the first batch)."""
        if _CLIP + name not in self._parameters:
            self.register_parameter(_CLIP + name, torch.nn.Parameter(torch.tensor(1.0)))
            self.register_buffer(_CLIP_READY + name, torch.tensor(False))

    def clip(self, name: str) -> torch.nn.Parameter:
        return self._parameters[_CLIP + name]

    def clip_ready(self, name: str) -> torch.Tensor:
        return self._buffers[_CLIP_READY + name]

    def clips(self) -> dict[str, float]:
        """Current learned clip α per slot, e.g. ``{"fc1/weight": 0.31}``."""
        return {
            k.removeprefix(_CLIP): float(v.detach())
            for k, v in self._parameters.items()
            if k.startswith(_CLIP)
        }

    def gamma(self, name: str) -> torch.Tensor:
        return self._buffers[_GAMMA + name]

    def updates(self, name: str) -> torch.Tensor:
        return self._buffers[_UPDATES + name]

    def lbt_tensors(self, name: str, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(γ, update count, last clipped share) of slot ``name``, on ``device``: the tensors
        `qcompile::lbt_step` updates in place. The slot moves to the gradient's device on its
        first use there (once), so no step copies state between host and device."""
        gamma, updates = self.gamma(name), self.updates(name)
        if gamma.device != device:
            gamma, updates = gamma.to(device), updates.to(device)
            self._buffers[_GAMMA + name], self._buffers[_UPDATES + name] = gamma, updates
        clipped = self.clipped_now.get(name)
        if clipped is None or clipped.device != device:
            clipped = torch.full((), float("nan"), dtype=torch.float64, device=device)
            self.clipped_now[name] = clipped
        return gamma, updates, clipped

    @property
    def last_clipped(self) -> dict[str, float]:
        """Share of elements clipped at each slot's last step (NaN after a non-finite one); read
        back from the device only here, for reports."""
        return {k: float(v) for k, v in self.clipped_now.items()}

    def gammas(self) -> dict[str, float]:
        """Current γ per slot, e.g. ``{"fc1/grad_dgrad": 0.712}``."""
        return {k.removeprefix(_GAMMA): float(v) for k, v in self._buffers.items() if k.startswith(_GAMMA)}

    def _load_from_state_dict(self, state_dict, prefix, local_metadata, strict, missing, unexpected, errors):
        # A fresh model has no slots yet (they are made when it compiles): create them from the
        # checkpoint so a resumed run starts from the saved γ.
        for key, value in state_dict.items():
            if key.startswith(prefix):
                name = key[len(prefix) :]
                if name.startswith((_GAMMA, _UPDATES, _CLIP_READY)) and name not in self._buffers:
                    self.register_buffer(name, torch.empty_like(value))
                elif name.startswith(_CLIP) and name not in self._parameters:
                    self.register_parameter(name, torch.nn.Parameter(torch.empty_like(value)))
        super()._load_from_state_dict(state_dict, prefix, local_metadata, strict, missing, unexpected, errors)


_LOCK = threading.Lock()
_BY_MODEL: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()
# id(parameter) -> (weakref to it, weakref to its model's state); tensors compare elementwise,
# so they cannot be keys of a WeakKeyDictionary.
_BY_PARAM: dict[int, tuple[weakref.ref, weakref.ref]] = {}
_TAG_SLOTS: dict[str, tuple[weakref.ref, str]] = {}
_DEFAULT = QuantizerState()  # for quantizer ops called outside any compiled model (tests, direct calls)
_BITS: dict[str, list[float]] = {}


def _save_hook(state: QuantizerState, module, state_dict, prefix, local_metadata) -> None:
    for key, value in state.state_dict().items():
        state_dict[prefix + STATE_PREFIX + key] = value


def _load_hook(state: QuantizerState, module, state_dict, prefix, *args) -> None:
    full = prefix + STATE_PREFIX
    mine = {k[len(full) :]: state_dict.pop(k) for k in [k for k in state_dict if k.startswith(full)]}
    if mine:
        state.load_state_dict(mine)


def attach_state(model: torch.nn.Module) -> QuantizerState:
    """The model's `QuantizerState`, created (and hooked into ``state_dict``/``load_state_dict``)
    on first use. The backend calls it when it compiles a model; call it yourself before
    ``model.load_state_dict(checkpoint)`` on a fresh model, so the saved γ has somewhere to go."""
    model = getattr(model, "_orig_mod", model)
    if not isinstance(model, torch.nn.Module):
        raise TypeError(f"attach_state needs an nn.Module, got {type(model).__name__}")
    with _LOCK:
        state = _BY_MODEL.get(model)
        if state is None:
            state = QuantizerState()
            _BY_MODEL[model] = state
            model.register_state_dict_post_hook(functools.partial(_save_hook, state))
            model.register_load_state_dict_pre_hook(functools.partial(_load_hook, state))
            # Reachable as ``model.qcompile_state`` (the state_dict prefix), as
            # `torch.distributed.checkpoint.state_dict` walks each key's path, but not a registered
            # submodule: ``model.modules()``/``parameters()`` and DDP/FSDP wrapping stay unchanged.
            object.__setattr__(model, STATE_PREFIX.rstrip("."), state)
        dead = [k for k, (p, _) in _BY_PARAM.items() if p() is None]
        for k in dead:
            del _BY_PARAM[k]
        for p in model.parameters():
            _BY_PARAM[id(p)] = (weakref.ref(p), weakref.ref(state))
    return state


def state_of(model: torch.nn.Module) -> QuantizerState | None:
    """The state attached to ``model`` (or its compiled wrapper), None if it has none."""
    return _BY_MODEL.get(getattr(model, "_orig_mod", model))


def state_for_params(params: Iterable[torch.Tensor]) -> QuantizerState | None:
    """The state of the model these parameters belong to (the backend sees parameters only)."""
    for p in params:
        if isinstance(p, torch.nn.Parameter):
            with _LOCK:
                found = _BY_PARAM.get(id(p))
            if found is not None and found[0]() is p:
                state = found[1]()
                if state is not None:
                    return state
    return None


def bind_tag(tag: str, state: QuantizerState, name: str) -> None:
    """Route the quantizer op carrying ``tag`` to slot ``name`` of ``state`` (made if missing):
    a learned clip for forward roles, LBT's γ for gradient roles."""
    if QuantTag.parse(tag).role in ("weight", "activation"):
        state.ensure_clip(name)
    else:
        state.ensure_lbt(name)
    with _LOCK:
        _TAG_SLOTS[tag] = (weakref.ref(state), name)


def _bound_slot(tag: str, ensure: str) -> tuple[QuantizerState, str]:
    """The slot bound to ``tag``; an unbound tag gets a slot of its own in a process-wide state,
    created there with ``QuantizerState.<ensure>``."""
    with _LOCK:
        found = _TAG_SLOTS.get(tag)
    state = found[0]() if found is not None else None
    if state is not None:
        return state, found[1]
    name = QuantizerState.slot_name(tag.replace("|", "/"), "unbound")
    getattr(_DEFAULT, ensure)(name)
    return _DEFAULT, name


def lbt_slot(tag: str) -> tuple[QuantizerState, str]:
    """The LBT γ slot bound to ``tag`` (see `_bound_slot`)."""
    return _bound_slot(tag, "ensure_lbt")


def clip_slot(tag: str) -> tuple[QuantizerState, str]:
    """The learned-clip slot bound to ``tag`` (see `_bound_slot`)."""
    return _bound_slot(tag, "ensure_clip")


def record_bits(tag: str, bits: float, elements: int) -> None:
    """Add one call's bit spend (``bits`` in total over ``elements`` elements) for ``tag``."""
    with _LOCK:
        acc = _BITS.setdefault(tag, [0.0, 0])
        acc[0] += bits
        acc[1] += elements


def measured_bits(tag: str) -> tuple[float, int] | None:
    """(average bits per element, elements seen) of everything ``tag`` quantized so far."""
    with _LOCK:
        acc = _BITS.get(tag)
    if not acc or not acc[1]:
        return None
    return acc[0] / acc[1], int(acc[1])
