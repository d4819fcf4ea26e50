"""MinHash near-dedup speed: our minhash_dedup stage against datasketch and datatrove, same documents.

    .venv/bin/python bench/dedup_speed.py                      # 1,000,000 records
    .venv/bin/python bench/dedup_speed.py --records 50000      # a quick run
    .venv/bin/python bench/dedup_speed.py --dt-records 200000  # datatrove on a smaller input than ours

Everything uses 128 permutations and 5-word shingles of prompt + response.

1. **The input** (``bench/_work/``, git-ignored, cached): records stitched from two real Alpaca rows
   (``../shared/data/alpaca/alpaca_data_first10k_excl_holdout.json``): instructions, inputs and outputs
   of rows x and y, y of similar length to x and each {x, y} used once, so no two records share more than
   about a third of their shingles (9,807 rows could not make a million distinct records otherwise: a
   request wrapper on one row, as ``bench/curate_bench.py`` does, would make its copies near-duplicates
   of each other). Then 10 % planted near-duplicates, each a little after its original: ``format``
   (case, punctuation, whitespace), ``wrapper`` (a request wrapper around the instruction, as in
   curate_bench) and ``edit`` (2 % of the words replaced). The exact 5-word-shingle Jaccard of every
   planted pair is computed once and kept with the ground truth. Written as ``--shards`` JSONL files so
   datatrove can run one task per file.
2. **(a) Signatures**: docs/s from text to 128-slot signatures, ours (Polars lowercasing, then numba
   tokenizer, n-grams and signatures, on all cores and on one) against datasketch's ``MinHash.bulk``
   (Python tokenization, its default SHA-1 shingle hash) on the first ``--ds-docs`` (20,000) documents;
   and from precomputed shingle hashes (the permutations only). datasketch is single-threaded: the one-thread row is the fair
   per-core comparison. Also the mean gap between the two libraries' Jaccard estimates on planted pairs.
3. **(b) Our stage**: ``prepare`` over batches of 50,000 + ``decide`` of ``minhash_dedup`` (the issue's
   parameters: 5-word shingles, 128 permutations, threshold 0.8, 16 bands x 6 rows, exact verification;
   ``--params '{}'`` runs the stage's own defaults, 5-character shingles at 0.7) in a child process: wall time, time per phase,
   peak RSS (the child's VmHWM, and the sampled peak of its whole process tree). Reading the JSONL into
   frames is timed apart and is not part of the stage.
4. **(c) datatrove**: its MinHash pipeline (MinhashDedupSignature, MinhashDedupBuckets,
   MinhashDedupCluster, MinhashDedupFilter) with 5-grams and 16 buckets x 8 hashes (128 permutations; it
   has no verification step: every bucket match is a duplicate), ``--workers`` processes, in a venv of
   its own (``bench/_work/dt_venv``: ``pip install datatrove spacy regex tokenizers orjson "xxhash<4"``;
   datatrove 0.10 hashes str, which xxhash 4 refuses; not a project dependency). Its English word
   tokenizer is spaCy's (``--dt-tokenizer spacy``, the default: about 500 records/s here, half an hour
   for a million); ``--dt-tokenizer regex`` gives it ``\\w+`` words like ours (about 6x faster). Wall
   time per step and peak RSS (sampled sum over its worker processes).
5. **The table**: times, duplicates removed, recall on the planted pairs (by kind and by exact Jaccard)
   and agreement between ours and datatrove (records in some duplicate cluster, and records removed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"
ALPACA = REPO.parent / "shared" / "data" / "alpaca" / "alpaca_data_first10k_excl_holdout.json"
DT_PYTHON = WORK / "dt_venv" / "bin" / "python"
INPUT_VERSION = 1
NUM_PERM, NGRAM = 128, 5
# The benchmark parameters (128 permutations, 5-word shingles) at datatrove's usual 0.8. The stage's
# own defaults are 5-character shingles at 0.7 (chosen by bench/dedup_quality.py): `--params '{}'` runs those.
BENCH_PARAMS = {"shingle": "word", "ngram": 5, "threshold": 0.8}
DT_BUCKETS, DT_HASHES = 16, 8  # datatrove: 16 x 8 = 128 permutations, P(candidate | 0.8) = 0.947
DUP_KINDS = ("format", "wrapper", "edit")
EDIT_WORDS = "apple river stone window purple engine garden silver mountain paper lantern violin".split()
PREFIXES = ("Please help: ", "Task: ", "Question: ", "Quick one: ", "Hi! ", "Request: ", "Could you do this? ")
SUFFIXES = (" Thank you!", " Thanks.", " Be concise.", " Keep it brief.", " Please answer clearly.", " Cheers.")


# ---------------------------------------------------------------------------------------------------------
# 1. the input
# ---------------------------------------------------------------------------------------------------------
def _text(rec: dict) -> str:
    """prompt + "\\n" + response, as the stage's ``fields: all`` sees an Alpaca record."""
    prompt = f"{rec['instruction']}\n\n{rec['input']}" if rec["input"] else rec["instruction"]
    return f"{prompt}\n{rec['output']}"


def _stitch(x: dict, y: dict) -> dict:
    return {
        "instruction": f"{x['instruction']}\n{y['instruction']}",
        "input": "\n".join(s for s in (x["input"], y["input"]) if s),
        "output": f"{x['output']}\n\n{y['output']}",
    }


PUNCT_EDIT = {".": " ;", ",": "", "!": ".", "?": " ?", ";": ",", ":": ""}


def _copy(rec: dict, kind: str, rng: random.Random) -> dict:
    if kind == "format":  # case, punctuation where a word ends, whitespace: the same words
        upper = rng.random() < 0.5

        def fmt(s: str) -> str:
            s = re.sub(r"[.,;:!?](?=\s|$)", lambda m: PUNCT_EDIT[m.group()], s)
            s = re.sub(r"[a-z]+", lambda m: m.group().upper(), s) if upper else s.lower()  # ASCII only: same words
            return re.sub(r" ", "  ", s, count=2) + " "

        return {k: fmt(v) if v else v for k, v in rec.items()}
    if kind == "wrapper":
        return {**rec, "instruction": f"{rng.choice(PREFIXES)}{rec['instruction']}{rng.choice(SUFFIXES)}"}
    w = rec["output"].split(" ")  # edit: 2 % of the output's words (at least one) replaced
    for i in rng.sample(range(len(w)), max(1, round(0.02 * len(w)))):
        w[i] = rng.choice(EDIT_WORDS)
    return {**rec, "output": " ".join(w)}


def _exact_jaccards(a: list[str], b: list[str]) -> list[float]:
    sys.path.insert(0, str(REPO))
    import polars as pl

    from curate.stages.ngrams import ngram_hashes, word_hashes

    out = []
    for lo in range(0, len(a), 50_000):
        ha, oa = word_hashes(pl.Series(a[lo : lo + 50_000]))
        hb, ob = word_hashes(pl.Series(b[lo : lo + 50_000]))
        ha, oa, _ = ngram_hashes(ha, oa, NGRAM)
        hb, ob, _ = ngram_hashes(hb, ob, NGRAM)
        for i in range(oa.size - 1):
            sa, sb = set(ha[oa[i] : oa[i + 1]].tolist()), set(hb[ob[i] : ob[i + 1]].tolist())
            out.append(len(sa & sb) / max(len(sa | sb), 1))
    return out


def build_input(n: int, dup_frac: float, shards: int, seed: int = 0) -> tuple[list[Path], dict]:
    """The JSONL shards and the ground truth (cached by n, dup_frac, shards, seed)."""
    import orjson

    WORK.mkdir(parents=True, exist_ok=True)
    tag = f"nd_{n}_d{int(round(dup_frac * 1000))}_p{shards}_s{seed}_v{INPUT_VERSION}"
    folder, truth_path = WORK / tag, WORK / f"{tag}.truth.json"
    paths = [folder / f"{i:05d}.jsonl" for i in range(shards)]
    if truth_path.is_file() and all(p.is_file() for p in paths):
        return paths, json.loads(truth_path.read_text())
    t0 = time.perf_counter()
    rng = random.Random(seed)
    rows = [{"instruction": r["instruction"].strip(), "input": (r.get("input") or "").strip(), "output": r["output"].strip()}
            for r in json.loads(ALPACA.read_text())]
    rows = [r for r in rows if len(_text(r).split()) >= 8 and r["output"]]
    by_len = sorted(range(len(rows)), key=lambda i: len(_text(rows[i]).split()))
    n_dup = int(round(n * dup_frac))
    n_base = n - n_dup
    used: set[tuple[int, int]] = set()
    base: list[dict] = []
    while len(base) < n_base:
        # y is a row of similar length (within 600 places in length order), so neither part dominates
        p = rng.randrange(len(by_len))
        q = min(max(p + rng.randint(-600, 600), 0), len(by_len) - 1)
        x, y = by_len[p], by_len[q]
        key = (min(x, y), max(x, y))
        if x == y or key in used:
            continue
        used.add(key)
        base.append(_stitch(rows[x], rows[y]))
    del used
    # planted copies, each within 2,000 records after its original (keep=first keeps the original)
    dups = sorted((j + 0.5 + rng.random() * min(2000, n_base - j - 0.5), j, DUP_KINDS[rng.randrange(3)])
                  for j in (rng.randrange(n_base) for _ in range(n_dup)))
    dup_line, dup_of, dup_kind, copies = [], [], [], []
    base_line = [0] * n_base
    per_shard = -(-n // shards)
    folder.mkdir(parents=True, exist_ok=True)
    handles = [open(p.with_suffix(".tmp"), "wb") for p in paths]
    line, di = 0, 0

    def write(rec: dict) -> None:
        nonlocal line
        handles[min(line // per_shard, shards - 1)].write(orjson.dumps(rec) + b"\n")
        line += 1

    for idx in range(n_base + 1):
        if idx < n_base:
            base_line[idx] = line
            write(base[idx])
        while di < len(dups) and (dups[di][0] < idx + 1 or idx == n_base):
            _, j, kind = dups[di]
            di += 1
            rec = _copy(base[j], kind, rng)
            dup_line.append(line)
            dup_of.append(base_line[j])
            dup_kind.append(kind)
            copies.append((_text(base[j]), _text(rec)))
            write(rec)
    for h in handles:
        h.close()
    for p in paths:
        os.replace(p.with_suffix(".tmp"), p)
    exact = _exact_jaccards([a for a, _ in copies], [b for _, b in copies])
    truth = {
        "records": line, "base": n_base, "shards": [str(p) for p in paths], "shard_sizes": [min(per_shard, max(0, n - i * per_shard)) for i in range(shards)],
        "dup_line": dup_line, "dup_of": dup_of, "dup_kind": dup_kind, "dup_exact_jaccard": [round(x, 4) for x in exact],
        "bytes": sum(p.stat().st_size for p in paths),
    }
    truth_path.write_text(json.dumps(truth))
    print(f"built {folder.name}: {line:,} records in {shards} shards ({truth['bytes'] / 1e6:.0f} MB), {len(dup_line):,} planted "
          f"near-duplicates in {time.perf_counter() - t0:.1f}s", flush=True)
    return paths, truth


def iter_texts(paths: list[Path], limit: int | None = None):
    import orjson

    k = 0
    for p in paths:
        with open(p, "rb") as fh:
            for raw in fh:
                if limit is not None and k >= limit:
                    return
                k += 1
                yield _text(orjson.loads(raw))


# ---------------------------------------------------------------------------------------------------------
# 2. (a) signatures: ours against datasketch
# ---------------------------------------------------------------------------------------------------------
def signature_throughput(paths: list[Path], truth: dict, n_docs: int) -> dict:
    sys.path.insert(0, str(REPO))
    import numba
    import numpy as np
    import polars as pl
    from datasketch import MinHash

    from curate.stages.minhash import MinHashDedup, signatures

    texts = list(iter_texts(paths, n_docs))
    n_docs = len(texts)
    stage = MinHashDedup(MinHashDedup.Params(**BENCH_PARAMS))
    series = pl.Series(texts)
    signatures(*stage.shingles(series[:100]))  # compile / load the kernel outside the timing
    out: dict = {"docs": n_docs}

    def ours(threads: int) -> tuple[float, np.ndarray, float]:
        numba.set_num_threads(threads)
        best = (float("inf"), None, 0.0)
        for _ in range(3):  # best of 3: the machine may be shared
            t = time.perf_counter()
            sh, off = stage.shingles(series)
            t_sh = time.perf_counter() - t
            sig = signatures(sh, off, NUM_PERM)
            best = min(best, (time.perf_counter() - t, sig, t_sh), key=lambda x: x[0])
        return best

    t_all, sig, t_sh_all = ours(numba.config.NUMBA_NUM_THREADS)
    t_one, _, _ = ours(1)
    numba.set_num_threads(numba.config.NUMBA_NUM_THREADS)
    sh, off = stage.shingles(series)
    t_kernel = float("inf")
    for _ in range(3):
        t = time.perf_counter()
        signatures(sh, off, NUM_PERM)
        t_kernel = min(t_kernel, time.perf_counter() - t)
    out["ours_text_s"], out["ours_text_1t_s"], out["ours_kernel_s"], out["ours_shingles_s"] = t_all, t_one, t_kernel, t_sh_all

    # datasketch, as its users write it: Python tokenization, n-grams as bytes, MinHash.bulk (SHA-1 per shingle)
    t = time.perf_counter()
    sets = []
    for text in texts:
        w = re.findall(r"\w+", text.lower())
        grams = [" ".join(w[i : i + NGRAM]) for i in range(len(w) - NGRAM + 1)] or ([" ".join(w)] if w else [])
        sets.append([g.encode() for g in grams])
    ds = MinHash.bulk(sets, num_perm=NUM_PERM)
    out["ds_text_s"] = time.perf_counter() - t
    # the permutations only: datasketch fed our precomputed 32-bit shingle hashes
    folded = (sh ^ (sh >> np.uint64(32))) & np.uint64(0xFFFFFFFF)
    ints = [folded[off[i] : off[i + 1]].tolist() for i in range(n_docs)]
    t = time.perf_counter()
    MinHash.bulk(ints, num_perm=NUM_PERM, hashfunc=int)
    out["ds_kernel_s"] = time.perf_counter() - t
    # both libraries estimate the same Jaccard: planted pairs inside the subset
    pairs = [(c, o) for c, o in zip(truth["dup_line"], truth["dup_of"]) if c < n_docs]
    if pairs:
        ours_j = np.array([(sig[c] == sig[o]).mean() for c, o in pairs])
        ds_j = np.array([ds[c].jaccard(ds[o]) for c, o in pairs])
        exact = np.array([truth["dup_exact_jaccard"][truth["dup_line"].index(c)] for c, _ in pairs])
        out["agree_pairs"] = len(pairs)
        out["agree_mean_abs_gap"] = float(np.abs(ours_j - ds_j).mean())
        out["ours_mean_abs_err"] = float(np.abs(ours_j - exact).mean())
        out["ds_mean_abs_err"] = float(np.abs(ds_j - exact).mean())  # datasketch's tokens differ a little
    return out


# ---------------------------------------------------------------------------------------------------------
# 3. (b) our stage, in a child process
# ---------------------------------------------------------------------------------------------------------
def _vm_hwm_mb() -> float:
    """This process's peak RSS (VmHWM; not ru_maxrss, which carries a forking parent's high-water mark)."""
    with open("/proc/self/status") as fh:
        for line in fh:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


def child_ours(spec: dict) -> None:
    sys.path.insert(0, str(REPO))
    import io

    import numpy as np
    import polars as pl

    from curate.stages.minhash import MinHashDedup, signatures

    stage = MinHashDedup(MinHashDedup.Params(**spec["params"]))
    signatures(np.zeros(1, np.uint64), np.array([0, 1]))  # load the compiled kernels (cached on disk)
    t_read = t_prepare = 0.0
    prepared = []
    uid = 0
    t0 = time.perf_counter()
    for path in spec["paths"]:
        with open(path, "rb") as fh:
            while True:
                t = time.perf_counter()
                lines = fh.readlines(40_000_000)  # ~50,000 records
                if not lines:
                    break
                raw = pl.read_ndjson(io.BytesIO(b"".join(lines)), schema={"instruction": pl.Utf8, "input": pl.Utf8, "output": pl.Utf8})
                prompt = pl.when(pl.col("input") != "").then(pl.concat_str("instruction", pl.lit("\n\n"), "input")).otherwise("instruction")
                batch = raw.select(
                    uid=pl.int_range(uid, uid + raw.height, dtype=pl.Int64),
                    id=pl.format("L{}", pl.int_range(uid, uid + raw.height)),
                    source_file=pl.lit(Path(path).name),
                    source_line=pl.int_range(1, raw.height + 1),
                    prompt_text=prompt,
                    response_text=pl.col("output"),
                ).with_columns(n_chars=pl.col("prompt_text").str.len_chars() + pl.col("response_text").str.len_chars())
                uid += raw.height
                del raw, lines
                t_read += time.perf_counter() - t
                t = time.perf_counter()
                prepared.append(stage.prepare(batch))
                t_prepare += time.perf_counter() - t
                del batch
    t = time.perf_counter()
    table = pl.concat(prepared)
    del prepared
    decision = stage.decide(table)
    t_decide = time.perf_counter() - t
    wall = time.perf_counter() - t0
    rej = decision.rejects["uid"].to_numpy()
    members = decision.clusters["uid"].to_numpy() if decision.clusters is not None else np.zeros(0, np.int64)
    np.save(spec["out"] + ".removed.npy", rej.astype(np.int64))
    np.save(spec["out"] + ".members.npy", members.astype(np.int64))
    b, r = stage.bands_rows
    Path(spec["out"] + ".json").write_text(json.dumps({
        "records": uid, "wall_s": wall, "read_s": t_read, "prepare_s": t_prepare, "decide_s": t_decide,
        "stage_s": t_prepare + t_decide, "removed": int(rej.size), "clusters": int(decision.clusters["rep_uid"].n_unique()) if members.size else 0,
        "report_pairs": decision.pairs.height if decision.pairs is not None else 0, "bands": b, "rows": r,
        "accept_at": round(stage.accept_at, 4), "shingles": f"{stage.ngram}-{stage.params.shingle}", "threshold": stage.params.threshold,
        "peak_rss_mb": _vm_hwm_mb(),
    }))


# ---------------------------------------------------------------------------------------------------------
# 4. (c) datatrove, in a child process of its own venv
# ---------------------------------------------------------------------------------------------------------
def _dt_adapter(self, data: dict, path: str, id_in_file):
    return {"text": _text(data), "id": f"{path}/{id_in_file}"}


def _dt_word_tokenizer(kind: str):
    """datatrove's English word tokenizer (spaCy), or ``\\w+`` words like ours (``--dt-tokenizer regex``)."""
    if kind == "spacy":
        return "en"  # datatrove's default for English: spacy.blank("en")
    from datatrove.utils.word_tokenizers import WordTokenizer

    class RegexWordTokenizer(WordTokenizer):
        def word_tokenize(self, text: str) -> list[str]:
            return re.findall(r"\w+", text)

        def sent_tokenize(self, text: str) -> list[str]:
            return [text]

        def span_tokenize(self, text: str) -> list[tuple[int, int]]:
            return [(0, len(text))]

    return RegexWordTokenizer("en")


def child_datatrove(spec: dict) -> None:
    import shutil

    import numpy as np
    from datatrove.executor import LocalPipelineExecutor
    from datatrove.pipeline.dedup import MinhashDedupCluster, MinhashDedupFilter, MinhashDedupSignature
    from datatrove.pipeline.dedup.minhash import MinhashConfig, MinhashDedupBuckets
    from datatrove.pipeline.readers import JsonlReader

    base = Path(spec["out"] + "_dt")
    shutil.rmtree(base, ignore_errors=True)
    config = MinhashConfig(n_grams=NGRAM, num_buckets=DT_BUCKETS, hashes_per_bucket=DT_HASHES, seed=1)
    folder, n_files, workers = spec["folder"], len(spec["paths"]), spec["workers"]

    def reader():
        return JsonlReader(folder, glob_pattern="*.jsonl", adapter=_dt_adapter)

    steps = [
        ("1 signatures", [reader(), MinhashDedupSignature(output_folder=str(base / "sigs"), config=config,
                                                          language=_dt_word_tokenizer(spec["tokenizer"]))], n_files),
        ("2 buckets", [MinhashDedupBuckets(input_folder=str(base / "sigs"), output_folder=str(base / "buckets"), config=config)], DT_BUCKETS),
        ("3 cluster", [MinhashDedupCluster(input_folder=str(base / "buckets"), output_folder=str(base / "remove"), config=config,
                                           save_cluster_id=True)], 1),
        ("4 filter", [reader(), MinhashDedupFilter(input_folder=str(base / "remove"))], n_files),
    ]
    times = {}
    t0 = time.perf_counter()
    for name, pipeline, tasks in steps:
        t = time.perf_counter()
        LocalPipelineExecutor(pipeline=pipeline, tasks=tasks, workers=min(workers, tasks), logging_dir=str(base / "logs" / name.split()[1])).run()
        times[name] = time.perf_counter() - t
    wall = time.perf_counter() - t0
    # removed records and cluster members, as global line numbers (shard offset + index in shard)
    offsets = np.concatenate([[0], np.cumsum(spec["shard_sizes"])])
    removed, members = [], []
    for rank in range(n_files):
        f = base / "remove" / f"{rank:06d}.remove"
        if f.is_file():
            removed.append(offsets[rank] + np.fromfile(f, dtype="<u4").astype(np.int64))
        f = base / "remove" / f"{rank:06d}.clusters"
        if f.is_file():
            members.append(offsets[rank] + np.fromfile(f, dtype="<u4").reshape(-1, 2)[:, 0].astype(np.int64))
    removed = np.concatenate(removed) if removed else np.zeros(0, np.int64)
    members = np.concatenate(members) if members else np.zeros(0, np.int64)
    np.save(spec["out"] + ".removed.npy", removed)
    np.save(spec["out"] + ".members.npy", members)
    shutil.rmtree(base / "sigs", ignore_errors=True)
    shutil.rmtree(base / "buckets", ignore_errors=True)
    Path(spec["out"] + ".json").write_text(json.dumps({"wall_s": wall, "steps": times, "removed": int(removed.size), "peak_rss_main_mb": _vm_hwm_mb()}))


# ---------------------------------------------------------------------------------------------------------
# running children, measuring them
# ---------------------------------------------------------------------------------------------------------
def _tree_rss_mb(root: int) -> float:
    """Sum of VmRSS over ``root`` and its descendants (from /proc)."""
    parent, rss = {}, {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/status") as fh:
                fields = dict(line.split(":", 1) for line in fh if ":" in line)
            parent[int(d)] = int(fields["PPid"])
            rss[int(d)] = int(fields.get("VmRSS", "0 kB").split()[0]) / 1024
        except (OSError, KeyError, ValueError):
            continue
    total, stack = 0.0, [root]
    seen = set()
    while stack:
        p = stack.pop()
        if p in seen:
            continue
        seen.add(p)
        total += rss.get(p, 0.0)
        stack.extend(c for c, pp in parent.items() if pp == p)
    return total


def run_child(cmd: list[str], timeout: float | None) -> dict:
    """Run ``cmd``; wall time, CPU time and the sampled peak RSS of its process tree."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(cmd, cwd=REPO, start_new_session=True)  # its own group: a timeout stops its workers too
    peak = [0.0]
    done = threading.Event()

    def sample():
        while not done.wait(0.5):
            peak[0] = max(peak[0], _tree_rss_mb(proc.pid))

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    try:
        _, status, ru = os.wait4(proc.pid, 0) if timeout is None else _wait_timeout(proc, timeout)
    finally:
        done.set()
        th.join()
    return {"rc": os.waitstatus_to_exitcode(status) if status is not None else None, "wall_s": time.perf_counter() - t0,
            "cpu_s": (ru.ru_utime + ru.ru_stime) if ru else None, "tree_peak_rss_mb": peak[0]}


def _wait_timeout(proc: subprocess.Popen, timeout: float):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        pid, status, ru = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            return pid, status, ru
        time.sleep(0.5)
    os.killpg(proc.pid, 9)
    _, status, ru = os.wait4(proc.pid, 0)
    return None, None, ru


# ---------------------------------------------------------------------------------------------------------
# 5. the table
# ---------------------------------------------------------------------------------------------------------
def planted_recall(truth: dict, removed, members) -> dict:
    """Planted pairs found: the copy removed (keep=first) / both in one cluster, by kind and exact Jaccard."""
    import numpy as np

    removed, members = set(np.asarray(removed).tolist()), set(np.asarray(members).tolist())
    rows = {}
    for c, o, kind, j in zip(truth["dup_line"], truth["dup_of"], truth["dup_kind"], truth["dup_exact_jaccard"]):
        hit = c in members and o in members
        for key in (f"kind {kind}", "J >= 0.9" if j >= 0.9 else "0.8 <= J < 0.9" if j >= 0.8 else "J < 0.8", "all"):
            n, h = rows.get(key, (0, 0))
            rows[key] = (n + 1, h + hit)
    return rows


def print_block(n: int, truth: dict, ours: dict | None, dt: dict | None, dt_name: str) -> None:
    print(f"\n(b)/(c) whole dedup on {n:,} records      {'ours (minhash_dedup stage)':<30}{dt_name:<30}")

    def cell(r, key, fmt):
        return fmt.format(r[key]) if r and r.get(key) is not None else "-"

    o, t = ours or {}, dt or {}
    table = [
        ("wall time, dedup (s)", cell(o, "stage_s", "{:,.1f}"), cell(t, "wall_s", "{:,.1f}")),
        ("  per phase (s)", f"prepare {o.get('prepare_s', 0):.1f} + decide {o.get('decide_s', 0):.1f}" if o else "-",
         " + ".join(f"{v:.0f}" for v in t.get("steps", {}).values()) if t else "-"),
        ("  JSONL read into frames (s, not dedup)", cell(o, "read_s", "{:,.1f}"), "(in steps 1 and 4)" if t else "-"),
        ("child process wall (s)", cell(o, "child_wall_s", "{:,.1f}"), cell(t, "child_wall_s", "{:,.1f}")),
        ("records/s (dedup)", f"{n / o['stage_s']:,.0f}" if o.get("stage_s") else "-", f"{n / t['wall_s']:,.0f}" if t.get("wall_s") else "-"),
        ("peak RSS (MB)", cell(o, "peak_rss_mb", "{:,.0f}"), (cell(t, "tree_peak_rss_mb", "{:,.0f}") + " (sum of processes)") if t else "-"),
        ("duplicates removed", cell(o, "removed", "{:,}"), cell(t, "removed", "{:,}")),
    ]
    for name, a, b in table:
        print(f"    {name:<40}{a:<30}{b:<30}")
    ro = planted_recall(truth, o["removed_ids"], o["member_ids"]) if o.get("removed_ids") is not None else {}
    rt = planted_recall(truth, t["removed_ids"], t["member_ids"]) if t.get("removed_ids") is not None else {}
    print("    planted pairs found (both in one cluster):")
    for k in ["all", *(f"kind {k}" for k in DUP_KINDS), "J >= 0.9", "0.8 <= J < 0.9", "J < 0.8"]:
        a, b = ro.get(k), rt.get(k)
        fa = f"{a[1]:,} / {a[0]:,} ({a[1] / a[0]:.1%})" if a and a[0] else "-"
        fb = f"{b[1]:,} / {b[0]:,} ({b[1] / b[0]:.1%})" if b and b[0] else "-"
        print(f"      {k:<38}{fa:<30}{fb:<30}")
    if o.get("removed_ids") is not None and t.get("removed_ids") is not None:
        ro_, rt_ = set(o["removed_ids"].tolist()), set(t["removed_ids"].tolist())
        mo, mt = set(o["member_ids"].tolist()), set(t["member_ids"].tolist())
        planted = set(truth["dup_line"]) | set(truth["dup_of"])
        print(f"    agreement: records in a duplicate cluster: ours {len(mo):,}, datatrove {len(mt):,}, both {len(mo & mt):,} "
              f"(Jaccard {len(mo & mt) / max(len(mo | mt), 1):.3f}); outside the planted pairs: ours {len(mo - planted):,}, "
              f"datatrove {len(mt - planted):,}")
        print(f"               records removed: both {len(ro_ & rt_):,}, only ours {len(ro_ - rt_):,}, only datatrove {len(rt_ - ro_):,}")
    if o and n >= 1_000_000:
        ok_t, ok_m = o["stage_s"] <= 60, o["peak_rss_mb"] < 4096
        print(f"    targets (1M records, 2 cores): stage <= 60 s: {'PASS' if ok_t else 'FAIL'}; peak RSS < 4 GB: {'PASS' if ok_m else 'FAIL'}")
    if o:
        print(f"    ours: {o.get('shingles')} shingles, threshold {o.get('threshold')}, {o.get('bands')} bands x {o.get('rows')} rows, "
              f"candidates with an estimate >= {o.get('accept_at')} checked by exact Jaccard (older versions: accepted on the estimate)")


def print_report(args, truth: dict, sig: dict | None, ours: dict | None, dt: dict | None) -> None:
    n = truth["records"]
    line = "-" * 100
    print(f"\n{line}\nMinHash near-dedup, {n:,} records ({truth['bytes'] / 1e6:.0f} MB JSONL, {len(truth['dup_line']):,} planted "
          f"near-duplicates), 128 permutations, (b) params {args.params}, {os.cpu_count()} CPU cores, load avg {os.getloadavg()[0]:.1f}\n{line}")
    if sig:
        d = sig["docs"]
        print(f"(a) signatures, {d:,} documents              ours                  datasketch MinHash.bulk     speed-up")
        rows = [
            ("from text (tokens, 5-grams, 128 perms)", sig["ours_text_s"], sig["ds_text_s"]),
            ("  ours with numba on 1 thread", sig["ours_text_1t_s"], sig["ds_text_s"]),
            ("from shingle hashes (permutations only)", sig["ours_kernel_s"], sig["ds_kernel_s"]),
        ]
        for name, o, s in rows:
            print(f"    {name:<40} {d / o:>10,.0f} docs/s      {d / s:>10,.0f} docs/s      {s / o:>6.1f}x")
        if "agree_pairs" in sig:
            print(f"    Jaccard estimates on {sig['agree_pairs']:,} planted pairs: mean |ours - datasketch| {sig['agree_mean_abs_gap']:.3f}; "
                  f"mean |estimate - exact| ours {sig['ours_mean_abs_err']:.3f}, datasketch {sig['ds_mean_abs_err']:.3f}")
    dt_name = f"datatrove {DT_BUCKETS}x{DT_HASHES}, {args.dt_tokenizer}"
    if ours or (dt and dt.get("records") == n):
        print_block(n, truth, ours, dt if dt and dt.get("records") == n else None, dt_name)
    if dt and dt.get("records") != n:
        print_block(dt["records"], dt["truth"], dt.get("ours_same_input"), dt, dt_name)
    if sig:
        print(f"    target (a): >= 10x datasketch: {'PASS' if sig['ds_text_s'] / sig['ours_text_s'] >= 10 else 'FAIL'}")
    print(line)


def run_side(kind: str, paths: list[Path], truth: dict, args) -> dict | None:
    import numpy as np

    tag = f"{kind}_{truth['records']}" + (f"_{args.dt_tokenizer}" if kind == "datatrove" else "")
    out = str(WORK / tag)
    spec = {"paths": [str(p) for p in paths], "folder": str(paths[0].parent), "shard_sizes": truth["shard_sizes"],
            "out": out, "workers": args.workers, "tokenizer": args.dt_tokenizer, "params": json.loads(args.params)}
    if kind == "datatrove":
        if not DT_PYTHON.is_file():
            print(f"datatrove skipped: no venv at {DT_PYTHON} (python3 -m venv {DT_PYTHON.parent.parent}; "
                  f"{DT_PYTHON.parent}/pip install datatrove spacy regex tokenizers orjson 'xxhash<4')")
            return None
        cmd = [str(DT_PYTHON), str(Path(__file__).resolve()), "_child_datatrove", json.dumps(spec)]
    else:
        cmd = [sys.executable, str(Path(__file__).resolve()), "_child_ours", json.dumps(spec)]
    print(f"running {kind} on {truth['records']:,} records ...", flush=True)
    m = run_child(cmd, args.timeout if kind == "datatrove" else None)
    if m["rc"] != 0:
        print(f"{kind} failed or timed out (rc={m['rc']}, {m['wall_s']:.0f}s)")
        return None
    res = json.loads(Path(out + ".json").read_text())
    res.update(child_wall_s=m["wall_s"], cpu_s=m["cpu_s"], tree_peak_rss_mb=m["tree_peak_rss_mb"], records=truth["records"], truth=truth,
               removed_ids=np.load(out + ".removed.npy"), member_ids=np.load(out + ".members.npy"))
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--params", default=json.dumps(BENCH_PARAMS), help="minhash_dedup params for (b), as JSON ('{}': the stage's defaults)")
    ap.add_argument("--dup-frac", type=float, default=0.10)
    ap.add_argument("--shards", type=int, default=2, help="JSONL files (datatrove runs one task per file)")
    ap.add_argument("--workers", type=int, default=os.cpu_count() or 2, help="datatrove's worker processes")
    ap.add_argument("--ds-docs", type=int, default=20_000, help="documents for the datasketch comparison (a)")
    ap.add_argument("--dt-records", type=int, default=None, help="datatrove's input size (default: --records)")
    ap.add_argument("--dt-tokenizer", choices=("spacy", "regex"), default="spacy",
                    help="datatrove's word tokenizer: its English default (spaCy) or \\w+ words like ours (faster)")
    ap.add_argument("--timeout", type=float, default=3600, help="seconds before datatrove is stopped")
    ap.add_argument("--skip", action="append", default=[], choices=("signatures", "ours", "datatrove"))
    args = ap.parse_args(argv)

    subprocess.run([sys.executable, str(Path(__file__).resolve()), "_child_build", str(args.records), str(args.dup_frac), str(args.shards)],
                   check=True)
    paths, truth = build_input(args.records, args.dup_frac, args.shards)
    sig = None if "signatures" in args.skip else signature_throughput(paths, truth, args.ds_docs)
    ours = None if "ours" in args.skip else run_side("ours", paths, truth, args)
    dt = None
    if "datatrove" not in args.skip:
        dt_n = args.dt_records or args.records
        if dt_n != args.records:
            subprocess.run([sys.executable, str(Path(__file__).resolve()), "_child_build", str(dt_n), str(args.dup_frac), str(args.shards)], check=True)
        dt_paths, dt_truth = build_input(dt_n, args.dup_frac, args.shards)
        dt = run_side("datatrove", dt_paths, dt_truth, args)
        if dt is not None and dt_n != args.records and "ours" not in args.skip:
            dt["ours_same_input"] = run_side("ours", dt_paths, dt_truth, args)
    print_report(args, truth, sig, ours, dt)
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child_ours":
        child_ours(json.loads(sys.argv[2]))
    elif len(sys.argv) > 2 and sys.argv[1] == "_child_datatrove":
        child_datatrove(json.loads(sys.argv[2]))
    elif len(sys.argv) > 4 and sys.argv[1] == "_child_build":
        build_input(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    else:
        sys.exit(main())
