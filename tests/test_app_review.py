"""The review pages as an annotator uses them, against a real workspace folder that curate and evalsuite
build in this module: the Eval review's blind vote in a real browser (nothing names a side, shows a score,
a diff or the judge before the vote is stored; all of it after), and the Labeling page's small losses fixed
(a name with a trailing space advances, skips and queue settings kept per annotator, an order per
annotator, a press sent twice stored once, a press the store could not take said so and kept on screen)."""

from __future__ import annotations

import json
import re
import shutil
import sqlite3

import pytest

from tests.conftest import REPO, SHARED, chromium_path, perturbed_adapter, write_jsonl


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """curate over the sample data, and two eval runs of three prompts (the base model, and a perturbed
    adapter standing in for a fine-tune; rubric judge), compared with the pairwise judge; all in one
    workspace folder. The smallest settings that give two differing outputs and judge verdicts."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline
    from evalsuite.compare import compare
    from evalsuite.runner import run_suite
    from evalsuite.suite import load_suite

    tmp = tmp_path_factory.mktemp("review")
    ws = tmp / "ws"
    raw = {
        "name": "reviewtest", "tokenizer": None, "workspace": str(ws), "output_dir": str(tmp / "curated"),
        "inputs": [{"path": str(REPO / "sample_data" / "dolly_written.jsonl")}],
        "stages": ["conversation_structure", "response_length", "exact_dedup"],
    }
    curated = Pipeline(parse_config(raw, tmp), progress=False).run()
    rows = json.loads((SHARED / "alpaca" / "alpaca_4000.json").read_text())
    write_jsonl(tmp / "holdout.jsonl", rows[200:203])
    (tmp / "suite.yaml").write_text(json.dumps({
        "name": "revieweval", "generation": {"max_new_tokens": 12, "batch_size": 4},
        "tasks": [{"name": "alpaca", "path": "holdout.jsonl",
                   "metrics": ["rouge", {"name": "judge", "max_new_tokens": 24, "device": "cpu"}]}]}))
    suite = load_suite(tmp / "suite.yaml")
    base = run_suite(suite, out_dir=tmp / "base", workspace=ws, device="cpu")
    perturbed_adapter(tmp / "adapter", scale=0.05)
    ft = run_suite(suite, adapter=str(tmp / "adapter"), out_dir=tmp / "ft", workspace=ws, device="cpu")
    cmp = compare(tmp / "base", tmp / "ft", judge={"max_new_tokens": 6, "device": "cpu"})
    (tmp / "ft" / "compare.json").write_text(json.dumps(cmp))
    return {"path": ws, "tmp": tmp, "curate_run": curated.run_id, "base": base["run_id"], "ft": ft["run_id"],
            "base_model": base["model"], "adapter": str(tmp / "adapter")}


@pytest.fixture
def ws_copy(workspace, tmp_path):
    """A copy of the module's workspace folder for one test (what it writes stays with it)."""
    path = tmp_path / "ws"
    shutil.copytree(workspace["path"], path)
    return path


def _ws(path):
    from curate.workspace import Workspace

    return Workspace(path, create=False)


def _app(path, monkeypatch, page: str):
    """A fresh session (a new tab, a reload) of the app on ``path``, on ``page``."""
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FTW_WORKSPACE", str(path))
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
    assert not at.exception, at.exception
    at.sidebar.radio[0].set_value(page).run()
    assert not at.exception, at.exception
    return at


# ---------------------------------------------------------------------------------------------- eval review, in Chromium

LOOPBACK = ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")
ARTIFACTS = REPO / "out" / "test-artifacts" / "app"


def _settled(page) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)


def test_blind_vote_reveals_nothing_before_it_is_stored_and_everything_after(workspace, ws_copy, tmp_path):
    from playwright.sync_api import sync_playwright

    from app import queries as q
    from app.serve import start_app
    from app.views.eval_review import blind_order

    base, ft = workspace["base"], workspace["ft"]
    with _ws(ws_copy) as ws:
        pairs = q.eval_pairs(ws, base, ft, "alpaca")
        judge = q.judge_verdicts(ws, base, ft, "alpaca")
        notes = [n for col in ("base_notes", "ft_notes") for n in pairs[col]]
    outputs = {r["idx"]: r for r in pairs.iter_rows(named=True)}
    # an annotator whose first example has two different answers, so what was shown tells the sides apart
    name = next(f"reviewer {i}" for i in range(50)
                if (o := outputs[blind_order(f"reviewer {i}", base, ft, "alpaca", list(outputs))[0]])["base_output"].strip()
                != o["ft_output"].strip())
    idx = blind_order(name, base, ft, "alpaca", list(outputs))[0]
    rationales = [why for n in notes for why in (json.loads(n or "{}").get("judge", {}).get("rationales") or {}).values()
                  if why and len(why) > 12]
    chromium = chromium_path()
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    proc, url = start_app(ws_copy, tmp_path / "app.log")
    outside = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=["--no-sandbox", "--disable-gpu", "--no-first-run",
                                                                       "--disable-background-networking", "--disable-sync"])
            context = browser.new_context(viewport={"width": 1400, "height": 1100})
            context.route("**/*", lambda route: route.continue_() if route.request.url.startswith(LOOPBACK)
                          else (outside.append(route.request.url), route.abort()))
            page = context.new_page()
            page.goto(f"{url}/?page=Eval+review")
            page.get_by_role("heading", name="Eval review", level=1).wait_for(timeout=120_000)
            _settled(page)
            box = page.get_by_label("annotator")
            box.fill(name + "  ")  # a trailing space: the name is normalized before anything uses it
            box.press("Enter")
            page.get_by_text("answer 1", exact=True).wait_for(timeout=60_000)
            _settled(page)
            page.screenshot(path=str(ARTIFACTS / "eval_review_blind.png"), full_page=True)

            vote_area = page.locator(".st-key-blind_vote")
            area = vote_area.inner_text()
            body, html = page.locator("body").inner_text(), page.content()
            # before the vote: two unnamed answers, nothing that tells them apart but their text
            for word in ("base output", "fine-tuned output", "pairwise judge", "judge:", "was answer", "vote saved"):
                assert word not in body, word
            for word in (base, ft, "fine-tune", "base (", "rougeL", "helpfulness", workspace["adapter"], workspace["base_model"]):
                assert word not in area, word
            assert workspace["adapter"] not in body and workspace["base_model"] not in body
            assert not any(why in body for why in rationales)
            assert "<del" not in html and "<ins" not in html  # no word diff
            texts = [t.strip() for t in vote_area.get_by_test_id("stText").all_inner_texts()]
            answer1, answer2 = texts[-2], texts[-1]
            assert {answer1, answer2} == {outputs[idx]["base_output"].strip(), outputs[idx]["ft_output"].strip()}
            shown_left = "base" if answer1 == outputs[idx]["base_output"].strip() else "fine_tune"

            page.locator("h1").first.click()  # the focus off the text box, so the key goes to the app
            page.keyboard.press("1")  # "answer 1 is better"
            page.get_by_text("vote saved", exact=False).wait_for(timeout=60_000)
            _settled(page)
            page.screenshot(path=str(ARTIFACTS / "eval_review_revealed.png"), full_page=True)
            body, html = page.locator("body").inner_text(), page.content()
            # after: which answer was which model, both outputs under their names, the diff, the judge
            names = {"base": f"base ({base})", "fine_tune": f"fine-tune ({ft})"}
            other = "fine_tune" if shown_left == "base" else "base"
            assert f"Answer 1 was the {names[shown_left]}, answer 2 the {names[other]}" in body
            assert "base output (was answer" in body and "fine-tuned output (was answer" in body
            assert "<del" in html or "<ins" in html
            if idx in judge:
                assert "pairwise judge: " + judge[idx].replace("_", "-") in body
            assert "judge: helpfulness" in body  # the rubric judge's scores of each output
            # the next example is blind again
            page.get_by_role("button", name="Next example").click()
            page.get_by_text("answer 1", exact=True).wait_for(timeout=60_000)
            _settled(page)
            assert "base output" not in page.locator("body").inner_text()
            assert "<del" not in page.content()
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    assert not outside, f"the app fetched from outside: {outside}"
    with _ws(ws_copy) as ws:
        prefs = ws.preferences(base, ft, "alpaca")
    assert prefs.select("idx", "annotator", "choice", "left_side", "blind").rows() == [(idx, name, shown_left, shown_left, True)]


def test_open_comparison_is_marked_not_blind_and_takes_no_vote(workspace, ws_copy, monkeypatch):
    at = _app(ws_copy, monkeypatch, "Eval review")
    assert at.radio(key="rev_mode").value == "blind review"  # blind unless asked
    assert not at.dataframe and not [c for c in at.caption if c.value.startswith(("base output", "fine-tuned output"))]
    at.radio(key="rev_mode").set_value("open comparison (not blind)").run()
    assert at.warning[0].value.startswith("open comparison, not blind")
    table = at.dataframe[0].value
    deltas = [d for d in table["delta"].tolist() if d == d]
    assert deltas == sorted(deltas) and "judge" in table.columns  # the largest regressions first
    captions = [c.value for c in at.caption]
    assert "base output" in captions and "fine-tuned output" in captions
    assert not [b for b in at.button if b.label.startswith(("Answer", "Tie"))]  # no vote here
    with _ws(ws_copy) as ws:
        assert ws.preferences(workspace["base"], workspace["ft"]).is_empty()


def test_blind_orders_are_per_annotator_and_stable():
    from app.views.eval_review import blind_order, left_side

    idxs = list(range(40))
    a, b = blind_order("alice", "r1", "r2", "t", idxs), blind_order("bob", "r1", "r2", "t", idxs)
    assert sorted(a) == idxs and sorted(b) == idxs and a != b and a != idxs
    assert a == blind_order("alice", "r1", "r2", "t", list(reversed(idxs)))  # the same on every reload
    sides = [left_side("alice", "r1", "r2", "t", i) for i in idxs]
    assert {"base", "fine_tune"} == set(sides) and 10 < sides.count("base") < 30  # drawn per example
    assert sides == [left_side("alice", "r1", "r2", "t", i) for i in idxs]


# ---------------------------------------------------------------------------------------------- labeling

def _heading(at) -> str:
    return next(s.value for s in at.subheader if s.value.startswith("record "))


def _uid(at) -> int:
    return int(re.match(r"record (\d+)", _heading(at)).group(1))


def _press(at, label: str):
    next(b for b in at.button if b.label == label).click().run()
    assert not at.exception, at.exception
    return at


def _label_rows(path) -> list[tuple]:
    with sqlite3.connect(path / "catalog.sqlite") as con:
        return con.execute("SELECT record_id, annotator, verdict FROM labels ORDER BY seq").fetchall()


def _ids(workspace, path) -> dict[int, str]:
    with _ws(path) as ws:
        rows = ws.query(workspace["curate_run"], "SELECT uid, id FROM records")
    return dict(rows.iter_rows())


def test_a_name_with_a_trailing_space_advances_and_labels_under_the_trimmed_name(workspace, ws_copy, monkeypatch):
    at = _app(ws_copy, monkeypatch, "Labeling")
    at.text_input(key="annotator").input("ann ").run()
    assert any(c.value == "labeling as ann" for c in at.caption)
    first = _uid(at)
    _press(at, "Accept")
    assert _uid(at) != first  # the queue moved on
    assert at.success[0].value == f"saved: accept · record {first}"  # said once the store had it
    assert _label_rows(ws_copy) == [(_ids(workspace, ws_copy)[first], "ann", "accept")]
    recent = at.table[0].value  # read back from the store
    assert [str(first), "accept"] == [str(recent.iloc[0, 0]), recent.iloc[0, 1]]
    # another session, the name without the space: the same annotator, the same queue
    again = _app(ws_copy, monkeypatch, "Labeling")
    again.text_input(key="annotator").input("ann").run()
    assert _uid(again) != first
    assert str(first) in again.table[0].value.iloc[:, 0].astype(str).tolist()


def test_skips_persist_for_the_annotator_and_can_be_cleared(workspace, ws_copy, monkeypatch):
    at = _app(ws_copy, monkeypatch, "Labeling")
    at.text_input(key="annotator").input("skipper").run()
    first = _uid(at)
    _press(at, "Skip")
    assert _uid(at) != first
    with _ws(ws_copy) as ws:
        assert ws.skips("skipper", workspace["curate_run"]) == [_ids(workspace, ws_copy)[first]]
    # a fresh session (a reload, the other server) leaves it out too
    again = _app(ws_copy, monkeypatch, "Labeling")
    again.text_input(key="annotator").input(" skipper").run()
    assert _uid(again) != first
    _press(again, "clear my skips (1)")
    assert _uid(again) == first  # back at the head of this annotator's queue
    assert _label_rows(ws_copy) == []


def test_queue_settings_persist_per_annotator(workspace, ws_copy, monkeypatch):
    at = _app(ws_copy, monkeypatch, "Labeling")
    at.text_input(key="annotator").input("moder").run()
    at.selectbox(key="label_mode").set_value("filter").run()
    at.selectbox(key="label_status").set_value("kept").run()
    with _ws(ws_copy) as ws:
        settings = ws.annotator_settings("moder")
    assert (settings["mode"], settings["status"]) == ("filter", "kept")
    head = _uid(at)
    again = _app(ws_copy, monkeypatch, "Labeling")
    assert again.selectbox(key="label_mode").value == "random"  # nobody's settings before a name
    again.text_input(key="annotator").input("moder").run()
    assert again.selectbox(key="label_mode").value == "filter" and again.selectbox(key="label_status").value == "kept"
    assert _uid(again) == head  # the filter queue, in input order: the same head
    other = _app(ws_copy, monkeypatch, "Labeling")
    other.text_input(key="annotator").input("someone else").run()
    assert other.selectbox(key="label_mode").value == "random"


def test_each_annotator_has_an_own_random_order(workspace, ws_copy, monkeypatch):
    from app import queries as q

    with _ws(ws_copy) as ws:
        a = q.label_queue(ws, workspace["curate_run"], "alice", mode="random", limit=1000)["uid"].to_list()
        b = q.label_queue(ws, workspace["curate_run"], "bob", mode="random", limit=1000)["uid"].to_list()
        again = q.label_queue(ws, workspace["curate_run"], "alice", mode="random", limit=1000)["uid"].to_list()
    assert sorted(a) == sorted(b) and a != b and a == again
    for name, order in (("alice", a), ("bob", b)):
        at = _app(ws_copy, monkeypatch, "Labeling")
        at.text_input(key="annotator").input(name).run()
        assert _uid(at) == order[0]


def test_a_press_sent_twice_is_stored_once(workspace, ws_copy, monkeypatch):
    """The page draws one action key per shown record, keeps it across reruns and stores the label with
    it; the same press sent again (a retry after an answer that never came back, the other server) stores
    nothing new."""
    at = _app(ws_copy, monkeypatch, "Labeling")
    at.text_input(key="annotator").input("twice").run()
    uid = _uid(at)
    rid = _ids(workspace, ws_copy)[uid]
    key = at.session_state[f"label_action_{workspace['curate_run']}_twice_{rid}"]
    next(t for t in at.text_input if t.label.startswith("tags")).input("dup").run()  # a rerun: the same key
    assert at.session_state[f"label_action_{workspace['curate_run']}_twice_{rid}"] == key and _uid(at) == uid
    _press(at, "Reject")
    assert at.success[0].value == f"saved: reject · record {uid}" and _uid(at) != uid
    with sqlite3.connect(ws_copy / "catalog.sqlite") as con:
        assert con.execute("SELECT action_key FROM labels").fetchall() == [(key,)]
    with _ws(ws_copy) as ws:
        assert not ws.add_label(rid, "twice", "reject", run_id=workspace["curate_run"], uid=uid, tags=["dup"], action_key=key)
    assert _label_rows(ws_copy) == [(rid, "twice", "reject")]


def test_a_press_the_store_cannot_take_says_so_and_keeps_the_record(workspace, ws_copy, monkeypatch):
    """Another process holds the catalog's write lock past the wait: the page says "not saved" with the
    reason and keeps the record; pressed again once the lock is gone, the label is stored once."""
    import curate.workspace.connections as connections

    monkeypatch.setattr(connections, "BUSY_SECONDS", 0.5)  # how long a write waits for the lock: short here
    at = _app(ws_copy, monkeypatch, "Labeling")
    at.text_input(key="annotator").input("held").run()
    uid = _uid(at)
    blocker = sqlite3.connect(ws_copy / "catalog.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # the write lock, as a long writer would hold it
    try:
        _press(at, "Accept")
        err = at.error[0].value
        assert err.startswith("not saved: ") and err.endswith("; press again")
        assert _uid(at) == uid and not at.success  # still on screen, nothing acknowledged
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert _label_rows(ws_copy) == []
    _press(at, "Accept")
    assert at.success[0].value == f"saved: accept · record {uid}" and _uid(at) != uid
    assert _label_rows(ws_copy) == [(_ids(workspace, ws_copy)[uid], "held", "accept")]


def test_export_is_made_in_memory(workspace, ws_copy, monkeypatch, tmp_path):
    import tempfile
    from pathlib import Path

    from app.views import labeling

    # a link planted where the old export wrote (labels-<workspace name>.jsonl in the temp folder)
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    planted = Path(tempfile.gettempdir()) / f"labels-{Path(ws_copy).name}.jsonl"
    planted.unlink(missing_ok=True)
    planted.symlink_to(victim)
    before = set(Path(tempfile.gettempdir()).glob("labels-*"))
    at = _app(ws_copy, monkeypatch, "Labeling")
    at.text_input(key="annotator").input("exporter").run()
    uid = _uid(at)
    _press(at, "Accept")
    assert len(at.get("download_button")) == 1
    lines = [json.loads(x) for x in labeling._export(str(ws_copy)).decode().splitlines()]
    assert [(r["id"], r["annotator"], r["verdict"]) for r in lines] == [(_ids(workspace, ws_copy)[uid], "exporter", "accept")]
    assert set(Path(tempfile.gettempdir()).glob("labels-*")) == before
    assert victim.read_text() == "keep me\n" and planted.is_symlink()  # the planted link untouched
    planted.unlink()


def test_export_to_a_path_replaces_a_planted_link_and_never_follows_it(ws_copy, tmp_path):
    import os
    import stat
    from pathlib import Path

    from app.queries import export_labels
    from curate.workspace import Workspace

    ws = Workspace(ws_copy, create=False)
    ws.add_label("rec-linked", "exporter", "reject", action_key="link-test")
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me\n")
    target = tmp_path / "labels.jsonl"
    os.symlink(victim, target)
    n = export_labels(ws, target)
    assert victim.read_text() == "keep me\n"  # the link's target untouched
    assert not target.is_symlink() and stat.S_ISREG(target.lstat().st_mode)
    rows = [json.loads(x) for x in target.read_text().splitlines()]
    assert n == len(rows) and ("rec-linked", "exporter", "reject") in [(r["id"], r["annotator"], r["verdict"]) for r in rows]
    assert oct(target.stat().st_mode & 0o777) == "0o600"  # readable by its owner only
    assert [p.name for p in Path(tmp_path).glob(".labels.jsonl.*")] == []  # no temp file left behind
