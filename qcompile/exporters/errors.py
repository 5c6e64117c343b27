"""The exporters' error, in a module of its own so that MLIR export never imports onnx."""

from __future__ import annotations


class ExportError(ValueError):
    """A graph that cannot be exported as asked; the message names the op and the layer."""
