"""A team on one workspace at once: a `curate run` writing, two `curate app` servers, four annotators labeling
the same queue in Chromium as fast as they can. Prints labels/s, acknowledged labels, errors shown, the time
from key press to the next record (p50/p95), lost or duplicated labels and the run's exit status, for this
checkout next to the code before the shared-workspace change.

    .venv/bin/python bench/workspace_concurrency.py                         # both checkouts, 60 s each
    .venv/bin/python bench/workspace_concurrency.py --code . --window 20     # one checkout (this one)
    .venv/bin/python bench/workspace_concurrency.py --code /work/before14    # the baseline alone

The baseline is the code before the change, checked out beside this one (``git worktree add ../before14
<commit>``; ``--baseline DIR``). Each checkout runs in its own child process with that checkout first on
``sys.path``, so its `curate` and `app` are the ones that build the workspace, serve it and run.

The scenario, per checkout (``run_scenario``):

1. A workspace with one finished curate run (``Pipeline(parse_config(...)).run()``): the real Alpaca rows of
   ``../shared/data/alpaca/alpaca_4000.json``, less those whose text contains a word the error check looks
   for (so any such word on the page comes from the app, not from a record). The code before the change
   keeps a workspace in one DuckDB file (``ws.duckdb``); the new code in a folder (``ws/``).
2. Two `curate app` servers on it (``app.serve.start_app``), and Debian's Chromium through Playwright (the
   launch arguments and the loopback-only route guard of ``tests/test_app.py``; one browser process with a
   context per annotator, a small viewport). Four annotators, two per server, open the Labeling page, pick
   the finished run, enter their names and wait for their first record.
3. Then, at once: a real ``python -m curate.cli run CONFIG`` in the background (another config, the Alpaca
   rows scaled to ``--bg-records`` distinct records, writing to the same workspace), and the four annotators
   labeling for ``--window`` seconds: read the ``record {uid} · ...`` heading, press ``a`` (the Accept
   shortcut) with the focus off the text boxes, wait until the heading shows another record and the page
   acknowledges the pressed record (the new page's ``saved: accept · record {uid}``, which it shows once the
   label is durable; the old page's only acknowledgement is its toast, ``accept: record {uid}``), then the
   next. An error shown is any ``stException`` element, or text with "Traceback", "Exception", "not saved"
   or "busy" (a MutationObserver in each page catches ones that vanish again); a press whose page shows one
   counts once. A page whose heading does not move for 30 s is reloaded (and counted as stuck).
4. Afterwards: the background run's exit status, its ``summary.json`` and its status in the workspace; and
   for every acknowledged (annotator, record): its label rows in the workspace (the raw rows, counted per
   annotator and record id, and ``Workspace.current_labels()``): lost (0 rows), duplicated (> 1), and the
   presses that were saved without an acknowledgement.

Results: ``bench/results/workspace_concurrency.md`` (the table) and the console log. The machine may be
shared: CPU seconds of Chromium, the servers and the run are printed beside the wall times.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import re
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
MAIN = HERE.parent
SHARED = MAIN.parent / "shared" / "data"
LABELING_INPUT = SHARED / "alpaca" / "alpaca_4000.json"
BG_INPUT = SHARED / "alpaca" / "alpaca_data_first10k_excl_holdout.json"
RESULTS = HERE / "results"

# what counts as an error shown (case-insensitive); records containing any of these words are left out
ERROR_RE = r"Traceback|Exception|not saved|busy"
LOOPBACK = ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
CHROMIUM_MARK = "WORKSPACE_CONCURRENCY_HARNESS"  # in Chromium's environment: the harness's pid
VIEWPORT = {"width": 1000, "height": 760}
STUCK_S = 30.0  # a heading that does not move for this long: the page is reloaded

# Each page records every error element or error text added to it, with a timestamp, even one that a rerun
# removes again before the harness looks (a toast, an alert replaced by the next run).
ERROR_OBSERVER = """(() => {
  const RE = new RegExp(ERROR_RE_JSON, 'i');
  window.__errs = [];
  const note = (text) => window.__errs.push({t: performance.now(), text: (text || '').slice(0, 400)});
  const check = (n) => {
    if (n.nodeType === 3) { if (RE.test(n.data)) note(n.data); return; }
    if (n.nodeType !== 1) return;
    const exc = n.matches('[data-testid="stException"]') ? n : n.querySelector('[data-testid="stException"]');
    if (exc) { note('stException: ' + exc.textContent); return; }
    if (RE.test(n.textContent || '')) note(n.textContent);
  };
  new MutationObserver((muts) => {
    for (const m of muts) {
      if (m.type === 'characterData') check(m.target);
      else for (const n of m.addedNodes) check(n);
    }
  }).observe(document, {childList: true, subtree: true, characterData: true});
})();""".replace("ERROR_RE_JSON", json.dumps(ERROR_RE))

HEADING_JS = "() => [...document.querySelectorAll('h3')].map(e => e.innerText.trim()).find(t => /^record \\d+/.test(t)) || null"
# resolves when the heading shows another record, or an error appears
MOVED_JS = """([prev, nerr]) => {
  const h = [...document.querySelectorAll('h3')].map(e => e.innerText.trim()).find(t => /^record \\d+/.test(t));
  const err = !!document.querySelector('[data-testid="stException"]') || window.__errs.length > nerr;
  return ((h && h !== prev) || err) ? {h: h || null, err} : false;
}"""
# resolves when the page acknowledges the pressed record and its script has finished, or an error appears
ACKED_JS = """([ack, nerr]) => {
  const err = !!document.querySelector('[data-testid="stException"]') || window.__errs.length > nerr;
  const done = document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState === 'notRunning';
  const acked = document.body.innerText.includes(ack);
  return ((acked && done) || err) ? {acked, err} : false;
}"""
# what a stuck page shows, for the result: its heading, script state, run, and the start of its text
STATE_JS = """() => ({heading: [...document.querySelectorAll('h3')].map(e => e.innerText.trim()).find(t => /^record \\d+/.test(t)) || null,
  state: document.querySelector('[data-testid="stApp"]')?.dataset.testScriptState,
  run: document.querySelector('input[aria-label="run"]')?.value,
  text: document.querySelector('[data-testid="stMain"]')?.innerText.slice(0, 600)})"""
SETTLED = '[data-testid="stApp"][data-test-script-state="notRunning"]'


# ---------------------------------------------------------------------------------------------------------
# the workspace and the runs
# ---------------------------------------------------------------------------------------------------------
def folder_workspace(code: Path) -> bool:
    """Whether ``code``'s workspace is a folder (the shared-workspace storage) or one DuckDB file (before)."""
    return (Path(code) / "curate" / "workspace" / "__init__.py").is_file()


def _clean_rows(path: Path, limit: int | None = None) -> list[dict]:
    """Alpaca rows without any word the error check looks for, so that such a word on a page is the app's."""
    rx = re.compile(ERROR_RE, re.I)
    rows = [r for r in json.loads(path.read_text()) if not rx.search(json.dumps(r, ensure_ascii=False))]
    return rows[:limit] if limit else rows


def _write_jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return path


def background_input(path: Path, n: int) -> Path:
    """The Alpaca rows scaled to ``n`` distinct records: copy k of a row has "(variant k)" after its instruction."""
    rows, out, k = _clean_rows(BG_INPUT), [], 0
    while len(out) < n:
        out.extend({**r, "instruction": f"{r['instruction']} (variant {k})" if k else r["instruction"]} for r in rows[: n - len(out)])
        k += 1
    return _write_jsonl(path, out)


def build_workspace(code: Path, work: Path, n_records: int) -> tuple[Path, str]:
    """The workspace with one finished curate run over ``n_records`` Alpaca rows; returns (path, run id)."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    ws = work / ("ws" if folder_workspace(code) else "ws.duckdb")
    _write_jsonl(work / "to_label.jsonl", _clean_rows(LABELING_INPUT, n_records))
    cfg = parse_config({"name": "to_label", "tokenizer": None, "workspace": str(ws), "output_dir": str(work / "to_label"),
                        "inputs": [{"path": "to_label.jsonl"}],
                        "stages": ["conversation_structure", "response_length", "exact_dedup"],
                        "splits": {"train": 0.9, "validation": 0.05, "test": 0.05}}, work)
    return ws, Pipeline(cfg, progress=False).run().run_id


def background_config(work: Path, ws: Path, n: int) -> Path:
    """The background run's config: the scaled Alpaca rows through the usual filters and MinHash dedup."""
    background_input(work / "background.jsonl", n)
    path = work / "background.yaml"
    path.write_text(json.dumps({
        "name": "background", "tokenizer": "embedded", "workspace": str(ws), "output_dir": str(work / "background"),
        "inputs": [{"path": "background.jsonl"}],
        "stages": ["conversation_structure", "response_length", "language", "gopher_repetition", "pii", "exact_dedup", "minhash_dedup"],
        "splits": {"train": 0.9, "validation": 0.05, "test": 0.05}}, indent=1))
    return path


def _open_ws(path: Path):
    from curate.workspace import Workspace

    return Workspace(path) if path.is_dir() else Workspace(path, read_only=True)


def raw_label_rows(path: Path) -> list[dict]:
    """Every stored label row (record_id, run_id, uid, annotator, verdict), read straight from the store:
    the folder workspace's SQLite catalog (read-only), or the old single file's ``labels`` table."""
    if path.is_dir():
        con = sqlite3.connect(f"file:{path / 'catalog.sqlite'}?mode=ro", uri=True)
        try:
            con.row_factory = sqlite3.Row
            return [dict(r) for r in con.execute("SELECT record_id, run_id, uid, annotator, verdict FROM labels")]
        finally:
            con.close()
    with _open_ws(path) as ws:
        return ws.sql("SELECT record_id, run_id, uid, annotator, verdict FROM labels").to_dicts()


def record_ids(path: Path, run_id: str) -> dict[int, str]:
    """uid -> record id of a run's records."""
    with _open_ws(path) as ws:
        if hasattr(ws, "query"):
            frame = ws.query(run_id, "SELECT uid, id FROM records")
        else:
            frame = ws.sql("SELECT uid, id FROM records WHERE run_id = ?", [run_id])
    return dict(zip(frame["uid"].to_list(), frame["id"].to_list()))


def check_store(path: Path, run_id: str, acked: list[tuple[str, int]], pressed: list[tuple[str, int]]) -> dict:
    """Every acknowledged (annotator, record) against the stored label rows: how many are lost (no row),
    duplicated (more than one row, or more than one current label), and how many presses were stored without
    an acknowledgement."""
    ids = record_ids(path, run_id)
    rows = raw_label_rows(path)
    per_key: dict[tuple[str, str], int] = {}
    for r in rows:
        per_key[(r["annotator"], r["record_id"])] = per_key.get((r["annotator"], r["record_id"]), 0) + 1
    with _open_ws(path) as ws:
        current = ws.current_labels()
    current_keys: dict[tuple[str, str], int] = {}
    for a, rid in zip(current["annotator"].to_list(), current["record_id"].to_list()):
        current_keys[(a, rid)] = current_keys.get((a, rid), 0) + 1
    acked_keys = {(a, ids[uid]) for a, uid in acked}
    lost = sorted(k for k in acked_keys if per_key.get(k, 0) == 0 or k not in current_keys)
    duplicated = sorted(k for k in acked_keys if per_key.get(k, 0) > 1 or current_keys.get(k, 0) > 1)
    unacked_saved = {(a, ids[uid]) for a, uid in pressed if uid in ids} - acked_keys
    return {"label_rows": len(rows), "current_labels": current.height, "acknowledged_distinct": len(acked_keys),
            "lost": len(lost), "duplicated": len(duplicated), "duplicate_rows_any": sum(n - 1 for n in per_key.values() if n > 1),
            "saved_without_ack": sum(1 for k in unacked_saved if per_key.get(k, 0)),
            "lost_examples": [list(k) for k in lost[:5]], "duplicated_examples": [list(k) for k in duplicated[:5]]}


def check_run(path: Path, proc_rc: int, stdout: str, output_dir: Path) -> dict:
    """The background run: exit status, summary.json, and its status in the workspace."""
    m = re.search(r"^run (\S+): ", stdout, re.M)
    run_id = m.group(1) if m else None
    summary = output_dir / "summary.json"
    status = None
    try:
        with _open_ws(path) as ws:
            if run_id is None:
                runs = ws.runs("curate")
                hits = [r for r in runs.to_dicts() if r["name"] == "background"]
                run_id = hits[0]["run_id"] if hits else None
            row = ws.run(run_id) if run_id else None
            status = row["status"] if row else None
    except Exception as exc:  # the old single-file workspace may refuse a reader; say so in the result
        status = f"unreadable: {type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    ok_summary = summary.is_file() and json.loads(summary.read_text()).get("run_id") == run_id
    return {"rc": proc_rc, "run_id": run_id, "status": status, "summary_json": ok_summary,
            "stdout_tail": stdout.strip().splitlines()[-3:] if stdout.strip() else []}


# ---------------------------------------------------------------------------------------------------------
# the annotators
# ---------------------------------------------------------------------------------------------------------
def _ack_text(code: Path) -> str:
    """The acknowledgement line the checkout's labeling page shows for a stored accept, with {uid}."""
    page = (Path(code) / "app" / "views" / "labeling.py").read_text()
    return "saved: accept · record {uid}" if "saved: " in page else "accept: record {uid}"


async def _select_run(page, run_id: str) -> None:
    """Pick ``run_id`` in the labeling page's run select box (the newest run comes first in it)."""
    combo = page.get_by_role("combobox", name="run", exact=True)
    if await combo.input_value() == run_id:
        return
    await combo.click()
    await page.get_by_role("option", name=run_id, exact=True).click()
    await page.wait_for_function("([el, v]) => el.value === v", arg=[await combo.element_handle(), run_id], timeout=STUCK_S * 1000)
    await page.wait_for_selector(SETTLED, timeout=120_000)


async def _start_labeling(page, url: str, name: str, run_id: str, out: dict, attempts: int = 5) -> None:
    """Open the Labeling page, pick the run, enter the annotator's name, wait for the first record; a page
    that shows an error or does not get there is counted (``out["setup_errors"]``, with its text) and
    opened again, up to ``attempts`` times."""
    for attempt in range(attempts):
        try:
            await _open_labeling(page, url, name, run_id)
            return
        except Exception as exc:
            out["setup_errors"] += 1
            texts = await page.locator('[data-testid="stException"]').all_inner_texts()
            out["error_texts"].extend(t.strip().splitlines()[0][:200] for t in texts if t.strip())
            if not texts:
                out["error_texts"].append(f"setup: {type(exc).__name__}: {str(exc).splitlines()[0][:150]}")
            if out.get("shots"):
                await page.screenshot(path=str(Path(out["shots"]) / f"{name}-setup-{attempt}.png"), full_page=True)
            if attempt == attempts - 1:
                raise RuntimeError(f"{name} could not open the Labeling page at {url}: {out['error_texts'][-attempts:]}") from exc


async def _open_labeling(page, url: str, name: str, run_id: str) -> None:
    await page.goto(f"{url}/?page=Labeling")
    await _settled_or_error(page, "() => [...document.querySelectorAll('h1')].some(h => h.innerText.trim() === 'Labeling')")
    await _select_run(page, run_id)
    box = page.get_by_label("annotator")
    await box.fill(name)
    await box.press("Enter")
    await _settled_or_error(page, HEADING_JS)


async def _settled_or_error(page, ready_js: str) -> None:
    """Wait until ``ready_js`` holds and the script has finished; raise if an error element shows first."""
    state = await (await page.wait_for_function(
        f"""() => document.querySelector('[data-testid="stException"]') ? 'error'
                  : (({ready_js})() && document.querySelector('{SETTLED}')) ? 'ready' : false""",
        timeout=STUCK_S * 1000, polling="raf")).json_value()
    if state == "error":
        raise RuntimeError("the page shows an error")


async def _reopen(page, url: str, name: str, run_id: str, out: dict) -> bool:
    """Open the Labeling page again after a stuck or empty page; False (the annotator gives up, counted)
    when it cannot be opened."""
    try:
        await _start_labeling(page, url, name, run_id, out)
        return True
    except Exception as exc:
        out["gave_up"] = f"{type(exc).__name__}: {str(exc)[:300]}"
        return False


async def _annotator(ctx, url: str, name: str, run_id: str, ack_tpl: str, ready: list[str], start: asyncio.Event,
                     stop_at: list[float], shots: Path | None = None) -> dict:
    """One annotator labeling until the window closes; returns its counts and timings. A screenshot of the
    first few errors goes to ``shots``."""
    page = await ctx.new_page()
    out = {"name": name, "url": url, "presses": 0, "acked": [], "pressed": [], "errors": 0, "error_texts": [],
           "key_to_next_s": [], "stuck": 0, "no_ack": 0, "setup_errors": 0, "gave_up": None,
           "stuck_pages": [], "shots": str(shots) if shots else None}
    await _start_labeling(page, url, name, run_id, out)
    ready.append(name)
    await start.wait()
    while time.monotonic() < stop_at[0]:
        heading = await page.evaluate(HEADING_JS)
        m = re.match(r"record (\d+)", heading or "")
        if not m:  # no record on the page (an error page, or the queue ran out): reload and start again
            if not await _reopen(page, url, name, run_id, out):
                break
            continue
        uid = int(m.group(1))
        nerr = await page.evaluate("window.__errs.length")
        await page.locator("h1").first.click()  # focus off the text boxes, so the key goes to the shortcut
        t0 = time.monotonic()
        await page.keyboard.press("a")
        out["presses"] += 1
        out["pressed"].append(uid)
        error = False
        try:
            moved = await (await page.wait_for_function(MOVED_JS, arg=[heading, nerr], timeout=STUCK_S * 1000, polling="raf")).json_value()
            if moved["h"] and moved["h"] != heading:
                out["key_to_next_s"].append(time.monotonic() - t0)
            error = moved["err"]
            acked = await (await page.wait_for_function(ACKED_JS, arg=[ack_tpl.format(uid=uid), nerr], timeout=STUCK_S * 1000,
                                                        polling="raf")).json_value()
            error = error or acked["err"]
            if acked["acked"]:
                out["acked"].append(uid)
            else:
                out["no_ack"] += 1
        except Exception:  # playwright's TimeoutError: nothing moved for STUCK_S
            out["stuck"] += 1
            error = error or await page.evaluate("window.__errs.length") > nerr
            out["stuck_pages"].append(await page.evaluate(STATE_JS))
            if shots and out["stuck"] <= 3:
                await page.screenshot(path=str(shots / f"{name}-stuck-{out['stuck']}.png"), full_page=True)
            if not await _reopen(page, url, name, run_id, out):
                break
            nerr = 0  # a reload starts a fresh observer
        if not error:
            error = await page.locator('[data-testid="stException"]').count() > 0
        if error:
            out["errors"] += 1
            if shots and out["errors"] <= 3:
                await page.screenshot(path=str(shots / f"{name}-error-{out['errors']}.png"), full_page=True)
            errs = await page.evaluate("(n) => window.__errs.slice(n).map(e => e.text)", nerr)
            exc = await page.locator('[data-testid="stException"]').all_inner_texts()
            out["error_texts"].extend(t.strip().splitlines()[0][:200] for t in [*errs, *exc] if t.strip())
            await page.wait_for_selector(SETTLED, timeout=120_000)
    await page.close()
    return out


async def _label_window(urls: list[str], run_id: str, ack_tpl: str, window_s: float, browsers: int, annotators: int,
                        on_start, on_stop, shots: Path | None = None) -> tuple[list[dict], float]:
    """``annotators`` annotators (taking the servers in turn: two per server for four) labeling ``run_id`` for
    ``window_s``; ``on_start()`` is called as the window opens (it starts the background run), ``on_stop()``
    once every annotator has finished, before Chromium closes. Returns each annotator's result and the
    window's length."""
    from playwright.async_api import async_playwright

    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if not chromium:
        raise RuntimeError("Debian's chromium is needed (`make setup` installs it: apt-get install chromium chromium-driver)")
    outside: list[str] = []

    async def guard(route):  # loopback only: the app fetches nothing from outside
        if route.request.url.startswith(LOOPBACK):
            await route.continue_()
        else:
            outside.append(route.request.url)
            await route.abort()

    names = [(f"ann-{i + 1}", urls[(i // 2) % len(urls)]) for i in range(annotators)]
    async with async_playwright() as p:
        # every Chromium process inherits the marker, so they are found (for their CPU and memory) even after
        # Chromium re-parents its helpers away from this process
        launched = [await p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS, env={**os.environ, CHROMIUM_MARK: str(os.getpid())})
                    for _ in range(browsers)]
        contexts = []
        for i in range(len(names)):
            ctx = await launched[i % browsers].new_context(viewport=VIEWPORT)
            await ctx.route("**/*", guard)
            await ctx.add_init_script(ERROR_OBSERVER)
            contexts.append(ctx)
        ready, start, stop_at = [], asyncio.Event(), [float("inf")]
        tasks = [asyncio.create_task(_annotator(c, url, n, run_id, ack_tpl, ready, start, stop_at, shots))
                 for c, (n, url) in zip(contexts, names)]
        # every page has its first record before the window opens
        while len(ready) < len(tasks) and not any(t.done() for t in tasks):
            await asyncio.sleep(0.2)
        for t in tasks:
            if t.done():
                t.result()  # an annotator that could not even start: raise its error
        t_open = time.monotonic()
        on_start()
        stop_at[0] = t_open + window_s
        start.set()
        results = await asyncio.gather(*tasks)
        elapsed = time.monotonic() - t_open
        on_stop()
        for b in launched:
            await b.close()
    if outside:
        raise RuntimeError(f"the app fetched from outside: {outside[:5]}")
    return results, elapsed


# ---------------------------------------------------------------------------------------------------------
# one checkout
# ---------------------------------------------------------------------------------------------------------
def _pct(values: list[float], q: float) -> float | None:
    if not values:
        return None
    return statistics.quantiles(values, n=100, method="inclusive")[int(q) - 1] if len(values) > 1 else values[0]


def _chromium_processes() -> list:
    """This harness's Chromium processes: those carrying its marker in their environment, and their children."""
    import psutil

    found: dict[int, object] = {}
    for proc in psutil.process_iter():
        try:
            if proc.environ().get(CHROMIUM_MARK) == str(os.getpid()):
                # renderers rewrite their environment (process titles): they are found as children
                for p in [proc, *proc.children(recursive=True)]:
                    found[p.pid] = p
        except psutil.Error:
            pass
    return list(found.values())


def _chromium_usage(since: dict[int, float] | None = None) -> tuple[float, float, int, dict[int, float]]:
    """(CPU seconds of this harness's Chromium processes since the snapshot ``since``, their memory in MB as
    PSS, their count, a new per-process snapshot of their CPU seconds). A process gone in between takes its
    seconds with it."""
    import psutil

    mem, snap = 0.0, {}
    procs = _chromium_processes()
    for proc in procs:
        try:
            t = proc.cpu_times()
            snap[proc.pid] = t.user + t.system
            mem += proc.memory_full_info().pss / 2**20
        except psutil.Error:
            pass
    since = since or {}
    return sum(v - since.get(pid, 0.0) for pid, v in snap.items()), mem, len(procs), snap


def _cpu_s(pids: list[int]) -> float:
    """CPU seconds so far of these processes and all their children (Chromium's, the servers')."""
    import psutil

    total = 0.0
    for pid in pids:
        try:
            proc = psutil.Process(pid)
            for p in [proc, *proc.children(recursive=True)]:
                try:
                    t = p.cpu_times()
                    total += t.user + t.system
                except psutil.Error:
                    pass
        except psutil.Error:
            pass
    return total


def _reap(proc: subprocess.Popen, into: dict) -> None:
    """Wait for ``proc`` (in a thread): its exit status, CPU seconds (``os.wait4``) and when it exited."""
    _, status, ru = os.wait4(proc.pid, 0)
    proc.returncode = into["rc"] = os.waitstatus_to_exitcode(status)
    into["cpu"], into["t_exit"] = ru.ru_utime + ru.ru_stime, time.monotonic()


def _error_key(text: str) -> str:
    """An error text, shortened for counting alike ones together (process ids and the exception box's prefix out)."""
    text = re.sub(r"^stException: ", "", text.strip())
    text = re.sub(r"\(PID \d+\)", "(PID n)", text)
    return text.split("Traceback:")[0][:160]


def run_scenario(code: Path, work: Path, *, window_s: float = 60.0, n_records: int = 3000, bg_records: int = 120_000,
                 browsers: int = 1, annotators: int = 4, n_servers: int = 2, log=print) -> dict:
    """The whole scenario on checkout ``code`` in the empty folder ``work`` (see the module docstring);
    returns its counts, timings and checks. The checkout's `curate` and `app` must be the ones importable
    (``code`` first on ``sys.path``). ``bg_records=0``: no background run."""
    from app.serve import start_app

    code, work = Path(code).resolve(), Path(work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    t = time.monotonic()
    ws, run_id = build_workspace(code, work, n_records)
    log(f"[{code.name}] workspace {ws} with run {run_id} ({time.monotonic() - t:.1f} s)")
    bg_cfg = background_config(work, ws, bg_records) if bg_records else None
    servers: list = []
    bg: dict = {"rc": None, "cpu": None, "seconds": None}
    cpu: dict = {}

    def start_background() -> None:
        cpu["servers0"], cpu["chromium0"] = _cpu_s([s.pid for s, _ in servers]), _chromium_usage()[3]
        cpu["harness0"] = sum(os.times()[:2])
        if bg_cfg:
            bg["out"] = open(work / "background.log", "w")
            bg["proc"] = subprocess.Popen([sys.executable, "-m", "curate.cli", "run", str(bg_cfg), "--no-progress"], cwd=code,
                                          env={**os.environ, "PYTHONPATH": str(code)}, stdout=bg["out"], stderr=subprocess.STDOUT)
            bg["reaper"] = threading.Thread(target=_reap, args=(bg["proc"], bg), daemon=True)
            bg["reaper"].start()
        bg["t0"] = time.monotonic()

    def stop_window() -> None:  # Chromium's CPU: this process's tree less the servers and the background run
        chromium_cpu, chromium_mb, n, _ = _chromium_usage(cpu["chromium0"])
        cpu.update(chromium=chromium_cpu, chromium_mb=chromium_mb, chromium_processes=n,
                   servers=_cpu_s([s.pid for s, _ in servers]) - cpu["servers0"], harness=sum(os.times()[:2]) - cpu["harness0"])

    try:
        servers.extend(start_app(ws, work / f"app{i + 1}.log") for i in range(n_servers))
        urls = [u for _, u in servers]
        log(f"[{code.name}] servers at {urls}")
        (work / "shots").mkdir(exist_ok=True)
        results, elapsed = asyncio.run(_label_window(urls, run_id, _ack_text(code), window_s, browsers, annotators,
                                                     start_background, stop_window, work / "shots"))
        if "proc" in bg:
            bg["reaper"].join(timeout=900)
            if bg["reaper"].is_alive():
                bg["proc"].kill()
                bg["reaper"].join()
            bg["seconds"] = bg["t_exit"] - bg["t0"]
    finally:
        for proc, _ in servers:
            proc.terminate()
        for proc, _ in servers:
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
        if "reaper" in bg and bg["reaper"].is_alive():
            bg["proc"].kill()
        if "out" in bg:
            bg["out"].close()
    if bg_cfg:
        run = check_run(ws, bg["rc"], (work / "background.log").read_text(), work / "background")
        run.update(seconds=round(bg["seconds"], 1), cpu_s=round(bg["cpu"], 1))
    else:
        run = None
    acked = [(r["name"], uid) for r in results for uid in r["acked"]]
    pressed = [(r["name"], uid) for r in results for uid in r["pressed"]]
    store = check_store(ws, run_id, acked, pressed)
    lat = [x for r in results for x in r["key_to_next_s"]]
    texts: dict[str, int] = {}
    for r in results:
        for x in r["error_texts"]:
            texts[_error_key(x)] = texts.get(_error_key(x), 0) + 1
    return {
        "code": str(code), "commit": _commit(code), "workspace": "folder" if ws.is_dir() else "file", "window_s": round(elapsed, 1), "records": n_records,
        "bg_records": bg_records, "browsers": browsers, "annotators": annotators, "servers": n_servers,
        "presses": sum(r["presses"] for r in results), "acknowledged": len(acked),
        "labels_per_s": round(len(acked) / elapsed, 2), "errors_shown": sum(r["errors"] for r in results),
        "setup_errors": sum(r["setup_errors"] for r in results),
        "stuck": sum(r["stuck"] for r in results), "no_ack": sum(r["no_ack"] for r in results),
        "key_to_next_p50_s": _round(_pct(lat, 50)), "key_to_next_p95_s": _round(_pct(lat, 95)), "key_to_next_n": len(lat),
        "gave_up": sum(1 for r in results if r["gave_up"]),
        "per_annotator": [{k: r[k] for k in ("name", "url", "presses", "errors", "setup_errors", "stuck", "no_ack", "gave_up", "stuck_pages")}
                          | {"acknowledged": len(r["acked"])} for r in results],
        "error_texts": sorted(texts.items(), key=lambda kv: -kv[1])[:8],
        "store": store, "run": run,
        "cpu_s": {"chromium": round(cpu["chromium"], 1), "harness": round(cpu["harness"], 1), "servers": round(cpu["servers"], 1)},
        "chromium_pss_mb": round(cpu["chromium_mb"]), "chromium_processes": cpu["chromium_processes"],
    }


def _commit(code: Path) -> str:
    """The checkout's commit, marked when its working tree has uncommitted changes to tracked files."""
    try:
        head = subprocess.run(["git", "-C", str(code), "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(code), "status", "--porcelain", "--untracked-files=no"], capture_output=True, text=True).stdout.strip()
    except OSError:
        return "unknown"
    return f"{head}{' + uncommitted changes' if dirty else ''}" if head else "unknown"


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)


# ---------------------------------------------------------------------------------------------------------
# both checkouts, the table
# ---------------------------------------------------------------------------------------------------------
def _lost_dup(r: dict) -> str:
    return f"{r['store']['lost']} / {r['store']['duplicated']}"


def _run_cell(r: dict) -> str:
    run = r["run"]
    if run is None:
        return "none"
    return f"exit {run['rc']}, {run['status'] or 'not registered'}" + (", summary.json" if run["summary_json"] else ", no summary.json")


def table(results: list[tuple[str, dict]]) -> str:
    """The comparison table (markdown), one column per checkout."""
    rows = [
        ("labels/s (acknowledged, all annotators)", lambda r: f"{r['labels_per_s']:.2f}"),
        ("key presses", lambda r: str(r["presses"])),
        ("acknowledged labels", lambda r: str(r["acknowledged"])),
        ("presses with an error shown", lambda r: str(r["errors_shown"])),
        ("page opens with an error shown", lambda r: str(r["setup_errors"])),
        ("pages stuck (no new record for 30 s, reloaded) / annotators who gave up", lambda r: f"{r['stuck']} / {r['gave_up']}"),
        ("key press to next record, p50 / p95 (s)", lambda r: f"{_f(r['key_to_next_p50_s'])} / {_f(r['key_to_next_p95_s'])}"),
        ("acknowledged labels lost / duplicated", _lost_dup),
        ("stored without an acknowledgement", lambda r: str(r["store"]["saved_without_ack"])),
        ("background `curate run`", _run_cell),
        ("background run: wall / CPU seconds", lambda r: f"{r['run']['seconds']:.1f} / {r['run']['cpu_s']:.1f}" if r["run"] else "-"),
        ("CPU seconds in the window: Chromium / the servers / this harness",
         lambda r: f"{r['cpu_s']['chromium']:.0f} / {r['cpu_s']['servers']:.0f} / {r['cpu_s']['harness']:.0f}"),
        ("Chromium at the end: processes, memory (PSS, MB)", lambda r: f"{r['chromium_processes']}, {r['chromium_pss_mb']}"),
    ]
    head = "| | " + " | ".join(name for name, _ in results) + " |\n|---|" + "---|" * len(results) + "\n"
    return head + "".join(f"| {label} | " + " | ".join(fn(r) for _, r in results) + " |\n" for label, fn in rows)


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.2f}"


def _child(code: Path, args: argparse.Namespace, out_json: Path) -> dict:
    """Run the scenario for ``code`` in a child process with that checkout first on sys.path."""
    cmd = [sys.executable, str(Path(__file__).resolve()), "--code", str(code), "--window", str(args.window), "--records",
           str(args.records), "--bg-records", str(args.bg_records), "--browsers", str(args.browsers), "--annotators", str(args.annotators),
           "--servers", str(args.servers), "--json", str(out_json)]
    if args.work:
        cmd += ["--work", str(Path(args.work) / Path(code).name)]
    rc = subprocess.run(cmd, cwd=code, env={**os.environ, "PYTHONPATH": str(code)}).returncode
    if rc != 0 or not out_json.is_file():
        raise SystemExit(f"the scenario on {code} failed (exit {rc})")
    return json.loads(out_json.read_text())


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--code", type=Path, help="run the scenario on this checkout only (default: this one and --baseline)")
    ap.add_argument("--baseline", type=Path, default=MAIN.parent / "before14", help="the checkout before the change")
    ap.add_argument("--ours", type=Path, default=MAIN, help="the checkout compared with the baseline (default: this one)")
    ap.add_argument("--window", type=float, default=60.0, help="seconds of labeling")
    ap.add_argument("--records", type=int, default=3000, help="records in the finished run that is labelled")
    ap.add_argument("--bg-records", type=int, default=120_000, help="records of the background curate run")
    ap.add_argument("--browsers", type=int, default=1, help="Chromium processes the annotators' browser contexts share")
    ap.add_argument("--annotators", type=int, default=4, help="annotators (they take the servers in turn, two each)")
    ap.add_argument("--servers", type=int, default=2, help="`curate app` servers")
    ap.add_argument("--work", type=Path, help="work folder (default: a temporary one, removed afterwards)")
    ap.add_argument("--json", type=Path, help="write the result as JSON here (with --code)")
    ap.add_argument("--out", type=Path, default=RESULTS / "workspace_concurrency.md", help="the results table (markdown)")
    args = ap.parse_args()
    if args.code:
        code = args.code.resolve()
        sys.path.insert(0, str(code))
        work = args.work or Path(tempfile.mkdtemp(prefix="wsconc-"))
        try:
            result = run_scenario(code, work, window_s=args.window, n_records=args.records, bg_records=args.bg_records,
                                  browsers=args.browsers, annotators=args.annotators, n_servers=args.servers)
        finally:
            if not args.work:
                shutil.rmtree(work, ignore_errors=True)
        print(json.dumps(result, indent=1))
        if args.json:
            args.json.write_text(json.dumps(result, indent=1))
        else:
            print(table([(code.name, result)]))
        return 0
    if not args.baseline.is_dir():
        raise SystemExit(f"no baseline checkout at {args.baseline}: `git worktree add {args.baseline} <commit before the change>`")
    with tempfile.TemporaryDirectory(prefix="wsconc-") as tmp:
        results = []
        for label, code in (("before (one DuckDB file)", args.baseline.resolve()), ("this checkout" if args.ours.resolve() == MAIN else
                                                                                   args.ours.resolve().name, args.ours.resolve())):
            print(f"== {label}: {code}", flush=True)
            results.append((label, _child(code, args, Path(tmp) / f"{code.name}.json")))
    text = table(results)
    print(text)
    for label, r in results:
        print(f"{label}: errors shown, most frequent first: {r['error_texts']}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(_markdown(results, args, text))
    print(f"wrote {args.out}")
    return 0


def _markdown(results: list[tuple[str, dict]], args: argparse.Namespace, text: str) -> str:
    load = os.getloadavg()
    lines = [
        "# A shared workspace under load: a curate run, two app servers, four annotators",
        "",
        f"`.venv/bin/python bench/workspace_concurrency.py --window {args.window:g} --records {args.records} --bg-records {args.bg_records}"
        f" --browsers {args.browsers}`; {os.cpu_count()} CPU cores (load average at the end {load[0]:.1f}); Chromium "
        f"{'in one process, a context per annotator' if args.browsers == 1 else f'in {args.browsers} processes'}.",
        "",
        "Checkouts: " + "; ".join(f"{label}: `{r['code']}` at {r.get('commit', 'unknown')}" for label, r in results) + ".",
        "",
        text,
        "Errors shown, most frequent first (first line of each):",
        "",
    ]
    for label, r in results:
        lines.append(f"- {label}: " + ("none" if not r["error_texts"] else "; ".join(f"`{t}` ({n})" for t, n in r["error_texts"])))
    lines.append("")
    for label, r in results:
        lines.append(f"- {label}, per annotator: " + ", ".join(
            f"{a['name']} {a['acknowledged']}/{a['presses']} acknowledged" + (f" (gave up: {a['gave_up'][:160]})" if a.get("gave_up") else "")
            for a in r["per_annotator"])
            + (f"; background run's last lines: {' / '.join(r['run']['stdout_tail'][-2:])}" if r["run"] else ""))
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    raise SystemExit(main())
