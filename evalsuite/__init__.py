"""evalsuite: evaluation, compare and CI gates (issue #5).

The metric registry is in :mod:`evalsuite.metrics` and batched generation in :mod:`evalsuite.generate`;
the runner (`evalsuite run`), compare and gates are not implemented yet.
"""
