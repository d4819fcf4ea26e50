"""The review app's pages through Streamlit's AppTest, against a real workspace that curate, train and
evalsuite build in this test module: runs and their plots, the data browser's filters and search, hostile
record text shown inert, labels saved at once and used by `curate run`, annotator agreement, blind eval
preferences and judge-human agreement."""

from __future__ import annotations

import json
import re
import shutil

import polars as pl
import pytest

from tests.conftest import REPO, SHARED, chromium_path, perturbed_adapter, write_jsonl

HOSTILE = "<script>alert('x')</script> ![pixel](http://203.0.113.7/p.png) <img src=http://203.0.113.7/i.png>"


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """curate (sample data + a hostile record, minhash clusters), a tiny train run and two eval runs (base,
    perturbed adapter; rubric judge; compared with the pairwise judge), all in one workspace file."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline
    from evalsuite.compare import compare
    from evalsuite.runner import run_suite
    from evalsuite.suite import load_suite
    from train.config import parse_train_config
    from train.trainer import run_training

    tmp = tmp_path_factory.mktemp("app")
    ws = tmp / "ws"
    write_jsonl(tmp / "hostile.jsonl", [{"messages": [{"role": "user", "content": "Render this please"},
                                                      {"role": "assistant", "content": HOSTILE}]}])
    raw = {
        "name": "apptest", "tokenizer": None, "workspace": str(ws), "output_dir": str(tmp / "curated"),
        "inputs": [{"path": str(REPO / "sample_data" / "sharegpt_fastchat.json")}, {"path": str(REPO / "sample_data" / "dolly_written.jsonl")},
                   {"path": str(tmp / "hostile.jsonl")}],
        "stages": ["conversation_structure", "response_length", "exact_dedup", "minhash_dedup"],
        "splits": {"train": 0.8, "validation": 0.1, "test": 0.1},
    }
    cfg = parse_config(raw, tmp)
    curated = Pipeline(cfg, progress=False).run()
    rows = json.loads((SHARED / "alpaca" / "alpaca_4000.json").read_text())
    write_jsonl(tmp / "train8.jsonl", rows[:8])
    run_training(parse_train_config({
        "name": "apptrain", "data": [{"path": "train8.jsonl"}], "max_steps": 2, "max_seq_len": 256, "workspace": str(ws),
        "method": {"kind": "lora", "r": 4, "alpha": 8}, "gradient_checkpointing": False, "log_every_steps": 1,
        "optim": {"batch_tokens": 1024}, "eval": {"sample_prompts": 0},
    }, base_dir=tmp))
    write_jsonl(tmp / "holdout.jsonl", rows[200:203])
    (tmp / "suite.yaml").write_text(json.dumps({
        "name": "appeval", "generation": {"max_new_tokens": 12, "batch_size": 4},
        "tasks": [{"name": "alpaca", "path": "holdout.jsonl", "metrics": ["rouge", "exact_match",
                                                                            {"name": "judge", "max_new_tokens": 24, "device": "cpu"}]}]}))
    suite = load_suite(tmp / "suite.yaml")
    base = run_suite(suite, out_dir=tmp / "base", workspace=ws, device="cpu")
    perturbed_adapter(tmp / "adapter", scale=0.05)
    ft = run_suite(suite, adapter=str(tmp / "adapter"), out_dir=tmp / "ft", workspace=ws, device="cpu")
    cmp = compare(tmp / "base", tmp / "ft", judge={"max_new_tokens": 6, "device": "cpu"})
    (tmp / "ft" / "compare.json").write_text(json.dumps(cmp))
    return {"path": ws, "tmp": tmp, "curate_run": curated.run_id, "base": base["run_id"], "ft": ft["run_id"], "config": raw}


def _app(path, monkeypatch, page: str | None = None):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FTW_WORKSPACE", str(path))
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    if page:
        at.sidebar.radio[0].set_value(page).run()
        assert not at.exception, at.exception
    return at


def _match_caption(at) -> str:
    return next(c.value for c in at.caption if "records match" in c.value)


def _ws(path, read_only=True):
    from curate.workspace import Workspace

    return Workspace(path, create=False)


def test_runs_page_shows_funnel_loss_curve_and_headlines(workspace, monkeypatch):
    at = _app(workspace["path"], monkeypatch)
    assert at.title[0].value == "Runs"
    kinds = set(at.dataframe[0].value["kind"])
    assert kinds == {"curate", "train", "eval"}
    headers = [h.value for h in at.header]
    assert headers == ["Curation funnel", "Training", "Evaluations"]
    funnel = at.dataframe[1].value
    with _ws(workspace["path"]) as ws:
        stages = ws.query(workspace["curate_run"], "SELECT stage, n_rejected FROM stage_counts WHERE run_id = ? ORDER BY position", [workspace["curate_run"]])
    assert funnel["stage"].tolist() == stages["stage"].to_list() and funnel["n_rejected"].tolist() == stages["n_rejected"].to_list()
    evals = at.dataframe[2].value
    assert "alpaca/rougeL" in evals.columns and "alpaca/judge_score" in evals.columns
    assert len(at.get("vega_lite_chart")) == 3  # funnel, length histogram, loss curve


def test_browser_filters_search_and_hostile_text_stays_text(workspace, monkeypatch):
    at = _app(workspace["path"], monkeypatch, "Data browser")
    at.selectbox(key="browse_status").set_value("rejected").run()
    shown = at.dataframe[0].value
    assert len(shown) and set(shown["status"]) == {"rejected"}
    with _ws(workspace["path"]) as ws:
        with ws.run_data(workspace["curate_run"]) as rd:
            n_rej = rd.counts(workspace["curate_run"])["rejected"]
    assert f"{n_rej:,} records match" in _match_caption(at)
    # search runs in DuckDB over every turn: the hostile record is the one with "203.0.113.7"
    at.selectbox(key="browse_status").set_value("all").run()
    at.text_input(key="browse_search").input("203.0.113.7").run()
    assert "1 records match" in _match_caption(at)
    texts = [t.value for t in at.text]
    assert HOSTILE in texts  # shown verbatim, as text
    assert not any("203.0.113.7" in (m.value or "") for m in at.markdown)  # never through markdown (no image fetch)
    # a near-duplicate shows its cluster beside it, representative first
    at.text_input(key="browse_search").input("").run()
    at.selectbox(key="browse_reason").set_value("near_duplicate").run()
    from app.render import literal

    assert any(s.value.startswith(f"duplicate cluster ({literal('minhash_dedup')}") for s in at.subheader)
    assert any("kept representative" in c.value for c in at.caption)


def test_paged_record_queries_agree_with_the_ledger(workspace):
    """The pages' queries filter records alone and join only the page with its outcome: the same rows,
    statuses and reasons as the workspace's ledger view, page after page."""
    from app.queries import label_queue, length_histogram, records_page

    run = workspace["curate_run"]
    with _ws(workspace["path"]) as ws:
        ledger = ws.query(run, "SELECT uid, status, stage, reason FROM ledger WHERE run_id = ? ORDER BY uid", [run])
        reasons = ledger["reason"].drop_nulls().unique().sort().to_list()
        assert len(reasons) >= 2
        for status in (None, "kept", "rejected"):
            for reason in (None, *reasons):
                want = ledger.filter((pl.col("status") == status) if status else pl.lit(True))
                want = want.filter(pl.col("reason") == reason) if reason else want
                pages, total = [], None
                for offset in range(0, max(want.height, 1), 7):
                    page, total = records_page(ws, run, status=status, reason=reason, offset=offset, limit=7)
                    pages.append(page.select("uid", "status", "stage", "reason"))
                got = pl.concat(pages)
                assert total == want.height and got.equals(want), (status, reason)
        hist = length_histogram(ws, run, bins=5)
        for status in ("kept", "rejected"):  # every record in one bin, by its length
            want = ws.query(run, "SELECT n_chars FROM records JOIN ledger USING (run_id, uid) WHERE run_id = ? AND status = ?", [run, status])["n_chars"]
            rows = hist.filter(pl.col("status") == status)
            assert rows["records"].sum() == len(want)
            assert all(((want >= a) & (want < b)).sum() == n for a, b, n in rows.select("chars_from", "chars_to", "records").rows())
        queue = label_queue(ws, run, "nobody", mode="random", limit=1000)
        assert sorted(queue["uid"].to_list()) == ledger["uid"].to_list()  # everything, once, in a shuffled order
        assert queue["uid"].to_list() != ledger["uid"].to_list()
        assert queue.select("uid", "status", "reason").sort("uid").equals(ledger.select("uid", "status", "reason"))


def test_labels_are_saved_at_once_and_curate_uses_them(workspace, monkeypatch, tmp_path):
    path = tmp_path / "ws"
    shutil.copytree(workspace["path"], path)
    at = _app(path, monkeypatch, "Labeling")
    at.selectbox(key="label_mode").set_value("filter").run()
    at.text_input(key="annotator").input("ann").run()
    first = at.subheader[0].value
    next(b for b in at.button if b.label == "Reject").click().run()
    second = at.subheader[0].value
    assert second != first  # the queue moved on
    uid_second = int(second.split()[1])
    at.text_area[0].input("An edited answer.").run()
    next(t for t in at.text_input if t.label.startswith("tags")).input("edited, good").run()
    next(b for b in at.button if b.label == "Accept").click().run()
    # a fresh session (a reload, a second tab) sees both labels: they were committed when made
    with _ws(path) as ws:
        labels = ws.current_labels().sort("created")
        rec = ws.query(workspace["curate_run"], "SELECT id, uid FROM records WHERE run_id = ? AND uid = ?", [workspace["curate_run"], uid_second])
    assert labels["verdict"].to_list() == ["reject", "accept"] and labels["annotator"].to_list() == ["ann", "ann"]
    assert labels["record_id"][1] == rec["id"][0] and list(labels["tags"][1]) == ["edited", "good"]
    assert json.loads(labels["edit"][1])[-1]["content"] == "An edited answer."
    again = _app(path, monkeypatch, "Labeling")
    again.selectbox(key="label_mode").set_value("filter").run()
    again.text_input(key="annotator").input("ann").run()
    assert again.subheader[0].value not in (first, second)
    # curate run with the human_labels stage: the reject is a rejection with its reason, the edit is applied
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    cfg = dict(workspace["config"])
    cfg.update(workspace=str(path), output_dir=str(tmp_path / "relabelled"), stages=[*cfg["stages"], "human_labels"])
    result = Pipeline(parse_config(cfg, workspace["tmp"]), progress=False).run()
    with _ws(path) as ws:
        rej = ws.query(result.run_id, """SELECT r.id, j.reason, j.detail FROM rejects j JOIN records r USING (run_id, uid)
                        WHERE run_id = ? AND j.stage = 'human_labels'""", [result.run_id])
        edited = ws.query(result.run_id, "SELECT messages, fixes FROM records WHERE run_id = ? AND id = ?", [result.run_id, labels["record_id"][1]])
    assert rej["id"].to_list() == [labels["record_id"][0]] and rej["reason"][0] == "human_rejected" and "ann" in rej["detail"][0]
    assert edited["messages"][0][-1]["content"] == "An edited answer." and "human_edit" in edited["fixes"][0]


def test_annotator_agreement_is_cohens_kappa(workspace, monkeypatch, tmp_path):
    from sklearn.metrics import cohen_kappa_score

    path = tmp_path / "ws"
    shutil.copytree(workspace["path"], path)
    with _ws(path) as ws:
        ids = ws.query(workspace["curate_run"], "SELECT id FROM records WHERE run_id = ? ORDER BY uid LIMIT 6", [workspace["curate_run"]])["id"].to_list()
        a = ["accept", "accept", "reject", "reject", "accept", "reject"]
        b = ["accept", "reject", "reject", "reject", "accept", "accept"]
        for i, va, vb in zip(ids, a, b):
            ws.add_label(i, "alice", "reject")  # superseded: the latest label counts
            ws.add_label(i, "alice", va)
            ws.add_label(i, "bob", vb)
    at = _app(path, monkeypatch, "Labeling")
    table = at.dataframe[0].value
    assert table["overlap"].tolist() == [6]
    assert table["kappa"][0] == pytest.approx(cohen_kappa_score(a, b))


def test_eval_review_deltas_judge_and_human_agreement(workspace, tmp_path):
    """The metric deltas (compare.json's numbers, which are also what the app computes itself with a seeded
    paired bootstrap when a pair of runs has none), the judge's pairwise verdicts, and a stored vote's win
    rate and judge agreement. The blind vote in the page is tested in test_app_review."""
    from app.queries import delta_rows, human_summary, judge_verdicts, metric_deltas

    path = tmp_path / "ws"
    shutil.copytree(workspace["path"], path)
    with _ws(path) as ws:
        from_file = delta_rows(metric_deltas(ws, workspace["base"], workspace["ft"]))
        (workspace["tmp"] / "ft" / "compare.json").rename(tmp_path / "compare.json")
        try:
            computed = delta_rows(metric_deltas(ws, workspace["base"], workspace["ft"]))
        finally:
            (tmp_path / "compare.json").rename(workspace["tmp"] / "ft" / "compare.json")
        assert "alpaca" in set(from_file["task"]) and "rougeL" in set(from_file["metric"])
        assert from_file.equals(computed, null_equal=True)
        judge = judge_verdicts(ws, workspace["base"], workspace["ft"], "alpaca")
        idx = sorted(judge)[0] if judge else 0
        ws.add_preference(workspace["base"], workspace["ft"], "alpaca", idx, "ann", "fine_tune", "base", action_key="v1")
        ws.add_preference(workspace["base"], workspace["ft"], "alpaca", idx, "ann", "fine_tune", "base", action_key="v1")  # a double press
        prefs = ws.preferences(workspace["base"], workspace["ft"], "alpaca")
        summary = human_summary(ws, workspace["base"], workspace["ft"], "alpaca")
    assert prefs.select("task", "idx", "annotator", "choice", "left_side", "blind").rows() == [("alpaca", idx, "ann", "fine_tune", "base", True)]
    assert summary["votes"] == 1 and summary["win_rate"] == 1.0
    cmp = json.loads((workspace["tmp"] / "ft" / "compare.json").read_text())
    expected = {e["idx"]: ("tie" if e["verdict"] == "inconsistent" else e["verdict"])
                for e in cmp["tasks"]["alpaca"]["pairwise"]["examples"] if e["verdict"] is not None}
    assert judge == expected
    if idx in judge:
        assert summary["judged"] == 1 and summary["judge_agreement"] == float(judge[idx] == "fine_tune")


# ---------------------------------------------------------------------------------------------- a real browser

ARTIFACTS = REPO / "out" / "test-artifacts" / "app"  # screenshots of each page (git-ignored; CI keeps them)
LOOPBACK = ("http://127.0.0.1:", "ws://127.0.0.1:")


@pytest.fixture
def served_app(workspace, tmp_path):
    """`curate app` on a copy of the workspace, on loopback; yields (url, workspace path)."""
    import urllib.request

    from app.serve import start_app

    path = tmp_path / "ws"
    shutil.copytree(workspace["path"], path)
    proc, url = start_app(path, tmp_path / "app.log")
    try:
        yield url, path
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    # `curate app` is the server process itself: stopping it leaves nothing serving
    with pytest.raises(OSError):
        urllib.request.urlopen(f"{url}/_stcore/health", timeout=2)


def _open(page, url: str, name: str) -> None:
    """Load a page of the app by its URL and wait until its script has finished."""
    page.goto(f"{url}/?page={name.replace(' ', '+')}")
    page.get_by_role("heading", name=name, level=1).wait_for(timeout=120_000)
    _settled(page)


def _settled(page) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)


def test_real_browser_labels_with_a_shortcut_and_the_label_survives_a_reload(workspace, served_app):
    from playwright.sync_api import sync_playwright

    url, path = served_app
    chromium = chromium_path()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    outside = []
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=chromium, args=[
            "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
            "--disable-component-update", "--disable-sync"])
        context = browser.new_context(viewport={"width": 1400, "height": 1100})

        def guard(route):  # the app must fetch nothing from outside: note and block any such request
            if route.request.url.startswith(LOOPBACK) or route.request.url.startswith(("data:", "blob:")):
                route.continue_()
            else:
                outside.append(route.request.url)
                route.abort()

        context.route("**/*", guard)
        page = context.new_page()
        for name in ("Runs", "Data browser", "Eval review"):
            _open(page, url, name)
            assert page.get_by_test_id("stSidebarNav").count() == 0  # our page radio only, no multipage nav
            page.screenshot(path=str(ARTIFACTS / f"{name.lower().replace(' ', '_')}.png"), full_page=True)
        # the hostile record, found by search, shows its text verbatim and fetches nothing
        _open(page, url, "Data browser")
        search = page.get_by_label("search (every turn, case-insensitive)")
        search.fill("203.0.113.7")
        search.press("Enter")
        page.get_by_text("1 records match").wait_for(timeout=60_000)
        _settled(page)
        assert page.get_by_text("<script>alert('x')</script>", exact=False).count() >= 1
        assert page.locator("img[src*='203.0.113.7']").count() == 0
        page.screenshot(path=str(ARTIFACTS / "data_browser_hostile.png"), full_page=True)

        _open(page, url, "Labeling")
        name = page.get_by_label("annotator")
        name.fill("browser-ann")
        name.press("Enter")
        heading = page.get_by_role("heading", name=re.compile(r"^record \d+"))
        heading.wait_for(timeout=60_000)
        _settled(page)
        first = heading.inner_text()
        page.locator("h1").first.click()  # focus off the text box, so the key goes to the app
        page.keyboard.press("a")  # the Accept shortcut
        page.wait_for_function("h => document.querySelector('h3') && !document.body.innerText.includes(h)", arg=first,
                               timeout=60_000)
        _settled(page)
        uid = int(re.match(r"record (\d+)", first).group(1))
        page.reload()
        page.get_by_role("heading", name="Labeling", level=1).wait_for(timeout=120_000)  # the URL kept the page
        _settled(page)
        name = page.get_by_label("annotator")
        name.fill("browser-ann")
        name.press("Enter")
        recent = page.get_by_test_id("stTable")
        recent.wait_for(timeout=60_000)
        _settled(page)
        page.screenshot(path=str(ARTIFACTS / "labeling.png"), full_page=True)
        cells = recent.locator("td").all_inner_texts()
        assert str(uid) in cells and "accept" in cells
        assert page.get_by_role("heading", name=re.compile(r"^record \d+")).inner_text() != first
        browser.close()
    with _ws(path) as ws:
        labels = ws.current_labels()
        record = ws.query(workspace["curate_run"], "SELECT id FROM records WHERE run_id = ? AND uid = ?", [workspace["curate_run"], uid])["id"][0]
    assert labels.select("record_id", "annotator", "verdict").rows() == [(record, "browser-ann", "accept")]
    assert not outside, f"the app fetched from outside: {outside}"
    assert all((ARTIFACTS / f).is_file() for f in ("runs.png", "data_browser.png", "labeling.png", "eval_review.png"))


def test_app_without_a_workspace_says_so(tmp_path, monkeypatch):
    """`curate app` on a missing file exits 2 naming it; the app itself, pointed at one, shows an error."""
    import subprocess
    import sys

    from streamlit.testing.v1 import AppTest

    missing = tmp_path / "nope"
    run = subprocess.run([sys.executable, "-m", "curate.cli", "app", "--workspace", str(missing)], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 2 and str(missing) in run.stderr
    monkeypatch.setenv("FTW_WORKSPACE", str(missing))
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
    from app.render import literal

    assert literal(str(missing)) in at.error[0].value and not at.title
