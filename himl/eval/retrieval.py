"""Retrieval metrics from exact kNN: Recall@K, Precision@1, R-Precision and MAP@R.

Definitions (Musgrave, Belongie & Lim, "A Metric Learning Reality Check", ECCV 2020;
matching `pytorch_metric_learning.utils.accuracy_calculator.AccuracyCalculator`):

- R for a query = number of gallery samples with its label (minus the query itself when
  queries are the gallery).
- Recall@K (the DML convention): fraction of *all* queries with at least one same-label
  sample among their K nearest neighbours. Queries with R = 0 count as misses.
- Precision@1: fraction of the first neighbours with the query's label.
- R-Precision: (same-label samples among the first R neighbours) / R.
- MAP@R: (1/R) * sum_{i <= R} P(i) * rel(i), P(i) the precision at rank i.
- Queries with R = 0 ("left out") are excluded from Precision@1, R-Precision and MAP@R,
  as PML does; their number is reported as "num_left_out".

R is capped at `min(max R, max_k)` whatever the ks (`max_k=None`: no cap, the exact
definition, as PML's current `AccuracyCalculator(k=None)`; the default 1024 bounds the
neighbours fetched per query, near the 1023 that PML's faiss search allowed and the
"Reality Check" benchmarks used): the search fetches `k = max(max(ks), that cap)`
neighbours, so asking for a large Recall@K never changes R-Precision or MAP@R. Queries
whose R exceeds the cap use R' = cap in both the numerator window and the denominator, as
PML does with a finite k; their count is "num_r_truncated", the cap "r_cap".
"""

from __future__ import annotations

import operator
import warnings
from collections.abc import Sequence

import numpy as np

from himl.eval.knn import as_embeddings, iter_knn
from himl.hierarchy import are_names

DEFAULT_MAX_K = 1024


def as_labels(labels, num: int, *, name: str = "labels") -> np.ndarray:
    """Checks `labels` is a vector of length `num` of integers or class names; returns int64
    ids (names become the ids of their sorted order)."""
    return as_label_vectors((labels, num, name))[0]


def as_label_vectors(*vectors: tuple) -> list[np.ndarray]:
    """Checks each `(labels, num, name)` and returns them as int64 vectors.

    Integer labels are kept. Class names (strings) become the ids of their sorted order,
    over all the vectors together, so one name has one id in each (a query and its
    gallery, a probe's train and test split). Integers in one vector and names in another
    are refused: they cannot be matched.
    """
    checked = []
    for labels, num, name in vectors:
        labels = np.asarray(labels)
        if labels.ndim == 2 and labels.shape[1] == 1:
            labels = labels[:, 0]
        if labels.ndim != 1:
            raise ValueError(f"{name} must have shape [N], got {labels.shape}")
        if labels.shape[0] != num:
            raise ValueError(f"{name} has {labels.shape[0]} entries but there are {num} embeddings")
        if not (np.issubdtype(labels.dtype, np.integer) or are_names(labels)):
            raise ValueError(
                f"{name} must be integers or class names (strings), got dtype {labels.dtype}"
            )
        checked.append((labels, name))
    named = [name for labels, name in checked if not np.issubdtype(labels.dtype, np.integer)]
    if not named:
        return [labels.astype(np.int64) for labels, _ in checked]
    if len(named) < len(checked):
        numbered = next(n for labels, n in checked if np.issubdtype(labels.dtype, np.integer))
        raise ValueError(
            f"{named[0]} are class names but {numbered} are integers: give both the same way"
        )
    names = [labels.astype(str) for labels, _ in checked]
    _, ids = np.unique(np.concatenate(names), return_inverse=True)
    return np.split(ids.astype(np.int64), np.cumsum([len(n) for n in names])[:-1])


def check_ks(ks: int | Sequence[int]) -> tuple[int, ...]:
    """`ks` as a tuple of positive ints; a single int K is taken as `(K,)`. Anything else
    (a string, a float, a non-integer entry) raises one ValueError saying what to pass."""
    if isinstance(ks, int | np.integer) and not isinstance(ks, bool):
        ks = (ks,)
    try:
        if isinstance(ks, str | bytes):
            raise TypeError
        entries = tuple(ks)
        if any(isinstance(k, bool) for k in entries):
            raise TypeError
        ks = tuple(operator.index(k) for k in entries)
    except TypeError:
        raise ValueError(
            f"ks must be a positive int or a sequence of them, e.g. ks=(1, 10), got {ks!r}"
        ) from None
    if not ks or min(ks) < 1:
        raise ValueError(f"ks must be a non-empty sequence of positive ints, got {ks}")
    if len(set(ks)) != len(ks):  # each K is one entry of the results: a repeat is a typo
        raise ValueError(f"ks must not repeat a K, got {ks}")
    return ks


class RankAccumulator:
    """Sums per-query rank metrics over streamed query blocks.

    `update(match [b, k] bool, r [b] int)`: `match[q, j]` is whether neighbour j of query q
    has its label, `r[q]` the number of relevant gallery samples. R is capped at `r_cap`
    (default k; see the module doc). `result()` gives the metric dict.
    """

    def __init__(self, ks: Sequence[int], k: int, r_cap: int | None = None):
        self.ks, self.k = tuple(ks), k
        self.r_cap = k if r_cap is None else min(r_cap, k)
        self.hits = dict.fromkeys(self.ks, 0)
        self.p1 = self.rp = self.map = 0.0
        self.num = self.left_out = self.truncated = 0

    def update(self, match: np.ndarray, r: np.ndarray) -> None:
        self.num += match.shape[0]
        for kk in self.ks:
            self.hits[kk] += int(match[:, :kk].any(axis=1).sum())
        keep = r > 0
        self.left_out += int((~keep).sum())
        self.truncated += int((r > self.r_cap).sum())
        match, r = match[keep], np.minimum(r[keep], self.r_cap)
        if not match.shape[0]:
            return
        self.p1 += float(match[:, 0].sum())
        cap = self.r_cap
        rel = match[:, :cap] & (np.arange(cap)[None, :] < r[:, None])
        self.rp += float((rel.sum(axis=1) / r).sum())
        precision = np.cumsum(rel, axis=1) / np.arange(1, cap + 1)[None, :]
        self.map += float(((precision * rel).sum(axis=1) / r).sum())

    def result(self) -> dict:
        out = {f"recall@{kk}": self.hits[kk] / self.num for kk in self.ks}
        scored = self.num - self.left_out
        # PML returns 0 when every query is left out.
        out["precision@1"] = self.p1 / scored if scored else 0.0
        out["r_precision"] = self.rp / scored if scored else 0.0
        out["map@r"] = self.map / scored if scored else 0.0
        out["num_queries"] = int(self.num)
        out["num_left_out"] = int(self.left_out)
        out["num_r_truncated"] = int(self.truncated)
        out["r_cap"] = int(self.r_cap)
        out["k"] = int(self.k)
        return out


def _num_neighbours(ks, r_max: int, available: int, max_k: int | None) -> tuple[int, int]:
    """`(neighbours to fetch, R cap)`: the cap is `min(r_max, max_k)` (`max_k` None or 0:
    `r_max`) whatever the ks. A K above the `available` neighbours is clipped to them
    (Recall@K then equals Recall@available), with a warning naming K."""
    if max(ks) > available:
        warnings.warn(
            f"Recall@K for K in {[k for k in ks if k > available]}: only {available} "
            f"neighbours exist, so these K are clipped to {available} (their Recall@K is "
            f"Recall@{available})",
            stacklevel=3,
        )
    r_cap = max(1, min(r_max, max_k or r_max, available))
    return max(1, min(max(max(ks), r_cap), available)), r_cap


def retrieval_metrics(
    embeddings,
    labels,
    *,
    ks: int | Sequence[int] = (1, 2, 4, 8),
    metric: str = "cosine",
    block_size: int = 4096,
    max_k: int | None = DEFAULT_MAX_K,
    mesh=None,
) -> dict:
    """Leave-one-out retrieval metrics: every sample queries all the others.

    Args:
      embeddings: `[N, D]` floats (NumPy or JAX). labels: `[N]` ints or class names.
      ks: the K of Recall@K, a sequence of positive ints or one int (K larger than N - 1
        is clipped to N - 1, with a warning).
      metric: "cosine" or "euclidean". block_size: see `himl.eval.knn.knn`.
      max_k: cap on R for R-Precision / MAP@R, i.e. on the neighbours fetched; None: no
        cap (see module doc).
      mesh: shard the search over this device mesh (`himl.eval.search_mesh()`).

    Returns:
      dict of plain floats/ints: "recall@K" per K, "precision@1", "r_precision", "map@r",
      "num_queries", "num_left_out", "num_r_truncated", "k".
    """
    ks = check_ks(ks)
    embeddings = as_embeddings(embeddings)
    n = embeddings.shape[0]
    labels = as_labels(labels, n)
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 samples, got {n}")
    _, inverse, counts = np.unique(labels, return_inverse=True, return_counts=True)
    r_all = counts[inverse] - 1
    k, r_cap = _num_neighbours(ks, int(r_all.max()), n - 1, max_k)
    acc = RankAccumulator(ks, k, r_cap)
    for start, idx, _ in iter_knn(embeddings, k=k, metric=metric, block_size=block_size, mesh=mesh):
        q = labels[start : start + idx.shape[0]]
        acc.update(labels[idx] == q[:, None], r_all[start : start + idx.shape[0]])
    return acc.result()


def query_gallery_retrieval_metrics(
    query_emb,
    query_labels,
    gallery_emb,
    gallery_labels,
    *,
    ks: int | Sequence[int] = (1, 10, 20, 30),
    metric: str = "cosine",
    block_size: int = 4096,
    max_k: int | None = DEFAULT_MAX_K,
    mesh=None,
) -> dict:
    """Query -> gallery retrieval metrics (In-Shop protocol); no sample is excluded.

    Args:
      query_emb `[Q, D]`, query_labels `[Q]`, gallery_emb `[G, D]`, gallery_labels `[G]`.
      Other arguments and the result as in `retrieval_metrics`; here R is the number of
      gallery samples with the query's label, and queries with R = 0 are left out.
    """
    ks = check_ks(ks)
    query_emb = as_embeddings(query_emb, name="query_emb")
    gallery_emb = as_embeddings(gallery_emb, name="gallery_emb")
    q_n, g_n = query_emb.shape[0], gallery_emb.shape[0]
    query_labels, gallery_labels = as_label_vectors(
        (query_labels, q_n, "query_labels"), (gallery_labels, g_n, "gallery_labels")
    )
    uniq, counts = np.unique(gallery_labels, return_counts=True)
    pos = np.clip(np.searchsorted(uniq, query_labels), 0, len(uniq) - 1)
    r_all = np.where(uniq[pos] == query_labels, counts[pos], 0)
    k, r_cap = _num_neighbours(ks, int(r_all.max()), g_n, max_k)
    acc = RankAccumulator(ks, k, r_cap)
    for start, idx, _ in iter_knn(
        query_emb,
        gallery_emb,
        k=k,
        metric=metric,
        block_size=block_size,
        exclude_self=False,
        mesh=mesh,
    ):
        q = query_labels[start : start + idx.shape[0]]
        acc.update(gallery_labels[idx] == q[:, None], r_all[start : start + idx.shape[0]])
    return acc.result()
