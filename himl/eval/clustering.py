"""Clustering quality: NMI and AMI of k-means (k = number of classes) against the labels.

As in PML's `AccuracyCalculator` (and most DML papers since Song et al., CVPR 2016), k-means
is run with as many clusters as there are classes. scikit-learn's NMI/AMI default to the
"arithmetic" mean of the entropies in the normaliser; the official HIST code uses
"geometric". Both NMI variants are always returned; `average` picks the headline "nmi"/"ami".
"""

from __future__ import annotations

import numpy as np

from himl.distances import l2_normalize
from himl.eval.knn import METRICS, as_embeddings
from himl.eval.retrieval import as_labels

AVERAGES = ("arithmetic", "geometric", "min", "max")


def kmeans_labels(
    embeddings, num_clusters: int, *, seed: int = 0, n_init: int = 1, max_iter: int = 100
) -> np.ndarray:
    """Cluster ids `[N]` of scikit-learn k-means (k-means++ init, Lloyd), deterministic in seed."""
    from sklearn.cluster import KMeans  # here: ~2 s off every command's start (probe.py)

    x = np.asarray(embeddings, dtype=np.float32)
    if num_clusters >= x.shape[0]:
        return np.arange(x.shape[0])
    km = KMeans(num_clusters, n_init=n_init, max_iter=max_iter, random_state=seed)
    return km.fit_predict(x)


def cluster_scores(labels, clusters, *, average: str = "arithmetic") -> dict:
    """NMI (every averaging) and AMI of cluster ids against labels, as plain floats."""
    from sklearn.metrics import adjusted_mutual_info_score, normalized_mutual_info_score

    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    out = {
        "nmi": float(normalized_mutual_info_score(labels, clusters, average_method=average)),
        "nmi_arithmetic": float(normalized_mutual_info_score(labels, clusters)),
        "nmi_geometric": float(
            normalized_mutual_info_score(labels, clusters, average_method="geometric")
        ),
        "ami": float(adjusted_mutual_info_score(labels, clusters, average_method=average)),
    }
    return out


def clustering_metrics(
    embeddings,
    labels,
    *,
    seed: int = 0,
    n_init: int = 1,
    max_iter: int = 100,
    average: str = "arithmetic",
    metric: str = "cosine",
) -> dict:
    """NMI / AMI of k-means with k = number of distinct labels.

    Args:
      embeddings: `[N, D]` floats. labels: `[N]` ints.
      seed, n_init, max_iter: k-means settings (scikit-learn `KMeans`).
      average: normaliser of the headline "nmi" and "ami" ("arithmetic" = sklearn default,
        "geometric" = HIST code).
      metric: "cosine" clusters the L2-normalised embeddings (the geometry the retrieval
        metrics use); "euclidean" clusters them as given.

    Returns:
      {"nmi", "nmi_arithmetic", "nmi_geometric", "ami", "num_clusters"}.
    """
    if metric not in METRICS:
        raise ValueError(f"metric must be one of {METRICS}, got {metric!r}")
    x = as_embeddings(embeddings)
    labels = as_labels(labels, x.shape[0])
    if metric == "cosine":
        x = l2_normalize(x)
    num_clusters = len(np.unique(labels))
    clusters = kmeans_labels(x, num_clusters, seed=seed, n_init=n_init, max_iter=max_iter)
    out = cluster_scores(labels, clusters, average=average)
    out["num_clusters"] = int(num_clusters)
    return out
