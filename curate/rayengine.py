"""`engine: ray`: the same run with its record work on Ray Data, for inputs that outgrow one machine.

What runs where:

- **Record work** (parsing, normalizing, the per-record stages, the global stages' ``prepare``): every task of the
  local engine (:mod:`curate.executor`) becomes a row of a Ray dataset, and ``map_batches`` runs it on a pool of
  actors, each holding one copy of the run's built stages (loaded once per actor, as a local worker does). Rows
  come back in task order, so the driver numbers, stores and spills them exactly as the local engine does.
- **Global stages that decide per key** (``group_key``: exact dedup): the prepared rows are shuffled by a hash of
  that key into partitions with Ray's ``groupby(...).map_groups`` and each partition decides on its own, in
  parallel; the driver concatenates the partitions' decisions in uid order. Other global stages (MinHash, embedding dedup,
  decontamination) decide on the driver, as in the local engine.
- **The workspace, ledger, exports and report** are the driver's, so both engines write the same rows.

Ray is connected to at ``ray_address`` (an existing cluster; its workers must read the input paths) or started on
this machine, on loopback, when none is given, and stopped at the end of the run. Ray is an optional extra:
``pip install 'finetune-workbench[ray]'``.
"""

from __future__ import annotations

import pickle
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import polars as pl

from curate.executor import EngineUnavailableError, RecordWork, TaskResult
from curate.stages import GlobalDecision, GlobalStage
from curate.workerboot import THREAD_VARIABLES


def require_ray():
    """The ``ray`` module with Ray Data; EngineUnavailableError saying how to install it when it is missing."""
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate part of the package
    except ImportError as exc:
        raise EngineUnavailableError(f"engine: ray needs Ray Data: pip install 'finetune-workbench[ray]' ({exc})") from None
    return ray


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """EngineUnavailableError unless ``address`` (``host:port`` or ``ray://host:port``) accepts a TCP connection
    within ``timeout`` seconds: Ray itself retries an unreachable cluster for minutes."""
    import socket

    hostport = address.split("://", 1)[-1].rsplit("/", 1)[0]
    host, _, port = hostport.rpartition(":")
    if not host or not port.isdigit():
        raise EngineUnavailableError(f"ray_address {address!r} is not host:port or ray://host:port")
    try:
        socket.create_connection((host, int(port)), timeout=timeout).close()
    except OSError as exc:
        raise EngineUnavailableError(f"cannot reach Ray at {address}: {exc}") from None


class _RecordActor:
    """One Ray actor: the run's record work, unpickled once; runs the tasks of each batch of rows."""

    def __init__(self, payload: bytes):
        import gc

        gc.disable()  # as the local workers: millions of short-lived containers, no reference cycles
        self.work: RecordWork = pickle.loads(payload)

    def __call__(self, batch: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        results = [pickle.dumps(self.work.run(pickle.loads(task)), protocol=pickle.HIGHEST_PROTOCOL) for task in batch["task"]]
        return {"results": np.array(results, dtype=object)}


class RayExecutor:
    """The :class:`curate.executor.Executor` contract (``map``, ``close``, ``workers``) on Ray Data actors."""

    def __init__(self, work: RecordWork, workers: int | None, address: str | None, progress: bool = False):
        ray = require_ray()
        self.started = not ray.is_initialized()
        if self.started:
            env = {name: "false" if name == "TOKENIZERS_PARALLELISM" else "1" for name in THREAD_VARIABLES}
            kwargs: dict[str, Any] = dict(include_dashboard=False, log_to_driver=False, logging_level="WARNING",
                                          runtime_env={"env_vars": env})
            if address and address != "auto":
                _check_reachable(address)
            try:
                if address:
                    ray.init(address=address, **kwargs)
                else:  # a cluster of this machine alone, reachable on loopback only
                    ray.init(address="local", num_cpus=workers, _node_ip_address="127.0.0.1", **kwargs)
            except Exception as exc:  # noqa: BLE001 - whatever Ray raises, one line that names the address
                raise EngineUnavailableError(f"cannot start or reach Ray at {address or 'this machine'}: {exc}") from None
        import ray.data

        ctx = ray.data.DataContext.get_current()
        ctx.execution_options.preserve_order = True  # results in task order: uids as the local engine numbers them
        ctx.enable_progress_bars = progress
        ctx.print_on_execution_start = False
        self.workers = workers or max(1, int(ray.cluster_resources().get("CPU", 1)))
        self.work_ref = ray.put(pickle.dumps(work, protocol=pickle.HIGHEST_PROTOCOL))
        self.worker_peaks: dict[int, float] = {}

    def map(self, tasks) -> Iterator[TaskResult]:
        """The tasks' results, in task order; the tasks are put in Ray's object store first (it spills to disk)."""
        import ray
        import ray.data

        rows = [{"task": pickle.dumps(task, protocol=pickle.HIGHEST_PROTOCOL)} for task in tasks]
        if not rows:
            return
        ds = ray.data.from_items(rows, override_num_blocks=len(rows)).map_batches(
            _RecordActor, fn_constructor_args=(ray.get(self.work_ref),), batch_size=1, batch_format="numpy",
            concurrency=self.workers, num_cpus=1,
        )
        for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=2):
            for blob in batch["results"]:
                yield from pickle.loads(blob)

    def close(self) -> None:
        """Stop Ray when this run started it."""
        if self.started:
            import ray

            ray.shutdown()
            self.started = False


def decide_by_key(stage: GlobalStage, files: list[Path], excluded: pl.DataFrame, partitions: int) -> GlobalDecision | None:
    """A ``group_key`` stage's decision over its spilled prepared rows (minus ``excluded`` uids): the rows are
    shuffled by a hash of the key into ``partitions`` groups on Ray, each group decides alone (rows of one key meet
    in one group), and the groups' rejects and clusters are joined in uid order: what ``decide`` gives over all rows."""
    ray = require_ray()
    import pyarrow as pa

    key = stage.group_key
    assert key is not None
    refs = []
    for f in files:
        frame = pl.read_parquet(f).join(excluded, on="uid", how="anti")
        if frame.height:  # the shuffle's partition: a hash of the key (rows of one key meet in one group)
            refs.append(ray.put(frame.with_columns(_partition=(pl.col(key).hash(seed=1) % partitions).cast(pl.Int64)).to_arrow()))
    if not refs:
        return None
    ds = ray.data.from_arrow_refs(refs).groupby("_partition")

    def decide_block(block: pa.Table) -> pa.Table:
        rows = pl.from_arrow(block).drop("_partition")  # type: ignore[union-attr]
        if rows.height == 0:
            return pa.table({"kind": pa.array([], pa.string()), "payload": pa.array([], pa.binary())})
        outcome = stage.decide(rows)
        decision = GlobalDecision(outcome) if isinstance(outcome, pl.DataFrame) else outcome
        parts = [("rejects", decision.rejects), ("clusters", decision.clusters), ("pairs", decision.pairs), ("links", decision.links)]
        kept = [(kind, frame) for kind, frame in parts if frame is not None and frame.height]
        return pa.table({"kind": [k for k, _ in kept], "payload": [pickle.dumps(f) for _, f in kept]})

    collected: dict[str, list[pl.DataFrame]] = {}
    for batch in ds.map_groups(decide_block, batch_format="pyarrow").iter_batches(batch_format="pyarrow"):
        for kind, payload in zip(batch.column("kind").to_pylist(), batch.column("payload").to_pylist()):
            collected.setdefault(kind, []).append(pickle.loads(payload))

    def joined(kind: str, order: list[str]) -> pl.DataFrame | None:
        frames = collected.get(kind)
        return pl.concat(frames).sort(order) if frames else None

    from curate.schema import REJECT_SCHEMA

    rejects = joined("rejects", ["uid"])
    return GlobalDecision(
        rejects if rejects is not None else pl.DataFrame(schema=REJECT_SCHEMA),
        clusters=joined("clusters", ["uid"]), pairs=joined("pairs", ["uid_a", "uid_b"]), links=joined("links", ["uid_a", "uid_b"]),
    )
