"""Which store takes the app's human writes: several processes each storing labels as fast as they can, into
(a) one DuckDB file opened per write (what the review app did: DuckDB lets one process hold a file for
writing), without and with retry-on-lock, and (b) the workspace's SQLite catalog in WAL mode (durable
commits, busy timeout). Prints labels/s, p50/p95 write latency and failed writes per store, in one run.

    .venv/bin/python bench/label_store.py [--writers 4] [--seconds 10]
"""

from __future__ import annotations

import argparse
import multiprocessing as mp
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _duckdb_writer(path: str, seconds: float, retry: bool, name: str, out: mp.Queue) -> None:
    import duckdb

    lat, errors, n = [], 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        while True:
            try:
                con = duckdb.connect(path)
                con.execute("INSERT INTO labels VALUES (?, ?, 'accept', now())", [f"r{n}", name])
                con.close()
                break
            except (duckdb.IOException, duckdb.ConnectionException):
                if not retry or time.monotonic() > end + 15:
                    errors += 1
                    break
                time.sleep(0.005)
        else:  # pragma: no cover
            pass
        lat.append(time.perf_counter() - t)
        n += 1
    out.put((n - errors, errors, lat))


def _sqlite_writer(path: str, seconds: float, retry: bool, name: str, out: mp.Queue) -> None:
    from curate.workspace import Workspace, WorkspaceBusy

    ws = Workspace(path)
    lat, errors, n = [], 0, 0
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        t = time.perf_counter()
        try:
            ws.add_label(f"r{n}", name, "accept", action_key=f"{name}-{n}")
        except WorkspaceBusy:
            errors += 1
        lat.append(time.perf_counter() - t)
        n += 1
    out.put((n - errors, errors, lat))


def measure(kind: str, writers: int, seconds: float, retry: bool) -> dict:
    """Run ``writers`` processes for ``seconds``; labels stored, failed writes, rate and latency."""
    tmp = Path(tempfile.mkdtemp(prefix="label_store_"))
    if kind == "duckdb":
        import duckdb

        path = str(tmp / "ws.duckdb")
        duckdb.connect(path).execute("CREATE TABLE labels (record_id VARCHAR, annotator VARCHAR, verdict VARCHAR, created TIMESTAMP)").close()
        target = _duckdb_writer
    else:
        from curate.workspace import Workspace

        path = str(tmp / "ws")
        Workspace(path)
        target = _sqlite_writer
    out: mp.Queue = mp.get_context("fork").Queue()
    procs = [mp.get_context("fork").Process(target=target, args=(path, seconds, retry, f"ann{i}", out)) for i in range(writers)]
    for p in procs:
        p.start()
    results = [out.get() for _ in procs]
    for p in procs:
        p.join()
    stored = sum(r[0] for r in results)
    lat = sorted(x for r in results for x in r[2])
    return {"stored": stored, "failed": sum(r[1] for r in results), "per_s": stored / seconds,
            "p50_ms": 1000 * statistics.median(lat), "p95_ms": 1000 * lat[int(0.95 * (len(lat) - 1))]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--writers", type=int, default=4)
    ap.add_argument("--seconds", type=float, default=10)
    args = ap.parse_args()
    rows = [("one DuckDB file, open per write (before)", measure("duckdb", args.writers, args.seconds, retry=False)),
            ("one DuckDB file, open per write, retry on lock", measure("duckdb", args.writers, args.seconds, retry=True)),
            ("SQLite catalog, WAL, synchronous=FULL (ours)", measure("sqlite", args.writers, args.seconds, retry=True))]
    print(f"{args.writers} writer processes, {args.seconds:.0f} s each, labels stored as fast as they can\n")
    print("| store | labels/s | failed writes | p50 ms | p95 ms |")
    print("|---|---:|---:|---:|---:|")
    for name, r in rows:
        print(f"| {name} | {r['per_s']:,.0f} | {r['failed']:,} | {r['p50_ms']:.1f} | {r['p95_ms']:.1f} |")


if __name__ == "__main__":
    main()
