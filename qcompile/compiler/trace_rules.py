"""Dynamo tracing rules qcompile needs, applied only while Dynamo traces a frame for ``fqt``.

Dynamo normally keeps ``F.multi_head_attention_forward`` (every ``nn.MultiheadAttention`` and
``nn.Transformer*Layer``) as one opaque call in its graph; AOTAutograd later traces through it
anyway. For an ``fqt`` compile Dynamo traces into it instead, so its input projection, attention
GEMMs and output projection appear as ordinary ``linear`` / SDPA / ``bmm`` calls that the rewrite
can quantize. The ATen graph, and so the numerics, are the same either way.

The rule has to be in force before our backend is called (Dynamo traces first, then hands the
graph over), and should hold only for frames compiled with ``fqt``: other backends' graphs stay
as torch makes them. Dynamo runs compile-start and compile-end callbacks around each frame it
compiles (`torch._dynamo.callback_handler`); they do not say which backend compiles, but the
backend is the ``compiler_fn`` argument of Dynamo's frame compile (`convert_frame._compile`),
found on the calling stack.

`install` (run when the backend module is imported: Dynamo resolving the ``"fqt"`` entry point,
`qcompile.register`, `qcompile.plan`, `qcompile.export`; never by ``import qcompile``) lifts the
rule and registers the callbacks: the start callback puts the rule back for a frame compiled
with any other backend, the end callback lifts it again. `torch._dynamo.reset` drops every
compile callback, so the lifted rule is the default that survives it: an ``fqt`` compile right
after a reset still traces into attention, and the backend re-installs the callbacks on its
next call. Between a reset and that call, another backend's compile would trace into attention
too (same ATen graph, same numerics, only Dynamo's graph differs).
"""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable
from typing import Any

import torch

_OPAQUE_BY_DEFAULT: tuple[Callable[..., Any], ...] = (torch.nn.functional.multi_head_attention_forward,)

_LOCK = threading.Lock()
_hooks: tuple[Callable[..., None], Callable[..., None]] | None = None  # the callbacks, made once
_lifted: dict[Callable[..., Any], Any] = {}  # the rule-map entries taken out while lifted


def backend_in_flight() -> Callable[..., Any] | None:
    """The backend of the frame Dynamo is compiling on this thread (its ``compiler_fn``), or None."""
    from torch._dynamo import convert_frame

    target = convert_frame._compile.__code__
    frame = sys._getframe(1)
    while frame is not None:
        if frame.f_code is target:
            return frame.f_locals.get("compiler_fn")
        frame = frame.f_back
    return None


def compiles_with(compiler_fn: Any, backend: Callable[..., Any]) -> bool:
    """Whether Dynamo's ``compiler_fn`` is ``backend`` under its wrappers: the debug wrapper and
    convert-frame wrappers (``_torchdynamo_orig_backend``), ``torch.compile``'s option wrapper
    (``compiler_fn``) and ``functools.partial``."""
    seen: set[int] = set()
    fn = compiler_fn
    while fn is not None and id(fn) not in seen:
        if fn is backend:
            return True
        seen.add(id(fn))
        fn = (
            getattr(fn, "_torchdynamo_orig_backend", None)
            or getattr(fn, "compiler_fn", None)
            or getattr(fn, "func", None)
        )
    return False


def lift_rules() -> None:
    """Let Dynamo inline the functions above (until `restore_rules`)."""
    from torch._dynamo import trace_rules

    rule_map = trace_rules.get_torch_obj_rule_map()
    for fn in _OPAQUE_BY_DEFAULT:
        if fn in rule_map:
            _lifted[fn] = rule_map.pop(fn)


def restore_rules() -> None:
    """Put back what `lift_rules` took out."""
    from torch._dynamo import trace_rules

    rule_map = trace_rules.get_torch_obj_rule_map()
    while _lifted:
        fn, rule = _lifted.popitem()
        rule_map[fn] = rule


def install(backend: Callable[..., Any]) -> None:
    """Lift the rule and hook Dynamo's compile start/end so that only frames compiled with
    ``backend`` see it lifted. Idempotent; call again after `torch._dynamo.reset` (which drops
    the hooks). Dynamo runs the start callbacks only for the outermost compile in flight and the
    end callbacks when it finishes, so every restore is followed by a lift."""
    from torch._dynamo.callback import CallbackArgs, CallbackTrigger

    global _hooks
    with _LOCK:
        if _hooks is None:

            def on_start(args: CallbackArgs) -> None:
                if args.callback_trigger is CallbackTrigger.DYNAMO and not compiles_with(
                    backend_in_flight(), backend
                ):
                    restore_rules()

            def on_end(args: CallbackArgs) -> None:
                lift_rules()

            _hooks = (on_start, on_end)
        on_start, on_end = _hooks
        handler = torch._dynamo.callback_handler
        if on_start not in handler.start_callbacks:
            handler.register_start_callback(on_start)
        if on_end not in handler.end_callbacks:
            handler.register_end_callback(on_end)
        lift_rules()
