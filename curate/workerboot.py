"""A worker process's first step: set its thread counts before the heavy libraries load.

Kept apart from :mod:`curate.executor` (which imports Polars): a spawned worker unpickles its initializer by
importing that function's module, and Polars and numba read their thread counts once, when they load. With one
worker per core, each worker's libraries get one thread, so the workers do not take turns on the same cores.
"""

from __future__ import annotations

import os

THREAD_VARIABLES = ("POLARS_MAX_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")


def init_worker(payload: bytes, threads: int) -> None:
    """Give this process's libraries ``threads`` threads each, then load the pickled record work."""
    for name in THREAD_VARIABLES:
        os.environ[name] = "false" if name == "TOKENIZERS_PARALLELISM" else str(threads)
    from curate import executor

    executor.load_work(payload)
