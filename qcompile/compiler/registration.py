"""`qcompile.register`: the ``"fqt"`` backend name, for installs without entry points."""

from __future__ import annotations

import torch


def register() -> None:
    """Register ``backend="fqt"`` with Dynamo by hand.

    An installed qcompile needs none of this: its ``torch_dynamo_backends`` entry point makes
    Dynamo load the backend the first time ``"fqt"`` is named. Call it when qcompile is used
    from a source tree on ``sys.path`` (no entry points). Idempotent: does nothing when the name
    is already known, from the entry point or an earlier call (Dynamo refuses a name twice).
    """
    from torch._dynamo.backends.registry import list_backends, lookup_backend

    from qcompile.compiler import trace_rules
    from qcompile.compiler.backend import BACKEND_NAME, fqt_backend  # here: importing it hooks Dynamo

    trace_rules.install(fqt_backend)  # again, in case `torch._dynamo.reset` dropped the hooks

    if BACKEND_NAME in list_backends(exclude_tags=()):
        lookup_backend(BACKEND_NAME)  # loads the entry point (once)
        return
    torch._dynamo.register_backend(fqt_backend, name=BACKEND_NAME)
