"""What a metric is: per-example scores, per-example statistics a corpus value is rebuilt from, the
aggregation that rebuilds it, the direction of "better", and whether outcomes are paired 0/1 (McNemar).

A metric computes :class:`MetricResult` objects, one per result key. Each result carries ``stats``: one row of
numbers per example, computed on the *scored* text (after extraction, against every reference). Its key's
:class:`Score` turns any multiset of those rows into the metric's value (``Score.aggregate``), so that

- the headline value is ``aggregate(all rows)`` (a test holds every registered metric to this), and
- a paired bootstrap resamples rows and aggregates them: corpus BLEU and chrF from sacrebleu's sufficient
  statistics, perplexity token-weighted, a mean metric as the mean of its scores.

`compare` and `gate` only ask the :class:`Score` of a key (``score_of``); they never test a metric's name.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from curate.registry import Registry, RegistryError, UnknownNameError


@dataclass
class MetricResult:
    """One number of one metric over a set.

    ``per_example`` holds one score per example in input order (None, or NaN items, where a metric has no
    meaningful per-example score); ``stats`` one row of numbers per example from which the key's
    :attr:`Score.aggregate` rebuilds ``value`` (None: the per-example scores are the rows, for a mean);
    ``details`` what is needed to reproduce or read the number (signature, options, counts).
    """

    name: str
    value: float
    per_example: list[float] | None = None
    details: dict[str, Any] = field(default_factory=dict)
    # what a metric says about each example beyond its score (a judge's verdicts and rationales): stored
    # per example next to the scores, not in the aggregate results
    annotations: list[dict[str, Any]] | None = None
    stats: list[list[float]] | None = None

    def stat_rows(self) -> list[list[float]] | None:
        """The rows a bootstrap resamples: ``stats``, else ``[[score]]`` per example, else None."""
        if self.stats is not None:
            return self.stats
        if self.per_example is None:
            return None
        return [[math.nan if s is None else float(s)] for s in self.per_example]


def mean_of_scores(rows: np.ndarray, options: dict[str, Any]) -> float:
    """The mean of column 0, NaN (an example without a score, e.g. an unparsed judge verdict) left out."""
    col = rows[:, 0]
    return float("nan") if np.isnan(col).all() else float(np.nanmean(col))


def token_weighted_perplexity(rows: np.ndarray, options: dict[str, Any]) -> float:
    """exp(sum of NLL / sum of tokens) over rows ``[nll_sum, tokens]``."""
    tokens = rows[:, 1].sum()
    return float("nan") if tokens == 0 else math.exp(rows[:, 0].sum() / tokens)


@dataclass(frozen=True)
class Score:
    """One result key of a metric and how to read it.

    ``aggregate(rows, options)`` rebuilds the value from per-example stats rows (a 2-D array) and the
    metric's options as the suite gave them; ``higher_is_better`` says which way is better;
    ``binary`` marks paired 0/1 outcomes per example, for which compare adds McNemar's exact test."""

    key: str
    higher_is_better: bool = True
    binary: bool = False
    aggregate: Callable[[np.ndarray, dict[str, Any]], float] = mean_of_scores

    def better(self, delta: float) -> bool:
        """Whether a change of ``delta`` (new minus old) is an improvement."""
        return delta > 0 if self.higher_is_better else delta < 0


@dataclass(frozen=True)
class Metric:
    """A registered metric: ``compute`` and the :class:`Score` of each result key.

    Calling the metric returns ``{key: MetricResult}`` whatever ``compute`` returns (a single
    :class:`MetricResult` or a dict of them), so a runner can treat every metric alike. ``needs_model``
    metrics take ``(model, tokenizer, ...)`` instead of predictions; ``needs_prompts`` metrics also get
    ``prompts=`` (the conversations the predictions answer); ``needs_tools`` metrics also get ``tools=`` (per
    example the tool definitions it offered, OpenAI's shape, or None).
    """

    name: str
    compute: Callable[..., MetricResult | dict[str, MetricResult]]
    scores: tuple[Score, ...]
    needs_model: bool = False
    needs_prompts: bool = False
    description: str = ""
    needs_tools: bool = False  # last: the fields before it keep their positions for code that builds Metric(...)

    @property
    def keys(self) -> tuple[str, ...]:
        """The result keys, in order."""
        return tuple(s.key for s in self.scores)

    def score(self, key: str) -> Score:
        """The :class:`Score` of result ``key``; KeyError naming the keys there are."""
        for s in self.scores:
            if s.key == key:
                return s
        raise KeyError(f"metric {self.name!r} has no result {key!r} (it has {', '.join(self.keys)})")

    def __call__(self, *args: Any, **kwargs: Any) -> dict[str, MetricResult]:
        """``compute(*args, **kwargs)`` as ``{key: MetricResult}``, whether it returned one result or several."""
        out = self.compute(*args, **kwargs)
        return {out.name: out} if isinstance(out, MetricResult) else out


class UnknownMetric(UnknownNameError):
    """A metric name that is not in :data:`METRICS`."""


def _metric_of(name: str, obj: Any) -> Metric:
    """The entry for what a ``module:function`` spec or an entry point names: a :class:`Metric` as it is, or a
    plain function ``fn(predictions, references) -> MetricResult`` as a mean metric called ``name``, higher
    is better (register it with :func:`register` to say otherwise)."""
    if isinstance(obj, Metric):
        return obj
    if not callable(obj):
        raise RegistryError(f"{obj!r} is not a metric (a function registered with evalsuite.metrics.register)")
    return Metric(name, obj, (Score(name),), description=(obj.__doc__ or "").strip().split("\n")[0])


class _MetricRegistry(Registry[Metric]):
    """Metrics: an unknown name that is a result key of a metric says which metric produces it."""

    def unknown(self, name: str, extra=()) -> UnknownNameError:
        producers = [m.name for m in self.entries.values() if name in m.keys]
        if not producers:
            return super().unknown(name, extra)
        return self.error(f"unknown metric {name!r} ({name!r} is a result of metric {producers[0]!r}); "
                          f"known metrics: {', '.join(sorted(self.entries))}")


#: Every metric a suite can name. The built-ins register when :mod:`evalsuite.metrics` is imported; installed
#: packages add theirs through the entry point group ``finetune_workbench.metrics``; a suite names a user's
#: metric by ``module:function`` or ``./file.py:function`` or loads its module under ``plugins:``.
METRIC_REGISTRY: Registry[Metric] = _MetricRegistry(
    "metric", builtins=("evalsuite.metrics",), coerce=_metric_of, error=UnknownMetric,
    name_of=lambda obj: obj.name if isinstance(obj, Metric) else obj.__name__)

METRICS: dict[str, Metric] = METRIC_REGISTRY.entries  # the live mapping, for code that reads it as a dict


def register(name: str, *, keys: Sequence[str | Score] | None = None, needs_model: bool = False,
             needs_prompts: bool = False, higher_is_better: bool = True, binary: bool = False,
             aggregate: Callable[[np.ndarray, dict[str, Any]], float] = mean_of_scores, needs_tools: bool = False):
    """Decorator: register ``fn`` as metric ``name``.

    ``keys`` are its result keys (default ``(name,)``), each a name (read with the ``higher_is_better``,
    ``binary`` and ``aggregate`` given here) or a full :class:`Score`. ``needs_model``, ``needs_prompts`` and
    ``needs_tools`` say what a runner passes besides the outputs (:class:`Metric`). A user's own module
    registers its metrics the same way; the suite's ``plugins:`` list imports it before the suite is checked.
    The function itself is returned unchanged, so it stays callable directly."""

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        if name in METRICS:
            raise RegistryError(f"metric {name!r} is already registered")
        scores = tuple(k if isinstance(k, Score) else Score(k, higher_is_better, binary, aggregate) for k in (keys or (name,)))
        doc = (fn.__doc__ or "").strip().split("\n")[0]
        METRIC_REGISTRY.add(name, Metric(name, fn, scores, needs_model, needs_prompts, doc, needs_tools), fn)
        return fn

    return decorate


def get_metric(name: str) -> Metric:
    """The registered metric ``name``; :class:`UnknownMetric` with a did-you-mean and the known names."""
    return METRIC_REGISTRY.get(name)


def resolve_metric(name_or_spec: str, base_dir: Any = None) -> str:
    """The registered name of a metric a suite names: a name, or ``module:function`` / ``./file.py:function``
    (relative to ``base_dir``; the module imported and the function registered when its module did not)."""
    return METRIC_REGISTRY.lookup(name_or_spec, base_dir)[0]


def score_for_key(key: str) -> Score | None:
    """The :class:`Score` of result ``key`` when the registered metrics producing it all read it alike (the
    same direction and binary: ``acc`` of every choice metric, ``perplexity`` of the reference and LAMBADA
    metrics), for a reader that only has the key, such as the review app; None when none produces it or
    they disagree. Its ``aggregate`` is the first producer's: to rebuild a value use :func:`score_of`."""
    found = [m.score(key) for m in METRICS.values() if key in m.keys]
    if found and all((s.higher_is_better, s.binary) == (found[0].higher_is_better, found[0].binary) for s in found):
        return found[0]
    return None


def score_of(metric_name: str, key: str) -> Score:
    """The :class:`Score` of result ``key`` of registered metric ``metric_name`` (what compare and gate ask)."""
    return get_metric(metric_name).score(key)
