"""The review app exposes nothing it should not: `curate app` binds loopback unless told otherwise, and then
asks for a token that reaches the server outside its command line; the page shows nothing of the workspace
before the token; Streamlit looks up no address (no outside call); file names, paths and record text show
literally, bidi controls as escapes, in a real Chromium; a path that is not a workspace is one line.

The workspace is built by a tiny `curate run` over a sample file and a file named like a markdown link, in
a folder whose own name is hostile markdown."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from tests.conftest import REPO, chromium_path, write_jsonl

HOSTILE_FILE = "[x](javascript:alert(1)).jsonl"
HOSTILE_DIR = "ws [w](javascript:alert(2)) :red[ws]\u202e"  # the workspace folder's name
RLO = "\u202e"
ANSWER = f"Sure :red[alarm] :smile: $x^2$ see file{RLO}txt.exe"
TOKEN = "given-token-0123456789abcdef"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync"]
# Python's audit hook, loaded in the server through PYTHONPATH: every name lookup and connection the
# server process makes goes to NET_AUDIT_LOG (the first line says the hook is in place)
SITECUSTOMIZE = '''
import os, sys
_log = os.environ.get("NET_AUDIT_LOG")
if _log:
    with open(_log, "a") as f:
        f.write("audit hook active\\n")
    def _hook(event, args):
        if event in ("socket.connect", "socket.sendto", "socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyaddr"):
            with open(_log, "a") as f:
                f.write(f"{event} {args[1] if event in ('socket.connect', 'socket.sendto') else args[0]!r}\\n")
    sys.addaudithook(_hook)
'''


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A `curate run` (sample Dolly records and the hostile file: two identical records, so they form an
    exact-duplicate cluster whose captions name the file) into a workspace folder with a hostile name."""
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    tmp = tmp_path_factory.mktemp("exposure")
    (tmp / "hostile").mkdir()
    rec = {"messages": [{"role": "user", "content": "Render this please"}, {"role": "assistant", "content": ANSWER}]}
    write_jsonl(tmp / "hostile" / HOSTILE_FILE, [rec, rec])
    ws = tmp / HOSTILE_DIR
    raw = {"name": "exposure", "tokenizer": None, "workspace": str(ws), "output_dir": str(tmp / "curated"),
           "inputs": [{"path": str(REPO / "sample_data" / "dolly_written.jsonl")}, {"path": str(tmp / "hostile")}],
           "stages": ["conversation_structure", "exact_dedup"], "splits": {"train": 0.8, "validation": 0.1, "test": 0.1}}
    result = Pipeline(parse_config(raw, tmp), progress=False).run()
    return {"path": ws, "tmp": tmp, "run": result.run_id}


def _curate_app(*args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "curate.cli", "app", *args], cwd=REPO, capture_output=True, text=True,
                          timeout=120, env=env)


def _env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items() if k not in ("FTW_APP_TOKEN", "FTW_WORKSPACE")}
    return {**env, **extra}


def _unliteral(markdown: str) -> str:
    """What a markdown element shows for a source made of :func:`app.render.literal` pieces."""
    from app.render import WORD_JOINER

    return re.sub(r"\\([!-/:-@\[-`{-~])", r"\1", markdown).replace(WORD_JOINER, "")


# ---------------------------------------------------------------------------------------------- the helpers

def test_literal_and_escape_controls_round_trip_what_is_shown():
    from app.render import escape_controls, literal, word_diff_html

    text = "[x](javascript:alert(1)) :red[a] $x$ <b> **s** www.example.com a@b.co \x00\x1b\x85\u200e\u2066"
    shown = escape_controls(text)
    assert shown == "[x](javascript:alert(1)) :red[a] $x$ <b> **s** www.example.com a@b.co \\u0000\\u001b\\u0085\\u200e\\u2066"
    assert escape_controls("line\n\ttab") == "line\n\ttab" and escape_controls(None) == ""
    src = literal(text)
    assert _unliteral(src) == shown  # the element shows the characters, controls as escapes
    # every markdown-active character is escaped; nothing of the source is left to start syntax
    assert not re.search(r"(?<!\\)[\[\]()<>*_`$:#|~!]", src.replace("\\\\", ""))
    assert "\u202e" not in word_diff_html("a\u202eb", "a\u202ec") and "\\u202e" in word_diff_html("a\u202eb", "a\u202ec")


def test_loopback_names_and_addresses():
    from curate.cli import _is_loopback

    assert all(_is_loopback(h) for h in ("127.0.0.1", "::1", "[::1]", "localhost", "LOCALHOST", "127.0.0.2"))
    assert not any(_is_loopback(h) for h in ("0.0.0.0", "::", "192.0.2.7", "10.0.0.1", "example.org", "fe80::1"))


# ---------------------------------------------------------------------------------------------- the CLI

def test_non_loopback_host_is_refused_without_expose(workspace):
    for host in ("0.0.0.0", "192.0.2.7", "::"):
        run = _curate_app("--workspace", str(workspace["path"]), "--host", host, env=_env())
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and "--expose" in lines[0] and host in lines[0], run.stderr
    short = _curate_app("--workspace", str(workspace["path"]), "--host", "0.0.0.0", "--expose", "--token", "short", env=_env())
    assert short.returncode == 2 and "too short" in short.stderr


def test_a_path_that_is_not_a_workspace_is_refused_in_one_line(tmp_path, monkeypatch):
    import duckdb
    from streamlit.testing.v1 import AppTest

    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    old = tmp_path / "old.duckdb"  # a single-file workspace of an earlier version
    duckdb.connect(str(old)).execute("CREATE TABLE runs (run_id VARCHAR)").close()
    missing = tmp_path / "nothing-here"
    for path in (text, old, missing):
        run = _curate_app("--workspace", str(path), env=_env())
        lines = run.stderr.strip().splitlines()
        assert run.returncode == 2 and len(lines) == 1 and str(path) in lines[0] and "Traceback" not in run.stderr, run.stderr
    assert "upgrade" in _curate_app("--workspace", str(old), env=_env()).stderr
    # the app pointed at one directly shows one error line, no traceback, nothing else
    monkeypatch.delenv("FTW_APP_TOKEN", raising=False)
    monkeypatch.setenv("FTW_WORKSPACE", str(text))
    at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120).run()
    assert not at.exception and len(at.error) == 1 and _unliteral(at.error[0].value).startswith(str(text))
    assert not at.title and not at.sidebar.radio


# ---------------------------------------------------------------------------------------------- the token

def test_token_gate_shows_nothing_of_the_workspace_before_the_token(workspace, monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("FTW_WORKSPACE", str(workspace["path"]))
    monkeypatch.setenv("FTW_APP_TOKEN", TOKEN)

    def app(**params):
        at = AppTest.from_file(str(REPO / "app" / "main.py"), default_timeout=120)
        at.query_params.update(params)
        return at.run()

    def everything(at) -> str:  # every element's message to the browser, as text
        out = []

        def walk(node):
            if getattr(node, "proto", None) is not None:
                out.append(str(node.proto))
            for child in getattr(node, "children", {}).values():
                walk(child)

        walk(at._tree)
        return "\n".join(out)

    at = app()
    assert not at.exception and [t.label for t in at.text_input] == ["access token"]
    assert not at.sidebar.radio and not at.caption and not at.dataframe
    shown = everything(at)
    assert "access token" in shown and "finetune-workbench review" in shown
    assert "ws [w]" not in shown and "ws \\[w\\]" not in shown and str(workspace["tmp"].name) not in shown
    at.text_input[0].input("not-the-token-at-all").run()
    assert [e.value for e in at.error] == ["that token does not match"] and not at.sidebar.radio
    at.text_input[0].input(TOKEN).run()  # typed: the page, and the prompt is gone
    assert not at.exception and at.title[0].value == "Runs" and not at.text_input
    assert _unliteral(at.sidebar.caption[0].value) == f"workspace: {escaped_path(workspace)}"
    at.sidebar.radio[0].set_value("Data browser").run()  # the session remembers it
    assert not at.exception and at.title[0].value == "Data browser"
    assert app(token=TOKEN).title[0].value == "Runs"  # in the URL
    wrong = app(token=TOKEN[:-1])
    assert [t.label for t in wrong.text_input] == ["access token"] and not wrong.sidebar.radio


def escaped_path(workspace) -> str:
    return str(workspace["path"]).replace(RLO, "\\u202e")


def test_a_given_token_reaches_the_server_in_its_environment_not_its_command_line(workspace, tmp_path):
    from app.serve import start_app

    proc, url = start_app(workspace["path"], tmp_path / "app.log", args=["--host", "127.0.0.1", "--expose", "--token", TOKEN], env=_env())
    try:
        cmdline = open(f"/proc/{proc.pid}/cmdline", "rb").read().decode()
        environ = open(f"/proc/{proc.pid}/environ", "rb").read().decode()
        assert "app.serve" in cmdline and TOKEN not in cmdline  # `curate app` became the server: same process
        assert f"FTW_APP_TOKEN={TOKEN}" in environ.split("\0")
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "app.log").read_text()
    assert TOKEN not in log and "warning: serving the review app on 127.0.0.1" in log


# ---------------------------------------------------------------------------------------------- a real browser

def test_exposed_server_in_chromium_token_first_then_everything_literal(workspace, tmp_path):
    """`curate app --host 0.0.0.0 --expose`: a warning and a generated token; the server makes no name
    lookup and no connection of its own; in Chromium the page is a token prompt until ?token=, then the
    hostile file name, workspace path and record text show literally, U+202E as an escape."""
    from playwright.sync_api import sync_playwright

    from app.serve import start_app

    (tmp_path / "audit").mkdir()
    (tmp_path / "audit" / "sitecustomize.py").write_text(SITECUSTOMIZE)
    net_log = tmp_path / "net.log"
    env = _env(PYTHONPATH=str(tmp_path / "audit"), NET_AUDIT_LOG=str(net_log))
    proc, url = start_app(workspace["path"], tmp_path / "app.log", args=["--host", "0.0.0.0", "--expose"], env=env)
    chromium = chromium_path()
    try:
        log = (tmp_path / "app.log").read_text()
        assert "warning: serving the review app on every network interface" in log
        token = re.search(r"open: http://[^/]+/\?token=([\w-]+)", log).group(1)
        assert len(token) >= 32
        with sync_playwright() as p:
            browser = p.chromium.launch(executable_path=chromium, args=CHROMIUM_ARGS)
            page = browser.new_context(viewport={"width": 1400, "height": 1100}).new_page()
            page.goto(f"{url}/?page=Data+browser")
            page.get_by_label("access token", exact=True).wait_for(timeout=120_000)
            _settled(page)
            body = page.evaluate("document.body.textContent")
            assert "Data browser" not in body and "workspace" not in body and "ws [w]" not in body and str(workspace["tmp"]) not in body
            assert page.get_by_test_id("stSidebar").count() == 0

            page.goto(f"{url}/?page=Data+browser&token={token}")
            page.get_by_role("heading", name="Data browser", level=1).wait_for(timeout=120_000)
            _settled(page)
            search = page.get_by_label("search (every turn, case-insensitive)")
            search.fill("alarm")
            search.press("Enter")
            page.get_by_text("2 records match").wait_for(timeout=60_000)
            page.get_by_text("kept representative", exact=False).wait_for(timeout=60_000)
            _settled(page)
            text = page.evaluate("document.body.innerText")
            everything = page.evaluate("document.body.textContent")
            assert HOSTILE_FILE in text  # the file name, literally (record header, cluster captions)
            assert any(HOSTILE_FILE in c for c in page.get_by_test_id("stCaptionContainer").all_inner_texts())  # through markdown too
            assert ":red[alarm]" in text and ":smile:" in text and "$x^2$" in text
            assert "workspace: " + escaped_path(workspace) in text  # the path in the sidebar caption
            assert RLO not in everything and "file\\u202etxt.exe" in text
            assert page.locator("a[href^='javascript' i]").count() == 0
            hrefs = page.locator("main a, [data-testid=stSidebar] a").evaluate_all("es => es.map(e => e.getAttribute('href'))")
            assert hrefs and all(h.startswith("#") for h in hrefs), hrefs  # the titles' own anchors, no link made of text
            assert page.locator(".stMarkdownColoredText, .katex").count() == 0
            browser.close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    log = (tmp_path / "app.log").read_text()
    assert "External URL" not in log and "Network URL" not in log
    lookups = net_log.read_text().splitlines()
    # one line per interpreter (`curate app`, then the server it became), and no lookup, no connection
    assert len(lookups) >= 2 and set(lookups) == {"audit hook active"}, lookups


def _settled(page) -> None:
    page.wait_for_selector('[data-testid="stApp"][data-test-script-state="notRunning"]', timeout=120_000)
