"""How close does a default `curate run` come to a real human cleaning job?

../shared/data/alpaca_cleaning_dev holds 4,370 raw Alpaca rows, the AlpacaDataCleaned version of them and a
row alignment (unchanged / modified / removed). We run curate with its DEFAULT stage list on the raw rows and
report:

- of the rows the cleaners removed, how many we reject (and why);
- of the rows whose placeholder input ("<noinput>", "No input.") the cleaners blanked, how many we fixed the
  same way; of the rows whose empty/placeholder output they replaced, how many we reject as empty;
- how many rows the cleaners kept unchanged that we reject, by reason, with examples;
- both, for the tune part (raw_pos < 2,185, which the filter defaults were tuned on) and the holdout part.

Usage: python bench/alpaca_cleaning.py [--shared ../shared/data] [--work bench/_work/alpaca_cleaning]
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import polars as pl

REPO = Path(__file__).resolve().parents[1]
TUNE_RAW_POS = 2185  # raw_pos below: the part the filter defaults were tuned on; the rest is held out


def compare(shared: Path, work: Path, examples: int = 3) -> dict:
    from curate.config import parse_config
    from curate.pipeline import Pipeline

    dev = shared / "alpaca_cleaning_dev"
    raw = json.loads((dev / "raw_alpaca_dev.json").read_text())
    cleaned = json.loads((dev / "cleaned_alpaca_dev.json").read_text())
    align = [json.loads(x) for x in (dev / "alignment_dev.jsonl").read_text().splitlines()]

    work.mkdir(parents=True, exist_ok=True)
    cfg = parse_config(
        {"name": "alpaca_cleaning", "inputs": [{"path": str(dev / "raw_alpaca_dev.json")}], "tokenizer": None},
        work,
    )  # no `stages` key: the default stage list
    res = Pipeline(cfg, progress=False).run(force=True)
    ledger = pl.read_parquet(res.output_dir / "ledger.parquet")
    from curate.workspace import Workspace

    with Workspace(res.workspace, create=False) as ws:
        fixes = ws.query(res.run_id, "SELECT source_line, fixes FROM records WHERE run_id = ?", [res.run_id])
    by_pos = {row["source_line"] - 1: row for row in ledger.to_dicts()}  # JSON array rows: source_line = element number
    fix_by_pos = {r["source_line"] - 1: set(r["fixes"]) for r in fixes.to_dicts()}

    out: dict = {"summary": {k: res.summary[k] for k in ("inputs", "kept", "rejected", "quarantined", "invariant_ok")}}
    removed = [a for a in align if a["status"] == "removed"]
    rem_reasons = Counter(by_pos[a["raw_pos"]]["reason"] for a in removed if by_pos[a["raw_pos"]]["status"] == "rejected")
    out["removed_by_cleaners"] = {
        "rows": len(removed),
        "rejected_by_us": sum(rem_reasons.values()),
        "by_reason": dict(rem_reasons.most_common()),
        "missed_examples": [raw[a["raw_pos"]] for a in removed if by_pos[a["raw_pos"]]["status"] != "rejected"][:examples],
    }

    def blanked(a, field):
        return a["status"] == "modified" and field in a["changed_fields"] and raw[a["raw_pos"]][field].strip() and not cleaned[a["cleaned_pos"]][field].strip()

    placeholder = [a for a in align if blanked(a, "input")]
    out["placeholder_inputs_blanked_by_cleaners"] = {
        "rows": len(placeholder),
        "fixed_same_way_by_us": sum("placeholder_input" in fix_by_pos.get(a["raw_pos"], set()) for a in placeholder),
        "missed_examples": [raw[a["raw_pos"]]["input"] for a in placeholder if "placeholder_input" not in fix_by_pos.get(a["raw_pos"], set())][:examples],
    }
    empty_out = [
        a for a in align
        if a["status"] == "modified" and "output" in a["changed_fields"]
        and (not raw[a["raw_pos"]]["output"].strip() or "placeholder_output" in fix_by_pos.get(a["raw_pos"], set()))
    ]
    out["empty_outputs_replaced_by_cleaners"] = {
        "rows": len(empty_out),
        "rejected_by_us": sum(by_pos[a["raw_pos"]]["status"] == "rejected" for a in empty_out),
        "by_reason": dict(Counter(by_pos[a["raw_pos"]]["reason"] for a in empty_out if by_pos[a["raw_pos"]]["status"] == "rejected")),
    }
    unchanged = [a for a in align if a["status"] == "unchanged"]
    un_rej = [a for a in unchanged if by_pos[a["raw_pos"]]["status"] == "rejected"]
    out["kept_unchanged_by_cleaners_but_rejected_by_us"] = {
        "rows": len(unchanged),
        "rejected_by_us": len(un_rej),
        "by_reason": dict(Counter(by_pos[a["raw_pos"]]["reason"] for a in un_rej).most_common()),
        "examples": [
            {"reason": by_pos[a["raw_pos"]]["reason"], "detail": by_pos[a["raw_pos"]]["detail"], "record": raw[a["raw_pos"]]}
            for a in un_rej[: examples * 3]
        ],
    }
    # the same two numbers per part: rows before raw_pos 2,185 tuned the defaults, the rest is the holdout
    out["by_part"] = {
        part: {
            "removed": sum(1 for a in removed if keep(a)),
            "removed_rejected_by_us": sum(1 for a in removed if keep(a) and by_pos[a["raw_pos"]]["status"] == "rejected"),
            "unchanged": sum(1 for a in unchanged if keep(a)),
            "unchanged_rejected_by_us": sum(1 for a in un_rej if keep(a)),
        }
        for part, keep in (("tune", lambda a: a["raw_pos"] < TUNE_RAW_POS), ("holdout", lambda a: a["raw_pos"] >= TUNE_RAW_POS))
    }
    fixed_only_by_us = [a for a in unchanged if "placeholder_input" in fix_by_pos.get(a["raw_pos"], set())]
    out["placeholder_fixed_by_us_left_by_cleaners"] = {
        "rows": len(fixed_only_by_us), "examples": [raw[a["raw_pos"]]["input"] for a in fixed_only_by_us[:examples]]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--shared", type=Path, default=REPO.parent / "shared" / "data")
    ap.add_argument("--work", type=Path, default=REPO / "bench" / "_work" / "alpaca_cleaning")
    args = ap.parse_args()
    r = compare(args.shared, args.work)
    s = r["summary"]
    print(f"default run on raw_alpaca_dev.json: {s['inputs']} = {s['kept']} kept + {s['rejected']} rejected + {s['quarantined']} quarantined")
    rm = r["removed_by_cleaners"]
    print(f"\nrows the cleaners REMOVED: {rm['rows']}; we reject {rm['rejected_by_us']} ({rm['rejected_by_us'] / max(rm['rows'], 1):.0%}): {rm['by_reason']}")
    for ex in rm["missed_examples"]:
        print(f"  missed: {json.dumps(ex)[:200]}")
    ph = r["placeholder_inputs_blanked_by_cleaners"]
    print(f"\nplaceholder inputs the cleaners BLANKED: {ph['rows']}; we fixed {ph['fixed_same_way_by_us']} the same way")
    for ex in ph["missed_examples"]:
        print(f"  missed input: {ex!r}")
    eo = r["empty_outputs_replaced_by_cleaners"]
    print(f"\nempty/placeholder outputs the cleaners REPLACED: {eo['rows']}; we reject {eo['rejected_by_us']}: {eo['by_reason']}")
    un = r["kept_unchanged_by_cleaners_but_rejected_by_us"]
    print(f"\nrows the cleaners kept UNCHANGED: {un['rows']}; we reject {un['rejected_by_us']} "
          f"({un['rejected_by_us'] / max(un['rows'], 1):.1%}): {un['by_reason']}")
    for ex in un["examples"]:
        print(f"  {ex['reason']}: {ex['detail']} | {json.dumps(ex['record'])[:180]}")
    for part, n in r["by_part"].items():
        print(
            f"  {part}: removed {n['removed_rejected_by_us']}/{n['removed']} rejected, "
            f"unchanged {n['unchanged_rejected_by_us']}/{n['unchanged']} rejected ({n['unchanged_rejected_by_us'] / max(n['unchanged'], 1):.2%})"
        )
    fo = r["placeholder_fixed_by_us_left_by_cleaners"]
    print(f"\nplaceholder inputs we blanked that the cleaners left: {fo['rows']} {fo['examples']}")


if __name__ == "__main__":
    main()
