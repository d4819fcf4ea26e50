"""Throughput and memory benchmark of `curate run` against the usual hand-written per-record script.

    .venv/bin/python bench/curate_bench.py                      # 1,000,000 records
    .venv/bin/python bench/curate_bench.py --records 100000     # a quick run
    .venv/bin/python bench/curate_bench.py --records 200000 --only ours --profile   # where the time goes

What it does:

1. Builds the input once into ``bench/_work/`` (git-ignored): the real Alpaca rows
   (``../shared/data/alpaca/alpaca_data_first10k_excl_holdout.json``, 9,807 rows) scaled to N distinct
   records as JSONL. Copy k of a row gets a realistic request wrapper on its instruction ("Please help:
   ... Thank you!"; 144 combinations, then a "(variant k)" marker), so every copy is a different record.
   Then a known fraction of exact duplicates is injected, each after its original: half byte-identical,
   a quarter with whitespace changes, a quarter with case changes, so normalized exact dedup must catch
   them all. Their line numbers are the ground truth.
2. Runs our pipeline (ingest, normalize, the filters, language ID, exact dedup, export) in a child process,
   and the plain-Python baseline (``bench/plain_baseline.py``) in another, measuring each child's wall
   time, CPU time (``os.wait4``'s rusage) and peak RSS (the child's own VmHWM from /proc; ``ru_maxrss``
   would include this parent's RSS, inherited across fork + exec).
3. Prints a comparison table, the ledger invariant, the dedup check against the ground truth
   (hits / missed / false) and the target check (>= 50,000 records/s end to end, peak RSS < 3 GB).

Stages are a flag (``--stages``): stage modules that are not importable yet are skipped with a warning
and the baseline then runs only the checks of the stages that ran, so both sides do the same work.
Stage timing (on unless ``--no-stage-timing``) wraps each stage's evaluate/prepare/decide and the
pipeline's phases in the child process (monkeypatching there, not in curate/) and prints seconds per
phase, next to the pipeline's own ``summary["timings"]`` where it has them. ``--profile`` runs our side
under cProfile instead and prints the top functions (``bench/_work/profile_<N>.pstats``).
``--tokenizer both`` runs each side twice: without a tokenizer, and with the embedded SmolLM2
tokenizer (ours counts tokens for every record; the baseline's length check then counts tokens too).

The machine may be shared: the table shows CPU seconds and the load average next to wall times.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import random
import shutil
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
WORK = HERE / "_work"
ALPACA = Path(__file__).resolve().parents[2] / "shared" / "data" / "alpaca" / "alpaca_data_first10k_excl_holdout.json"

DEFAULT_STAGES = (
    "conversation_structure", "response_length", "length", "unseeable_context", "language", "refusal",
    "unique_words", "gopher_repetition", "pii", "exact_dedup",
)
# Parameters the benchmark sets (anything else: the stage's defaults)
STAGE_PARAMS: dict[str, dict] = {"pii": {"action": "flag"}}

INPUT_VERSION = 3  # bump when the generator changes (the cache key)
TARGET_RPS = 50_000
TARGET_RSS_MB = 3 * 1024

PREFIXES = ("", "Please help: ", "Task: ", "Question: ", "Quick one: ", "Hi! ", "Request: ", "I need help with this. ",
            "Could you do this? ", "Assignment: ", "Here is my request. ", "Hello, ")
SUFFIXES = ("", " Thank you!", " Thanks.", " Be concise.", " Keep it brief.", " Please answer clearly.", " Be specific.",
            " Use plain language.", " Be accurate.", " Answer in full sentences.", " Thanks in advance.", " Cheers.")


# ---------------------------------------------------------------------------------------------------------
# 1. the input
# ---------------------------------------------------------------------------------------------------------
def _norm_key(instruction: str, inp: str, output: str) -> str:
    """Roughly curate's exact-dedup key (placeholders dropped, lowercased, whitespace collapsed)."""
    inp_s = inp.strip()
    if inp_s.lower().rstrip(".") in ("<noinput>", "<no input>", "noinput", "no input", "none", "n/a", "na", "-", "<none>"):
        inp_s = ""
    prompt = f"{instruction.strip()}\n\n{inp_s}" if inp_s else instruction.strip()
    return " ".join(f"user: {prompt}\n\nassistant: {output.strip()}".lower().split())


def _variant(instruction: str, k: int) -> str:
    if k == 0:
        return instruction
    if k < len(PREFIXES) * len(SUFFIXES):
        p, s = PREFIXES[k % len(PREFIXES)], SUFFIXES[k // len(PREFIXES)]
        if p and instruction[:1].isupper() and instruction[1:2].islower():
            instruction = instruction[0].lower() + instruction[1:]
        return f"{p}{instruction}{s}"
    return f"{instruction} (variant {k})"


def _dup_copy(rec: dict, kind: str) -> dict:
    if kind == "whitespace":
        ins = rec["instruction"].replace(" ", "  ", 1) + " "
        out = rec["output"]
        # inner whitespace only in longer answers: a short one may be a placeholder ("No output required"),
        # which curate matches verbatim, so a spaced-out copy would legitimately differ after normalization
        out = (out.replace(" ", " \t ", 1) if len(out.split()) > 4 else out) + "\n"
        return {"instruction": ins, "input": rec["input"], "output": out}
    if kind == "case":
        return {"instruction": rec["instruction"].lower(), "input": rec["input"], "output": rec["output"].upper()}
    return dict(rec)


def build_input(n: int, dup_frac: float, seed: int = 0) -> tuple[Path, dict]:
    """The JSONL input and its ground truth (cached by n, dup_frac, seed)."""
    import orjson

    WORK.mkdir(parents=True, exist_ok=True)
    tag = f"alpaca_{n}_d{int(round(dup_frac * 1000))}_s{seed}_v{INPUT_VERSION}"
    path, truth_path = WORK / f"{tag}.jsonl", WORK / f"{tag}.truth.json"
    if path.is_file() and truth_path.is_file():
        return path, json.loads(truth_path.read_text())
    t0 = time.perf_counter()
    rows = json.loads(ALPACA.read_text())
    # The source has no duplicates under this key; drop any so the ground truth is exact.
    seen, src = set(), []
    for r in rows:
        k = _norm_key(r["instruction"], r.get("input") or "", r["output"])
        if k not in seen:
            seen.add(k)
            src.append({"instruction": r["instruction"], "input": r.get("input") or "", "output": r["output"]})
    n_dup = int(round(n * dup_frac))
    n_uniq = n - n_dup
    rng = random.Random(seed)
    uniq: list[dict] = []
    keys: set[str] = set()
    k = 0
    i = 0
    while len(uniq) < n_uniq:
        r = src[i % len(src)]
        v = i // len(src)
        i += 1
        rec = {"instruction": _variant(r["instruction"], v), "input": r["input"], "output": r["output"]}
        key = _norm_key(rec["instruction"], rec["input"], rec["output"])
        if key in keys:  # a wrapper collided with another row's text: skip it, stay exact
            k += 1
            continue
        keys.add(key)
        uniq.append(rec)
    del keys
    # Duplicates of random originals, each placed after its original (keep=first keeps the original).
    kinds = ("exact", "exact", "whitespace", "case")
    dups = []  # (sort position, original index, kind)
    for _ in range(n_dup):
        j = rng.randrange(n_uniq)
        kind = kinds[rng.randrange(4)]
        if kind == "case" and not (uniq[j]["instruction"].isascii() and uniq[j]["output"].isascii()):
            kind = "whitespace"
        dups.append((j + 0.5 + rng.random() * (n_uniq - j - 0.5), j, kind))
    dups.sort()
    kind_counts = {"exact": 0, "whitespace": 0, "case": 0}
    dup_lines: list[int] = []
    dup_of: list[int] = []  # line of each copy's original
    uniq_line = [0] * n_uniq
    line = 0
    di = 0
    with open(path.with_suffix(".tmp"), "wb") as fh:
        for idx in range(n_uniq + 1):
            if idx < n_uniq:
                line += 1
                uniq_line[idx] = line
                fh.write(orjson.dumps(uniq[idx]) + b"\n")
            while di < len(dups) and (dups[di][0] < idx + 1 or idx == n_uniq):
                _, j, kind = dups[di]
                di += 1
                line += 1
                fh.write(orjson.dumps(_dup_copy(uniq[j], kind)) + b"\n")
                dup_lines.append(line)
                dup_of.append(uniq_line[j])
                kind_counts[kind] += 1
    os.replace(path.with_suffix(".tmp"), path)
    truth = {
        "records": line, "distinct": n_uniq, "injected_duplicates": len(dup_lines), "duplicate_kinds": kind_counts,
        "source_rows": len(src), "skipped_collisions": k, "bytes": path.stat().st_size, "dup_lines": dup_lines,
        "dup_of": dup_of,
    }
    truth_path.write_text(json.dumps(truth))
    print(f"built {path.name}: {line:,} records ({path.stat().st_size / 1e6:.0f} MB), {len(dup_lines):,} injected duplicates "
          f"{kind_counts} in {time.perf_counter() - t0:.1f}s", flush=True)
    return path, truth


# ---------------------------------------------------------------------------------------------------------
# 2a. our pipeline, in a child process
# ---------------------------------------------------------------------------------------------------------
def _available_stages(requested: list[str]) -> tuple[list[str], list[str]]:
    """(stages whose module imports and registers them, skipped ones with why)."""
    import curate.stages as st

    ok_mods = []
    for m in st.BUILTIN_MODULES:
        try:
            if importlib.util.find_spec(f"curate.stages.{m}") is None:
                continue
            importlib.import_module(f"curate.stages.{m}")
            ok_mods.append(m)
        except Exception as exc:  # noqa: BLE001 - a module mid-edit must not sink the benchmark
            print(f"warning: curate.stages.{m} does not import ({type(exc).__name__}: {exc}); skipping it", file=sys.stderr)
    st.BUILTIN_MODULES = tuple(ok_mods)  # so get_stage() does not import the missing ones
    have, skipped = [], []
    for name in requested:
        if name in st.REGISTRY:
            have.append(name)
        else:
            skipped.append(name)
    return have, skipped


class _Timer:
    def __init__(self):
        self.t: dict[str, float] = {}
        self.calls: dict[str, int] = {}

    def add(self, key: str, dt: float) -> None:
        self.t[key] = self.t.get(key, 0.0) + dt
        self.calls[key] = self.calls.get(key, 0) + 1

    def wrap(self, owner, attr: str, key: str) -> None:
        import inspect

        fn = getattr(owner, attr, None)
        if fn is None:  # the pipeline changed under the benchmark: time what exists
            return
        static = isinstance(inspect.getattr_static(owner, attr), staticmethod)
        timer = self

        def wrapped(*a, **kw):
            t0 = time.perf_counter()
            try:
                return fn(*a, **kw)
            finally:
                timer.add(key, time.perf_counter() - t0)

        setattr(owner, attr, staticmethod(wrapped) if static else wrapped)

    def wrap_gen(self, owner, attr: str, key: str) -> None:
        fn = getattr(owner, attr, None)
        if fn is None:
            return
        timer = self

        def wrapped(*a, **kw):
            it = fn(*a, **kw)
            while True:
                t0 = time.perf_counter()
                try:
                    item = next(it)
                except StopIteration:
                    timer.add(key, time.perf_counter() - t0)
                    return
                timer.add(key, time.perf_counter() - t0)
                yield item

        setattr(owner, attr, wrapped)


def child_ours(spec: dict) -> None:
    t_start = time.perf_counter()
    sys.path.insert(0, str(REPO))
    import polars as pl

    import curate.pipeline as cp
    from curate.config import parse_config
    from curate.workspace import RunStore, Workspace

    stages, skipped = _available_stages(spec["stages"])
    if spec.get("duckdb_set"):  # experiments: DuckDB settings on the run's data file connection (bench-only patch)
        orig_init = RunStore.__init__

        def init(self, *a, **kw):
            orig_init(self, *a, **kw)
            if not self.read_only:  # the run writing its own file, not a reader of it
                for setting in spec["duckdb_set"]:
                    self.con.execute(f"SET {setting}")

        RunStore.__init__ = init
    timer = _Timer() if spec["stage_timing"] else None
    if timer:
        import curate.stages as st

        for name in stages:
            cls = st.REGISTRY[name]
            if cls.is_global:
                timer.wrap(cls, "prepare", f"stage {name}.prepare")
                timer.wrap(cls, "decide", f"stage {name}.decide")
            else:
                timer.wrap(cls, "evaluate", f"stage {name}")
        timer.wrap_gen(cp, "read_file", "ingest: read + parse (orjson)")
        timer.wrap(cp, "build_frame", "ingest: build_frame (arrow + normalize + ids)")
        timer.wrap(cp, "with_derived", "ingest: with_derived" + (" (+ tokenizer)" if spec["tokenizer"] else ""))
        timer.wrap_gen(cp.Pipeline, "ingest", "ingest: total incl. convert (per-record Python)")
        timer.wrap(cp.Pipeline, "apply_record_stages", "apply_record_stages (all record stages + glue)")
        timer.wrap(cp.Pipeline, "_store", "_store (scores join + split + workspace append)")
        timer.wrap(RunStore, "append", "run data append (DuckDB insert)")
        timer.wrap(cp.Pipeline, "_summarize", "_summarize (ledger counts, SQL)")
        timer.wrap(cp.Pipeline, "_record_pass", "_record_pass (later passes)")
        timer.wrap(cp.Pipeline, "_write_outputs", "_write_outputs (export + report + summary)")
        timer.wrap(cp, "_report_inputs", "outputs: _report_inputs (examples + lengths SQL)")
        import curate.export

        timer.wrap(curate.export, "export_run", "outputs: export_run (DuckDB COPY jsonl/parquet/ledger)")
        try:
            import curate.report

            timer.wrap(curate.report, "write_report", "outputs: write_report")
        except Exception:  # noqa: BLE001
            pass
    stage_list = [{s: STAGE_PARAMS[s]} if s in STAGE_PARAMS else s for s in stages]
    out_dir = WORK / f"out_{spec['tag']}"
    ws_path = WORK / f"ws_{spec['tag']}"  # a workspace folder of its own per configuration, made afresh
    shutil.rmtree(ws_path, ignore_errors=True)
    shutil.rmtree(out_dir, ignore_errors=True)
    cfg_dict = {
        "name": "bench",
        "inputs": [{"path": spec["input"]}],
        "workspace": str(ws_path),
        "output_dir": str(out_dir),
        "tokenizer": spec["tokenizer"],
        "stages": stage_list,
    }
    if spec.get("batch_size"):
        cfg_dict["batch_size"] = spec["batch_size"]
    if spec.get("workers"):
        cfg_dict["workers"] = spec["workers"]
    if spec.get("no_audit"):
        cfg_dict["report"] = {"split_leakage": False}
    if spec.get("engine"):
        cfg_dict["engine"] = spec["engine"]
    try:
        cfg = parse_config(cfg_dict, WORK)
    except Exception as exc:  # e.g. a stage whose Params lack `action`: fall back to defaults
        print(f"warning: config rejected ({exc}); retrying with default stage parameters", file=sys.stderr)
        cfg_dict["stages"] = stages
        cfg = parse_config(cfg_dict, WORK)
    t_imports = time.perf_counter() - t_start

    try:
        import curate.report  # noqa: F401

        have_report = True
    except Exception:  # noqa: BLE001
        have_report = False

    prof = None
    if spec["profile"]:
        import cProfile

        prof = cProfile.Profile()
        prof.enable()
    t0 = time.perf_counter()
    pipe = cp.Pipeline(cfg, progress=False)
    t_setup = time.perf_counter() - t0
    ws = Workspace(cfg.workspace_path)
    t1 = time.perf_counter()
    res = pipe.run(force=True, workspace=ws, write_outputs=have_report and not spec["no_export"])
    t_run = time.perf_counter() - t1
    t_export = 0.0
    if not have_report and not spec["no_export"]:
        from curate.export import export_run

        t2 = time.perf_counter()
        out_dir.mkdir(parents=True, exist_ok=True)
        with ws.run_data(res.run_id) as store:
            export_run(store, res.run_id, out_dir)
        t_export = time.perf_counter() - t2
    t_pipeline = time.perf_counter() - t0
    if prof:
        prof.disable()
        prof.dump_stats(str(WORK / f"profile_{spec['tag']}.pstats"))

    # dedup check against the injected ground truth (line numbers), straight from the workspace
    rej = ws.query(res.run_id, "SELECT r.source_line, j.stage, j.reason FROM rejects j JOIN records r USING (run_id, uid) WHERE j.run_id = ?",
                   [res.run_id])
    dedup_lines = rej.filter(pl.col("stage") == "exact_dedup")["source_line"].to_list()
    other_rejected_lines = rej.filter(pl.col("stage") != "exact_dedup")["source_line"].to_list()
    ws.close()
    s = res.summary
    reasons: dict[str, int] = {}
    for st_ in s["stages"]:
        for r, c in st_["reasons"].items():
            reasons[r] = reasons.get(r, 0) + c
    phases = {"imports + config": t_imports, "Pipeline() setup (stage/model load)": t_setup, "pipeline.run": t_run}
    if t_export:
        phases["export_run (no curate.report yet)"] = t_export
    out = {
        "inputs": s["inputs"], "kept": s["kept"], "rejected": s["rejected"], "quarantined": s["quarantined"],
        "invariant_ok": s["invariant_ok"], "reasons": reasons, "stages_run": stages, "stages_skipped": skipped,
        "summary_seconds": s["seconds"], "pipeline_seconds": t_pipeline, "phases": phases,
        "timings": (timer.t if timer else {}), "calls": (timer.calls if timer else {}),
        "pipeline_timings": s.get("timings") or {},
        "outputs": "run outputs (export + report)" if have_report and not spec["no_export"] else ("export_run only" if not spec["no_export"] else "none"),
        "dedup_lines": dedup_lines, "other_rejected_lines": other_rejected_lines,
        "stage_summary": [{k: v for k, v in x.items() if k != "position"} for x in s["stages"]],
        "peak_rss_mb": _peak_rss_mb(),
        # worker processes' own peaks (each VmHWM; summed with the main process's as if all peaked at once)
        "workers": s.get("workers", {}).get("count", 1),
        "engine": s.get("engine", {}).get("name", "local"),
        "worker_peak_rss_mb": sum(s.get("workers", {}).get("peak_rss_mb", {}).values()),
    }
    Path(spec["result"]).write_text(json.dumps(out))


# ---------------------------------------------------------------------------------------------------------
# 2b. running a child, measuring it
# ---------------------------------------------------------------------------------------------------------
def _peak_rss_mb() -> float:
    """This process's peak resident set size (VmHWM: the high-water mark of its own address space).

    Not ``ru_maxrss``: Linux carries the pre-exec address space's high-water mark into the exec'd
    program's ``ru_maxrss``, so a child forked from this (large, input-building) process would report at
    least the parent's RSS."""
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_script(rss_file: str, script: str, args: list[str]) -> None:
    """Run a script as __main__ (the baseline, unchanged) and record its peak RSS when it ends."""
    import runpy

    sys.argv = [script, *args]
    try:
        runpy.run_path(script, run_name="__main__")
    except SystemExit as exc:
        if exc.code not in (0, None):
            raise
    finally:
        Path(rss_file).write_text(str(_peak_rss_mb()))


TREE_PEAK: dict[int, float] = {}  # child pid -> the peak RSS (MB) of it and all its descendants at once, sampled


def _sample_tree(pid: int, stop, interval: float = 0.1) -> None:
    """Sum the RSS of ``pid`` and every descendant (workers, Ray's daemons and actors) every ``interval`` s; keep the max."""
    import psutil

    peak = 0.0
    try:
        root = psutil.Process(pid)
        while not stop.is_set():
            total = 0
            for proc in [root, *root.children(recursive=True)]:
                try:
                    total += proc.memory_info().rss
                except psutil.Error:
                    pass
            peak = max(peak, total / 2**20)
            stop.wait(interval)
    except psutil.Error:
        pass
    TREE_PEAK[pid] = peak


def run_child(cmd: list[str], log: Path) -> tuple[float, float, int, float, float]:
    """(wall seconds, peak RSS in MB of the child and its descendants at once (sampled), exit code, CPU seconds,
    1-min load average at the end) of one child."""
    import threading

    env = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    with open(log, "w") as fh:
        t0 = time.perf_counter()
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, cwd=str(REPO), env=env)
        stop = threading.Event()
        sampler = threading.Thread(target=_sample_tree, args=(proc.pid, stop), daemon=True)
        sampler.start()
        _, status, ru = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - t0
        stop.set()
        sampler.join()
    proc.returncode = os.waitstatus_to_exitcode(status)
    return wall, TREE_PEAK.get(proc.pid, 0.0), proc.returncode, ru.ru_utime + ru.ru_stime, os.getloadavg()[0]


def dedup_check(found_lines: list[int], truth: dict, other_rejected: list[int]) -> dict:
    injected = set(truth["dup_lines"])
    found = set(found_lines)
    other = set(other_rejected)
    hits = len(found & injected)
    # a copy left over (neither found nor filtered) whose original was filtered is not a dedup miss: the
    # filters read text before whitespace/case normalization, so a copy can pass where its original failed
    kept_copies = [(c, o) for c, o in zip(truth["dup_lines"], truth["dup_of"]) if c not in found and c not in other]
    return {
        "dedup_rejects": len(found),
        "hits": hits,
        "false": len(found - injected),  # distinct records rejected as duplicates
        "missed": sum(1 for _, o in kept_copies if o not in other),  # copy and original both kept: a real miss
        "copy_kept_original_filtered": sum(1 for _, o in kept_copies if o in other),
        "injected_caught_by_filters": len((injected - found) & other),
        "missed_lines": [c for c, o in kept_copies if o not in other][:10],
    }


def run_ours(inp: Path, truth: dict, args, stages: list[str], tokenizer: str | None, tag: str, profile: bool = False) -> dict:
    res_path = WORK / f"result_{tag}.json"
    res_path.unlink(missing_ok=True)
    spec = {
        "input": str(inp), "stages": stages, "tokenizer": tokenizer, "tag": tag, "profile": profile,
        "stage_timing": args.stage_timing and not profile, "no_export": args.no_export, "result": str(res_path),
        "batch_size": args.batch_size, "duckdb_set": args.duckdb_set, "workers": args.workers, "no_audit": args.no_audit,
        "engine": getattr(args, "engine", None),
    }
    log = WORK / f"log_{tag}.txt"
    wall, rss, rc, cpu, load = run_child([sys.executable, str(Path(__file__).resolve()), "_child_ours", json.dumps(spec)], log)
    if rc != 0 or not res_path.is_file():
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"our pipeline failed (exit {rc}); log: {log}")
    r = json.loads(res_path.read_text())
    main_rss = r.pop("peak_rss_mb")
    # the peak of all processes at once (sampled every 0.1 s; a spike shorter than that can be missed), and, as a
    # bound that cannot miss one, the main process's peak plus each worker's
    r.update(wall=wall, rss_mb=rss, rss_sum_of_peaks_mb=main_rss + r["worker_peak_rss_mb"], main_rss_mb=main_rss, cpu=cpu, load=load,
             dedup=dedup_check(r.pop("dedup_lines"), truth, r.pop("other_rejected_lines")))
    warn = log.read_text().strip()
    if warn:
        r["log"] = warn[-2000:]
    return r


def run_baseline(inp: Path, truth: dict, checks: list[str], tokenizer_file: str | None, tag: str) -> dict:
    stats = WORK / f"baseline_{tag}.json"
    out = WORK / f"baseline_{tag}.kept.jsonl"
    rss_file = WORK / f"baseline_{tag}.rss"
    rss_file.unlink(missing_ok=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "_child_script", str(rss_file), str(HERE / "plain_baseline.py"),
           str(inp), str(out), "--checks", ",".join(checks), "--stats", str(stats)]
    if tokenizer_file:
        cmd += ["--tokenizer", tokenizer_file]
    if "refusal" in checks:  # the same phrases our refusal stage looks for
        try:
            from curate.stages.quality import DEFAULT_REFUSAL_PHRASES

            (WORK / "refusals.json").write_text(json.dumps(list(DEFAULT_REFUSAL_PHRASES)))
            cmd += ["--refusals", str(WORK / "refusals.json")]
        except ImportError:
            pass
    log = WORK / f"log_baseline_{tag}.txt"
    wall, rss, rc, cpu, load = run_child(cmd, log)
    if rc != 0:
        print(log.read_text()[-4000:], file=sys.stderr)
        raise SystemExit(f"baseline failed (exit {rc}); log: {log}")
    r = json.loads(stats.read_text())
    r.update(wall=wall, rss_mb=float(rss_file.read_text()), cpu=cpu, load=load, dedup=dedup_check(r.pop("dup_lines"), truth, []))
    for k in ("injected_caught_by_filters", "missed", "copy_kept_original_filtered", "missed_lines"):
        r["dedup"].pop(k)
    return r


# ---------------------------------------------------------------------------------------------------------
# 3. the report
# ---------------------------------------------------------------------------------------------------------
def _fmt(x, nd=2) -> str:
    if x is None:
        return "-"
    if isinstance(x, float):
        return f"{x:,.{nd}f}"
    return f"{x:,}" if isinstance(x, int) else str(x)


def print_table(n: int, truth: dict, results: dict[str, dict]) -> None:
    """The comparison. The machine may be shared: a load average above the core count means the wall
    times include waiting for a CPU (compare CPU seconds then)."""
    cols = list(results)
    reasons = sorted({r for res in results.values() for r in res.get("reasons", {})})
    rows = [
        ("records in", [res["inputs"] for res in results.values()]),
        ("wall seconds (process, end to end)", [round(res["wall"], 2) for res in results.values()]),
        ("records/s (end to end)", [int(res["inputs"] / res["wall"]) for res in results.values()]),
        ("seconds inside the run (excl. interpreter start/imports)",
         [round(res.get("pipeline_seconds", res.get("seconds")), 2) for res in results.values()]),
        ("CPU seconds (user + sys, all threads)", [round(res["cpu"], 2) for res in results.values()]),
        ("machine load average at the end (1 min)", [round(res["load"], 2) for res in results.values()]),
        ("peak RSS (MB, all processes at once, sampled)", [int(res["rss_mb"]) for res in results.values()]),
        ("  bound: each process's own peak, summed", [int(res.get("rss_sum_of_peaks_mb", res["rss_mb"])) for res in results.values()]),
        ("worker processes", [res.get("workers", 1) for res in results.values()]),
        ("kept", [res["kept"] for res in results.values()]),
        ("rejected", [res["rejected"] for res in results.values()]),
    ]
    rows += [(f"  {r}", [res.get("reasons", {}).get(r, 0) for res in results.values()]) for r in reasons]
    rows += [
        ("dedup: duplicates rejected", [res["dedup"]["dedup_rejects"] for res in results.values()]),
        ("dedup: of them injected (true)", [res["dedup"]["hits"] for res in results.values()]),
        ("dedup: not injected (false)", [res["dedup"]["false"] for res in results.values()]),
    ]
    w0 = max(len(r[0]) for r in rows) + 2
    w = max(14, *(len(c) + 2 for c in cols))
    print()
    print(f"{n:,} records, {truth['injected_duplicates']:,} injected duplicates {truth['duplicate_kinds']} "
          f"({truth['bytes'] / 1e6:.0f} MB JSONL)")
    print("".ljust(w0) + "".join(c.rjust(w) for c in cols))
    for label, vals in rows:
        print(label.ljust(w0) + "".join(_fmt(v).rjust(w) for v in vals))
    print()


def print_ours_details(name: str, r: dict, truth: dict) -> None:
    print(f"[{name}] stages run: {', '.join(r['stages_run'])}")
    if r["stages_skipped"]:
        print(f"[{name}] stages SKIPPED (module missing or not importable): {', '.join(r['stages_skipped'])}")
    inv = r["inputs"] == r["kept"] + r["rejected"] + r["quarantined"]
    print(f"[{name}] ledger: inputs {r['inputs']:,} = kept {r['kept']:,} + rejected {r['rejected']:,} + quarantined "
          f"{r['quarantined']:,}: {'OK' if inv and r['invariant_ok'] else 'BROKEN'} (summary invariant_ok={r['invariant_ok']})")
    d = r["dedup"]
    print(f"[{name}] dedup vs ground truth: {d['hits']:,} of {truth['injected_duplicates']:,} injected found, "
          f"{d['injected_caught_by_filters']:,} rejected earlier by a filter (their original too), "
          f"{d['copy_kept_original_filtered']:,} copies kept whose original a filter rejected (filters see "
          f"un-normalized text), {d['missed']:,} missed {d['missed_lines'] or ''}, {d['false']:,} false")
    rps = r["inputs"] / r["wall"]
    ok_rps, ok_rss = rps >= TARGET_RPS, r["rss_mb"] < TARGET_RSS_MB
    print(f"[{name}] target: {rps:,.0f} rec/s end to end (>= {TARGET_RPS:,}: {'PASS' if ok_rps else 'FAIL'}), "
          f"peak RSS {r['rss_mb']:,.0f} MB (< {TARGET_RSS_MB:,}: {'PASS' if ok_rss else 'FAIL'}); outputs: {r['outputs']}")
    print(f"[{name}] phases (s): " + ", ".join(f"{k} {v:.2f}" for k, v in r["phases"].items()))
    if r.get("pipeline_timings"):
        print(f"[{name}] the pipeline's own timings (summary['timings'], s):")
        for k, v in r["pipeline_timings"].items():
            print(f"    {v:8.2f}  {k}")
    if r["timings"]:
        print(f"[{name}] the benchmark's wrappers (s, nested: ingest and stages are inside pipeline.run; "
              f"the workspace writer may run on a background thread, overlapping):")
        for k, v in sorted(r["timings"].items(), key=lambda kv: -kv[1]):
            print(f"    {v:8.2f}  {k}  ({r['calls'][k]} calls)")
    print()


def print_profile(tag: str, top: int = 40) -> None:
    import pstats

    path = WORK / f"profile_{tag}.pstats"
    for key in ("cumulative", "tottime"):
        print(f"--- cProfile of our pipeline, top {top} by {key} ({path.name}) ---")
        st = pstats.Stats(str(path))
        st.strip_dirs().sort_stats(key).print_stats(top)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--records", type=int, default=1_000_000)
    ap.add_argument("--dup-frac", type=float, default=0.10)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--stages", default=",".join(DEFAULT_STAGES), help="comma-separated stage names, in order")
    ap.add_argument("--tokenizer", choices=("none", "embedded", "both"), default="none",
                    help="our run's tokenizer (the baseline's length check then counts tokens too); 'both' runs each")
    ap.add_argument("--only", choices=("both", "ours", "baseline"), default="both")
    ap.add_argument("--profile", action="store_true", help="cProfile our run (no stage timing) and print the top functions")
    ap.add_argument("--no-stage-timing", dest="stage_timing", action="store_false")
    ap.add_argument("--no-export", action="store_true", help="skip writing outputs in our run")
    ap.add_argument("--batch-size", type=int, default=None)
    ap.add_argument("--workers", type=int, default=None, help="our worker processes (default: one per core)")
    ap.add_argument("--no-audit", action="store_true", help="our run without the split leakage audit (report.split_leakage: false)")
    ap.add_argument("--duckdb-set", action="append", default=[], metavar="SETTING",
                    help="experiment: a DuckDB setting for the run's data file connection, e.g. \"memory_limit='1GB'\" (repeatable)")
    ap.add_argument("--json", default=None, help="also write all results to this JSON file")
    args = ap.parse_args(argv)

    # built in a child process, so this one stays small while it runs (and forks) the measured children
    subprocess.run([sys.executable, str(Path(__file__).resolve()), "_child_build", str(args.records), str(args.dup_frac), str(args.seed)],
                   check=True)
    inp, truth = build_input(args.records, args.dup_frac, args.seed)
    requested = [s.strip() for s in args.stages.split(",") if s.strip()]
    sys.path.insert(0, str(REPO))
    stages, skipped = _available_stages(requested)
    if skipped:
        print(f"note: stages not available yet, skipped on both sides: {', '.join(skipped)}")
    tok_modes = {"none": [None], "embedded": ["embedded"], "both": [None, "embedded"]}[args.tokenizer]
    results: dict[str, dict] = {}
    for tok in tok_modes:
        suffix = "" if tok is None else "+tok"
        tag = f"{args.records}{suffix}"
        if args.only in ("both", "ours"):
            print(f"running ours{suffix} ...", flush=True)
            results[f"ours{suffix}"] = run_ours(inp, truth, args, stages, tok, tag, profile=args.profile)
        if args.only in ("both", "baseline"):
            tok_file = None
            if tok == "embedded":
                from curate.models import smollm2_tokenizer_dir

                tok_file = str(smollm2_tokenizer_dir() / "tokenizer.json")
            print(f"running baseline{suffix} ...", flush=True)
            results[f"baseline{suffix}"] = run_baseline(inp, truth, stages, tok_file, tag)
    print_table(args.records, truth, results)
    for name, r in results.items():
        if name.startswith("ours"):
            print_ours_details(name, r, truth)
    if "ours" in results and "baseline" in results:
        o, b = results["ours"], results["baseline"]
        print(f"speed-up vs plain Python: {(o['inputs'] / o['wall']) / (b['inputs'] / b['wall']):.2f}x end to end; "
              f"RSS {o['rss_mb'] / max(b['rss_mb'], 1):.1f}x the baseline's")
    if args.profile:
        for tok in tok_modes:
            print_profile(f"{args.records}{'' if tok is None else '+tok'}")
    if args.json:
        Path(args.json).write_text(json.dumps({"records": args.records, "truth": {k: v for k, v in truth.items() if k != "dup_lines"},
                                               "results": results}, indent=2, default=str))
    return 0


if __name__ == "__main__":
    if len(sys.argv) > 2 and sys.argv[1] == "_child_ours":
        child_ours(json.loads(sys.argv[2]))
    elif len(sys.argv) > 4 and sys.argv[1] == "_child_build":
        build_input(int(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]))
    elif len(sys.argv) > 3 and sys.argv[1] == "_child_script":
        child_script(sys.argv[2], sys.argv[3], sys.argv[4:])
    else:
        sys.exit(main())
