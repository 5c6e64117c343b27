"""What the plan reads from a compile, kept on disk so that it survives AOTAutograd's cache.

The plan (`qcompile.plan`) is read by our inner compile from the forward and backward graphs
AOTAutograd hands over. On an AOTAutograd cache hit (a warm cache, e.g. the same training
script run again) those graphs are never handed over: the compiled code comes straight from the
cache. So each finished compile stores what it read (the `CompiledGraph` fields below) under a
key of everything that decides it, and a compile that hits the cache restores it from there.

The key (`graph_key`) covers the Dynamo graph as our policy pass rewrote it (quantizer specs
and tags are op arguments), its inputs' shapes, strides, dtypes and devices, the backend's
options, the Inductor and functorch configuration, torch's version and qcompile's own source
(`source_fingerprint`); the same fingerprint is added to torch's cache key tag
(`cache_key_tag`), so AOTAutograd's and Inductor's caches never hand back code compiled by
another qcompile. A hit whose record cannot be found is compiled again without the cache.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.util
import os
import pickle
import threading
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import fx

from qcompile.compiler.compiled_graphs import CompiledGraph

# What the inner compile adds to a `CompiledGraph`; the rest is known before AOTAutograd runs.
STORED_FIELDS = (
    "facts",
    "compiled",
    "forward_roles",
    "saved_quantized",
    "saved",
    "quantized_inputs",
    "input_aliases",
    "forward_channels_last",
    "kernel_quantized",
)

_LOCK = threading.Lock()
_MEMORY: dict[str, bytes] = {}  # this process's records: no disk read for a graph compiled here


@functools.cache
def source_fingerprint() -> str:
    """A hash of qcompile's Python source (the package, its passes and its runtime)."""
    digest = hashlib.sha256()
    for package in ("qcompile", "qcompile.passes", "qcompile.runtime"):  # found, not imported:
        root = Path(importlib.util.find_spec(package).origin).parent  # no import cycle
        for path in sorted(root.rglob("*.py")):
            digest.update(str(path.relative_to(root)).encode())
            digest.update(path.read_bytes())
    return digest.hexdigest()[:32]


def lowering_switches() -> str:
    """The module-level switches that change what a graph lowers to without changing the graph
    Dynamo hands over (which devices fuse Triton GEMMs, which take Inductor's quantizers): part
    of the cache key, so a cached compile made under other switches is not handed back."""
    from qcompile.passes.post_aot import gemm_kernel_choice, inline_quantizers

    return f"fuse={','.join(gemm_kernel_choice.FUSE_ON_DEVICES)};iq={','.join(inline_quantizers.INDUCTOR_QUANTIZERS_ON)}"


def cache_key_tag() -> str:
    """torch's cache key tag with qcompile's source fingerprint and `lowering_switches` added
    (see module docstring)."""
    ours = f"qcompile-{source_fingerprint()}-{lowering_switches()}"
    user = torch.compiler.config.cache_key_tag
    return f"{user}|{ours}" if user else ours


def _plain(value: Any) -> bool:
    if isinstance(value, (tuple, list)):
        return all(_plain(v) for v in value)
    return value is None or isinstance(value, (bool, int, float, str))


def _config_items(config: Any) -> list[tuple[str, Any]]:
    """A config module's settings that print the same in every process (no objects, no addresses)."""
    return sorted((k, v) for k, v in config.get_config_copy().items() if _plain(v))


def _input_meta(value: Any) -> tuple[Any, ...]:
    if isinstance(value, torch.Tensor):
        return (
            type(value).__name__,
            tuple(value.shape),
            tuple(value.stride()) if value.layout == torch.strided else (),
            str(value.dtype),
            str(value.device),
            value.requires_grad,
        )
    return (type(value).__name__, repr(value) if _plain(value) else "")


def graph_key(
    gm: fx.GraphModule, example_inputs: Sequence[Any], record: CompiledGraph, patches: dict[str, Any]
) -> str:
    """The key of ``gm``'s compile (see module docstring); ``patches``: Inductor's config patches."""
    from torch._inductor import config as inductor_config

    patch_items = sorted(
        (k, v.uuid() if hasattr(v, "uuid") else repr(v) if _plain(v) else type(v).__qualname__)
        for k, v in patches.items()
    )
    parts = (
        source_fingerprint(),
        torch.__version__,
        gm.graph.python_code(root_module="self").src,
        [_input_meta(t) for t in example_inputs],
        record.kernels,
        record.strict,
        patch_items,
        _config_items(inductor_config),
        _config_items(torch._functorch.config),
        torch.cuda.get_device_name() if torch.cuda.is_available() else "",
    )
    return hashlib.sha256(repr(parts).encode()).hexdigest()


def _directory() -> Path:
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    return Path(cache_dir()) / "qcompile_plans"


def save(key: str, record: CompiledGraph) -> None:
    """Keep what ``record``'s inner compiles read, for a later cache hit of the same key."""
    try:
        data = pickle.dumps({name: getattr(record, name) for name in STORED_FIELDS})
    except (pickle.PicklingError, TypeError, AttributeError):
        return  # not storable: a later cache hit compiles again instead
    with _LOCK:
        _MEMORY[key] = data
    try:
        directory = _directory()
        directory.mkdir(parents=True, exist_ok=True)
        tmp = directory / f".{key}.{os.getpid()}.tmp"
        tmp.write_bytes(data)
        os.replace(tmp, directory / key)
    except OSError:
        pass  # a read-only cache directory: this process still has it in memory


def restore(key: str, record: CompiledGraph) -> bool:
    """Fill ``record`` with what was kept under ``key``; False if nothing was."""
    with _LOCK:
        data = _MEMORY.get(key)
    if data is None:
        try:
            data = (_directory() / key).read_bytes()
        except OSError:
            return False
    try:
        fields = pickle.loads(data)
    except Exception:  # a truncated or stale file: compile again instead
        return False
    for name in STORED_FIELDS:
        setattr(record, name, fields[name])
    return True
