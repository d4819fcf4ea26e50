"""The record executor: any number of workers gives the same run, uid for uid, byte for byte in the exports."""

from __future__ import annotations

import gzip
import hashlib
import json
from pathlib import Path

import polars as pl
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from curate.config import parse_config
from curate.pipeline import Pipeline
from curate.readers import jsonl_ranges, read_jsonl
from curate.workspace import Workspace


def _inputs(shared: Path, tmp: Path) -> list[dict]:
    """Real data in every readable layout: plain JSONL (cut into ranges), gzip JSONL (cut into blobs) with a broken
    line, a JSON array, Parquet with several row groups, and a CSV."""
    gsm = (shared / "gsm8k" / "test.jsonl").read_bytes().splitlines(keepends=True)
    broken = gsm[:300] + [b'{"question": "unterminated\n', b"[1, 2]\n", b"\n"] + gsm[300:700]
    with gzip.open(tmp / "gsm8k.jsonl.gz", "wb") as fh:
        fh.write(b"".join(broken))
    rows = [json.loads(line) for line in (shared / "completion" / "dolly_hhrlhf_train_small.jsonl").read_bytes().splitlines()[:900]]
    pq.write_table(pa.Table.from_pylist(rows), tmp / "dolly.parquet", row_group_size=128)
    return [
        {"path": str(shared / "completion" / "truthfulqa_finetune_truth.jsonl")},
        {"path": "gsm8k.jsonl.gz", "mapping": {"user": "question", "assistant": "answer"}},
        {"path": str(shared / "alpaca" / "alpaca_4000.json")},
        {"path": "dolly.parquet"},
        {"path": str(shared / "mmlu" / "anatomy_test.csv"), "csv_header": ["question", "a", "b", "c", "d", "answer"],
         "mapping": {"user": "question", "assistant": "answer"}},
    ]


# record stages, then exact dedup, then record stages again (a second pass over the kept records, on the workers
# too), then MinHash: both passes and both kinds of global stage
STAGES = ["conversation_structure", "response_length", "length", "exact_dedup", "refusal", {"pii": {"action": "redact"}},
          "unique_words", "minhash_dedup"]


def _run(tmp: Path, shared: Path, workers: int, name: str):
    cfg = parse_config({
        "name": name, "tokenizer": None, "inputs": _inputs(shared, tmp), "stages": STAGES, "batch_size": 500,
        "workers": workers, "workspace": "ws", "output_dir": f"out-{name}",
    }, tmp)
    return Pipeline(cfg, progress=False).run()


def _tables(tmp: Path, run_id: str) -> dict[str, pl.DataFrame]:
    with Workspace(tmp / "ws") as ws:
        return {
            "records": ws.query(run_id, "SELECT uid, id, source_file, source_line, shape, messages, fixes, n_chars, split, scores "
                                        "FROM records WHERE run_id = ? ORDER BY uid", [run_id]),
            "rejects": ws.query(run_id, "SELECT uid, stage, reason, detail, duplicate_of FROM rejects WHERE run_id = ? ORDER BY uid, stage",
                                [run_id]),
            "quarantine": ws.query(run_id, "SELECT * EXCLUDE (run_id) FROM quarantine WHERE run_id = ? ORDER BY uid", [run_id]),
            "clusters": ws.query(run_id, "SELECT * EXCLUDE (run_id) FROM clusters WHERE run_id = ? ORDER BY stage, uid", [run_id]),
        }


def _digests(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file() and p.suffix in (".jsonl", ".parquet")}


def test_two_workers_give_the_run_of_one(tmp_path, shared_data):
    one = _run(tmp_path, shared_data, 1, "one")
    two = _run(tmp_path, shared_data, 2, "two")
    assert one.ok and two.ok
    assert one.summary["workers"]["count"] == 1 and two.summary["workers"]["count"] == 2
    assert len(two.summary["workers"]["peak_rss_mb"]) == 2  # both workers did work
    for key in ("inputs", "kept", "rejected", "quarantined", "stages", "splits", "clusters", "quarantine_reasons", "leakage", "files"):
        assert one.summary[key] == two.summary[key], key
    # every layout was read, the broken gzip lines quarantined with their line numbers
    assert one.summary["quarantined"] == 2
    a, b = _tables(tmp_path, one.run_id), _tables(tmp_path, two.run_id)
    for name in a:
        assert a[name].equals(b[name]), name
    assert a["quarantine"]["source_line"].to_list() == [301, 302]
    assert {"exact_dedup", "minhash_dedup", "refusal"} <= set(a["rejects"]["stage"].unique().to_list())
    # the second pass's stages scored what reached them, on the workers as in this process
    assert a["records"]["scores"].str.contains("unique_words_ratio").sum() > 1000
    assert _digests(one.output_dir) == _digests(two.output_dir)


def test_jsonl_ranges_cover_the_file_with_its_line_numbers(tmp_path, shared_data):
    path = shared_data / "completion" / "truthfulqa_finetune_truth.jsonl"
    whole = [(b.lines, len(b.records)) for b in read_jsonl(path, 1 << 30, 1 << 22)]
    ranges = list(jsonl_ranges(path, 333, block_bytes=4096))  # blocks far smaller than a range: boundaries inside blocks
    assert ranges[0][0] == 0 and ranges[-1][1] == path.stat().st_size
    assert all(a[1] == b[0] for a, b in zip(ranges, ranges[1:]))
    lines = [ln for start, end, first in ranges for b in read_jsonl(path, 1 << 30, 1 << 22, start, end, first) for ln in b.lines]
    assert lines == whole[0][0]


@pytest.mark.parametrize("workers", [1, 2])
def test_strict_mode_names_the_first_bad_line_with_workers(tmp_path, workers):
    good = json.dumps({"instruction": "Name a colour.", "output": "Blue."}) + "\n"
    (tmp_path / "data.jsonl").write_text(good * 1200 + "{oops\n" + good * 50 + "{also bad\n")
    cfg = parse_config({"name": "s", "tokenizer": None, "inputs": [{"path": "data.jsonl"}], "stages": [], "batch_size": 400,
                        "workers": workers, "strict": True}, tmp_path)
    from curate.pipeline import StrictModeError

    with pytest.raises(StrictModeError, match=r"data.jsonl:1201:"):
        Pipeline(cfg, progress=False).run()


@pytest.mark.parametrize("keep", ["first", "last", "longest"])
def test_exact_dedup_decided_in_duckdb_equals_in_memory(tmp_path, shared_data, keep):
    import duckdb

    from curate.stages.exact import ExactDedup

    alpaca = str(shared_data / "alpaca" / "alpaca_4000.json")
    cfg = parse_config({"name": "x", "tokenizer": None, "stages": [], "inputs": [
        {"path": alpaca}, {"path": str(shared_data / "alpaca" / "alpaca_data_first10k_excl_holdout.json")}, {"path": alpaca}]}, tmp_path)
    frame = pl.concat([f for f, _, _ in Pipeline(cfg, progress=False).ingest()])
    stage = ExactDedup(ExactDedup.Params(keep=keep))
    prepared = stage.prepare(frame)
    in_memory = stage.decide(prepared)
    prepared.write_parquet(tmp_path / "prepared.parquet")
    in_duckdb = stage.decide_sql(duckdb.connect(), f"read_parquet('{tmp_path / 'prepared.parquet'}')")
    assert in_memory.rejects.height >= 4000 and in_memory.clusters.height > in_memory.rejects.height
    assert in_duckdb.rejects.equals(in_memory.rejects)
    assert in_duckdb.clusters.equals(in_memory.clusters)


def test_ray_engine_gives_the_local_run(tmp_path, shared_data):
    pytest.importorskip("ray.data")
    local = _run(tmp_path, shared_data, 2, "local")
    cfg = parse_config({
        "name": "ray", "tokenizer": None, "inputs": _inputs(shared_data, tmp_path), "stages": STAGES, "batch_size": 500,
        "workers": 2, "engine": "ray", "workspace": "ws", "output_dir": "out-ray",
    }, tmp_path)
    on_ray = Pipeline(cfg, progress=False).run()
    assert on_ray.ok and on_ray.summary["workers"]["count"] == 2
    # the record work ran on two Ray actors, and exact dedup's group-by on Ray's shuffle
    assert len(on_ray.summary["workers"]["peak_rss_mb"]) >= 2  # actors of each pass
    assert on_ray.summary["engine"] == {"name": "ray", "global_stages_on_ray": ["exact_dedup"]}
    for key in ("inputs", "kept", "rejected", "quarantined", "stages", "splits", "clusters", "quarantine_reasons", "leakage", "files"):
        assert on_ray.summary[key] == local.summary[key], key
    a, b = _tables(tmp_path, local.run_id), _tables(tmp_path, on_ray.run_id)
    for name in a:
        assert a[name].equals(b[name]), name
    assert _digests(local.output_dir) == _digests(on_ray.output_dir)


def test_an_unreachable_ray_cluster_is_one_line_and_exit_2(tmp_path, shared_data):
    import socket
    import subprocess
    import sys

    pytest.importorskip("ray.data")
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    (tmp_path / "c.yaml").write_text(
        f"name: r\ninputs:\n  - path: {shared_data / 'alpaca' / 'alpaca_4000.json'}\ntokenizer: null\n"
        f"engine: ray\nray_address: 127.0.0.1:{port}\nstages: [exact_dedup]\n")
    done = subprocess.run([sys.executable, "-m", "curate.cli", "run", str(tmp_path / "c.yaml"), "--no-progress"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"cannot reach Ray at 127.0.0.1:{port}: [Errno 111] Connection refused"]
