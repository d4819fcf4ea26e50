"""Precision and recall of MinHash and embedding dedup on a ground truth built from real records.

    .venv/bin/python bench/dedup_quality.py                    # both methods, defaults
    .venv/bin/python bench/dedup_quality.py --skip-embedding   # MinHash only (seconds instead of minutes on CPU)
    .venv/bin/python bench/dedup_quality.py --base 500 --embed-base 300

The ground truth (built in memory, seeded):

- ``--base`` real Alpaca records (``../shared/data/alpaca/alpaca_data_first10k_excl_holdout.json``, those
  with at least 25 words) are the originals. Each gets one near-duplicate per edit kind: ``case_punct_ws``
  (case flips, punctuation dropped or added, whitespace changed), ``replace_5/10/20`` (that share of
  words replaced by words from other records), ``swap_5/10/20`` (that share of words swapped with a
  neighbour), ``append_sentence`` (a sentence from another record appended to the answer).
- Distinct records on the same topic, which must NOT be merged: the real GPT-4 answers
  (``alpaca_gpt4/alpaca_en_demo.json``) to Alpaca instructions that are in the set (same instruction,
  another teacher's answer), and every other original.

A pair is *true* when both records come from the same original. For each method the stage runs as
`curate run` runs it (``prepare`` over batches, then ``decide``) and every pair of records in one
cluster counts as merged. Printed:

1. per edit kind, recall (original and variant in one cluster, or not both kept: see ``score``);
2. precision over all merged pairs, and the same-topic pairs merged by mistake;
3. MinHash LSH fidelity against the exact Jaccard of the same shingle sets (every pair with exact
   Jaccard >= threshold - 0.2 is found with a sparse matrix product): recall of pairs at or above the
   threshold (target >= 0.95) and the share of merged pairs below threshold - 0.1 (target <= 1%).

Targets (issue 3): >= 0.95 recall on case/punctuation/whitespace and 5%-word edits, precision >= 0.99.
"""

from __future__ import annotations

import argparse
import json
import random
import re
import sys
import time
from pathlib import Path

import numpy as np
import polars as pl

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared" / "data"

from verdict_sets.dedup import case_punct_ws  # noqa: E402 - the verdict benchmark's edit, one implementation

EDITS = ("case_punct_ws", "replace_5", "replace_10", "replace_20", "swap_5", "swap_10", "swap_20", "append_sentence")
WORD = re.compile(r"\S+")


# ---------------------------------------------------------------------------------------------------------
# ground truth
# ---------------------------------------------------------------------------------------------------------
def _replace(text: str, share: float, vocab: list[str], rng: random.Random) -> str:
    words = text.split()
    k = max(1, round(share * len(words)))
    for i in rng.sample(range(len(words)), k):
        words[i] = rng.choice(vocab)
    return " ".join(words)


def _swap(text: str, share: float, rng: random.Random) -> str:
    words = text.split()
    k = max(1, round(share * len(words)))
    for i in rng.sample(range(len(words) - 1), min(k, len(words) - 1)):
        words[i], words[i + 1] = words[i + 1], words[i]
    return " ".join(words)


def _edit(rec: dict, kind: str, vocab: list[str], sentences: list[str], rng: random.Random) -> dict:
    """A near-duplicate of an Alpaca record; the edit applies to every field, as a re-crawl or a copy would."""
    fields = ("instruction", "input", "output")
    if kind == "case_punct_ws":
        return {f: case_punct_ws(rec[f], rng) if rec[f] else "" for f in fields}
    if kind.startswith(("replace", "swap")):
        share = int(kind.split("_")[1]) / 100
        # the share is of the record's words, spread over its fields in proportion to their length
        out = {}
        for f in fields:
            if not rec[f].strip():
                out[f] = rec[f]
            elif kind.startswith("replace"):
                out[f] = _replace(rec[f], share, vocab, rng)
            else:
                out[f] = _swap(rec[f], share, rng) if len(rec[f].split()) > 1 else rec[f]
        return out
    if kind == "append_sentence":
        return {**{f: rec[f] for f in fields}, "output": rec["output"].rstrip() + " " + rng.choice(sentences)}
    raise ValueError(kind)


def build_ground_truth(n_base: int, seed: int = 0) -> pl.DataFrame:
    """Records with ``group`` (the original they derive from; negatives get their own), ``kind``
    (original, an edit kind, or same_topic) and the Alpaca fields."""
    rng = random.Random(seed)
    alpaca = json.loads((SHARED / "alpaca" / "alpaca_data_first10k_excl_holdout.json").read_text())
    gpt4 = json.loads((SHARED / "alpaca_gpt4" / "alpaca_en_demo.json").read_text())
    gpt4_by_instruction = {r["instruction"].strip(): r for r in gpt4}
    # originals: prefer instructions that GPT-4 also answered (their same-topic negatives exist), then others
    candidates = [r for r in alpaca if len(WORD.findall(r["instruction"] + " " + r["input"] + " " + r["output"])) >= 25]
    with_gpt4 = [r for r in candidates if r["instruction"].strip() in gpt4_by_instruction]
    others = [r for r in candidates if r["instruction"].strip() not in gpt4_by_instruction]
    rng.shuffle(others)
    base = (with_gpt4 + others)[:n_base]
    vocab = [w for r in alpaca[:3000] for w in r["output"].split() if w.isalpha()]
    sentences = [s.strip() for r in alpaca[3000:4000] for s in re.split(r"(?<=[.!?])\s+", r["output"]) if 6 <= len(s.split()) <= 25]
    rows = []
    for g, rec in enumerate(base):
        rows.append({"group": g, "kind": "original", **{f: rec[f] for f in ("instruction", "input", "output")}})
        for kind in EDITS:
            rows.append({"group": g, "kind": kind, **_edit(rec, kind, vocab, sentences, rng)})
    g = len(base)
    for rec in base:
        other = gpt4_by_instruction.get(rec["instruction"].strip())
        if other and other["output"].strip() != rec["output"].strip():
            rows.append({"group": g, "kind": "same_topic", "instruction": other["instruction"], "input": other.get("input", ""), "output": other["output"]})
            g += 1  # each negative is a group of its own
    order = list(range(len(rows)))
    rng.shuffle(order)  # input order must not give the answer away (keep=first)
    return pl.DataFrame([rows[i] for i in order])


def canonical(truth: pl.DataFrame) -> pl.DataFrame:
    from curate.frames import canonical_frame

    convs = [
        [{"role": "user", "content": f"{r['instruction']}\n\n{r['input']}".strip()}, {"role": "assistant", "content": r["output"]}]
        for r in truth.iter_rows(named=True)
    ]
    return canonical_frame(convs)


# ---------------------------------------------------------------------------------------------------------
# running a stage as the pipeline does, and scoring it
# ---------------------------------------------------------------------------------------------------------
def run_stage(name: str, params: dict, frame: pl.DataFrame, batch_size: int = 5000):
    from curate.stages import GlobalDecision, StageContext, get_stage

    cls = get_stage(name)
    stage = cls(cls.Params(**params), StageContext(config_dir=REPO))
    t = time.perf_counter()
    prepared = pl.concat([stage.prepare(frame.slice(i, batch_size)) for i in range(0, frame.height, batch_size)])
    decision = stage.decide(prepared)
    seconds = time.perf_counter() - t
    if not isinstance(decision, GlobalDecision):
        decision = GlobalDecision(decision)
    return stage, decision, seconds


def merged_pairs(clusters: pl.DataFrame | None) -> set[tuple[int, int]]:
    """Every pair of records in one cluster (uids, smaller first)."""
    pairs: set[tuple[int, int]] = set()
    if clusters is None or clusters.height == 0:
        return pairs
    for members in clusters.group_by("rep_uid").agg("uid")["uid"].to_list():
        members = sorted(members)
        pairs.update((a, b) for i, a in enumerate(members) for b in members[i + 1 :])
    return pairs


def score(truth: pl.DataFrame, merged: set[tuple[int, int]], rejected: set[int] | None = None) -> dict:
    """Recall per edit kind and precision over merged pairs.

    An edit is caught when it and its original are in one cluster, or (given ``rejected``) when they are not
    both kept: with star clusters (a reject names a kept record it is itself similar to) the eight edits of
    one original need not share a cluster, but no two similar records are both kept."""
    group = truth["group"].to_list()
    kind = truth["kind"].to_list()
    original = {g: u for u, (g, k) in enumerate(zip(group, kind)) if k == "original"}
    recall = {}
    for edit in EDITS:
        uids = [u for u, k in enumerate(kind) if k == edit]
        hit = sum(
            (min(u, original[group[u]]), max(u, original[group[u]])) in merged
            or (rejected is not None and (u in rejected or original[group[u]] in rejected))
            for u in uids
        )
        recall[edit] = (hit, len(uids))
    true = {p for p in merged if group[p[0]] == group[p[1]]}
    same_topic = sum(1 for a, b in merged if group[a] != group[b] and "same_topic" in (kind[a], kind[b]))
    return {"recall": recall, "merged": len(merged), "true": len(true), "false": len(merged) - len(true), "same_topic_false": same_topic}


def exact_jaccard_pairs(shingles: list[np.ndarray], floor: float) -> dict[tuple[int, int], float]:
    """Exact Jaccard of every pair of shingle sets at or above ``floor`` (sparse intersection counts)."""
    from scipy.sparse import csr_matrix

    sets = [np.unique(s) for s in shingles]
    vocab, inverse = np.unique(np.concatenate(sets) if sets else np.zeros(0, np.uint64), return_inverse=True)
    indptr = np.zeros(len(sets) + 1, dtype=np.int64)
    np.cumsum([s.size for s in sets], out=indptr[1:])
    x = csr_matrix((np.ones(inverse.size, dtype=np.int32), inverse, indptr), shape=(len(sets), vocab.size))
    inter = (x @ x.T).tocoo()
    sizes = np.diff(indptr)
    keep = inter.row < inter.col
    a, b, n = inter.row[keep], inter.col[keep], inter.data[keep]
    j = n / (sizes[a] + sizes[b] - n)
    ok = j >= floor
    return {(int(p), int(q)): float(v) for p, q, v in zip(a[ok], b[ok], j[ok])}


def minhash_fidelity(stage, frame: pl.DataFrame, decision, merged: set[tuple[int, int]]) -> dict:
    """The index against exact Jaccard: recall of pairs at or above the threshold (merged into one
    cluster), and the accepted pairs (the LSH + verification edges, before union-find) below
    threshold - 0.1. Pairs that are only in one cluster through a third record are union-find's doing,
    not the index's; they are counted apart."""
    from curate.stages.minhash import _text_expr

    t = stage.params.threshold
    flat, offsets = stage.shingles(frame.select(_text_expr(stage.params.fields)).to_series())
    exact = exact_jaccard_pairs([flat[offsets[i] : offsets[i + 1]] for i in range(offsets.size - 1)], t - 0.2)
    above = [p for p, j in exact.items() if j >= t]
    scored = decision.pairs if decision.pairs is not None else pl.DataFrame({"uid_a": [], "uid_b": [], "similarity": []})
    # the stage reports exact Jaccard now (older versions: the estimate); its accepted edges are those at or
    # above the threshold (older versions accepted estimates down to `accept_at`)
    floor = t if "passage_level" in type(stage.params).model_fields else stage.accept_at
    edges = scored.filter(pl.col("similarity") >= floor - 1e-9)
    edge_set = {(min(a, b), max(a, b)) for a, b in zip(edges["uid_a"].to_list(), edges["uid_b"].to_list())}
    return {
        "pairs_at_or_above": len(above),
        "found": sum(p in merged for p in above),
        "found_as_edges": sum(p in edge_set for p in above),
        "edges": len(edge_set),
        "edges_below": sum(1 for p in edge_set if exact.get(p, 0.0) < t - 0.1),
        "cluster_pairs": len(merged),
        "cluster_pairs_below": sum(1 for p in merged if exact.get(p, 0.0) < t - 0.1),
    }


# ---------------------------------------------------------------------------------------------------------
def _print_method(name: str, res: dict, seconds: float, n: int) -> None:
    print(f"\n## {name}  ({n:,} records, {seconds:.1f} s)\n")
    print("| edit kind | caught | of | recall |")
    print("|---|---:|---:|---:|")
    for edit, (hit, total) in res["recall"].items():
        print(f"| {edit} | {hit} | {total} | {hit / total:.3f} |")
    precision = res["true"] / res["merged"] if res["merged"] else 1.0
    print(f"\nmerged pairs {res['merged']:,}: true {res['true']:,}, false {res['false']:,} "
          f"(same-topic records merged: {res['same_topic_false']}) -> precision {precision:.4f}")
    easy = [res["recall"][k] for k in ("case_punct_ws", "replace_5", "swap_5")]
    ok = all(h / t >= 0.95 for h, t in easy) and precision >= 0.99
    print(f"target (>= 0.95 on case/punct/ws and 5% edits, precision >= 0.99): {'MET' if ok else 'NOT MET'}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--base", type=int, default=1000, help="originals for MinHash (each gets 8 near-duplicates)")
    ap.add_argument("--embed-base", type=int, default=300, help="originals for embedding dedup (CPU encoding is slow)")
    ap.add_argument("--skip-embedding", action="store_true")
    ap.add_argument("--minhash", default="{}", help="minhash_dedup params as JSON (default: the stage's defaults)")
    ap.add_argument("--embedding", default="{}", help="embedding_dedup params as JSON")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    truth = build_ground_truth(args.base, args.seed)
    frame = canonical(truth)
    print(f"ground truth: {args.base} originals x {len(EDITS)} edit kinds, "
          f"{(truth['kind'] == 'same_topic').sum()} same-topic negatives, {truth.height:,} records")

    params = json.loads(args.minhash)
    stage, decision, seconds = run_stage("minhash_dedup", params, frame)
    merged = merged_pairs(decision.clusters)
    res = score(truth, merged, set(decision.rejects["uid"].to_list()))
    _print_method(f"MinHash {json.dumps(stage.params.model_dump())}", res, seconds, frame.height)
    fid = minhash_fidelity(stage, frame, decision, merged)
    t = stage.params.threshold
    # the index's recall: pairs at or above the threshold that LSH proposed and the exact check scored there.
    # Whether such a pair is then merged is the clustering's decision (the response check keeps two tasks on
    # one passage apart; a star keeps two members of one cluster as non-edges), printed beside it
    rec = fid["found_as_edges"] / fid["pairs_at_or_above"] if fid["pairs_at_or_above"] else 1.0
    low = fid["edges_below"] / fid["edges"] if fid["edges"] else 0.0
    print(f"\nLSH fidelity against the exact Jaccard of the same shingle sets (threshold {t:g}; "
          f"candidates checked exactly from an estimate of {stage.accept_at:.3f}):")
    print(f"- recall: {fid['found_as_edges']:,} of {fid['pairs_at_or_above']:,} pairs with Jaccard >= {t:g} found and scored "
          f"exactly ({rec:.4f}); target >= 0.95. In one cluster: {fid['found']:,} (the others fail the response check, "
          "or are two members of one star)")
    print(f"- merged pairs below {t - 0.1:g}: {fid['edges_below']:,} of {fid['edges']:,} accepted pairs ({low:.2%}); target <= 1%")
    print(f"  (all pairs of records in one cluster, union-find's transitive ones included: {fid['cluster_pairs_below']:,} of "
          f"{fid['cluster_pairs']:,} below {t - 0.1:g}, mostly two edits of one original, which are true duplicates)")
    print(f"- fidelity target: {'MET' if rec >= 0.95 and low <= 0.01 else 'NOT MET'}")

    if not args.skip_embedding:
        sub_truth = build_ground_truth(args.embed_base, args.seed)
        sub = canonical(sub_truth)
        stage, decision, seconds = run_stage("embedding_dedup", json.loads(args.embedding), sub)
        res = score(sub_truth, merged_pairs(decision.clusters))
        _print_method(f"Embedding {json.dumps(stage.params.model_dump())}", res, seconds, sub.height)


if __name__ == "__main__":
    main()
