"""Small real models and loops shared by the tests and the benchmarks (``torch.testing``'s role for qcompile).

Importable from an installed qcompile, so benchmarks and user scripts need no ``sys.path`` edits.
Models that need ``transformers`` import it when built.
"""
