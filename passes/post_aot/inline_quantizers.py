"""Inline qcompile's ops as plain ATen so Inductor can fuse them (the last pass before Inductor).

Each ``qcompile::*`` node is replaced by the graph of its reference implementation, traced on
the node's own fake values. Doing it node by node (not by re-tracing the whole graph) keeps
every other node, its metadata and the symbolic shapes of the graph exactly as AOTAutograd
made them.
"""

from __future__ import annotations

import contextlib
import itertools

import torch
from torch import fx
from torch._subclasses.fake_tensor import FakeTensor
from torch.fx.experimental.proxy_tensor import make_fx

from qcompile.runtime import CPU_INT8_DECOMPOSITIONS, QUANTIZER_DECOMPOSITIONS


def _fake_arg(a):
    if isinstance(a, fx.Node):
        return a.meta["val"]
    if isinstance(a, (list, tuple)):
        return type(a)(_fake_arg(x) for x in a)
    return a


def _is_tag(node: fx.Node, index: int) -> bool:
    """The trailing string argument of every qcompile op is its tag: it does not change the math."""
    return index == len(node.args) - 1 and isinstance(node.args[index], str)


def _distinct(fakes: list) -> list:
    """``fakes`` with repeated objects replaced by equal-looking new ones. Two inputs that are one
    fake tensor would be traced as one input: nodes copied from one cached decomposition share
    their ``meta["val"]`` objects, so two different tensors can arrive here as the same object
    (``qmatmul(X̂, Ŵ)`` with both rebuilt by the same decomposition)."""
    seen: set[int] = set()
    out = []
    for f in fakes:
        if isinstance(f, torch.Tensor) and id(f) in seen:
            mode = f.fake_mode if isinstance(f, FakeTensor) else contextlib.nullcontext()
            with mode:
                f = torch.empty_strided(f.shape, f.stride(), dtype=f.dtype, device=f.device)
        seen.add(id(f))
        out.append(f)
    return out


def _trace(fn, consts: list, tensor_pos: list[int], fakes: list, decompositions) -> fx.GraphModule:
    """The ATen graph of ``fn`` on these fake tensors (the other arguments fixed)."""

    def call(*tensors):
        args = list(consts)
        for i, t in zip(tensor_pos, tensors, strict=True):
            args[i] = t
        return fn(*args)

    fake_mode = next((f.fake_mode for f in fakes if isinstance(f, FakeTensor)), None)
    with contextlib.nullcontext() if fake_mode is None else fake_mode:
        return make_fx(
            call, decomposition_table=decompositions, tracing_mode="real" if fake_mode else "fake"
        )(*fakes)


# Devices on which a graph whose GEMMs run the Triton int8 kernel gets its quantizers (the codes
# ops) as Inductor's generated code, as the CPU integer path always does, instead of qcompile's
# Triton quantizer kernels. None by default. On an H200 those kernels reached 64–225 GB/s and
# Inductor's code of the same quantizers was 1.6–7× faster (`benchmarks/gpu_kernels.py`, its
# quantizer table); whether that carries over to the training step is what the benchmark's
# block configuration "quantizers in Inductor's code" (which sets this to ("cuda",)) measures.
INDUCTOR_QUANTIZERS_ON: tuple[str, ...] = ()


def uses_cpu_int8(gm: fx.GraphModule) -> bool:
    """The graph runs GEMMs on the CPU integer kernel (`fuse_triton_gemms` put them there)."""
    return any(n.target is torch.ops.qcompile.scaled_int8_gemm_cpu.default for n in gm.graph.nodes)


def inlines_codes(gm: fx.GraphModule) -> bool:
    """The codes ops become Inductor code: on the CPU integer path, and on the Triton int8 path
    on the devices of `INDUCTOR_QUANTIZERS_ON`."""
    if uses_cpu_int8(gm):
        return True
    return any(
        n.target is torch.ops.qcompile.scaled_int8_gemm.default
        and getattr(getattr(n.meta.get("val"), "device", None), "type", None) in INDUCTOR_QUANTIZERS_ON
        for n in gm.graph.nodes
    )


def decompose_quantizers(gm: fx.GraphModule) -> fx.GraphModule:
    """In place; returns ``gm``. Graphs without qcompile ops are returned unchanged.

    In a graph on the CPU integer path (`uses_cpu_int8`), or on the Triton path of a device in
    `INDUCTOR_QUANTIZERS_ON`, the codes ops are inlined too, so the quantizers write their int8
    codes in Inductor's loops; elsewhere they stay opaque (Triton)."""
    table = dict(QUANTIZER_DECOMPOSITIONS)
    if inlines_codes(gm):
        table.update(CPU_INT8_DECOMPOSITIONS)
    targets = [n for n in gm.graph.nodes if n.op == "call_function" and n.target in table]
    if not targets:
        return gm
    # Trace into the ATen subset Inductor lowers (its own decomposition table), as AOTAutograd does.
    from torch._inductor.decomposition import select_decomp_table

    decompositions = select_decomp_table()
    traced: dict[tuple, fx.GraphModule] = {}  # identical ops on identical metadata trace once
    const_ids = itertools.count(len(list(gm.named_buffers())))
    for node in targets:
        fn = table[node.target]
        tensor_pos = [i for i, a in enumerate(node.args) if isinstance(a, fx.Node)]
        fakes = _distinct([node.args[i].meta["val"] for i in tensor_pos])
        key = (
            node.target,
            tuple(repr(a) for i, a in enumerate(node.args) if i not in tensor_pos and not _is_tag(node, i)),
            tuple((str(f.shape), str(f.stride()), f.dtype, str(f.device)) for f in fakes),
        )
        sub = traced.get(key)
        if sub is None:
            sub = traced[key] = _trace(fn, list(node.args), tensor_pos, fakes, decompositions)
        env: dict[fx.Node, fx.Node] = {}
        placeholders = iter(node.args[i] for i in tensor_pos)
        with gm.graph.inserting_before(node):
            for sn in sub.graph.nodes:
                if sn.op == "placeholder":
                    env[sn] = next(placeholders)
                elif sn.op == "output":
                    result = fx.map_arg(sn.args[0], env.__getitem__)
                elif sn.op == "get_attr":
                    attr = getattr(sub, sn.target)
                    name = f"_qc_const_{next(const_ids)}_{sn.target}"
                    gm.register_buffer(name, attr)
                    env[sn] = gm.graph.get_attr(name)
                    env[sn].meta.update(sn.meta)
                else:
                    new = gm.graph.node_copy(sn, env.__getitem__)
                    new.meta.update({k: v for k, v in node.meta.items() if k not in new.meta})
                    env[sn] = new
        if isinstance(result, (tuple, list)):  # a multi-output op: its users are getitems
            for user in list(node.users):
                user.replace_all_uses_with(result[user.args[1]])
                gm.graph.erase_node(user)
        else:
            node.replace_all_uses_with(result)
        gm.graph.erase_node(node)
    gm.graph.eliminate_dead_code()
    gm.graph.lint()
    gm.recompile()
    # The quantizers' draws stay aten.rand here; `inductor_random.seed_random_draws` seeds them
    # Inductor's way where Inductor compiles the graph.
    return gm
