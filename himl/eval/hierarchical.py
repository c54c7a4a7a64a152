"""Per-level retrieval and clustering metrics for hierarchical labels, and mistake severity.

`labels_2d [N, L]` holds column 0 coarsest ... column L-1 finest. Level l's classes are the
label prefixes `labels_2d[:, :l+1]` (`himl.hierarchy.prefix_ids`), so a label reused under
two parents is two classes. The kNN is computed once (with enough neighbours for every
level, capped at `max_k`) and reused for every level and every metric.

Mistake severity follows Bertinetto et al., "Making Better Mistakes: Leveraging Class
Hierarchies with Deep Networks", CVPR 2020: the height of the lowest common ancestor (LCA)
between the query's label path and a neighbour's (0 = same finest label, L = only the root
in common; `himl.hierarchy.lca_height`).

- "mean_lca_height@K": mean LCA height over the K nearest neighbours of every query
  (Bertinetto's "average hierarchical distance@k" with neighbours as predictions).
- "mistake_severity": mean LCA height of the first neighbour over the queries where it is
  a mistake at the finest level (Bertinetto's "average mistake severity").
- "hierarchical_precision@K": mean over the K nearest neighbours of |shared ancestors| / L,
  i.e. (L - LCA height) / L: the set-based hierarchical precision of Kiritchenko et al.
  (2005) with every label a full path of length L.
- Per level, "accuracy@K": kNN classification accuracy, the majority label of the K nearest
  neighbours (ties go to the label met first, i.e. nearest) equal to the query's label.
  (Recall@K, "the label is among the K neighbours", is reported separately.)
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from himl.eval.clustering import cluster_scores, kmeans_labels
from himl.eval.knn import METRICS, as_embeddings, iter_knn
from himl.eval.retrieval import DEFAULT_MAX_K, RankAccumulator, _num_neighbours, check_ks
from himl.hierarchy import as_label_matrix, lca_height, prefix_ids


def majority_vote(neighbour_labels: np.ndarray) -> np.ndarray:
    """Most frequent label per row of `[b, K]` non-negative ints; ties -> earliest column."""
    b, k = neighbour_labels.shape
    lab = neighbour_labels.astype(np.int64)
    keys = np.arange(b, dtype=np.int64)[:, None] * (int(lab.max(initial=0)) + 1) + lab
    uniq, first, counts = np.unique(keys.ravel(), return_index=True, return_counts=True)
    rows = first // k
    score = counts * (k + 1) - (first % k)  # more votes first, then smaller position
    starts = np.flatnonzero(np.r_[True, rows[1:] != rows[:-1]])
    best = np.maximum.reduceat(score, starts)
    winner = score == np.repeat(best, np.diff(np.r_[starts, len(score)]))
    out = np.empty(b, dtype=np.int64)
    out[rows[winner]] = lab.ravel()[first[winner]]
    return out


def hierarchical_metrics(
    embeddings,
    labels_2d,
    *,
    ks: Sequence[int] = (1, 2, 4, 8),
    level_names: Sequence[str] | None = None,
    seed: int = 0,
    metric: str = "cosine",
    block_size: int = 4096,
    max_k: int | None = DEFAULT_MAX_K,
    clustering: bool = True,
    average: str = "arithmetic",
    mesh=None,
) -> dict:
    """Every retrieval / clustering metric per level of the label tree, plus mistake severity.

    Args:
      embeddings: `[N, D]` floats. labels_2d: `[N, L]` ints, column 0 coarsest.
      ks: K values for Recall@K, accuracy@K, mean_lca_height@K, hierarchical_precision@K.
      level_names: L names (default "level_0", ...), used as keys.
      seed: k-means seed. metric: "cosine" or "euclidean".
      max_k: cap on R for R-Precision / MAP@R (None: no cap; the per-level
        "num_r_truncated" counts queries whose R was capped, "r_cap" is the cap).
      clustering: also run k-means per level (NMI/AMI); the expensive part for many classes.
      average: NMI/AMI normaliser for the headline "nmi"/"ami" (see `clustering`).
      mesh: shard the kNN over this device mesh (`himl.eval.search_mesh()`).

    Returns:
      {"<level name>": {"recall@K"..., "precision@1", "r_precision", "map@r", "accuracy@K"...,
      "nmi", "nmi_arithmetic", "nmi_geometric", "ami", "num_classes", "num_left_out", ...},
      "mean_lca_height@K"..., "hierarchical_precision@K"..., "mistake_severity",
      "num_mistakes@1", "num_levels", "k"} with plain Python numbers.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    ks = check_ks(ks)
    x = as_embeddings(embeddings)
    n = x.shape[0]
    if n < 2:
        raise ValueError(f"retrieval needs at least 2 samples, got {n}")
    labels_2d = as_label_matrix(labels_2d, name="labels_2d")
    if labels_2d.shape[0] != n:
        raise ValueError(f"labels_2d has {labels_2d.shape[0]} rows but there are {n} embeddings")
    num_levels = labels_2d.shape[1]
    names = [f"level_{i}" for i in range(num_levels)] if level_names is None else level_names
    names = [str(s) for s in names]
    if len(names) != num_levels or len(set(names)) != num_levels:
        raise ValueError(f"need {num_levels} distinct level names, got {names}")

    level_ids, level_r = [], []
    for lvl in range(num_levels):
        ids = prefix_ids(labels_2d, lvl + 1)
        counts = np.bincount(ids)
        level_ids.append(ids)
        level_r.append(counts[ids] - 1)
    r_max = max(int(r.max()) for r in level_r)
    k, r_cap = _num_neighbours(ks, r_max, n - 1, max_k)
    accs = [RankAccumulator(ks, k, r_cap) for _ in range(num_levels)]
    correct = [dict.fromkeys(ks, 0) for _ in range(num_levels)]
    lca_sum = dict.fromkeys(ks, 0.0)
    sev_sum, num_mistakes = 0.0, 0

    for start, idx, _ in iter_knn(x, k=k, metric=metric, block_size=block_size, mesh=mesh):
        sl = slice(start, start + idx.shape[0])
        heights = lca_height(labels_2d[sl][:, None, :], labels_2d[idx])  # [b, k]
        for kk in ks:
            lca_sum[kk] += float(heights[:, :kk].mean(axis=1).sum())
        mistakes = heights[:, 0] > 0
        num_mistakes += int(mistakes.sum())
        sev_sum += float(heights[mistakes, 0].sum())
        for lvl in range(num_levels):
            ids = level_ids[lvl]
            nbr = ids[idx]
            accs[lvl].update(nbr == ids[sl][:, None], level_r[lvl][sl])
            for kk in ks:
                vote = majority_vote(nbr[:, : min(kk, k)])
                correct[lvl][kk] += int((vote == ids[sl]).sum())

    out: dict = {}
    for lvl, name in enumerate(names):
        res = accs[lvl].result()
        res.pop("k")
        for kk in ks:
            res[f"accuracy@{kk}"] = correct[lvl][kk] / n
        num_classes = int(level_ids[lvl].max()) + 1
        res["num_classes"] = num_classes
        if clustering:
            emb = np.asarray(x)
            if metric == "cosine":
                emb = emb / np.maximum(np.linalg.norm(emb, axis=1, keepdims=True), 1e-12)
            clusters = kmeans_labels(emb, num_classes, seed=seed)
            res.update(cluster_scores(level_ids[lvl], clusters, average=average))
        out[name] = res
    for kk in ks:
        mean_h = lca_sum[kk] / n
        out[f"mean_lca_height@{kk}"] = mean_h
        out[f"hierarchical_precision@{kk}"] = (num_levels - mean_h) / num_levels
    out["mistake_severity"] = sev_sum / num_mistakes if num_mistakes else 0.0
    out["num_mistakes@1"] = num_mistakes
    out["num_levels"] = num_levels
    out["k"] = int(k)
    return out
