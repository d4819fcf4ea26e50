"""The workspace folder on real files and real processes: human writes from several processes at once are
all stored exactly once; a run being written blocks neither readers of other runs nor label writes; a
reader changes nothing; a path that is not a workspace is refused in one line; an old single-file
workspace upgrades with its runs and labels."""

from __future__ import annotations

import hashlib
import multiprocessing as mp
import subprocess
import sys
from pathlib import Path

import duckdb
import polars as pl
import pytest

from tests.conftest import REPO

from curate.workspace import Workspace, WorkspaceBusy, WorkspaceError, normalize_annotator


def _labeller(path: str, name: str, n: int) -> None:
    ws = Workspace(path, create=False)
    for i in range(n):
        key = f"{name}-{i}"
        ws.add_label(f"rec{i % 50}", name, "accept" if i % 3 else "reject", action_key=key)
        ws.add_label(f"rec{i % 50}", name, "accept" if i % 3 else "reject", action_key=key)  # the same press again


def test_labels_from_four_processes_at_once_are_stored_exactly_once(tmp_path):
    path = str(tmp_path / "ws")
    Workspace(path)
    ctx = mp.get_context("spawn")
    procs = [ctx.Process(target=_labeller, args=(path, f"ann{i}", 150)) for i in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=120)
        assert p.exitcode == 0
    rows = Workspace(path, create=False).label_rows(current=False)
    assert rows.height == 4 * 150  # every press once, the repeats ignored
    assert rows.group_by("annotator").len().sort("annotator")["len"].to_list() == [150] * 4
    current = Workspace(path, create=False).current_labels()
    assert current.height == 4 * 50  # the latest label per record and annotator


def _label_while_opening(path: str, name: str, n: int, acked_file: str) -> None:
    """two threads press labels while a third keeps opening the workspace, as app pages do on every rerun"""
    import threading

    stop = threading.Event()
    acked: list[str] = []

    def opener() -> None:
        while not stop.is_set():
            Workspace(path, create=False)

    def presser(k: int) -> None:
        ws = Workspace(path, create=False)
        for i in range(n):
            key = f"{name}-{k}/rec{i}"
            try:
                ws.add_label(f"rec{i}", f"{name}-{k}", "accept", action_key=key)
            except Exception:  # an error is not an acknowledgement
                continue
            acked.append(key)

    threads = [threading.Thread(target=opener)] + [threading.Thread(target=presser, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads[1:]:
        t.join()
    stop.set()
    threads[0].join()
    Path(acked_file).write_text("\n".join(acked))


def test_opening_the_workspace_loses_no_acknowledged_label(tmp_path):
    # closing any descriptor of a SQLite file drops the process's POSIX locks on it; a workspace check that
    # peeked at the file with open() let another process reset the WAL under committed labels
    path = str(tmp_path / "ws")
    Workspace(path)
    ctx = mp.get_context("spawn")
    files = [str(tmp_path / f"acked{i}.txt") for i in range(2)]
    procs = [ctx.Process(target=_label_while_opening, args=(path, f"p{i}", 150, files[i])) for i in range(2)]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout=240)
        assert p.exitcode == 0
    acked = {k for f in files for k in Path(f).read_text().split("\n") if k}
    rows = Workspace(path, create=False).label_rows(current=False)
    stored = {f"{a}/{r}" for a, r in zip(rows["annotator"], rows["record_id"])}
    assert len(acked) > 0
    assert acked <= stored, f"{len(acked - stored)} acknowledged labels are missing"


def _hold_a_run(path: str, ready, release) -> None:
    ws = Workspace(path)
    store = ws.begin_run("writing", "curate", "writing", {}, "f", "")
    store.append("records", "writing", pl.DataFrame({"uid": [0], "id": ["x"]}))
    ready.set()
    release.wait(60)
    store.close()
    ws.finish_run("writing", "done", {"ok": True})


def test_a_run_being_written_blocks_no_reader_and_no_label(tmp_path):
    path = str(tmp_path / "ws")
    ws = Workspace(path)
    with ws.begin_run("done-run", "curate", "done", {}, "f", "") as store:
        store.append("records", "done-run", pl.DataFrame({"uid": [0, 1], "id": ["a", "b"]}))
    ws.finish_run("done-run", "done", {})
    ctx = mp.get_context("spawn")
    ready, release = ctx.Event(), ctx.Event()
    proc = ctx.Process(target=_hold_a_run, args=(path, ready, release))
    proc.start()
    try:
        assert ready.wait(60)
        reader = Workspace(path, create=False)
        assert reader.run("writing")["status"] == "running"
        assert reader.query("done-run", "SELECT count(*) AS n FROM records")["n"][0] == 2  # other runs read as usual
        with pytest.raises(WorkspaceBusy, match="still running"):
            reader.query("writing", "SELECT count(*) FROM records")
        assert reader.add_label("a", "ann", "accept", run_id="done-run", uid=0)
    finally:
        release.set()
        proc.join(60)
    assert proc.exitcode == 0
    assert Workspace(path, create=False).query("writing", "SELECT id FROM records")["id"].to_list() == ["x"]


def test_reading_changes_no_file(tmp_path):
    path = tmp_path / "ws"
    ws = Workspace(path)
    with ws.begin_run("r", "curate", "r", {}, "f", "") as store:
        store.append("records", "r", pl.DataFrame({"uid": [0], "id": ["a"]}))
    ws.finish_run("r", "done", {})
    ws.add_label("a", "ann", "accept")
    files = [path / "catalog.sqlite", *sorted((path / "runs").iterdir())]
    digest = lambda: [hashlib.sha256(f.read_bytes()).hexdigest() for f in files]  # noqa: E731
    before = digest()
    reader = Workspace(path, create=False)
    reader.runs(), reader.current_labels(), reader.query("r", "SELECT * FROM ledger"), reader.skips("ann", "r")
    assert digest() == before


def test_names_are_normalized_once():
    assert normalize_annotator("  Ann \t Lee ") == "Ann Lee" == normalize_annotator("Ａｎｎ Lee")
    for bad in ("", "   ", "ann\u202e", "a\x00b"):
        with pytest.raises(ValueError):
            normalize_annotator(bad)


def test_skips_and_settings_persist_per_annotator(tmp_path):
    ws = Workspace(tmp_path / "ws")
    ws.add_skip("ann ", "run1", "rec1")
    ws.save_annotator_settings("ann", {"mode": "uncertain", "threshold": 0.5})
    again = Workspace(tmp_path / "ws", create=False)
    assert again.skips("ann", "run1") == ["rec1"] and again.skips("bob", "run1") == []
    assert again.annotator_settings(" ann") == {"mode": "uncertain", "threshold": 0.5}
    assert again.clear_skips("ann", "run1") == 1 and again.skips("ann", "run1") == []


def test_a_path_that_is_not_a_workspace_is_refused_in_one_line(tmp_path):
    text = tmp_path / "notes.txt"
    text.write_text("hello")
    old = tmp_path / "old.duckdb"
    duckdb.connect(str(old)).execute("CREATE TABLE runs (run_id VARCHAR)").close()
    other = tmp_path / "photos"
    other.mkdir()
    (other / "a.jpg").write_bytes(b"\xff\xd8")
    for path, says in ((text, "is not a workspace"), (old, "curate workspace upgrade"), (other, "a folder of other files"),
                       (tmp_path / "missing", "no workspace at")):
        with pytest.raises(WorkspaceError, match=says):
            Workspace(path, create=False)
        run = subprocess.run([sys.executable, "-m", "evalsuite.cli", "compare", "x", "y", "--workspace", str(path)], cwd=REPO,
                             capture_output=True, text=True, timeout=120)
        assert run.returncode == 2 and "Traceback" not in run.stderr + run.stdout, run.stderr


def test_an_old_single_file_workspace_upgrades_with_its_runs_and_labels(tmp_path):
    old = tmp_path / "old.duckdb"
    con = duckdb.connect(str(old))
    con.execute("""CREATE TABLE runs (run_id VARCHAR PRIMARY KEY, kind VARCHAR, name VARCHAR, config JSON, fingerprint VARCHAR,
                   status VARCHAR, started TIMESTAMP, finished TIMESTAMP, output_dir VARCHAR, summary JSON)""")
    con.execute("""CREATE TABLE records (run_id VARCHAR, uid BIGINT, id VARCHAR, source_file VARCHAR, source_line BIGINT, shape VARCHAR,
                   messages STRUCT(role VARCHAR, content VARCHAR)[], meta VARCHAR, fixes VARCHAR[], n_chars BIGINT, n_tokens BIGINT,
                   split VARCHAR, scores VARCHAR)""")
    con.execute("""CREATE TABLE labels (record_id VARCHAR, run_id VARCHAR, uid BIGINT, annotator VARCHAR, verdict VARCHAR, edit JSON,
                   tags VARCHAR[], note VARCHAR, created TIMESTAMP)""")
    con.execute("INSERT INTO runs VALUES ('c1', 'curate', 'demo', '{}', 'f', 'done', '2026-01-01 10:00', '2026-01-01 10:05', '/x', '{\"n\": 2}')")
    con.execute("INSERT INTO records (run_id, uid, id, split) VALUES ('c1', 0, 'a', 'train'), ('c1', 1, 'b', 'test')")
    con.execute("INSERT INTO labels VALUES ('a', 'c1', 0, 'ann', 'reject', NULL, ['x'], NULL, '2026-01-02 09:00'), "
                "('a', 'c1', 0, 'ann', 'accept', NULL, [], NULL, '2026-01-02 09:01')")
    con.close()
    run = subprocess.run([sys.executable, "-m", "curate.cli", "workspace", "upgrade", str(old), str(tmp_path / "new")], cwd=REPO,
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, run.stderr
    ws = Workspace(tmp_path / "new", create=False)
    row = ws.run("c1")
    assert row["status"] == "done" and row["summary"] == {"n": 2} and str(row["started"]) == "2026-01-01 10:00:00"
    assert ws.query("c1", "SELECT id, split FROM records ORDER BY uid").rows() == [("a", "train"), ("b", "test")]
    assert ws.current_labels().select("record_id", "verdict").rows() == [("a", "accept")]
    again = subprocess.run([sys.executable, "-m", "curate.cli", "workspace", "upgrade", str(old), str(tmp_path / "new")], cwd=REPO,
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 2 and "not empty" in again.stderr
