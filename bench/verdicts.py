"""How far can you trust what curate decides? Precision and recall of every deciding stage on labeled data.

    .venv/bin/python bench/verdicts.py                       # every family, full sets, check against the stored numbers
    .venv/bin/python bench/verdicts.py --only dedup,decontam # some families
    .venv/bin/python bench/verdicts.py --quick               # small sets (about a minute)
    .venv/bin/python bench/verdicts.py --write               # store this run's numbers as the new reference
    PYTHONPATH=/path/to/old/checkout .venv/bin/python bench/verdicts.py --json before.json --no-check
    .venv/bin/python bench/verdicts.py --before before.json  # print "before -> after" columns (several files allowed)

Each family lives in ``bench/verdict_sets/<family>.py`` and exposes ``STAGES`` and
``measure(shared, work, quick=False) -> rows``; a row counts one stage's verdicts on one labeled set:
``stage, set, part (tune | holdout), n_pos, n_neg, tp, fp, fn, labels, note, scope``. ``scope`` says what the
row claims: ``target`` (default: its recall and false-positive rate are the stage's), ``negatives`` (only its
false-positive rate: one filter alone is not meant to catch every row a cleaner removed) or ``context``
(reported, never summarized: copies below the dedup threshold, paraphrases for n-gram matching). Positives are records the
stage should reject (a removed row, an edited copy, a contaminated record), negatives records it should keep.
The labels always come from someone other than the stage's author: a human cleaner's verdicts, a data set's
own annotations (MRPC paraphrase labels, the eval files' items), or construction (an edited copy of a real
record, a real eval item pasted into a real training record). Every family keeps a **holdout** part out of
tuning (which part is said in its module docstring and in the ``part`` column); both parts are printed.

The numbers of the committed reference (``curate/stages/measured.json``, also shown by ``curate stages``)
are checked: a precision or recall that drops, or a false-positive rate that rises, by more than
``--tolerance`` fails the run (exit 1) with one line per drop. ``--write`` replaces the reference with this
run (full runs only).
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
import time
import traceback
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
if str(REPO) not in sys.path:
    sys.path.append(str(REPO))  # appended: PYTHONPATH (an old checkout, for "before" numbers) wins
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))
SHARED = REPO.parent / "shared" / "data"
MEASURED = REPO / "curate" / "stages" / "measured.json"
FAMILIES = ("filters", "dedup", "semantic", "decontam")


def rates(row: dict) -> dict:
    """``row`` plus ``precision`` (tp / (tp + fp)), ``recall`` (tp / n_pos) and ``fp_rate`` (fp / n_neg),
    each None where its denominator is 0 (precision also on a set of negatives only: there it would be 0 by
    construction, and the false-positive rate says what happened)."""
    tp, fp, fn = row["tp"], row["fp"], row["fn"]
    n_pos, n_neg = row.get("n_pos", tp + fn), row.get("n_neg", 0)
    return {
        **row,
        "precision": round(tp / (tp + fp), 4) if tp + fp and n_pos else None,
        "recall": round(tp / n_pos, 4) if n_pos else None,
        "fp_rate": round(fp / n_neg, 5) if n_neg else None,
    }


def run_family(family: str, shared: Path, work: Path, quick: bool) -> tuple[list[dict], str | None]:
    """The rows of one family, or an error line when it could not run (e.g. against an older checkout)."""
    try:
        module = importlib.import_module(f"verdict_sets.{family}")
        t0 = time.perf_counter()
        rows = module.measure(shared, work / family, quick=quick)
        seconds = time.perf_counter() - t0
    except Exception as exc:  # one family failing must not hide the others' numbers
        traceback.print_exc(file=sys.stderr)
        return [], f"{family}: {type(exc).__name__}: {exc}"
    return [{**rates(r), "family": family, "seconds": round(seconds, 1)} for r in rows], None


def key(row: dict) -> tuple[str, str, str]:
    return (row["stage"], row["set"], row["part"])


def check(rows: list[dict], reference: list[dict], tolerance: float) -> list[str]:
    """One line per number of ``rows`` that is worse than the same (stage, set, part) of ``reference`` by more
    than ``tolerance`` (precision or recall lower, false-positive rate higher)."""
    ref = {key(r): r for r in reference}
    drops = []
    for row in rows:
        old = ref.get(key(row))
        if old is None:
            continue
        for metric, worse in (("precision", -1), ("recall", -1), ("fp_rate", 1)):
            a, b = old.get(metric), row.get(metric)
            if a is None or b is None:
                continue
            if (b - a) * worse > tolerance + 1e-9:
                drops.append(f"DROP {row['stage']} / {row['set']} / {row['part']}: {metric} {a} -> {b}")
    return drops


def _fmt(x: float | None, digits: int = 3) -> str:
    return "–" if x is None else f"{x:.{digits}f}"


def table(rows: list[dict], before: list[dict] | None = None) -> str:
    """Markdown tables, one per stage: precision, recall and false-positive rate per set and part (with the
    ``before`` run's numbers as ``old → new`` where given)."""
    prev = {key(r): r for r in before or []}
    out = []
    for stage in dict.fromkeys(r["stage"] for r in rows):
        out.append(f"\n### {stage}\n")
        out.append("| set | part | positives | negatives | precision | recall | false-positive rate | labels |")
        out.append("|---|---|---|---|---|---|---|---|")
        for r in (r for r in rows if r["stage"] == stage):
            old = prev.get(key(r))

            def cell(metric: str, digits: int = 3, r: dict = r, old: dict | None = old) -> str:
                new = _fmt(r.get(metric), digits)
                return new if old is None else f"{_fmt(old.get(metric), digits)} → {new}"

            out.append(
                f"| {r['set']} | {r['part']} | {r['n_pos']:,} | {r.get('n_neg', 0):,} | {cell('precision')} | "
                f"{cell('recall')} | {cell('fp_rate', 4)} | {r.get('labels', '')} |"
            )
            if r.get("note"):
                out.append(f"| ↳ {r['note']} | | | | | | | |")
    return "\n".join(out)


def measured_reference(rows: list[dict]) -> dict:
    """The form stored in ``curate/stages/measured.json``: per stage, its rows without bookkeeping columns."""
    keep = ("set", "part", "n_pos", "n_neg", "tp", "fp", "fn", "precision", "recall", "fp_rate", "labels", "note", "scope")
    by_stage: dict[str, list[dict]] = {}
    for r in rows:
        by_stage.setdefault(r["stage"], []).append({**{k: r.get(k) for k in keep}, "scope": r.get("scope") or "target"})
    return {"how": "bench/verdicts.py (full sets); see its docstring", "stages": by_stage}


def load_reference(path: Path) -> list[dict]:
    """Rows of a stored reference (``measured.json``) or of a ``--json`` dump."""
    if not path.is_file():
        return []
    data = json.loads(path.read_text())
    if isinstance(data, dict) and "stages" in data:
        return [{"stage": s, **r} for s, rs in data["stages"].items() for r in rs]
    return data["rows"] if isinstance(data, dict) else data


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--only", default=",".join(FAMILIES), help=f"comma-separated families ({', '.join(FAMILIES)})")
    ap.add_argument("--quick", action="store_true", help="small sets (not comparable with the reference: no check)")
    ap.add_argument("--shared", type=Path, default=SHARED)
    ap.add_argument("--work", type=Path, default=HERE / "_work" / "verdicts")
    ap.add_argument("--json", type=Path, help="also write the rows here")
    ap.add_argument("--before", type=Path, nargs="+", help="rows of earlier runs (--json files): printed as old → new")
    ap.add_argument("--markdown", type=Path, help="also write the tables here")
    ap.add_argument("--reference", type=Path, default=MEASURED)
    ap.add_argument("--tolerance", type=float, default=0.01)
    ap.add_argument("--engine", choices=("local", "ray"), default="local",
                    help="the engine of the families' `curate run` configs (the numbers must not change with it)")
    ap.add_argument("--no-check", action="store_true", help="print only; do not compare with the reference")
    ap.add_argument("--write", action="store_true", help="store this (full) run as the reference")
    args = ap.parse_args(argv)

    families = [f.strip() for f in args.only.split(",") if f.strip()]
    unknown = sorted(set(families) - set(FAMILIES))
    if unknown:
        ap.error(f"unknown families {unknown}; known: {', '.join(FAMILIES)}")
    import curate

    import verdict_sets

    verdict_sets.ENGINE = args.engine
    print(f"curate from {Path(curate.__file__).resolve().parent}; shared data {args.shared}; {'quick' if args.quick else 'full'} sets; "
          f"engine {args.engine}")
    rows, errors = [], []
    for family in families:
        got, err = run_family(family, args.shared, args.work, args.quick)
        rows += got
        if err:
            errors.append(err)
        else:
            print(f"{family}: {len(got)} rows in {got[0]['seconds'] if got else 0} s", flush=True)
    before = [r for path in args.before for r in load_reference(path)] if args.before else None
    tables = table(rows, before)
    print(tables)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(tables.lstrip() + "\n")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"rows": rows, "errors": errors}, indent=1) + "\n")
    for err in errors:
        print(f"FAILED {err}")
    status = 1 if errors else 0
    if not (args.no_check or args.quick):
        reference = load_reference(args.reference)
        if args.write and not errors:
            stored = {key(r): r for r in reference}
            stored.update({key(r): r for r in rows})  # families not run this time keep their numbers
            args.reference.write_text(json.dumps(measured_reference(list(stored.values())), indent=1) + "\n")
            print(f"reference written: {args.reference}")
        else:
            drops = check(rows, reference, args.tolerance)
            for line in drops:
                print(line)
            if drops:
                print(f"{len(drops)} number(s) dropped against {args.reference} (tolerance {args.tolerance})")
                status = 1
            elif reference:
                print(f"no number dropped against {args.reference}")
    return status


if __name__ == "__main__":
    raise SystemExit(main())
