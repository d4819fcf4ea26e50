"""How curate run scales: the local engine and Ray with 1 and 2 workers on this machine, and a paper extrapolation.

    .venv/bin/python bench/scale_bench.py                     # 1,000,000 records
    .venv/bin/python bench/scale_bench.py --records 200000    # a quick run

The input is bench/curate_bench.py's (real Alpaca rows scaled to N distinct records, 10% injected exact
duplicates) and so are the stages (the default filters, language ID, PII flagging, exact dedup); each
configuration runs in a child process of its own, measured the same way (wall time, CPU time, peak RSS of the
main process plus each worker's own peak). The split-leakage audit is off here (``report.split_leakage: false``):
it is a search of its own, the same on both engines, measured by curate_bench.py.

It prints, per configuration, records/s end to end, the parallel efficiency per worker (rate with k workers /
(k x rate with 1)), and where the time goes on the driver (workspace writes, global stages, outputs), then:

- the **shuffle volume per record** of each global stage: the bytes of the columns its ``prepare`` keeps for a
  record (what a shuffle or the driver must move), measured on 20,000 real records;
- a **paper extrapolation** to 10 and 100 nodes like this one (2 cores each, 2 workers): per-worker rate from the
  2-worker local run, plus the driver's own seconds per record (it stores every record and writes the exports),
  which no number of nodes removes.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent))

import curate_bench as cb  # noqa: E402 - the benchmark's input and child-process runner

CONFIGS = [("local", 1), ("local", 2), ("ray", 1), ("ray", 2)]
DRIVER_PHASES = ("workspace write (background)", "spill prepared rows", "cluster splits", "workspace checkpoint", "stage:exact_dedup")


def shuffle_volume(shared: Path, n: int = 20_000) -> list[dict]:
    """Bytes per record that each global stage's ``prepare`` keeps (in memory, and as LZ4 Parquet)."""
    import io

    import polars as pl

    from curate.config import parse_config
    from curate.pipeline import Pipeline

    cfg = parse_config({"name": "vol", "tokenizer": None, "stages": [], "inputs": [
        {"path": str(shared / "alpaca" / "alpaca_data_first10k_excl_holdout.json")},
        {"path": str(shared / "completion" / "dolly_hhrlhf_train_small.jsonl")},
        {"path": str(shared / "sharegpt" / "fastchat_dummy_conversation.json")}]}, HERE)
    frame = pl.concat([f for f, _, _ in Pipeline(cfg, progress=False).ingest()]).head(n)
    rows = []
    specs = [("exact_dedup", {}), ("minhash_dedup", {}), ("embedding_dedup", {}),
             ("decontaminate", {"eval_sets": [str(shared / "gsm8k" / "test.jsonl")]})]
    from curate.stages import StageContext, get_stage

    for name, params in specs:
        cls = get_stage(name)
        stage = cls(cls.Params(**params), StageContext(config_dir=HERE))
        prepared = stage.prepare(frame)
        buf = io.BytesIO()
        prepared.write_parquet(buf, compression="lz4")
        rows.append({"stage": name, "columns": ", ".join(prepared.columns), "rows": prepared.height,
                     "bytes_per_record": prepared.estimated_size() / frame.height, "parquet_bytes_per_record": buf.tell() / frame.height})
    return rows


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--configs", default=",".join(f"{e}:{w}" for e, w in CONFIGS), help="engine:workers, comma-separated")
    ap.add_argument("--json", default=None, help="also write the results here")
    args = ap.parse_args(argv)
    import subprocess

    subprocess.run([sys.executable, str(HERE / "curate_bench.py"), "_child_build", str(args.records), "0.1", "0"], check=True)
    inp, truth = cb.build_input(args.records, 0.1, 0)
    stages, _ = cb._available_stages(list(cb.DEFAULT_STAGES))
    results = {}
    for item in args.configs.split(","):
        engine, workers = item.split(":")
        name = f"{engine} x{workers}"
        print(f"running {name} ...", flush=True)
        opts = SimpleNamespace(stage_timing=False, no_export=False, batch_size=None, duckdb_set=[], workers=int(workers),
                               no_audit=True, engine=engine)
        results[name] = cb.run_ours(inp, truth, opts, stages, None, f"scale_{engine}{workers}_{args.records}")

    base = {e: r for e in ("local", "ray") for name, r in results.items() if name == f"{e} x1"}
    print(f"\n{args.records:,} records ({truth['bytes'] / 1e6:.0f} MB JSONL), default stages, no split-leakage audit; 2 cores\n")
    head = f"{'configuration':<12}{'wall s':>9}{'records/s':>11}{'efficiency':>12}{'CPU s':>9}{'peak RSS MB':>13}{'kept':>10}{'dedup hits/false':>18}"
    print(head)
    for name, r in results.items():
        engine, k = name.split(" x")
        rate = r["inputs"] / r["wall"]
        one = base.get(engine)
        eff = f"{rate / (int(k) * one['inputs'] / one['wall']):.0%}" if one else "-"
        print(f"{name:<12}{r['wall']:>9.1f}{rate:>11,.0f}{eff:>12}{r['cpu']:>9.1f}{r['rss_mb']:>13,.0f}{r['kept']:>10,}"
              f"{str(r['dedup']['hits']) + ' / ' + str(r['dedup']['false']):>18}")
    same = len({(r["kept"], r["rejected"], json.dumps(r["reasons"], sort_keys=True)) for r in results.values()}) == 1
    print(f"\nsame kept set and reasons in every configuration: {same}")

    print("\nthe driver's own seconds (main process; it stores every record and writes the exports):")
    for name, r in results.items():
        t = r["pipeline_timings"]
        parts = {k: t.get(k, 0.0) for k in DRIVER_PHASES}
        outputs = r["pipeline_seconds"] - r["summary_seconds"]
        print(f"  {name:<12}" + ", ".join(f"{k} {v:.1f}" for k, v in parts.items()) + f", outputs {outputs:.1f}")

    print("\nshuffle volume per record of each global stage (what prepare keeps; 20,000 real records):")
    vol = shuffle_volume(cb.ALPACA.parents[1])
    for v in vol:
        print(f"  {v['stage']:<16}{v['bytes_per_record']:>8.0f} B in memory, {v['parquet_bytes_per_record']:>6.0f} B as LZ4 Parquet  ({v['columns']})")

    two = results.get("local x2")
    if two:
        t = two["pipeline_timings"]
        worker_s = sum(v for k, v in t.items() if k.startswith(("stage:", "parse", "build", "derive", "store (prepare", "tokenize"))
                       and k != "stage:exact_dedup")
        per_worker = two["inputs"] / worker_s  # records/s of one worker, busy
        outputs = two["pipeline_seconds"] - two["summary_seconds"]
        driver = (sum(t.get(k, 0.0) for k in DRIVER_PHASES) + outputs) / two["inputs"]  # driver seconds per record
        print(f"\npaper extrapolation (per-worker rate {per_worker:,.0f} records/s, measured busy time of the 2-worker run; "
              f"driver {driver * 1e6:.1f} µs per record):")
        print(f"  {'nodes':>6}{'workers':>9}{'workers alone rec/s':>22}{'with the driver rec/s':>24}{'10M records':>14}{'100M records':>15}")
        for nodes in (1, 10, 100):
            w = 2 * nodes
            alone = w * per_worker
            total = 1.0 / (1.0 / alone + driver)  # the driver's work does not shrink with more nodes
            print(f"  {nodes:>6}{w:>9}{alone:>22,.0f}{total:>24,.0f}{1e7 / total / 60:>12.1f} m{1e8 / total / 60:>13.1f} m")
        print("  (the driver stores every record in its DuckDB file and writes the exports: past a few nodes it is the bound)")
    if args.json:
        Path(args.json).write_text(json.dumps({"records": args.records, "results": results, "shuffle_volume": vol}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
