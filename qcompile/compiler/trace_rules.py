"""Dynamo tracing rules qcompile needs.

Dynamo normally keeps ``F.multi_head_attention_forward`` (every ``nn.MultiheadAttention`` and
``nn.Transformer*Layer``) as one opaque call in its graph; AOTAutograd later traces through it
anyway. qcompile asks Dynamo to trace into it instead, so its input projection, attention GEMMs
and output projection appear as ordinary ``linear`` / SDPA / ``bmm`` calls that the rewrite can
quantize. The ATen graph, and so the numerics, of any backend are unchanged; the rule applies to
the whole process once qcompile is imported.
"""

from __future__ import annotations

_OPAQUE_BY_DEFAULT = ("torch.nn.functional.multi_head_attention_forward",)


def trace_into_attention_functions() -> bool:
    """Let Dynamo inline the functions above; False if this torch has no such rule to lift."""
    try:
        from torch._dynamo import trace_rules
    except ImportError:  # pragma: no cover - torch without Dynamo
        return False
    changed = False
    for name in _OPAQUE_BY_DEFAULT:
        if trace_rules.torch_non_c_binding_in_graph_functions.pop(name, None) is not None:
            changed = True
    if changed:
        trace_rules.get_torch_obj_rule_map.cache_clear()
    return changed
