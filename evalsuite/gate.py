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
code: 0 all passed, 1 a rule failed, 2 the rules or runs are unusable. Exit 2 also writes the JUnit file, with
one testcase holding the error, so the CI page shows why the gate could not decide.

With ``--baseline``, the two runs must be alike (:func:`evalsuite.compare.check_comparable`: the same prompts,
references, template and settings) for every baseline rule, forgetting (``max_drop``) included; a rule on a task
or key only one of them has is unusable, not a pass.
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
    """One check of a run: exactly one of a floor, a ceiling, no significant regression, a largest drop."""

    model_config = ConfigDict(extra="forbid")
    metric: str = Field(description="task/key, or key when the run has one task")
    at_least: float | None = Field(default=None, description="the value must be at least this")
    at_most: float | None = Field(default=None, description="the value must be at most this")
    no_significant_regression: bool = Field(default=False, description="compare's verdict against the baseline must not be 'worse'")
    max_drop: float | None = Field(default=None, ge=0, description="largest allowed fall below the baseline, in the metric's units")

    @model_validator(mode="after")
    def _one_check(self) -> Rule:
        if sum(x is not None and x is not False for x in (self.at_least, self.at_most, self.max_drop, self.no_significant_regression or None)) != 1:
            raise ValueError("a rule has exactly one of at_least, at_most, no_significant_regression, max_drop")
        return self

    @property
    def needs_baseline(self) -> bool:
        """Whether the rule compares with a ``--baseline`` run (no_significant_regression, max_drop)."""
        return self.no_significant_regression or self.max_drop is not None

    def describe(self) -> str:
        """The rule in words, as the summary and the JUnit test case name it (``alpaca/rougeL at least 0.25``)."""
        if self.at_least is not None:
            return f"{self.metric} at least {self.at_least:g}"
        if self.at_most is not None:
            return f"{self.metric} at most {self.at_most:g}"
        if self.max_drop is not None:
            return f"{self.metric} at most {self.max_drop:g} below the baseline"
        return f"{self.metric}: no significant regression against the baseline"


class Rules(FileConfig):
    """A gate rules file."""

    rules: list[Rule] = Field(min_length=1, description="every rule is checked")


def load_rules(path: str | Path) -> list[Rule]:
    """The rules of a YAML file; GateError names the file and the bad keys (missing file, not YAML, a rule
    with none or two checks, an unknown key)."""
    return validate(Rules, read_yaml(path, GateError), Path(path).parent, str(path), GateError).rules


def _locate(results: dict[str, Any], metric: str, which: str = "the run") -> tuple[str, str]:
    task, _, key = metric.rpartition("/")
    if not task:
        if len(results["tasks"]) != 1:
            raise GateError(f"{metric}: {which} has several tasks ({sorted(results['tasks'])}); write task/{metric}")
        task = next(iter(results["tasks"]))
    if task not in results["tasks"] or key not in results["tasks"][task]["metrics"]:
        known = [f"{t}/{k}" for t, v in results["tasks"].items() for k in v["metrics"]]
        raise GateError(f"{metric}: not in {which} (it has {', '.join(known)})")
    return task, key


def check(results_dir: str | Path, rules: list[Rule], baseline_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """One outcome per rule: ``{rule, passed, observed, message}``. Both runs are checked first
    (:func:`evalsuite.compare.load_run`), and with a baseline they must be alike
    (:func:`evalsuite.compare.check_comparable`); GateError or CompareError for unusable rules or runs."""
    from evalsuite.compare import check_comparable, compare, key_score, load_run

    results, _ = load_run(results_dir)
    if any(r.needs_baseline for r in rules) and not baseline_dir:
        raise GateError("a rule compares against the baseline, and no --baseline was given")
    base = load_run(baseline_dir)[0] if baseline_dir else None
    if base is not None:
        check_comparable(base, results)  # a drop against another answer key or other settings means nothing
    located = []
    for rule in rules:  # every metric named is found (in both runs where a rule needs both) before any verdict
        task, key = _locate(results, rule.metric)
        if rule.needs_baseline:
            assert base is not None  # a rule that needs a baseline without one was refused above
            if (task, key) != _locate(base, rule.metric, "the baseline"):
                raise GateError(f"{rule.metric}: names task/key {task}/{key} in the run but another in the baseline; write task/key")
            key_score(results, task, key)
        located.append((rule, task, key))
    cmp = compare(baseline_dir, results_dir) if baseline_dir and any(r.no_significant_regression for r in rules) else None
    outcomes = []
    for rule, task, key in located:
        value = results["tasks"][task]["metrics"][key]["value"]
        if rule.at_least is not None:
            passed, observed = value >= rule.at_least, value
        elif rule.at_most is not None:
            passed, observed = value <= rule.at_most, value
        elif rule.max_drop is not None:
            assert base is not None  # as above
            drop = base["tasks"][task]["metrics"][key]["value"] - value
            drop = drop if key_score(results, task, key).higher_is_better else -drop  # a rise in perplexity is the drop
            passed, observed = drop <= rule.max_drop, drop
        else:
            assert cmp is not None  # a no_significant_regression rule: compared above
            row = next(r for r in cmp["tasks"][task]["metrics"] if r["metric"] == key)
            passed, observed = row["verdict"] != "worse", row["delta"]
        outcomes.append({"rule": rule.describe(), "passed": bool(passed), "observed": observed,
                         "message": f"{'PASS' if passed else 'FAIL'} {rule.describe()}: observed {observed:.4g}"})
    return outcomes


def junit_error(message: str, name: str = "evalsuite gate") -> str:
    """JUnit XML for a gate that could not decide (exit 2): one testcase with an ``error`` holding ``message``,
    so a CI page shows the reason where it shows failed rules."""
    case = (f"  <testcase classname=\"evalsuite.gate\" name=\"gate inputs\">"
            f"<error type=\"unusable input\" message={quoteattr(message)}>{escape(message)}</error></testcase>")
    return (f"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuite name={quoteattr(name)} tests=\"1\" failures=\"0\" "
            f"errors=\"1\">\n{case}\n</testsuite>\n")


def junit_xml(outcomes: list[dict[str, Any]], name: str = "evalsuite gate") -> str:
    """JUnit XML of the outcomes: one testcase per rule, a ``failure`` on each that failed."""
    failures = sum(not o["passed"] for o in outcomes)
    cases = []
    for o in outcomes:
        body = "" if o["passed"] else f"<failure message={quoteattr(o['message'])}>{escape(o['message'])}</failure>"
        cases.append(f"  <testcase classname=\"evalsuite.gate\" name={quoteattr(o['rule'])}>{body}</testcase>")
    return (f"<?xml version=\"1.0\" encoding=\"utf-8\"?>\n<testsuite name={quoteattr(name)} tests=\"{len(outcomes)}\" "
            f"failures=\"{failures}\">\n" + "\n".join(cases) + "\n</testsuite>\n")
