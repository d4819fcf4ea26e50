"""The verdict benchmark's bookkeeping: rates, the drop check against the stored reference, `curate stages`."""

from __future__ import annotations

import json
import sys
from pathlib import Path

from typer.testing import CliRunner

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "bench"))

import verdicts  # noqa: E402


def _row(**kw):
    base = {"stage": "s", "set": "x", "part": "holdout", "n_pos": 100, "n_neg": 1000, "tp": 90, "fp": 2, "fn": 10}
    return verdicts.rates({**base, **kw})


def test_rates():
    r = _row()
    assert (r["precision"], r["recall"], r["fp_rate"]) == (round(90 / 92, 4), 0.9, 0.002)
    none = verdicts.rates({"stage": "s", "set": "x", "part": "tune", "n_pos": 0, "n_neg": 0, "tp": 0, "fp": 0, "fn": 0})
    assert none["precision"] is None and none["recall"] is None and none["fp_rate"] is None


def test_check_flags_drops_beyond_tolerance_only():
    ref = [_row()]
    assert verdicts.check([_row(tp=89, fn=11)], ref, 0.01) == []  # recall 0.89: within 0.01
    drops = verdicts.check([_row(tp=80, fn=20)], ref, 0.01)
    assert len(drops) == 1 and "recall 0.9 -> 0.8" in drops[0]
    drops = verdicts.check([_row(fp=30)], ref, 0.01)  # fp rate 0.002 -> 0.03 and precision down
    assert {d.split(": ")[1].split(" ")[0] for d in drops} == {"precision", "fp_rate"}
    assert verdicts.check([_row(set="other", tp=0)], ref, 0.01) == []  # nothing to compare with


def test_reference_roundtrip_and_curate_stages_prints_it(tmp_path, monkeypatch):
    rows = [_row(stage="minhash_dedup", set="edited copies", labels="construction"),
            _row(stage="minhash_dedup", set="other teacher", n_pos=0, tp=0, fn=0, fp=5, n_neg=50),
            _row(stage="minhash_dedup", set="below the threshold", tp=0, fn=100, scope="context")]
    path = tmp_path / "measured.json"
    path.write_text(json.dumps(verdicts.measured_reference(rows)))
    assert verdicts.check(rows, verdicts.load_reference(path), 0.0) == []

    import curate.stages as stages
    from curate.cli import app

    monkeypatch.setattr(stages, "MEASURED_FILE", path)
    one = CliRunner().invoke(app, ["stages", "minhash_dedup"]).output
    assert "measured on edited copies (holdout): precision 0.978, recall 0.900 of 100, false positives 2 of 1,000 (0.20%)" in one
    assert "measured on below the threshold (holdout): precision –" not in one and "recall 0.000 of 100" in one
    every = CliRunner().invoke(app, ["stages"]).output
    line = next(x for x in every.splitlines() if "measured at these defaults" in x)
    # the context row (recall 0) is reported per set, never summarized; the worst negative set is named
    assert "recall >= 0.900 on 1 set (lowest: edited copies)" in line
    assert "false positives <= 10.00% on 2 sets (highest: other teacher, 5 of 50)" in line
    assert CliRunner().invoke(app, ["stages", "minhash"]).exit_code == 2  # unknown: did-you-mean, exit 2
