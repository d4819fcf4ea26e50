"""Embedding dedup benchmark: our `embedding_dedup` stage against the usual per-record cosine loop.

    .venv/bin/python bench/embed_dedup.py                          # 20,000 records, CPU comparison
    .venv/bin/python bench/embed_dedup.py --records 2000           # a quick run
    .venv/bin/python bench/embed_dedup.py --reuse-embeddings       # keep/reuse the cache in bench/_work/embed_cache/
    python bench/embed_dedup.py --device cuda --encode-only --model /path/to/all-MiniLM-L6-v2
    .venv/bin/python bench/embed_dedup.py --calibrate              # the default threshold, from labeled pairs

Calibration mode (``--calibrate``): the labeled pairs of ``bench/verdict_sets/semantic.py`` (MRPC
human paraphrase labels, edited copies of real Alpaca rows, hard negatives), the stage's similarity of
each (cosines of its own cached vectors), a sweep of the threshold per set and part, the threshold
chosen on the tune part by a stated rule (see :func:`calibrate`), holdout numbers beside it, and what
MinHash (exact 5-character-shingle Jaccard >= 0.7) merges of the same pairs. About a minute on 2 cores
the first time (it encodes about 2,800 texts), seconds once the vectors are cached.

Records: real alpaca-shaped rows (``shared/data``: the Alpaca first-10k file, the Alpaca 4,000 rows it
lacks, 999 Alpaca instructions with GPT-4 answers, GPTeacher Toolformer), shuffled (seed 0), distinct,
plus 5% injected near-duplicates appended at the end, each naming its original (the ground truth), in
four kinds: ``case_punct`` (question lowercased, final punctuation and the answer's commas dropped),
``whitespace`` (spaces and newlines doubled), ``reword`` (one to three words swapped for synonyms),
``wrapper`` (a polite "Please ..." / "Thanks!" around the question).

Comparison mode (CPU; needs faiss, duckdb, polars, scikit-learn):

1. encodes once, through the stage itself into a DuckDB embedding cache (prompts and responses: the
   stage's default ``fields: all``), timing records/s; ``--reuse-embeddings`` keeps that cache in
   the workspace folder ``bench/_work/embed_cache`` (its ``embeddings.duckdb``; the encode timing beside it), so a re-run encodes nothing;
2. runs our dedup on the cached vectors (cache read + FAISS range search + clusters): ``fields:
   response`` (what the hand-written scripts embed), the same with the IVF index forced, and ``fields:
   all`` (our default);
3. runs the seed recipe's loop on the very same response vectors: for each record, sklearn's
   ``cosine_similarity`` against every kept record, keep it if the max is below the threshold;
4. prints times, duplicates found, agreement between the two response-only methods (with ``keep:
   first`` the stage's star clusters are the loop's result, so they should differ only where a cosine
   sits within float rounding of the threshold) and recall on the injected near-duplicates per kind.

Encode-only mode (``--encode-only``; for a GPU machine without faiss or duckdb): imports only the
standard library, torch and sentence-transformers (through ``curate.models``, itself stdlib-only at
import), loads ``--model`` (fp16 on CUDA), and times two encoders over all texts, after a warm-up:
``st`` (SentenceTransformer.encode over one call; it sorts by length itself) and ``ours``
(:func:`curate.embeddings.encode_texts`, what the stage runs: Rust tokenization a chunk ahead on a
thread, length-sorted batches of a token budget). It checks both against each other and prints JSON.
Data: ``--data`` (a
``shared/data`` folder); by default ``../shared/data``, ``./shared/data`` or ``bench/_work/data`` (copy
``alpaca/``, ``alpaca_gpt4/`` and ``gpteacher_toolformer/`` there to carry them to another machine).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"
sys.path.insert(0, str(REPO))

SOURCES = (
    "alpaca/alpaca_data_first10k_excl_holdout.json",
    "alpaca/alpaca_4000.json",
    "alpaca_gpt4/alpaca_en_demo.json",
    "gpteacher_toolformer/toolformer-dedupe-only-dataset.json",
)
SYNONYMS = {
    "important": "essential", "use": "utilize", "help": "assist", "big": "large", "small": "little",
    "quickly": "rapidly", "often": "frequently", "example": "instance", "show": "demonstrate",
    "many": "numerous", "good": "great", "also": "additionally", "make": "create", "people": "individuals",
    "improve": "enhance", "different": "various", "can": "may", "should": "ought to", "get": "obtain",
    "very": "really", "new": "novel", "way": "manner", "more": "additional", "each": "every",
    "provide": "offer", "allows": "enables", "includes": "contains", "used": "employed", "need": "require",
    "however": "nevertheless", "because": "since", "about": "regarding", "start": "begin", "end": "finish",
    "like": "such as", "idea": "notion", "simple": "basic", "large": "big", "find": "locate", "give": "provide",
}
KINDS = ("case_punct", "whitespace", "reword", "wrapper")


# -- data (standard library only: encode-only mode uses it too) --------------------------------------------


def find_data(arg: str | None) -> Path:
    cands = [Path(arg)] if arg else [REPO.parent / "shared" / "data", REPO / "shared" / "data", WORK / "data"]
    for c in cands:
        if (c / SOURCES[0]).is_file():
            return c
    sys.exit(f"no data: none of {[str(c) for c in cands]} holds {SOURCES[0]} (pass --data)")


def _reword(text: str, rng: random.Random) -> str | None:
    words = text.split(" ")
    spots = [i for i, w in enumerate(words) if w.lower().rstrip(".,;:!?") in SYNONYMS]
    if not spots:
        return None
    for i in rng.sample(spots, min(len(spots), rng.randint(1, 3))):
        w = words[i]
        core = w.rstrip(".,;:!?")
        new = SYNONYMS[core.lower()]
        words[i] = (new.capitalize() if core[:1].isupper() else new) + w[len(core):]
    return " ".join(words)


def near_duplicate(row: dict, kind: str, rng: random.Random) -> dict:
    r = dict(row)
    if kind == "reword":
        out = _reword(r["output"], rng)
        if out is None:
            kind = "case_punct"
        else:
            r["output"] = out
    if kind == "case_punct":
        r["instruction"] = r["instruction"].lower().rstrip(".?! ")
        r["output"] = r["output"].replace(",", "")
    elif kind == "whitespace":
        r["instruction"] = r["instruction"].replace(" ", "  ") + "\n"
        r["output"] = "  " + r["output"].replace("\n", "\n\n").replace(". ", ".  ")
    elif kind == "wrapper":
        ins = r["instruction"]
        r["instruction"] = rng.choice(["Please ", "Could you please "]) + ins[:1].lower() + ins[1:] + rng.choice(["", " Thanks!"])
    r["_kind"] = kind
    return r


def build_records(data: Path, n: int, dup_fraction: float) -> tuple[list[dict], dict[int, int]]:
    """n records: distinct real rows, then near-duplicates of earlier ones; ({variant: original})."""
    seen, pool = set(), []
    for rel in SOURCES:
        for r in json.loads((data / rel).read_text(encoding="utf-8")):
            key = (r["instruction"], r.get("input", ""), r["output"])
            if key not in seen:
                seen.add(key)
                pool.append({"instruction": r["instruction"], "input": r.get("input", ""), "output": r["output"]})
    rng = random.Random(0)
    rng.shuffle(pool)
    n_dup = round(n * dup_fraction)
    if n - n_dup > len(pool):
        sys.exit(f"only {len(pool)} distinct source rows: ask for at most {int(len(pool) / (1 - dup_fraction))} records")
    records = pool[: n - n_dup]
    truth = {}
    for k, orig in enumerate(rng.sample(range(len(records)), n_dup)):
        truth[len(records)] = orig
        records.append(near_duplicate(records[orig], KINDS[k % len(KINDS)], rng))
    return records, truth


def prompt_of(r: dict) -> str:
    return r["instruction"] + (f"\n\n{r['input']}" if r.get("input") else "")


def texts_of(records: list[dict], fields: str) -> list[str]:
    if fields == "prompt":
        return [prompt_of(r) for r in records]
    if fields == "response":
        return [r["output"] for r in records]
    return [prompt_of(r) for r in records] + [r["output"] for r in records]


# -- encode-only (GPU) -------------------------------------------------------------------------------------


def encode_only(args) -> None:
    import torch

    from curate.embeddings import encode_texts
    from curate.models import resolve_device, sentence_model

    data = find_data(args.data)
    records, _ = build_records(data, args.records, args.dup_fraction)
    texts = texts_of(records, args.fields)
    device = resolve_device(args.device)
    model = sentence_model(args.model, device, args.max_seq_length)
    batch_size = args.batch_size or (512 if device == "cuda" else 32)

    def sync():
        if device == "cuda":
            torch.cuda.synchronize()

    warm = texts[: 4 * batch_size]
    model.encode(warm, batch_size=batch_size, show_progress_bar=False)
    ref = model.encode(warm, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True)
    check = encode_texts(model, warm, args.token_budget)
    results = {}
    # "st": SentenceTransformer.encode, the usual call; "ours": curate.embeddings.encode_texts, what the
    # embedding_dedup stage runs (Rust tokenization a chunk ahead on a thread, token-budget batches)
    for name in ("st", "ours"):
        times = []
        for _ in range(args.repeats):
            sync()
            t = time.perf_counter()
            if name == "st":
                model.encode(texts, batch_size=batch_size, normalize_embeddings=True, convert_to_numpy=True, show_progress_bar=False)
            else:
                encode_texts(model, texts, args.token_budget)
            sync()
            times.append(time.perf_counter() - t)
        best = min(times)
        results[name] = {"seconds": [round(x, 3) for x in times], "records_per_s": round(len(records) / best), "texts_per_s": round(len(texts) / best)}
    print(json.dumps({
        "mode": "encode-only",
        "device": torch.cuda.get_device_name(0) if device == "cuda" else f"cpu x{torch.get_num_threads()}",
        "model": str(args.model), "fp16": device == "cuda", "fields": args.fields,
        "records": len(records), "texts": len(texts), "st_batch_size": batch_size, "token_budget": args.token_budget,
        "max_seq_length": model.max_seq_length,
        "max_abs_diff_ours_vs_st": float(abs(check - ref).max()),
        "torch": torch.__version__, "sentence_transformers": __import__("sentence_transformers").__version__,
        "encoders": results,
        "best_records_per_s": max(r["records_per_s"] for r in results.values()),
        "target_records_per_s": 20000,
    }, indent=2))


# -- threshold calibration on labeled pairs (CPU) ----------------------------------------------------------


def calibrate(args) -> None:
    """Sweeps the threshold over the labeled pairs of ``bench/verdict_sets/semantic.py``, picks it on tune.

    The similarity of a pair is the stage's: per field cosine of its own (cached) vectors, and for
    ``fields: all`` the smaller of the prompt and response cosines. Rule: the lowest threshold at which
    no negative set of the tune part (MRPC's human "not a paraphrase" pairs, another teacher's answer
    to the same instruction, a shared input passage, a shared AdversarialQA passage, a shared
    Toolformer tool) merges more than ``--max-false-merge`` of its pairs. Prints per set and part the
    share merged at the old and the chosen threshold, pooled precision / recall, and what MinHash
    (exact 5-character-shingle Jaccard >= 0.7 over prompt + response) merges of the same pairs.
    """
    import numpy as np

    sys.path.insert(0, str(HERE))
    from verdict_sets import semantic as sets_mod
    from verdict_sets.dedup import exact_jaccard

    data = find_data(args.data)
    ws = sets_mod.workspace(WORK / "verdicts" / "semantic")
    t0 = time.perf_counter()
    table = []
    try:
        for ps in sets_mod.labeled_sets(data, quick=args.quick):
            cos_p, cos_r = sets_mod.pair_cosines(ps, ws)
            label = np.array([dup for _, _, dup in ps.pairs], dtype=bool)
            jac = np.array([exact_jaccard("\n".join(ps.records[a]), "\n".join(ps.records[b])) for a, b, _ in ps.pairs])
            sim = {"all": np.minimum(cos_p, cos_r), "prompt": cos_p, "response": cos_r}
            table.append({"set": ps.name, "part": ps.part, "label": label, "sim": sim, "jaccard": jac,
                          "minhash_stage": minhash_stage_merges(ps, sets_mod)})
    finally:
        ws.close()
    print(f"{sum(len(t['label']) for t in table):,} labeled pairs, similarities in {time.perf_counter() - t0:.1f} s", flush=True)
    grid = np.round(np.arange(0.70, 0.9951, 0.01), 2)

    def rates(part: str, fields: str, thr: float) -> list[tuple[str, float | None, float | None, int, int, int, int]]:
        out = []
        for t in (t for t in table if t["part"] == part):
            hit = t["sim"][fields] >= thr - 1e-9
            y = t["label"]
            out.append((t["set"], hit[y].mean() if y.any() else None, hit[~y].mean() if (~y).any() else None,
                        int((hit & y).sum()), int((hit & ~y).sum()), int(y.sum()), int((~y).sum())))
        return out

    def pooled(rs) -> tuple[float, float]:
        tp, fp, pos = sum(r[3] for r in rs), sum(r[4] for r in rs), sum(r[5] for r in rs)
        return (tp / (tp + fp) if tp + fp else float("nan")), tp / max(1, pos)

    def choose(fields: str) -> float:
        for thr in grid:
            if all(r[2] is None or r[2] <= args.max_false_merge for r in rates("tune", fields, thr)):
                return float(thr)
        return 1.0

    names = list(dict.fromkeys(t["set"] for t in table))
    for part in ("tune", "holdout"):
        print(f"\n{part}: share of positive pairs merged (recall) / of negative pairs merged (false merges), fields: all")
        head = f"{'thr':>5} " + " ".join(f"{n[:12]:>12}" for n in names) + f" {'P':>6} {'R':>6}"
        print(head)
        for thr in grid:
            rs = rates(part, "all", thr)
            cells = [(f"{r[1]:.2f}" if r[1] is not None else "") + ("/" if r[1] is not None and r[2] is not None else "")
                     + (f"{r[2]:.2f}" if r[2] is not None else "") for r in rs]
            prec, rec = pooled(rs)
            print(f"{thr:>5.2f} " + " ".join(f"{c:>12}" for c in cells) + f" {prec:>6.3f} {rec:>6.3f}")

    print(f"\nchosen on tune (lowest threshold with every negative set's false merges <= {args.max_false_merge:.2f}):")
    chosen = {f: choose(f) for f in ("all", "prompt", "response")}
    for f, thr in chosen.items():
        line = [f"  fields={f:<9} threshold {thr:.2f}"]
        for part in ("tune", "holdout"):
            prec, rec = pooled(rates(part, f, thr))
            line.append(f"{part}: P {prec:.3f} R {rec:.3f}")
        print("  ".join(line))
    sensitivity = {}
    for cap in (0.05, 0.10, 0.15, 0.20):
        saved, args.max_false_merge = args.max_false_merge, cap
        sensitivity[cap] = choose("all")
        args.max_false_merge = saved
    print("  the rule's constant: " + ", ".join(f"<= {cap:.2f} -> {thr:.2f}" for cap, thr in sensitivity.items()))
    thr_new = chosen["all"]
    print(f"\nper set, fields=all: merged at {args.threshold} (old) -> {thr_new:.2f} (chosen); jaccard = exact 5-char Jaccard >= 0.7 "
          "over prompt + response; sem-only / jac-only = merged by one of the two only; mh-stage = the minhash_dedup stage "
          "in this checkout, defaults")
    print(f"{'set':<30}{'part':<9}{'pos':>5}{'neg':>5}{'old':>8}{'chosen':>8}{'jaccard':>9}{'sem-only':>9}{'jac-only':>9}{'mh-stage':>9}")
    summary = []
    for t in table:
        y = t["label"]
        for lab, mask in (("pos", y), ("neg", ~y)):
            if not mask.any():
                continue
            old = (t["sim"]["all"][mask] >= args.threshold - 1e-9).mean()
            new_hit = t["sim"]["all"][mask] >= thr_new - 1e-9
            mh = t["jaccard"][mask] >= 0.7
            stage_mh = t["minhash_stage"]
            row = {"set": t["set"], "part": t["part"], "label": lab, "n": int(mask.sum()), "old": round(float(old), 3),
                   "chosen": round(float(new_hit.mean()), 3), "jaccard": round(float(mh.mean()), 3),
                   "semantic_only": round(float((new_hit & ~mh).mean()), 3), "jaccard_only": round(float((mh & ~new_hit).mean()), 3),
                   "minhash_stage": round(float(stage_mh[mask].mean()), 3) if stage_mh is not None else None}
            summary.append(row)
            print(f"{t['set']:<30}{t['part']:<9}{(row['n'] if lab == 'pos' else ''):>5}{(row['n'] if lab == 'neg' else ''):>5}"
                  f"{row['old']:>8.2f}{row['chosen']:>8.2f}{row['jaccard']:>9.2f}{row['semantic_only']:>9.2f}{row['jaccard_only']:>9.2f}"
                  f"{(format(row['minhash_stage'], '.2f') if row['minhash_stage'] is not None else '-'):>9}")
    population = population_check(data, args.population, (args.threshold, thr_new)) if args.population else None
    out = WORK / "embed_calibration.json"
    out.write_text(json.dumps({"rule_max_false_merge": args.max_false_merge, "old_threshold": args.threshold,
                               "chosen": chosen, "rule_sensitivity": sensitivity, "per_set": summary,
                               "population": population}, indent=2))
    print(f"\n(written to {out})")


def minhash_stage_merges(ps, sets_mod):
    """Per pair of ``ps``: did the minhash_dedup stage (this checkout's defaults) put both in one cluster?"""
    import numpy as np

    from curate.stages import StageContext
    from curate.stages.minhash import MinHashDedup

    stage = MinHashDedup(MinHashDedup.Params(), StageContext())
    d = stage.decide(stage.prepare(sets_mod._frame(ps)))
    rep = dict(zip(d.clusters["uid"].to_list(), d.clusters["rep_uid"].to_list())) if d.clusters is not None else {}
    return np.array([a in rep and rep[a] == rep.get(b) for a, b, _ in ps.pairs], dtype=bool)


def population_check(data: Path, n: int, thresholds: tuple[float, ...]) -> dict:
    """Unlabeled: what the stage merges among ``n`` random rows of the holdout part of the Alpaca file
    (rows 5,000 and on) at each threshold, with the merged pairs printed for reading."""
    from curate.frames import canonical_frame
    from curate.stages import StageContext
    from curate.stages.semantic import EmbeddingDedup
    from verdict_sets import semantic as sets_mod

    rows = json.loads((data / sets_mod.ALPACA).read_text(encoding="utf-8"))
    picked = sorted(random.Random(0).sample(range(sets_mod.ALPACA_TUNE_ROWS, len(rows)), n))
    recs = [rows[i] for i in picked]
    frame = canonical_frame([[("user", p), ("assistant", r)] for p, r in map(sets_mod.alpaca_record, recs)])
    ws = sets_mod.workspace(WORK / "verdicts" / "semantic")
    out = {}
    try:
        print(f"\n{n:,} random Alpaca rows (holdout part), unlabeled: records merged per threshold")
        for thr in thresholds:
            stage = EmbeddingDedup(EmbeddingDedup.Params(threshold=thr), StageContext(workspace=ws))
            d = stage.decide(stage.prepare(frame))
            out[str(thr)] = d.rejects.height
            print(f"  {thr:.2f}: {d.rejects.height} merged")
            for uid, dup, detail in d.rejects.select("uid", "duplicate_of", "detail").iter_rows():
                rep = recs[int(dup.removeprefix("rec"))]
                print(f"    {rep['instruction'][:60]!r} ~ {recs[uid]['instruction'][:60]!r} ({detail.rsplit('(', 1)[-1]}")
    finally:
        ws.close()
    return out


# -- comparison (CPU) --------------------------------------------------------------------------------------


def seed_loop(emb, threshold: float) -> list[int]:
    """The seed recipe, verbatim in spirit: keep i unless its max cosine to a kept record reaches threshold."""
    from sklearn.metrics.pairwise import cosine_similarity

    keep: list[int] = []
    for i in range(len(emb)):
        if not keep:
            keep.append(i)
            continue
        sims = cosine_similarity([emb[i]], emb[keep])
        if sims.max() < threshold:
            keep.append(i)
    return keep


def compare(args) -> None:
    import numpy as np

    from curate.frames import canonical_frame
    from curate.stages import StageContext
    from curate.stages.semantic import EmbeddingDedup
    from curate.workspace import Workspace

    data = find_data(args.data)
    records, truth = build_records(data, args.records, args.dup_fraction)
    n = len(records)
    kinds = [r.get("_kind") for r in records]
    frame = canonical_frame([[("user", prompt_of(r)), ("assistant", r["output"])] for r in records])
    WORK.mkdir(parents=True, exist_ok=True)
    tmpdir = None
    if args.reuse_embeddings:
        cache = WORK / "embed_cache"  # a workspace folder: its embeddings.duckdb is the cache
    else:
        tmpdir = tempfile.mkdtemp(prefix="embed_cache_", dir=WORK)
        cache = Path(tmpdir) / "workspace"
    ws = Workspace(cache)
    common = {"threshold": args.threshold, "device": "cpu", "max_seq_length": args.max_seq_length, "token_budget": args.token_budget}

    def run(**params):
        stage = EmbeddingDedup(EmbeddingDedup.Params(**{**common, **params}), StageContext(workspace=ws))
        prepared = stage.prepare(frame)
        t = time.perf_counter()
        decision = stage.decide(prepared)
        return stage, decision, time.perf_counter() - t

    print(f"{n:,} records ({len(truth):,} injected near-duplicates), threshold {args.threshold}, cache {cache}", flush=True)
    # 1. encode (prompts and responses), through the stage: the cache then holds every vector
    enc_stage, _, _ = run(fields="all")
    st = enc_stage.stats
    timing_file = cache.with_suffix(".encode.json")
    if st["encoded"]:
        enc = {"records": n, "texts": st["encoded"], "seconds": st["seconds_encode"], "threads": os.cpu_count()}
        if st["cached"] == 0:
            timing_file.write_text(json.dumps(enc))
    elif timing_file.is_file():
        enc = {**json.loads(timing_file.read_text()), "reused": True}
    else:
        enc = {"records": n, "texts": 0, "seconds": 0.0, "reused": True}
    print(f"encoded {st['encoded']:,} texts, {st['cached']:,} cached, in {st['seconds_encode']:.1f} s", flush=True)

    # 2. ours on the cached vectors
    ours_r, d_r, t_r = run(fields="response")
    ivf_r, d_ivf, t_ivf = run(fields="response", exact_below=0)
    ours_a, d_a, t_a = run(fields="all")
    # 3. the seed loop on the same response vectors, in input order
    key = ours_r.model_key()
    prep = ours_r.prepare(frame)
    hashes = prep["h_response"].to_numpy()
    found, vecs = ws.cached_embeddings(key, hashes)
    order = np.argsort(found)
    emb = vecs[order][np.searchsorted(found[order], hashes)]
    t = time.perf_counter()
    kept = seed_loop(emb, args.threshold)
    t_seed = time.perf_counter() - t
    ws.close()

    seed_rej = set(range(n)) - set(kept)
    sets = {
        "ours response (flat)": set(d_r.rejects["uid"].to_list()),
        "ours response (IVF)": set(d_ivf.rejects["uid"].to_list()),
        "ours all (default)": set(d_a.rejects["uid"].to_list()),
        "seed loop (response)": seed_rej,
    }
    times = {"ours response (flat)": t_r, "ours response (IVF)": t_ivf, "ours all (default)": t_a, "seed loop (response)": t_seed}
    search = {"ours response (flat)": ours_r.stats["seconds_search"], "ours response (IVF)": ivf_r.stats["seconds_search"],
              "ours all (default)": ours_a.stats["seconds_search"]}

    rate = enc["records"] / enc["seconds"] if enc.get("seconds") else float("nan")
    print()
    print(f"Encoding (all-MiniLM-L6-v2, CPU, prompt + response = {enc.get('texts', 0):,} texts): "
          f"{enc.get('seconds', 0):.1f} s = {rate:,.1f} records/s{'  (from the reused cache)' if enc.get('reused') else ''}")
    print()
    head = f"{'method':<24}{'time (s)':>10}{'search (s)':>12}{'rejected':>10}  " + "  ".join(f"{k:>10}" for k in KINDS) + f"  {'other':>7}"
    print(head)
    print("-" * len(head))
    for name, rej in sets.items():
        recall = []
        for kind in KINDS:
            members = [v for v in truth if kinds[v] == kind]
            recall.append(f"{sum(v in rej for v in members):>5}/{len(members):<4}")
        other = len(rej - set(truth))
        s = search.get(name)
        print(f"{name:<24}{times[name]:>10.2f}{(f'{s:.2f}' if s is not None else '-'):>12}{len(rej):>10}  "
              + "  ".join(f"{x:>10}" for x in recall) + f"  {other:>7}")
    a, b = sets["ours response (flat)"], seed_rej
    print()
    print(f"agreement ours (response, flat) vs seed loop: both {len(a & b):,}, ours only {len(a - b):,}, seed only {len(b - a):,}, "
          f"Jaccard {len(a & b) / max(1, len(a | b)):.4f}")
    print(f"IVF vs flat (response): same rejects {len(sets['ours response (IVF)'] & a):,} of {len(a):,}, "
          f"IVF only {len(sets['ours response (IVF)'] - a):,} (nlist {ivf_r.stats.get('nlist')}, nprobe {ivf_r.stats.get('nprobe')})")
    print(f"speed-up of our dedup (response, flat, incl. cache read) over the seed loop: {t_seed / t_r:,.0f}x")
    kept_arr = np.array(kept)
    rep = dict(zip(d_r.clusters["uid"].to_list(), d_r.clusters["rep_uid"].to_list()))
    for label, diff in (("ours only", sorted(a - b)[:3]), ("seed only", sorted(b - a)[:3])):
        for u in diff:  # why they disagree: the max cosine to the seed's kept records before it, and to our representative
            before = kept_arr[kept_arr < u]
            seed_max = float((emb[before] @ emb[u]).max()) if before.size else float("nan")
            ours = f"our representative {rep[u]} at cosine {float(emb[u] @ emb[rep[u]]):.4f}" if u in rep else "not in our clusters"
            print(f"  {label}: record {u}: max cosine to the seed's earlier kept records {seed_max:.4f}; {ours}")
    out = WORK / f"embed_dedup_{n}.json"
    out.write_text(json.dumps({
        "records": n, "injected": len(truth), "threshold": args.threshold, "encode": enc,
        "methods": {k: {"seconds": round(times[k], 3), "rejected": len(v)} for k, v in sets.items()},
        "stats": {"response_flat": ours_r.stats, "response_ivf": ivf_r.stats, "all": ours_a.stats},
    }, indent=2, default=str))
    print(f"\n(written to {out})")
    if tmpdir:
        import shutil

        shutil.rmtree(tmpdir, ignore_errors=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=20_000)
    ap.add_argument("--dup-fraction", type=float, default=0.05)
    ap.add_argument("--threshold", type=float, default=0.95, help="comparison: the threshold; calibrate: the old default, shown beside the chosen one")
    ap.add_argument("--model", default="embedded", help="a sentence-transformers folder (default: the packaged MiniLM)")
    ap.add_argument("--max-seq-length", type=int, default=None)
    ap.add_argument("--batch-size", type=int, default=None, help="encode-only: SentenceTransformer.encode's batch size (default 32 on CPU, 512 on GPU)")
    ap.add_argument("--token-budget", type=int, default=None, help="encode-only: tokens per batch of ours (default: curate.embeddings')")
    ap.add_argument("--reuse-embeddings", action="store_true", help="keep and reuse the cache in bench/_work/embed_cache/")
    ap.add_argument("--device", choices=("auto", "cpu", "cuda"), default="cpu")
    ap.add_argument("--encode-only", action="store_true", help="only time encoding (no faiss/duckdb needed); prints JSON")
    ap.add_argument("--fields", choices=("all", "prompt", "response"), default="all", help="encode-only: which texts")
    ap.add_argument("--repeats", type=int, default=3, help="encode-only: timed passes per encoder (best counts)")
    ap.add_argument("--data", default=None, help="the shared/data folder")
    ap.add_argument("--calibrate", action="store_true", help="sweep the threshold over the labeled pairs of bench/verdict_sets/semantic.py")
    ap.add_argument("--max-false-merge", type=float, default=0.10, help="calibrate: the most of any tune negative set the chosen threshold may merge")
    ap.add_argument("--quick", action="store_true", help="calibrate: the small sets")
    ap.add_argument("--population", type=int, default=2000, help="calibrate: also run on this many random Alpaca rows (unlabeled; 0: skip)")
    args = ap.parse_args()
    if args.calibrate:
        calibrate(args)
    elif args.encode_only:
        encode_only(args)
    else:
        compare(args)


if __name__ == "__main__":
    main()
