"""Duplicate clusters through the runner: per-cluster splits, the clusters table, the report's review."""

from __future__ import annotations

import json

import polars as pl

from curate.workspace import Workspace
from tests.conftest import write_jsonl


def _alpaca(shared_data, n):
    rows = json.loads((shared_data / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())
    return rows[:n]


def test_exact_duplicate_clusters_share_a_split_and_are_reviewed(tmp_path, shared_data, run_config):
    rows = _alpaca(shared_data, 300)
    data = []
    for i, r in enumerate(rows):
        data.append(r)
        if i % 10 == 0:  # two case/whitespace variants: different content ids, so different hash splits before clustering
            data.append({**r, "instruction": r["instruction"].upper()})
            data.append({**r, "output": "  " + r["output"].lower() + " "})
    write_jsonl(tmp_path / "d.jsonl", data)
    res = run_config({"inputs": [{"path": "d.jsonl"}], "stages": ["exact_dedup"]})
    s = res.summary
    assert s["invariant_ok"]
    assert s["clusters"]["exact_dedup"]["clusters"] == 30
    assert s["clusters"]["exact_dedup"]["members"] == 90 and s["clusters"]["exact_dedup"]["largest"] == 3

    ws = Workspace(res.workspace, create=False)
    per_cluster = ws.query(
        res.run_id,
        """SELECT c.rep_uid, count(DISTINCT r.split), count(DISTINCT r.id) FROM clusters c
           JOIN records r ON r.run_id = c.run_id AND r.uid = c.uid WHERE c.run_id = ? GROUP BY c.rep_uid""",
        [res.run_id],
    ).rows()
    assert len(per_cluster) == 30
    assert all(n_splits == 1 for _, n_splits, _ in per_cluster)
    assert sum(n_ids for _, _, n_ids in per_cluster) >= 85  # distinct contents (a few variants equal their original)
    # ...which a split by content id alone would have scattered: the per-cluster assignment did the work
    from curate.config import parse_config
    from curate.pipeline import _split_expr

    cfg = parse_config({"name": "t", "inputs": [{"path": "d.jsonl"}]}, tmp_path)
    members = ws.query(res.run_id, "SELECT c.rep_uid, r.id FROM clusters c JOIN records r ON r.run_id = c.run_id AND r.uid = c.uid WHERE c.run_id = ?",
                       [res.run_id])
    by_id = members.with_columns(own=_split_expr(cfg)).group_by("rep_uid").agg(pl.col("own").n_unique())
    assert by_id.filter(pl.col("own") > 1).height >= 2

    ledger = pl.read_parquet(res.output_dir / "ledger.parquet")
    assert ledger.filter(pl.col("status") == "rejected").height == 60

    md = (res.output_dir / "report.md").read_text()
    assert "## Duplicate clusters" in md and "kept representative" in md
    assert "similarity to representative **1.000**" in md
    html = (res.output_dir / "report.html").read_text()
    assert 'class="cluster"' in html and "kept representative" in html
    report = json.loads((res.output_dir / "report.json").read_text())
    assert report["duplicates"][0]["stage"] == "exact_dedup" and len(report["duplicates"][0]["top"]) == 5


def test_union_find_chains_and_star_does_not():
    """A~B and B~C, A and C far apart: union-find rejects B and C for A; star keeps C (it is similar only
    to B, which is not kept)."""
    import numpy as np

    from curate.stages.clusters import decide_clusters

    prepared = pl.DataFrame({"uid": [0, 1, 2, 3], "id": ["a", "b", "c", "d"], "source_file": ["f"] * 4, "source_line": [1, 2, 3, 4],
                             "n_chars": [10, 30, 20, 5]})
    pairs = pl.DataFrame({"uid_a": [0, 1], "uid_b": [1, 2]})
    sim = {(1, 0): 0.9, (2, 0): 0.5, (2, 1): 0.9, (0, 1): 0.9}

    def to_rep(member, rep):
        return np.array([sim[(int(m), int(r))] for m, r in zip(member, rep)])

    chained = decide_clusters(prepared, pairs, keep="first", reason="near_duplicate", measure="estimated Jaccard", similarity_to_rep=to_rep)
    assert chained.rejects["uid"].to_list() == [1, 2] and chained.rejects["duplicate_of"].to_list() == ["a", "a"]
    assert "estimated Jaccard 0.5" in chained.rejects["detail"][1]
    star = decide_clusters(prepared, pairs, keep="first", reason="near_duplicate", measure="estimated Jaccard", similarity_to_rep=to_rep, linkage="star")
    assert star.rejects["uid"].to_list() == [1]
    assert sorted(star.clusters["uid"].to_list()) == [0, 1]
    # best first by the keep policy: with `longest`, B (30 chars) is the center and claims both A and C
    longest = decide_clusters(prepared, pairs, keep="longest", reason="near_duplicate", measure="estimated Jaccard", similarity_to_rep=to_rep, linkage="star")
    assert longest.rejects["uid"].to_list() == [0, 2] and set(longest.rejects["duplicate_of"].to_list()) == {"b"}


def test_cluster_splits_follow_the_configured_shares(tmp_path, shared_data, run_config):
    """Keying a cluster's split by its smallest id must not skew it (the minimum of many hex ids is small)."""
    rows = _alpaca(shared_data, 600)
    data = []
    for r in rows:  # clusters of 4: the original and three case variants (distinct ids, one normalized text)
        data += [r, {**r, "instruction": r["instruction"].upper()}, {**r, "instruction": r["instruction"].lower()},
                 {**r, "output": r["output"].upper()}]
    write_jsonl(tmp_path / "d.jsonl", data)
    res = run_config({"inputs": [{"path": "d.jsonl"}], "stages": ["exact_dedup"], "splits": {"train": 0.5, "validation": 0.25, "test": 0.25}})
    per = Workspace(res.workspace, create=False).query(
        res.run_id,
        """SELECT any_value(r.split), count(DISTINCT r.split) FROM clusters c JOIN records r ON r.run_id = c.run_id AND r.uid = c.uid
           WHERE c.run_id = ? GROUP BY c.rep_uid""",
        [res.run_id],
    ).rows()
    assert len(per) >= 550 and all(n == 1 for _, n in per)
    train = sum(split == "train" for split, _ in per) / len(per)
    assert 0.42 < train < 0.58  # 0.5 expected; a skewed key gives nearly 1.0
