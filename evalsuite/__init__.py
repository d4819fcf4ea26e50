"""evalsuite: evaluation runs, metrics, compare and CI gates.

The metric registry is in :mod:`evalsuite.metrics`; batched generation, shared with training's sample
generations, is in :mod:`chat.generate`.
"""
