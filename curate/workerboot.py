"""A local worker process: its thread counts, set before the heavy libraries load, and the record work it runs.

Kept apart from :mod:`curate.executor` (which imports Polars): a spawned worker unpickles its initializer by
importing that function's module, and Polars and numba read their thread counts once, when they load. With one
worker per core, each worker's libraries get one thread, so the workers do not take turns on the same cores.
"""

from __future__ import annotations

import os
import pickle
from typing import Any

THREAD_VARIABLES = ("POLARS_MAX_THREADS", "NUMBA_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                    "RAYON_NUM_THREADS", "TOKENIZERS_PARALLELISM")


_WORK: Any = None  # this worker's curate.executor.RecordWork


def init_worker(payload: bytes, threads: int) -> None:
    """Give this process's libraries ``threads`` threads each, then load the pickled record work (a
    :class:`curate.executor.RecordWork`: unpickling it imports the libraries)."""
    import gc

    global _WORK
    for name in THREAD_VARIABLES:
        os.environ[name] = "false" if name == "TOKENIZERS_PARALLELISM" else str(threads)
    gc.disable()  # as in the main process: millions of short-lived containers, no reference cycles
    _WORK = pickle.loads(payload)


def run_task(task: Any) -> list:
    """The results of one task (a :class:`curate.executor.Task`) on this worker's record work."""
    assert _WORK is not None, "init_worker has not run in this process"
    return _WORK.run(task)
