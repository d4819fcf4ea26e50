"""`evalsuite gate RESULTS --rules GATES.yaml [--baseline BASE]`: a CI regression gate with exit codes.

```yaml
rules:
  - {metric: alpaca/rougeL, at_least: 0.25}             # a floor
  - {metric: alpaca/perplexity, at_most: 12}            # a ceiling
  - {metric: alpaca/rougeL, no_significant_regression: true}   # against --baseline (paired bootstrap)
  - {metric: mmlu/acc_norm, max_drop: 0.02}              # forgetting: at most 2 points below --baseline
```
``metric`` is ``task/key`` (or just ``key`` when the run has one task). Every rule is checked (not only up to
the first failure); the outcome is a plain summary, a JUnit XML file any CI system reads, and the exit
code: 0 all passed, 1 a rule failed, 2 the rules or runs are unusable.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any
from xml.sax.saxutils import escape, quoteattr

from pydantic import BaseModel, ConfigDict, Field, model_validator

from curate.config import FileConfig, read_yaml, validate


class GateError(ValueError):
    """Rules that cannot be checked (bad file, unknown metric, a baseline rule without a baseline)."""


class Rule(BaseModel):
    model_config = ConfigDict(extra="forbid")
    metric: str
    at_least: float | None = None
    at_most: float | None = None
    no_significant_regression: bool = False
    max_drop: float | None = Field(default=None, ge=0, description="largest allowed fall below the baseline, in the metric's units")

    @model_validator(mode="after")
    def _one_check(self) -> "Rule":
        if sum(x is not None and x is not False for x in (self.at_least, self.at_most, self.max_drop, self.no_significant_regression or None)) != 1:
            raise ValueError("a rule has exactly one of at_least, at_most, no_significant_regression, max_drop")
        return self

    @property
    def needs_baseline(self) -> bool:
        return self.no_significant_regression or self.max_drop is not None

    def describe(self) -> str:
        if self.at_least is not None:
            return f"{self.metric} at least {self.at_least:g}"
        if self.at_most is not None:
            return f"{self.metric} at most {self.at_most:g}"
        if self.max_drop is not None:
            return f"{self.metric} at most {self.max_drop:g} below the baseline"
        return f"{self.metric}: no significant regression against the baseline"


class Rules(FileConfig):
    rules: list[Rule] = Field(min_length=1)


def load_rules(path: str | Path) -> list[Rule]:
    return validate(Rules, read_yaml(path, GateError), Path(path).parent, str(path), GateError).rules


def _locate(results: dict[str, Any], metric: str) -> tuple[str, str]:
    task, _, key = metric.rpartition("/")
    if not task:
        if len(results["tasks"]) != 1:
            raise GateError(f"{metric}: the run has several tasks ({sorted(results['tasks'])}); write task/{metric}")
        task = next(iter(results["tasks"]))
    if task not in results["tasks"] or key not in results["tasks"][task]["metrics"]:
        known = [f"{t}/{k}" for t, v in results["tasks"].items() for k in v["metrics"]]
        raise GateError(f"{metric}: not in the run (it has {', '.join(known)})")
    return task, key


def check(results_dir: str | Path, rules: list[Rule], baseline_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One outcome per rule: ``{rule, passed, observed, message}``."""
    from evalsuite.compare import compare, key_score, load_run

    results, _ = load_run(results_dir)
    if any(r.needs_baseline for r in rules) and baseline_dir is None:
        raise GateError("a rule compares against the baseline, and no --baseline was given")
    base = load_run(baseline_dir)[0] if baseline_dir else None
    cmp = compare(baseline_dir, results_dir) if any(r.no_significant_regression for r in rules) else None
    outcomes = []
    for rule in rules:
        task, key = _locate(results, rule.metric)
        value = results["tasks"][task]["metrics"][key]["value"]
        if rule.at_least is not None:
            passed, observed = value >= rule.at_least, value
        elif rule.at_most is not None:
            passed, observed = value <= rule.at_most, value
        elif rule.max_drop is not None:
            b_task, b_key = _locate(base, rule.metric)
            drop = base["tasks"][b_task]["metrics"][b_key]["value"] - value
            drop = drop if key_score(results, task, key).higher_is_better else -drop  # a rise in perplexity is the drop
            passed, observed = drop <= rule.max_drop, drop
        else:
            row = next(r for r in cmp["tasks"][task]["metrics"] if r["metric"] == key)
            passed, observed = row["verdict"] != "worse", row["delta"]
        outcomes.append({"rule": rule.describe(), "passed": bool(passed), "observed": observed,
                         "message": f"{'PASS' if passed else 'FAIL'} {rule.describe()}: observed {observed:.4g}"})
    return outcomes


def junit_xml(outcomes: list[dict[str, Any]], name: str = "evalsuite gate") -> str:
    failures = sum(not o["passed"] for o in outcomes)
    cases = []
    for o in outcomes:
        body = "" if o["passed"] else f"<failure message={quoteattr(o['message'])}>{escape(o['message'])}</failure>"
        cases.append(f"  <testcase classname=\"evalsuite.gate\" name={quoteattr(o['rule'])}>{body}</testcase>")
    return (f"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuite name={quoteattr(name)} tests=\"{len(outcomes)}\" "
            f"failures=\"{failures}\">\n" + "\n".join(cases) + "\n</testsuite>\n")
