"""The review app on preference pairs, KTO records and tool calls, against one real workspace that `curate run`
builds in this module from the real LLaMA-Factory (DPO pairs, KTO, Glaive tool calls), OpenAI-messages
(weather tool calls) and OpenAssistant files, plus one hostile tool-call record. In a real browser (Debian's
Chromium through Playwright, one server and one browser for the module): a pair's prompt once and its two
completions side by side under their labels, a tool call's function and arguments, a tool result's call id,
the tool definitions, a KTO record's label, the kind filter, hostile tool text inert. Without a browser: the
queries' kind filter and search, a run file written before records had kinds still browsable, and the
labeling page on a pair and on a tool-call record whose edit keeps its tool calls through `curate run`."""

from __future__ import annotations

import json
import re
import shutil

import pytest

from tests.conftest import REPO, chromium_path, write_jsonl

IP = "203.0.113.7"  # TEST-NET-3: nothing answers there; the browser blocks any request that leaves loopback
HOSTILE = {
    "messages": [
        {"role": "user", "content": "Look up the pixel"},
        {"role": "assistant", "content": None, "tool_calls": [
            {"id": "call_h1", "type": "function",
             "function": {"name": "fetch", "arguments": json.dumps({"url": f"<img src=http://{IP}/i.png> ![p](http://{IP}/p.png) \u202eevil"})}},
            {"id": "call_h2", "type": "function",
             "function": {"name": "x](javascript:alert(1)) <b>bold</b>", "arguments": f"not json <img src=http://{IP}/n.png>"}}]},
        {"role": "tool", "tool_call_id": "call_h1", "name": "fetch", "content": f"<script>alert('t')</script> ![p](http://{IP}/r.png)"},
        {"role": "assistant", "content": "Done."}],
    "tools": [{"type": "function", "function": {"name": "fetch", "description": f"![d](http://{IP}/d.png) :red[loud]",
                                                "parameters": {"type": "object", "properties": {"url": {"type": "string"}}}}}],
}


@pytest.fixture(scope="module")
def mixed(tmp_path_factory, shared_data):
    """The default stages over every LLaMA-Factory, OpenAI-messages and OpenAssistant file of shared/data and
    the hostile record, in one workspace folder; with the real files' parsed contents for the expectations."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    tmp = tmp_path_factory.mktemp("kinds")
    write_jsonl(tmp / "hostile.jsonl", [HOSTILE])
    raw = {"name": "kinds", "tokenizer": None, "workspace": str(tmp / "ws"), "output_dir": str(tmp / "curated"),
           "inputs": [{"path": str(shared_data / "chat_llamafactory")}, {"path": str(shared_data / "openai_messages")},
                      {"path": str(shared_data / "oasst")}, {"path": str(tmp / "hostile.jsonl")}]}
    res = Pipeline(parse_config(raw, tmp), progress=False).run()
    lf = shared_data / "chat_llamafactory"
    return {"path": tmp / "ws", "tmp": tmp, "run": res.run_id, "config": raw, "glaive_file": lf / "glaive_toolcall_en_demo.json",
            "dpo": json.loads((lf / "dpo_en_demo.json").read_text()), "kto": json.loads((lf / "kto_en_demo.json").read_text()),
            "glaive": json.loads((lf / "glaive_toolcall_en_demo.json").read_text()),
            "weather": [json.loads(x) for x in (shared_data / "openai_messages" / "weather_chat_fine_tuning.jsonl").read_text().splitlines()]}


def _ws(path):
    from curate.workspace import Workspace

    return Workspace(path, create=False)


def _uid(mixed, file: str, line: int) -> int:
    """The uid of the record read from ``file`` (a name) at ``line``."""
    with _ws(mixed["path"]) as ws:
        rows = ws.query(mixed["run"], "SELECT uid FROM records WHERE run_id = ? AND source_file LIKE ? AND source_line = ?",
                        [mixed["run"], f"%/{file}", line])
    assert rows.height == 1, (file, line, rows)
    return int(rows["uid"][0])


# ---------------------------------------------------------------------------------------------- queries

def test_kind_filter_and_search_over_tool_calls_and_rejected_turns(mixed):
    from app.queries import filter_options, records_page

    with _ws(mixed["path"]) as ws:
        run = mixed["run"]
        assert filter_options(ws, run)["kind"] == ["kto", "preference", "sft"]
        _, everything = records_page(ws, run)
        totals = {}
        for kind in ("sft", "preference", "kto"):
            page, totals[kind] = records_page(ws, run, kind=kind, limit=1000)
            assert set(page["kind"]) == {kind} and page.height == totals[kind]
        assert totals["preference"] == len(mixed["dpo"]) and totals["kto"] == len(mixed["kto"])
        assert sum(totals.values()) == everything
        # pairs come with their rejected completion and prompt length, KTO records with their label
        pair = records_page(ws, run, kind="preference", limit=1)[0].row(0, named=True)
        source = mixed["dpo"][pair["source_line"] - 1]
        assert pair["rejected"][0]["content"] == source["rejected"]["value"] and pair["prompt_turns"] == len(source["conversations"])
        kto = records_page(ws, run, kind="kto", limit=1000)[0]
        assert [r["label"] for r in kto.iter_rows(named=True)] == [mixed["kto"][r["source_line"] - 1]["label"] for r in kto.iter_rows(named=True)]
        # search reaches a tool call's arguments (text no turn's content holds) and a pair's rejected completion
        args = mixed["weather"][0]["messages"][1]["tool_calls"][0]["function"]["arguments"]
        assert not any(args.lower() in (m.get("content") or "").lower() for m in mixed["weather"][0]["messages"])
        found, _ = records_page(ws, run, search=args.upper(), limit=1000)
        assert _uid(mixed, "weather_chat_fine_tuning.jsonl", 1) in found["uid"].to_list()
        phrase = source["rejected"]["value"][:60]
        assert phrase not in source["chosen"]["value"]
        found, _ = records_page(ws, run, search=phrase, kind="preference")
        assert pair["uid"] in found["uid"].to_list()


def test_a_run_file_from_before_kinds_still_browses(mixed, tmp_path, monkeypatch):
    """A records table as an earlier version wrote it (turns of role and content, no kind, tools, rejected,
    prompt_turns or label), read-only as the app opens it; then the same file once opened for writing, which
    adds the new columns but leaves the old turns. Every record is a conversation, search still works."""
    from streamlit.testing.v1 import AppTest

    from app.queries import filter_options, label_queue, records_page

    path = tmp_path / "ws"
    shutil.copytree(mixed["path"], path)
    run = mixed["run"]
    with _ws(path) as ws:
        with ws.run_data(run, write=True) as rd:
            rd.con.execute("""CREATE TABLE old AS SELECT run_id, uid, id, source_file, source_line, shape,
                              CAST(list_transform(messages, lambda m: {'role': m.role, 'content': m.content})
                                   AS STRUCT(role VARCHAR, content VARCHAR)[]) AS messages,
                              meta, fixes, n_chars, n_tokens, split, scores FROM records WHERE kind = 'sft'""")
            rd.con.execute("DROP TABLE records")
            rd.con.execute("ALTER TABLE old RENAME TO records")
    monkeypatch.setenv("FTW_WORKSPACE", str(path))
    for written_again in (False, True):
        if written_again:
            with _ws(path) as ws, ws.run_data(run, write=True):
                pass
        with _ws(path) as ws:
            cols = ws.query(run, "SELECT column_name FROM duckdb_columns() WHERE table_name = 'records'")["column_name"].to_list()
            assert ("kind" in cols) is written_again
            assert filter_options(ws, run)["kind"] == ["sft"]
            n = records_page(ws, run)[1]
            assert records_page(ws, run, kind="sft")[1] == n and records_page(ws, run, kind="preference")[1] == 0
            assert records_page(ws, run, search="San Francisco")[1] > 0
            assert set(label_queue(ws, run, "old", limit=5)["kind"]) == {"sft"}
        at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
        at.sidebar.radio[0].set_value("Data browser").run()
        at.selectbox(key="browse_kind").set_value("sft").run()
        at.text_input(key="browse_search").input("San Francisco").run()
        assert not at.exception, at.exception
        assert any(re.match(r"[1-9][\d,]* records match", c.value) for c in at.caption)
        assert set(at.dataframe[0].value["kind"]) == {"sft"}


def test_labeling_shows_a_pair_and_an_edit_keeps_the_tool_calls(mixed, tmp_path, monkeypatch):
    """The labeling page draws a preference pair as a pair; accepting an edited tool-call record stores every
    turn with its tool calls and tool references, and the next `curate run` applies the edit with them."""
    from streamlit.testing.v1 import AppTest

    from curate.config import parse_config
    from curate.pipeline import Pipeline

    path = tmp_path / "ws"
    shutil.copytree(mixed["path"], path)
    monkeypatch.setenv("FTW_WORKSPACE", str(path))
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
    at.sidebar.radio[0].set_value("Labeling").run()
    at.selectbox(key="label_mode").set_value("filter").run()
    at.text_input(key="annotator").input("ann").run()
    at.text_input(key="label_search").input(mixed["dpo"][0]["rejected"]["value"][:60]).run()
    assert not at.exception, at.exception
    badges = [m.value for m in at.markdown if "badge[" in m.value]
    assert any("chosen completion" in b for b in badges) and any("rejected completion" in b for b in badges)
    assert at.text_area[0].label.startswith("edit the chosen completion's")
    # the first Glaive conversation calls search_recipes, gets its result, then answers in text
    glaive = mixed["glaive"][0]["conversations"]
    call = json.loads(next(t["value"] for t in glaive if t["from"] == "function_call"))
    at.text_input(key="label_search").input(glaive[0]["value"]).run()
    uid = _uid(mixed, "glaive_toolcall_en_demo.json", 1)
    assert at.subheader[0].value.startswith(f"record {uid} ")
    assert any(t.value.endswith("glaive_toolcall_en_demo.json:1 · sft · sharegpt") for t in at.text)
    assert any(c.value == json.dumps(call["arguments"], indent=2) for c in at.get("code"))
    at.text_area[0].input("An edited answer.").run()
    next(b for b in at.button if b.label == "Accept").click().run()
    assert not at.exception, at.exception
    with _ws(path) as ws:
        edit = json.loads(ws.current_labels()["edit"][0])
        before = ws.query(mixed["run"], "SELECT messages FROM records WHERE run_id = ? AND uid = ?", [mixed["run"], uid])["messages"].to_list()[0]
    assert edit[:-1] == before[:-1] and edit[-1] == {**before[-1], "content": "An edited answer."}
    assert any(t["tool_calls"] for t in edit) and any(t["tool_call_id"] for t in edit)
    cfg = {**mixed["config"], "workspace": str(path), "output_dir": str(tmp_path / "relabelled"),
           "inputs": [{"path": str(mixed["glaive_file"])}],
           "stages": ["conversation_structure", "human_labels"]}
    res = Pipeline(parse_config(cfg, mixed["tmp"]), progress=False).run()
    with _ws(path) as ws:
        after = ws.query(res.run_id, "SELECT messages, fixes FROM records WHERE run_id = ? AND source_line = 1", [res.run_id])
    assert after["messages"].to_list()[0] == edit and "human_edit" in after["fixes"].to_list()[0]


def test_the_labeling_queue_narrows_to_a_kind_and_the_export_keeps_its_fields(mixed, tmp_path, monkeypatch):
    """Picking `kto` in the labeling page's kind box queues KTO records only (remembered for the annotator);
    labels exported as JSONL carry each record's kind with its label (KTO) or rejected turns (a pair)."""
    from streamlit.testing.v1 import AppTest

    from app import queries as q

    path = tmp_path / "ws"
    shutil.copytree(mixed["path"], path)
    monkeypatch.setenv("FTW_WORKSPACE", str(path))
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
    at.sidebar.radio[0].set_value("Labeling").run()
    at.text_input(key="annotator").input("kinds").run()
    assert at.selectbox(key="label_kind").options == ["all", "kto", "preference", "sft"]
    at.selectbox(key="label_kind").set_value("kto").run()
    for _ in range(3):  # three records in a row, each a KTO one
        assert any(" · kto · " in t.value for t in at.text), [t.value for t in at.text]
        next(b for b in at.button if b.label == "Accept").click().run()
        assert not at.exception, at.exception
    at.selectbox(key="label_kind").set_value("preference").run()
    assert any(" · preference · " in t.value for t in at.text)
    next(b for b in at.button if b.label == "Reject").click().run()
    with _ws(path) as ws:
        assert ws.annotator_settings("kinds")["kind"] == "preference"
        rows = [json.loads(x) for x in q.labels_jsonl(ws).decode().splitlines()]
    kto = [r for r in rows if r["kind"] == "kto"]
    pairs = [r for r in rows if r["kind"] == "preference"]
    assert len(kto) == 3 and all(isinstance(r["label"], bool) and r["messages"][-1]["role"] == "assistant" for r in kto)
    assert len(pairs) == 1 and pairs[0]["verdict"] == "reject" and pairs[0]["rejected"][-1]["role"] == "assistant"
    assert pairs[0]["prompt_turns"] >= 1 and "label" not in pairs[0]


# ---------------------------------------------------------------------------------------------- a real browser

LOOPBACK = ("http://127.0.0.1:", "ws://127.0.0.1:", "data:", "blob:")
# counts the app's finished script runs (the page's script state turning to notRunning), so that a step can
# wait for the run its own click started, not return on the state of the run before it
COUNT_RUNS = """window.__runs = 0;
new MutationObserver(ms => ms.forEach(m => {
    if (m.target.getAttribute('data-test-script-state') === 'notRunning' && m.oldValue !== 'notRunning') window.__runs++;
})).observe(document, {subtree: true, attributes: true, attributeFilter: ['data-test-script-state'], attributeOldValue: true});"""


@pytest.fixture(scope="module")
def browser(mixed, tmp_path_factory):
    """`curate app` on the module's workspace (these tests only read it) and one Chromium context for the
    module: yields (context, url, outside), ``outside`` collecting every request that left loopback (blocked)."""
    from playwright.sync_api import sync_playwright

    from app.serve import start_app

    chromium = chromium_path()
    proc, url = start_app(mixed["path"], tmp_path_factory.mktemp("kinds-app") / "app.log")
    outside: list[str] = []
    try:
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=[
                "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                "--disable-component-update", "--disable-sync"])
            # tall: Streamlit scrolls inside the page, and what is below the fold is not laid out for the checks
            context = browser.new_context(viewport={"width": 1400, "height": 3000})

            def guard(route):
                if route.request.url.startswith(LOOPBACK):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", guard)
            context.add_init_script(COUNT_RUNS)
            yield context, url, outside
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture
def page(browser):
    """A fresh tab (a new app session) on the data browser; fails the test if the app fetched from outside."""
    context, url, outside = browser
    tab = context.new_page()
    tab.goto(f"{url}/?page=Data+browser")
    tab.get_by_role("heading", name="Data browser", level=1).wait_for(timeout=120_000)
    _settled(tab)
    yield tab
    tab.close()
    assert not outside, f"the app fetched from outside: {outside}"


def _settled(page) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)


def _rerun(page, action) -> None:
    """Do ``action`` (which changes a widget) and wait until the script run it started has finished."""
    runs = page.evaluate("window.__runs")
    action()
    page.wait_for_function("n => window.__runs > n", arg=runs, timeout=120_000)
    _settled(page)


def _choose(page, label: str, option: str) -> None:
    box = page.get_by_label(label, exact=True)
    if box.input_value() != option:
        _rerun(page, lambda: (box.click(), page.get_by_role("option", name=option, exact=True).click()))


def _search(page, text: str) -> None:
    box = page.get_by_label("search (every turn, case-insensitive)")
    box.fill(text)
    _rerun(page, lambda: box.press("Enter"))


def _matches(page) -> int:
    return int(page.get_by_text(re.compile(r"^[\d,]+ records match")).inner_text().split()[0].replace(",", ""))


def _badge(page, text: str):
    # a badge's text follows its icon's name ("thumb_down undesirable completion"): match its end, whole words
    return page.locator(".stMarkdownBadge").filter(has_text=re.compile(rf"(^|\s){text}$"))


def test_kind_filter_narrows_the_list(page, mixed):
    everything = _matches(page)
    _choose(page, "kind", "kto")
    assert _matches(page) == len(mixed["kto"]) < everything
    assert re.search(r" · kto · kto · split ", page.get_by_text(re.compile(r":\d+ · \w+ · ")).first.inner_text())
    _choose(page, "kind", "preference")
    assert _matches(page) == len(mixed["dpo"])
    assert _badge(page, "chosen completion").count() >= 1
    _choose(page, "kind", "all")
    assert _matches(page) == everything


def test_a_preference_pair_shows_both_completions_side_by_side(page, mixed):
    with _ws(mixed["path"]) as ws:  # a pair of the first page that is in no duplicate cluster: it alone is shown
        uid, line = ws.query(mixed["run"], """SELECT uid, source_line FROM records WHERE run_id = $1 AND kind = 'preference'
                                             AND uid NOT IN (SELECT uid FROM clusters WHERE run_id = $1) ORDER BY uid LIMIT 1""",
                             [mixed["run"]]).row(0)
    source = mixed["dpo"][line - 1]
    _choose(page, "kind", "preference")
    _choose(page, "record", str(uid))
    assert page.get_by_role("heading", name=re.compile(rf"^record {uid}:")).count() == 1
    chosen_text, rejected_text = source["chosen"]["value"][:50], source["rejected"]["value"][:50]
    columns = page.get_by_test_id("stColumn")
    chosen = columns.filter(has=_badge(page, "chosen completion"))
    rejected = columns.filter(has=_badge(page, "rejected completion"))
    assert chosen.count() == 1 and rejected.count() == 1
    assert chosen_text in chosen.inner_text() and rejected_text not in chosen.inner_text()
    assert rejected_text in rejected.inner_text() and chosen_text not in rejected.inner_text()
    left, right = chosen.bounding_box(), rejected.bounding_box()
    assert left["x"] + left["width"] <= right["x"] and abs(left["y"] - right["y"]) < 5  # side by side, chosen first
    # the shared prompt once, above both
    prompt = page.get_by_test_id("stChatMessage").filter(has_text=source["conversations"][-1]["value"][:50])
    assert prompt.count() == 1 and prompt.bounding_box()["y"] < left["y"]


def test_a_tool_call_record_shows_its_calls_results_and_tools(page, mixed):
    first = mixed["weather"][0]
    calls = first["messages"][1]["tool_calls"]
    name, location = calls[1]["function"]["name"], json.loads(calls[1]["function"]["arguments"])["location"]
    uid = _uid(mixed, "weather_chat_fine_tuning.jsonl", 1)
    _search(page, location)
    _choose(page, "record", str(uid))
    record = page.get_by_test_id("stColumn").filter(has=page.get_by_role("heading", name=re.compile(rf"^record {uid}:"))).first
    box = record.get_by_test_id("stVerticalBlock").filter(has_text=f"calls {name} · id {calls[1]['id']}").last
    assert box.get_by_test_id("stCode").inner_text().strip() == json.dumps(json.loads(calls[1]["function"]["arguments"]), indent=2)
    assert f'"location": "{location}"' in box.inner_text()
    result = next(m for m in first["messages"] if m["role"] == "tool" and m["tool_call_id"] == calls[1]["id"])
    assert record.get_by_text(f"tool result · {result['name']} · answers {calls[1]['id']}").count() == 1
    # the tool definitions: name, description, parameters
    definition = first["tools"][0]["function"]
    record.get_by_text(f"tools offered (1): {definition['name']}").click()
    _settled(page)
    assert record.get_by_text(definition["description"], exact=True).count() == 1
    assert record.get_by_test_id("stJson").filter(has_text=next(iter(definition["parameters"]["properties"]))).count() == 1


def test_hostile_tool_calls_results_and_definitions_stay_text(page, mixed):
    _search(page, IP)
    assert _matches(page) == 1
    page.get_by_text("tools offered (1): fetch").click()
    _settled(page)
    text = page.get_by_test_id("stMain").inner_text()
    assert f"<img src=http://{IP}/i.png> ![p](http://{IP}/p.png) \\u202eevil" in text  # pretty-printed, the bidi control visible
    assert f"not json <img src=http://{IP}/n.png>" in text  # arguments that are not JSON: as they are
    assert "calls x](javascript:alert(1)) <b>bold</b>" in text
    assert f"<script>alert('t')</script> ![p](http://{IP}/r.png)" in text
    assert f"![d](http://{IP}/d.png) :red[loud]" in text
    assert "\u202e" not in text
    main = page.get_by_test_id("stMain")
    assert main.locator(f"img[src*='{IP}'], a[href^='javascript'], b, script").count() == 0


def test_a_kto_record_shows_its_label(page, mixed):
    with _ws(mixed["path"]) as ws:  # the records of the filtered list's first page
        first_page = ws.query(mixed["run"], "SELECT uid, source_line FROM records WHERE run_id = ? AND kind = 'kto' ORDER BY uid LIMIT 25",
                              [mixed["run"]]).rows()
    _choose(page, "kind", "kto")
    for wanted in (False, True):  # the label as the file gives it
        uid, line = next((u, n) for u, n in first_page if mixed["kto"][n - 1]["label"] is wanted)
        completion = mixed["kto"][line - 1]["messages"][-1]["content"]
        _choose(page, "record", str(uid))
        assert page.get_by_role("heading", name=re.compile(rf"^record {uid}:")).count() == 1
        shown, other = ("undesirable", "desirable") if wanted is False else ("desirable", "undesirable")
        badge = _badge(page, f"{shown} completion").first
        assert badge.is_visible() and _badge(page, f"{other} completion").count() == 0
        answer = page.get_by_test_id("stChatMessage").filter(has_text=completion[:50]).first
        assert answer.bounding_box()["y"] > badge.bounding_box()["y"]  # the label heads the completion
