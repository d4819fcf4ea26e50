"""A team on one workspace at once, in real processes: a `curate run` writing in the background, two `curate
app` servers, and four annotators in Chromium (two per server) pressing the Accept shortcut on the same run's
queue as fast as the pages let them. The scenario is bench/workspace_concurrency.py's, with a shorter window."""

from __future__ import annotations

import importlib.util


from tests.conftest import REPO, chromium_path

WINDOW_S = 18.0


def _bench():
    spec = importlib.util.spec_from_file_location("workspace_concurrency", REPO / "bench" / "workspace_concurrency.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_run_two_servers_and_four_annotators_at_once_show_no_error_and_lose_nothing(shared_data, tmp_path):
    chromium_path()
    bench = _bench()
    r = bench.run_scenario(REPO, tmp_path, window_s=WINDOW_S, n_records=1500, bg_records=40_000, log=print)
    print(bench.table([("this checkout", r)]))
    assert r["workspace"] == "folder"
    # nothing on any page said something went wrong, no page stopped moving, every press was acknowledged
    assert (r["errors_shown"], r["setup_errors"]) == (0, 0), r["error_texts"]
    assert (r["stuck"], r["no_ack"], r["gave_up"]) == (0, 0, 0), r["per_annotator"]
    assert all(a["acknowledged"] > 0 for a in r["per_annotator"]), r["per_annotator"]
    assert r["acknowledged"] / r["window_s"] > 0.5, r
    # every acknowledged label is stored, once: one raw row and one current label per (annotator, record)
    store = r["store"]
    assert store["acknowledged_distinct"] == r["acknowledged"]  # nobody was shown a record they had labelled
    assert (store["lost"], store["duplicated"], store["duplicate_rows_any"]) == (0, 0, 0), store
    assert store["label_rows"] == store["current_labels"] == r["acknowledged"], store
    # the run beside them finished normally: exit 0, its summary.json, registered done
    run = r["run"]
    assert run["rc"] == 0 and run["status"] == "done" and run["summary_json"], run
    assert r["key_to_next_p95_s"] is not None
