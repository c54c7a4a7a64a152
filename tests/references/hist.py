"""HIST (Lim et al. 2022, "Hypergraph-Induced Semantic Tuplet Loss") as plain loops of the
official semantics (ljin0429/HIST): Mahalanobis distances to the class distributions, the
semantic hypergraph's incidence and Laplacian, the two-layer HGNN, cross-entropies."""

from __future__ import annotations

import math

import numpy as np


def ref_distances(x, means, log_vars):
    """Squared distances `[N, C]` of the unit embeddings to the unit class means, each
    coordinate divided by its variance `exp(relu6(log_var))`."""
    n, num_classes = x.shape[0], means.shape[0]
    xh = [x[i] / max(math.sqrt(sum(v * v for v in x[i])), 1e-12) for i in range(n)]
    muh = [
        means[c] / max(math.sqrt(sum(v * v for v in means[c])), 1e-12) for c in range(num_classes)
    ]
    d2 = np.zeros((n, num_classes))
    for i in range(n):
        for c in range(num_classes):
            for k in range(x.shape[1]):
                s2 = math.exp(min(max(log_vars[c, k], 0.0), 6.0))
                d2[i, c] += (xh[i][k] - muh[c][k]) ** 2 / s2
    return d2


def ref_incidence(d2, y, alpha):
    """Official layout: only the columns of the classes present in the batch (sorted)."""
    present = sorted(set(int(v) for v in y))
    h = np.zeros((len(y), len(present)))
    for i in range(len(y)):
        for j, c in enumerate(present):
            h[i, j] = 1.0 if y[i] == c else math.exp(-alpha * d2[i, c])
    return h, present


def ref_laplacian(h):
    """`G = Dv^-1/2 H De^-1 H^T Dv^-1/2` (edge weights 1), entry by entry."""
    n, e = h.shape
    dv = [sum(h[i, k] for k in range(e)) for i in range(n)]
    de = [sum(h[i, k] for i in range(n)) for k in range(e)]
    g = np.zeros((n, n))
    for i in range(n):
        for j in range(n):
            for k in range(e):
                g[i, j] += h[i, k] * h[j, k] / de[k] / math.sqrt(dv[i] * dv[j])
    return g


def ref_hgnn(x, g, p):
    """Two layers with batch norm in train mode (biased variance, eps 1e-5), by hand."""
    t1, t2, bn = p["theta1"], p["theta2"], p["bn1"]
    n, hidden, num_classes = x.shape[0], t1["kernel"].shape[1], t2["kernel"].shape[1]
    a = np.array([[sum(x[i, k] * t1["kernel"][k, f] for k in range(x.shape[1])) + t1["bias"][f]
                   for f in range(hidden)] for i in range(n)])  # fmt: skip
    a = np.array([[sum(g[i, j] * a[j, f] for j in range(n)) for f in range(hidden)]
                  for i in range(n)])  # fmt: skip
    mean = [sum(a[i, f] for i in range(n)) / n for f in range(hidden)]
    var = [sum((a[i, f] - mean[f]) ** 2 for i in range(n)) / n for f in range(hidden)]
    z = np.zeros_like(a)
    for i in range(n):
        for f in range(hidden):
            v = (a[i, f] - mean[f]) / math.sqrt(var[f] + 1e-5) * bn["scale"][f] + bn["bias"][f]
            z[i, f] = v if v > 0 else 0.1 * v
    o = np.array([[sum(z[i, f] * t2["kernel"][f, c] for f in range(hidden)) + t2["bias"][c]
                   for c in range(num_classes)] for i in range(n)])  # fmt: skip
    out = np.array([[sum(g[i, j] * o[j, c] for j in range(n)) for c in range(num_classes)]
                    for i in range(n)])  # fmt: skip
    unbiased = [v * n / (n - 1) for v in var]
    return out, mean, unbiased


def ref_ce(logits, y):
    """Mean softmax cross-entropy of integer labels."""
    total = 0.0
    for i in range(len(y)):
        lse = math.log(sum(math.exp(v) for v in logits[i]))
        total += lse - logits[i][y[i]]
    return total / len(y)


def ref_hist(x, y, params, tau, alpha, lambda_s):
    """`(loss, distribution loss, HGNN batch mean, unbiased batch variance)`: the total is
    `CE(-tau d2, y) + lambda_s CE(HGNN(x, G), y)`."""
    d2 = ref_distances(x, params["means"], params["log_vars"])
    l_d = ref_ce(-tau * d2, y)
    h, _ = ref_incidence(d2, y, alpha)
    g = ref_laplacian(h)
    logits, mean, var = ref_hgnn(x, g, params["hgnn"])
    return l_d + lambda_s * ref_ce(logits, y), l_d, mean, var
