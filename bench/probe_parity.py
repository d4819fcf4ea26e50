"""Parity of the probe kinds with lm-evaluation-harness 0.4.13, item by item, on the embedded SmolLM2.

Two steps:

1. ``--regenerate`` (needs lm_eval importable, kept OUT of the project's environment): the source rows are
   written in the datasets' own field names (what the harness's task templates read), a task per kind is
   made that ``include:``s the harness's own task yaml (doc_to_text, doc_to_target, doc_to_choice,
   process_docs unchanged) with only the dataset pointed at the local file, and ``lm_eval run --model hf
   --model_args pretrained=<SmolLM2>,dtype=float32 --device cpu --log_samples`` scores them. Each item's
   requests (context, continuation), log-likelihoods, is_greedy and metrics are written to
   ``tests/golden/probes/<kind>.jsonl``. BoolQ's task also asks for ``acc_norm`` (the harness's own
   definition; its boolq.yaml lists ``acc`` only).

       pip download lm_eval==0.4.13 --no-deps -d /tmp/lmeval_whl
       .venv/bin/pip install --no-deps --target /tmp/lmeval_site /tmp/lmeval_whl/lm_eval-0.4.13-py3-none-any.whl \
           evaluate pytablewriter sqlitedict word2number more_itertools DataProperty mbstrdecoder pathvalidate \
           tabledata tcolorpy typepy chardet
       PYTHONPATH=/tmp/lmeval_site .venv/bin/python bench/probe_parity.py --regenerate

2. (default) our probe loaders and metrics on the same source files and items, against the golden files:
   prints, and writes to ``bench/results/probe_parity.md``, a table of kind, items, acc and acc_norm
   (ours / lm-eval), items whose outcome differs, and the largest |log-likelihood difference|; exits 1 when
   an item differs or a context is not the harness's.

       .venv/bin/python bench/probe_parity.py [--kinds arc_easy,winogrande] [--limit 40]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SHARED = REPO.parent / "shared" / "data"
PROBE_DATA = REPO / "tests" / "data" / "probes"
GOLDEN = REPO / "tests" / "golden" / "probes"
RESULTS = REPO / "bench" / "results" / "probe_parity.md"

# kind -> (source file, items, the harness's task yaml under lm_eval/tasks, metrics asked for)
KINDS: dict[str, tuple[Path, int, str, list[str]]] = {
    "arc_easy": (SHARED / "arc" / "arc_easy_shared.jsonl", 100, "arc/arc_easy.yaml", ["acc", "acc_norm"]),
    "arc_challenge": (SHARED / "arc" / "arc_challenge_shared.jsonl", 100, "arc/arc_challenge.yaml", ["acc", "acc_norm"]),
    "hellaswag": (SHARED / "hellaswag" / "hellaswag_val_rows_0_2000.jsonl", 100, "hellaswag/hellaswag.yaml", ["acc", "acc_norm"]),
    "piqa": (SHARED / "piqa" / "piqa.jsonl", 100, "piqa/piqa.yaml", ["acc", "acc_norm"]),
    "boolq": (PROBE_DATA / "boolq_val_0_50.jsonl", 50, "super_glue/boolq/default.yaml", ["acc", "acc_norm"]),
    "winogrande": (PROBE_DATA / "winogrande_dev_0_100.jsonl", 100, "winogrande/default.yaml", ["acc"]),
    "lambada": (PROBE_DATA / "lambada_openai_test_0_60.jsonl", 60, "lambada/lambada_openai.yaml", ["perplexity", "acc"]),
}


def _read(path: Path, n: int) -> list[dict]:
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines() if line.strip()]
    return rows[:n]


def as_dataset_fields(kind: str, row: dict) -> dict:
    """A source row (llm-foundry's format, or shared/data's HellaSwag) in the dataset's own field names,
    as the harness's Hugging Face dataset has them, so its task templates apply unchanged."""
    from evalsuite.probes import split_hellaswag_ctx

    if kind in ("arc_easy", "arc_challenge"):
        assert row["query"].startswith("Question: ")
        labels = [chr(ord("A") + i) for i in range(len(row["choices"]))]
        return {"question": row["query"].removeprefix("Question: "), "choices": {"text": row["choices"], "label": labels},
                "answerKey": labels[row["gold"]]}
    if kind == "hellaswag":
        ctx_a, ctx_b = split_hellaswag_ctx(row["ctx"])
        return {"activity_label": row["activity_label"], "ctx_a": ctx_a, "ctx_b": ctx_b, "endings": row["endings"],
                "label": str(row["label"])}
    if kind == "piqa":
        assert row["query"].startswith("Question: ") and row["query"].endswith("\n")
        return {"goal": row["query"].removeprefix("Question: ").removesuffix("\n"), "sol1": row["choices"][0],
                "sol2": row["choices"][1], "label": row["gold"]}
    if kind == "boolq":
        passage, question = row["query"].removeprefix("Passage: ").rsplit("\nQuestion: ", 1)
        return {"passage": passage, "question": question.removesuffix("?"), "label": row["gold"]}
    if kind == "winogrande":
        a, b = row["context_options"]
        prefix = os.path.commonprefix([a, b])
        prefix = prefix[: prefix.rfind(" ") + 1]
        # the harness fills sentence[:index("_")] + option and scores sentence[index("_") + 1:].strip()
        return {"sentence": prefix + "_ " + row["continuation"], "option1": a[len(prefix):], "option2": b[len(prefix):],
                "answer": str(row["gold"] + 1)}
    if kind == "lambada":
        return {"text": row["context"] + " " + row["continuation"]}
    raise KeyError(kind)


def regenerate(kinds: list[str], batch_size: int) -> None:
    """Run lm_eval on every kind and write the golden files."""
    import lm_eval

    from curate.models import smollm2_model_dir

    tasks_dir = Path(lm_eval.__file__).parent / "tasks"
    version = getattr(lm_eval, "__version__", "?")
    with tempfile.TemporaryDirectory(prefix="probe_parity_") as tmp:
        tmp_path = Path(tmp)
        for kind in kinds:
            src, n, yaml_rel, metrics = KINDS[kind]
            data = tmp_path / f"{kind}.jsonl"
            data.write_text("".join(json.dumps(as_dataset_fields(kind, r)) + "\n" for r in _read(src, n)), encoding="utf-8")
            metric_list = "".join(f"  - metric: {m}\n" for m in metrics)
            (tmp_path / f"probe_{kind}.yaml").write_text(
                f"include: {tasks_dir / yaml_rel}\n"
                f"task: probe_{kind}\n"
                "tag: []\n"
                "dataset_path: json\n"
                "dataset_name: null\n"
                f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
                "training_split: null\nvalidation_split: null\ntest_split: test\nfewshot_split: null\n"
                f"metric_list:\n{metric_list}")
        env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_DATASETS_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false",
               "HF_DATASETS_CACHE": str(tmp_path / "hf_cache")}
        cmd = [sys.executable, "-m", "lm_eval", "run", "--model", "hf",
               "--model_args", f"pretrained={smollm2_model_dir()},dtype=float32", "--device", "cpu",
               "--batch_size", str(batch_size), "--include_path", str(tmp_path),
               "--tasks", ",".join(f"probe_{k}" for k in kinds), "--log_samples", "--output_path", str(tmp_path / "out")]
        t0 = time.time()
        subprocess.run(cmd, check=True, env=env)
        print(f"lm_eval {version}: {time.time() - t0:.0f} s", file=sys.stderr)
        GOLDEN.mkdir(parents=True, exist_ok=True)
        import torch
        import transformers

        meta = json.loads((GOLDEN / "meta.json").read_text()) if (GOLDEN / "meta.json").exists() else {}
        meta.update({"lm_eval": version, "torch": torch.__version__, "transformers": transformers.__version__,
                     "model": "embedded SmolLM2-135M-Instruct, dtype=float32, device cpu", "batch_size": batch_size,
                     "command": " ".join(cmd[1:]).replace(str(tmp_path), "<tmp>").replace(str(smollm2_model_dir()), "<SmolLM2>"),
                     "kinds": {**meta.get("kinds", {}), **{k: {"source": str(KINDS[k][0].relative_to(REPO.parent)), "items": KINDS[k][1],
                                                                "task": KINDS[k][2], "metrics": KINDS[k][3]} for k in kinds}}})
        (GOLDEN / "meta.json").write_text(json.dumps(meta, indent=2) + "\n")
        for kind in kinds:
            src = KINDS[kind][0]
            [samples] = sorted((tmp_path / "out").rglob(f"samples_probe_{kind}_*.jsonl"))
            docs = sorted((json.loads(line) for line in samples.read_text().splitlines()), key=lambda d: d["doc_id"])
            out = []
            for d in docs:
                args = [[a["arg_0"], a["arg_1"]] for a in d["arguments"].values()]
                # one [loglikelihood, is_greedy] per request, logged as strings: ["-5.028358459472656", "False"]
                resps = [r[0] for r in d["resps"]]
                out.append({"index": d["doc_id"], "source": f"{src.name}:{d['doc_id'] + 1}", "requests": args,
                            "loglikelihoods": [float(r[0]) for r in resps], "is_greedy": [str(r[1]) == "True" for r in resps],
                            "metrics": {m: d[m] for m in KINDS[kind][3]}})
            (GOLDEN / f"{kind}.jsonl").write_text("".join(json.dumps(o, ensure_ascii=False) + "\n" for o in out), encoding="utf-8")
            print(f"{kind}: {len(out)} items -> {GOLDEN / f'{kind}.jsonl'}", file=sys.stderr)


def load_golden(kind: str, limit: int | None = None) -> list[dict]:
    """The golden items of ``kind`` (first ``limit``)."""
    rows = [json.loads(line) for line in (GOLDEN / f"{kind}.jsonl").read_text(encoding="utf-8").splitlines()]
    return rows[:limit] if limit else rows


def our_items(kind: str, n: int) -> list:
    """Our probe loader on the kind's source file, first ``n`` items."""
    from evalsuite.probes import get_probe

    return get_probe(kind).load(KINDS[kind][0], n)


def our_requests(item) -> list[list[str]]:
    """The (context, continuation) pairs our metric scores for ``item``, as the harness logs its requests."""
    from evalsuite.metrics.choice import MCItem, PartialItem

    if isinstance(item, MCItem):
        return [[item.context, " " + c] for c in item.choices]
    if isinstance(item, PartialItem):
        return [[c, " " + item.continuation] for c in item.contexts]
    return [[item.context, item.target]]


def compare(kind: str, net, tok, limit: int | None = None) -> dict:
    """Our scores against the golden file for ``kind``: per-item outcome and log-likelihood differences."""
    from evalsuite.metrics import get_metric
    from evalsuite.probes import get_probe

    gold = load_golden(kind, limit)
    items = our_items(kind, len(gold))
    assert [it.source for it in items] == [g["source"] for g in gold], f"{kind}: the golden items are not the source's first {len(gold)}"
    context_mismatch = [g["source"] for it, g in zip(items, gold) if our_requests(it) != g["requests"]]
    res = get_metric(get_probe(kind).metric)(net, tok, items)
    keys = KINDS[kind][3]
    first = next(iter(res.values()))
    ours_ll = [n.get("loglikelihoods", [n.get("loglikelihood")]) for n in first.annotations]
    max_diff = max(abs(a - b) for o, g in zip(ours_ll, gold) for a, b in zip(o, g["loglikelihoods"]))
    if "is_greedy" in first.annotations[0]:  # LAMBADA's acc is is_greedy: check the flag itself too
        assert all(n["is_greedy"] == g["is_greedy"][0] for n, g in zip(first.annotations, gold)), f"{kind}: is_greedy differs"
    outcome_keys = [k for k in keys if k != "perplexity"]
    differing = [g["source"] for i, g in enumerate(gold) if any(res[k].per_example[i] != float(g["metrics"][k]) for k in outcome_keys)]
    row = {"kind": kind, "items": len(gold), "differing": len(differing), "differing_items": differing,
           "context_mismatch": context_mismatch, "max_ll_diff": max_diff}
    for k in keys:
        theirs = [float(g["metrics"][k]) for g in gold]
        if k == "perplexity":  # the harness's aggregation: exp(-mean of the item log-likelihoods)
            import math
            row[k] = (res[k].value, math.exp(-sum(theirs) / len(theirs)))
        else:
            row[k] = (res[k].value, sum(theirs) / len(theirs))
    return row


def table(rows: list[dict]) -> str:
    """The parity table in Markdown."""
    def pair(r: dict, k: str) -> str:
        return f"{r[k][0]:.4f} / {r[k][1]:.4f}" if k in r else "—"

    lines = ["| kind | items | acc ours / lm-eval | acc_norm ours / lm-eval | perplexity ours / lm-eval | items differing | "
             "contexts not the harness's | max abs loglik diff |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['kind']} | {r['items']} | {pair(r, 'acc')} | {pair(r, 'acc_norm')} | {pair(r, 'perplexity')} | "
                     f"{r['differing']} | {len(r['context_mismatch'])} | {r['max_ll_diff']:.2e} |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--regenerate", action="store_true", help="run lm_eval (PYTHONPATH with lm_eval 0.4.13) and rewrite the golden files")
    ap.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    ap.add_argument("--limit", type=int, default=None, help="first N golden items per kind (default: all)")
    ap.add_argument("--batch-size", type=int, default=16, help="lm_eval's --batch_size when regenerating")
    args = ap.parse_args()
    kinds = [k for k in args.kinds.split(",") if k]
    if args.regenerate:
        regenerate(kinds, args.batch_size)

    import torch

    from chat.models import load_model

    net, tok, desc = load_model("embedded", device="cpu")
    rows, t0 = [], time.time()
    for kind in kinds:
        rows.append(compare(kind, net, tok, args.limit))
        print(f"{kind}: {rows[-1]['differing']} differing, max |ll diff| {rows[-1]['max_ll_diff']:.2e}", file=sys.stderr)
    md = table(rows)
    print(md)
    meta = json.loads((GOLDEN / "meta.json").read_text()) if (GOLDEN / "meta.json").exists() else {}
    RESULTS.write_text(
        "# Probe kinds: parity with lm-evaluation-harness 0.4.13\n\n"
        f"`bench/probe_parity.py` on {desc['model']} (float32, CPU, torch {torch.__version__}): our loaders and metrics on the "
        "same source rows as the golden files in `tests/golden/probes/` (written by lm_eval "
        f"{meta.get('lm_eval', '0.4.13')} with `--log_samples`). acc/acc_norm are means over the items; an item differs when "
        "its acc or acc_norm (LAMBADA: is_greedy) is not the harness's; a context is not the harness's when a (context, "
        f"continuation) request differs from the one lm_eval logged. Scored in {time.time() - t0:.0f} s.\n\n"
        + md + "\n")
    bad = [r["kind"] for r in rows if r["differing"] or r["context_mismatch"]]
    if bad:
        print(f"not at parity: {', '.join(bad)}", file=sys.stderr)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
