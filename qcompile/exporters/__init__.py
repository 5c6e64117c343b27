"""``qcompile.export``: the quantized training (and inference) graphs as ONNX or MLIR.

(Named ``exporters``, not ``export``, so that the package never shadows the ``qcompile.export`` function.)
"""
