"""Duplicate clusters shared by the dedup stages: pairs -> connected components -> a kept representative.

A dedup stage finds similar pairs its own way (equal keys, MinHash buckets, FAISS neighbours); turning
them into clusters and deciding who stays is the same for all of them and lives here:

- clusters are the connected components of the pair graph (union-find, done by SciPy's
  ``connected_components`` over a sparse graph, not a Python loop);
- the ``keep`` policy picks each cluster's representative: ``first`` (input order), ``last``,
  ``longest`` (most characters, ties to the first) or ``quality`` (highest ``quality`` column, ties to
  the first);
- every other member is rejected naming the representative (``duplicate_of`` its id, ``detail`` its
  file:line and the member's similarity to it), unless ``action`` is ``group``: then nothing is rejected
  and the clusters only keep their members in one split.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import polars as pl

from curate.stages import GlobalDecision, empty_rejects
from curate.stages.ngrams import words

KEEP_POLICIES = ("first", "last", "longest", "quality")


def priority_order(frame: pl.DataFrame, keep: str) -> pl.DataFrame:
    """``frame`` sorted best first by the ``keep`` policy: a cluster's representative is its first row."""
    if keep == "first":
        return frame.sort("uid")
    if keep == "last":
        return frame.sort("uid", descending=True)
    if keep == "longest":
        return frame.sort(["n_chars", "uid"], descending=[True, False])
    return frame.sort(["quality", "uid"], descending=[True, False], nulls_last=True)


def greedy_centers(n: int, a: np.ndarray, b: np.ndarray, order: np.ndarray) -> np.ndarray:
    """Star clustering of nodes ``0..n-1`` over the edges (a, b): for each node, the center it joins.

    Nodes are visited in ``order`` (best first); an unclaimed node becomes a center and claims its
    unclaimed neighbours. So every member is similar to its own center, and no two centers are similar
    (the later one would have been claimed): the per-record loop "keep unless similar to a kept record",
    done over the sparse similarity graph instead of against every kept record.
    """
    center = np.arange(n, dtype=np.int64)
    if a.size == 0:
        return center
    src = np.concatenate([a, b]).astype(np.int64)
    dst = np.concatenate([b, a]).astype(np.int64)
    by_src = np.argsort(src, kind="stable")
    src, dst = src[by_src], dst[by_src]
    starts = np.searchsorted(src, np.arange(n + 1))
    claimed = np.zeros(n, dtype=bool)
    has_edges = np.diff(starts) > 0
    for v in order[has_edges[order]]:  # nodes without edges stay their own centers
        if claimed[v]:
            continue
        claimed[v] = True
        nb = dst[starts[v] : starts[v + 1]]
        nb = nb[~claimed[nb]]
        claimed[nb] = True
        center[nb] = v
    return center


def quality_expr() -> pl.Expr:
    """The ``quality`` column of the ``keep: quality`` policy, for every dedup stage: ``distinct words ** 2 /
    words`` of the response (0.0 when it has none), i.e. its number of distinct words times their share.
    It grows with a complete answer and shrinks when the answer repeats itself, so of near-identical
    records the fullest, least repetitive one stays."""
    w = words(pl.col("response_text").fill_null(""))
    total = w.list.len()
    distinct = w.list.n_unique()
    return pl.when(total > 0).then(distinct.cast(pl.Float64) ** 2 / total).otherwise(0.0)


def component_labels(uids: np.ndarray, uid_a: np.ndarray, uid_b: np.ndarray) -> np.ndarray:
    """For each of ``uids``, the smallest uid of its connected component in the graph of pairs (a, b).

    Pairs may name uids outside ``uids``; those edges are ignored.
    """
    from scipy.sparse import coo_matrix
    from scipy.sparse.csgraph import connected_components

    uids = np.asarray(uids, dtype=np.int64)
    n = uids.size
    if n == 0:
        return uids.copy()
    order = np.argsort(uids, kind="stable")
    sorted_uids = uids[order]
    ia = np.searchsorted(sorted_uids, uid_a)
    ib = np.searchsorted(sorted_uids, uid_b)
    ia_c, ib_c = np.minimum(ia, n - 1), np.minimum(ib, n - 1)
    ok = (ia < n) & (ib < n) & (sorted_uids[ia_c] == uid_a) & (sorted_uids[ib_c] == uid_b)
    rows, cols = order[ia[ok]], order[ib[ok]]
    graph = coo_matrix((np.ones(rows.size, dtype=np.int8), (rows, cols)), shape=(n, n))
    _, labels = connected_components(graph, directed=False)
    # label each component by its smallest uid: stable across runs, whatever SciPy numbers them
    smallest = np.full(labels.max() + 1, np.iinfo(np.int64).max, dtype=np.int64)
    np.minimum.at(smallest, labels, uids)
    return smallest[labels]


def decide_clusters(
    prepared: pl.DataFrame,
    pairs: pl.DataFrame,
    *,
    keep: str,
    reason: str,
    measure: str,
    similarity_to_rep: Callable[[np.ndarray, np.ndarray], np.ndarray],
    action: str = "reject",
    report_pairs: pl.DataFrame | None = None,
    linkage: str = "union_find",
) -> GlobalDecision:
    """Clusters from the accepted ``pairs`` (``uid_a``, ``uid_b``), a representative per cluster, rejects.

    ``prepared`` holds ``uid``, ``id``, ``source_file``, ``source_line``, ``n_chars`` (and ``quality``
    for ``keep="quality"``). ``similarity_to_rep(member_uids, rep_uids)`` scores each rejected member
    against its representative (a union-find cluster can join two records through a third, so the pair
    that merged them is not necessarily the member-representative pair). ``measure`` names the score in
    ``detail`` ("estimated Jaccard", "cosine"). ``report_pairs`` (``uid_a``, ``uid_b``, ``similarity``)
    is passed through to the decision for the report; by default ``pairs`` if it has ``similarity``.

    ``linkage``: ``union_find`` makes clusters the connected components of the pairs (A~B and B~C put A
    and C together, however far apart they are: highest recall); ``star`` covers the records best first
    by the keep policy, each unclaimed record claiming its unclaimed neighbours (every member is similar
    to its own representative, and no two representatives are similar: the per-record "keep unless
    similar to a kept record" loop, over the sparse pair graph).
    """
    if keep not in KEEP_POLICIES:
        raise ValueError(f"keep must be one of {KEEP_POLICIES}, got {keep!r}")
    if report_pairs is None and "similarity" in pairs.columns:
        report_pairs = pairs.select("uid_a", "uid_b", "similarity")
    if pairs.height == 0 or prepared.height == 0:
        return GlobalDecision(empty_rejects().drop("stage"), None, report_pairs)
    if linkage == "star":
        pairs = _star_pairs(prepared, pairs, keep)
    elif linkage != "union_find":
        raise ValueError(f"linkage must be 'union_find' or 'star', got {linkage!r}")
    labels = component_labels(
        prepared["uid"].to_numpy(), pairs["uid_a"].to_numpy().astype(np.int64), pairs["uid_b"].to_numpy().astype(np.int64)
    )
    frame = prepared.with_columns(cluster=pl.Series(labels, dtype=pl.Int64))
    sizes = frame.group_by("cluster").len()
    members = frame.join(sizes.filter(pl.col("len") > 1).select("cluster"), on="cluster")
    reps = priority_order(members, keep).unique("cluster", keep="first", maintain_order=False).select(
        "cluster", rep_uid="uid", rep_id="id", rep_src=pl.format("{}:{}", "source_file", "source_line")
    )
    members = members.join(reps, on="cluster")
    others = members.filter(pl.col("uid") != pl.col("rep_uid"))
    sims = similarity_to_rep(others["uid"].to_numpy(), others["rep_uid"].to_numpy()) if others.height else np.empty(0)
    others = others.with_columns(similarity=pl.Series(np.asarray(sims, dtype=np.float64)).round(4))
    clusters = pl.concat(
        [
            members.filter(pl.col("uid") == pl.col("rep_uid")).select("uid", "rep_uid", similarity=pl.lit(1.0)),
            others.select("uid", "rep_uid", "similarity"),
        ]
    ).sort("uid")
    if action == "group":
        rejects = empty_rejects().drop("stage")
    else:
        rejects = others.select(
            "uid",
            reason=pl.lit(reason),
            detail=pl.format(f"near-duplicate of {{}} ({measure} {{}})", "rep_src", pl.col("similarity").round(3)),
            duplicate_of=pl.col("rep_id"),
        ).sort("uid")
    return GlobalDecision(rejects, clusters, report_pairs)


def _star_pairs(prepared: pl.DataFrame, pairs: pl.DataFrame, keep: str) -> pl.DataFrame:
    """(center, member) pairs of the best-first star cover of ``pairs`` (see :func:`decide_clusters`)."""
    ranked = priority_order(prepared.select([c for c in ("uid", "n_chars", "quality") if c in prepared.columns]), keep)
    uids = np.sort(prepared["uid"].to_numpy().astype(np.int64))
    a = np.searchsorted(uids, pairs["uid_a"].to_numpy().astype(np.int64))
    b = np.searchsorted(uids, pairs["uid_b"].to_numpy().astype(np.int64))
    center = greedy_centers(uids.size, a, b, np.searchsorted(uids, ranked["uid"].to_numpy().astype(np.int64)))
    star = center != np.arange(uids.size)
    return pl.DataFrame({"uid_a": uids[center[star]], "uid_b": uids[star]}, schema={"uid_a": pl.Int64, "uid_b": pl.Int64})
