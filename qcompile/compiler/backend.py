"""The ``fqt`` torch.compile backend.

Pipeline (the passes and their order: `qcompile.passes.pipeline`): Dynamo graph → the pre-AOT
rewrite (policy) → Inductor's `compile_fx`, whose AOTAutograd produces the forward and backward
graphs (our joint pass runs on them first); our inner compile decides each GEMM's
kernel (`choose_gemm_kernel`: the CPU integer GEMM, the Triton int8 GEMM on CUDA, or Inductor's
float GEMM; the ``kernels`` option), reads each graph into the plan, strips layer markers, rewrites
the integer GEMMs onto codes, inlines the quantizers as ATen and hands the graph to
Inductor's `compile_fx_inner`. Everything qcompile does not touch compiles exactly as with
``torch.compile``'s default backend.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import fx

from qcompile.compiler import graph_hooks, plan_store, trace_rules
from qcompile.compiler.compiled_graphs import CompiledGraph, register
from qcompile.compiler.graph_hooks import graphs_only
from qcompile.compiler.quantizer_binding import bind_state
from qcompile.passes import KERNEL_MODES
from qcompile.passes.pipeline import (
    JOINT_PASS,
    POST_AOT_INDUCTOR,
    POST_AOT_LOWER,
    POST_AOT_PREPARE,
    PRE_AOT,
    GraphInCompile,
    run_post_aot,
)
from qcompile.passes.post_aot.eager_views import run_eagerly
from qcompile.policy.config import PolicyError
from qcompile.policy.files import resolve_policy
from qcompile.report.shortfalls import report_shortfalls

BACKEND_NAME = "fqt"
__all__ = ["BACKEND_NAME", "OUR_OPTIONS", "fqt_backend", "graphs_only"]


OUR_OPTIONS = ("policy", "kernels", "strict")


def _inductor_config_patches(mode: str | None, options: dict[str, Any]) -> dict[str, Any]:
    """``mode=`` as Inductor's mode options; every non-qcompile option must be an Inductor config key."""
    from torch._inductor import config as inductor_config
    from torch._inductor import list_mode_options

    patches: dict[str, Any] = {}
    if mode not in (None, "default"):
        modes = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
        if mode not in modes:
            raise PolicyError(f"unknown mode {mode!r}; valid modes: {modes}")
        patches.update(list_mode_options(mode))
    valid_keys = inductor_config.get_config_copy()
    for key, value in options.items():
        if key not in valid_keys:
            raise PolicyError(
                f"unknown option {key!r}: options are {OUR_OPTIONS} or torch._inductor.config keys"
            )
        patches[key] = value
    return patches


def _inner_compile(
    gm: fx.GraphModule, example_inputs: Sequence[Any], *, record: CompiledGraph, store_key: str, **kwargs: Any
):
    from torch._inductor.compile_fx import compile_fx_inner

    kind = (
        "backward" if kwargs.get("is_backward") else "inference" if kwargs.get("is_inference") else "forward"
    )
    graph = GraphInCompile.of(gm, kind, record)  # passes/pipeline.py: the passes, in order
    run_post_aot(POST_AOT_PREPARE, graph)
    observer = graph_hooks.observer()
    if observer is not None:  # `qcompile.export` takes the graph as AOTAutograd gave it, markers and all
        observer.add_aot_graph(kind, gm)
    run_post_aot(POST_AOT_LOWER, graph)
    report_shortfalls(record, kind, record.strict)  # never a silent high-precision GEMM
    if graph_hooks.read_only():  # export / planning: the graphs are what is wanted; run
        from torch._functorch.aot_autograd import make_boxed_func  # them eagerly, skip Inductor

        return make_boxed_func(run_eagerly(gm))
    run_post_aot(POST_AOT_INDUCTOR, graph)
    compiled = compile_fx_inner(gm, example_inputs, **kwargs)
    if kind != "forward":  # the record is complete: keep it for AOTAutograd cache hits
        plan_store.save(store_key, record)
    return compiled


def fqt_backend(
    gm: fx.GraphModule,
    example_inputs: Sequence[Any],
    options: dict[str, Any] | None = None,
    mode: str | None = None,
) -> Callable[..., Any]:
    """``torch.compile(model, backend="fqt", options={"policy": ...}, mode=...)``.

    options: ``policy`` (preset name, `qcompile.Policy`, dict, or .toml/.json path; default
    ``"luq-int4"``); ``kernels``: ``"auto"`` (default: integer GEMMs where the device has them
    and the GEMM is large enough to gain), ``"int8"`` (every GEMM whose codes allow it) or
    ``"reference"`` (every GEMM a float simulation of the same codes); ``strict``: ``True``
    makes the compile fail (`HighPrecisionGemmError`) when a GEMM the policy quantizes runs in
    high precision for a reason other than the policy (default ``False``: one
    `HighPrecisionGemmWarning` per graph); any other key is passed to Inductor as a config patch.
    mode: an Inductor mode (``"max-autotune"``, ...).
    """
    from torch._inductor.compile_fx import compile_fx

    trace_rules.install(fqt_backend)  # again: `torch._dynamo.reset` drops Dynamo's compile callbacks
    options = dict(options or {})
    policy = resolve_policy(options.pop("policy", None))
    kernels = options.pop("kernels", "auto")
    if kernels not in KERNEL_MODES:
        raise PolicyError(f"unknown kernels={kernels!r}; valid choices: {KERNEL_MODES}")
    strict = options.pop("strict", False)
    if not isinstance(strict, bool):
        raise PolicyError(f"strict must be True or False, got {strict!r}")
    # A policy with nothing quantized compiles exactly as Inductor does (no codes to pack or
    # recompute from). The fused Triton GEMMs (CUDA) read the packed codes directly.
    pack = policy.pack_saved and not policy.is_high_precision
    joint_pass = JOINT_PASS(pack=pack, recompute=policy.recompute)
    patches = {"joint_custom_post_pass": joint_pass, **_inductor_config_patches(mode, options)}
    records = [record for rewrite in PRE_AOT for record in rewrite(gm, policy)]
    record = register(CompiledGraph(policy, records, kernels=kernels, strict=strict), example_inputs)
    observer = graph_hooks.observer()
    if observer is not None:
        observer.begin_graph(gm, example_inputs, record)
    record.state = bind_state(gm, example_inputs, records)
    store_key = plan_store.graph_key(gm, example_inputs, record, patches)
    inner = functools.partial(_inner_compile, record=record, store_key=store_key)
    with torch.compiler.config.patch(cache_key_tag=plan_store.cache_key_tag()):
        compiled = compile_fx(gm, example_inputs, inner_compile=inner, config_patches=patches)
        if record.compiled:  # our inner compile ran: no AOTAutograd cache hit
            return compiled
        # A cache hit: AOTAutograd handed back compiled code without calling our inner compile;
        # the plan comes from what that compile stored, or from compiling again without the cache.
        if plan_store.restore(store_key, record):
            for kind in record.compiled:
                report_shortfalls(record, kind, record.strict)
            return compiled
        with torch._functorch.config.patch(enable_autograd_cache=False):
            return compile_fx(gm, example_inputs, inner_compile=inner, config_patches=patches)


# Frames compiled with this backend trace into nn.MultiheadAttention (see `trace_rules`); Dynamo
# imports this module when it resolves the "fqt" entry point, before it traces anything.
trace_rules.install(fqt_backend)
