"""A default run against a real human cleaning job (AlpacaDataCleaned over raw Alpaca rows)."""

from __future__ import annotations

import importlib.util

from tests.conftest import REPO


def _compare():
    spec = importlib.util.spec_from_file_location("alpaca_cleaning", REPO / "bench" / "alpaca_cleaning.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.compare


def test_default_run_agrees_with_the_alpaca_cleaners(shared_data, tmp_path):
    r = _compare()(shared_data, tmp_path)
    assert r["summary"]["invariant_ok"] and r["summary"]["inputs"] == 4370
    removed = r["removed_by_cleaners"]
    assert removed["rows"] == 24 and removed["rejected_by_us"] >= 0.9 * removed["rows"]  # URL/image/file-dependent, empty
    assert removed["by_reason"].get("url_dependent", 0) >= 10
    ph = r["placeholder_inputs_blanked_by_cleaners"]
    assert ph["fixed_same_way_by_us"] >= ph["rows"] - 1  # "<noinput> 8", "< noinput >", "(noinput)" ... all of them
    empty = r["empty_outputs_replaced_by_cleaners"]
    assert empty["rejected_by_us"] == empty["rows"] > 0
    kept = r["kept_unchanged_by_cleaners_but_rejected_by_us"]
    assert kept["rejected_by_us"] <= 0.006 * kept["rows"]  # at most 0.6% of what the cleaners kept untouched
    # what remains is unseen-media/link dependencies the cleaners missed ("[Image provided]", "Attached photo",
    # www.somethinggreen.uk), "<nooutput>" answers and one near-duplicate; no song, list, grid, table, code or
    # English math prompt is rejected any more
    allowed = {"media_dependent", "url_dependent", "file_dependent", "refusal_or_boilerplate", "near_duplicate", "exact_duplicate"}
    assert set(kept["by_reason"]) <= allowed, kept["by_reason"]
    assert all(ex["detail"].startswith("response opens with '<no") for ex in kept["examples"] if ex["reason"] == "refusal_or_boilerplate")
    assert r["placeholder_fixed_by_us_left_by_cleaners"]["rows"] <= 5
