"""`QuantTag`: the name every quantizer and GEMM op carries in a graph, ``"<layer>|<role>|<key>"``.

The tag is a plain string argument of the ``qcompile::*`` ops (op schemas take strings, and a string
survives Dynamo, AOTAutograd, Inductor and export unchanged); this type is the one place that builds
and reads it, so the plan, the exporters, the quantizer state and the passes agree on its fields.

- ``layer``: the module path of the GEMM (``"blocks.0.attn"``), or a plan site name;
- ``role``: ``weight`` / ``activation`` / ``grad_dgrad`` / ``grad_wgrad`` / ``gemm`` (a whole GEMM);
- ``key``: which GEMM of that layer (its plan key); a trailing ``#n`` marks the n-th stochastic draw
  of the same gradient (SMP averages several), kept apart in `draw`.
"""

from __future__ import annotations

from dataclasses import dataclass

SEPARATOR = "|"


@dataclass(frozen=True)
class QuantTag:
    """One parsed tag. ``str(tag)`` / `encode` give back the string the ops carry."""

    layer: str
    role: str
    key: str
    draw: int | None = None

    def encode(self) -> str:
        key = self.key if self.draw is None else f"{self.key}#{self.draw}"
        return SEPARATOR.join((self.layer, self.role, key))

    __str__ = encode

    def with_role(self, role: str) -> QuantTag:
        """The same layer and GEMM, another operand role (e.g. a GEMM tag → its activation's tag)."""
        return QuantTag(self.layer, role, self.key, self.draw)

    def with_draw(self, draw: int) -> QuantTag:
        """The ``draw``-th independent stochastic draw of the same quantizer (SMP)."""
        return QuantTag(self.layer, self.role, self.key, draw)

    @classmethod
    def parse(cls, tag: str) -> QuantTag:
        """Read ``"<layer>|<role>|<key>[#draw]"``. The layer is everything before the last two
        separators, so a layer name may itself contain one. Raises ``ValueError`` on a string
        that is not a tag (use `is_tag` to test first)."""
        parts = tag.rsplit(SEPARATOR, 2)
        if len(parts) != 3:
            raise ValueError(f"not a qcompile tag (expected '<layer>|<role>|<key>'): {tag!r}")
        layer, role, key = parts
        draw = None
        if "#" in key:
            key, _, n = key.partition("#")
            draw = int(n)
        return cls(layer, role, key, draw)

    @staticmethod
    def is_tag(value: object) -> bool:
        """Whether an op argument is a tag string (quantizer ops take exactly one)."""
        return isinstance(value, str) and value.count(SEPARATOR) >= 2


def encode_tag(layer: str, role: str, key: str) -> str:
    """The tag string of ``layer`` / ``role`` / ``key`` (shorthand for ``QuantTag(...).encode()``)."""
    return QuantTag(layer, role, key).encode()
