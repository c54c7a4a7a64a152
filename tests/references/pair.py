"""Classic pair/triplet losses as float64 plain loops, from the definitions with PML's
reductions (mean over the non-zero terms): contrastive (Hadsell et al. 2006), triplet
margin (Weinberger & Saul 2009; Schroff et al. 2015 for batch-hard / semi-hard mining),
multi-similarity (Wang et al. 2019), NT-Xent (Chen et al. 2020, SimCLR) and SupCon
(Khosla et al. 2020, Eq. 2 "out")."""

from __future__ import annotations

import itertools

import numpy as np

from references.common import avg_nonzero, measure


def ref_contrastive(x, y, pos_margin=0.0, neg_margin=1.0, distance="euclidean"):
    m, inv = measure(x, distance)
    sign = -1 if inv else 1
    pos, neg = [], []
    for i, j in itertools.product(range(len(y)), repeat=2):
        if i != j and y[i] == y[j]:
            pos.append(max(sign * (m[i, j] - pos_margin), 0))
        elif y[i] != y[j]:
            neg.append(max(sign * (neg_margin - m[i, j]), 0))
    return avg_nonzero(pos) + avg_nonzero(neg)


def ref_triplet(
    x, y, margin=0.05, swap=False, smooth_loss=False, mining="all", distance="euclidean"
):
    m, inv = measure(x, distance)
    d = -m if inv else m
    b = len(y)
    triplets = []
    if mining == "batch_hard":
        for a in range(b):
            ps = [p for p in range(b) if p != a and y[p] == y[a]]
            ns = [n for n in range(b) if y[n] != y[a]]
            if ps and ns:
                triplets.append((a, max(ps, key=lambda p: d[a, p]), min(ns, key=lambda n: d[a, n])))
    else:
        for a, p, n in itertools.product(range(b), repeat=3):
            if a != p and y[a] == y[p] and y[a] != y[n]:
                # PML TripletMarginMiner "semihard": 0 < d_an - d_ap <= margin.
                if mining == "semi_hard" and not (0 < d[a, n] - d[a, p] <= margin):
                    continue
                triplets.append((a, p, n))
    losses = []
    for a, p, n in triplets:
        an = min(d[a, n], d[p, n]) if swap else d[a, n]
        v = d[a, p] - an + margin
        losses.append(np.log1p(np.exp(v)) if smooth_loss else max(v, 0.0))
    return avg_nonzero(losses)


def ref_multi_similarity(x, y, alpha=2.0, beta=50.0, base=0.5):
    s, _ = measure(x, "cosine")
    b = len(y)
    if b < 2:
        return 0.0
    total = 0.0
    for i in range(b):
        ps = [s[i, j] for j in range(b) if j != i and y[j] == y[i]]
        ns = [s[i, j] for j in range(b) if y[j] != y[i]]
        if ps:
            total += np.log(1 + sum(np.exp(-alpha * (v - base)) for v in ps)) / alpha
        if ns:
            total += np.log(1 + sum(np.exp(beta * (v - base)) for v in ns)) / beta
    return total / b


def ref_ntxent(x, y, temperature=0.07):
    s, _ = measure(x, "cosine")
    b = len(y)
    if not any(y[i] != y[j] for i in range(b) for j in range(b)):
        return 0.0
    losses = []
    for a, p in itertools.product(range(b), repeat=2):
        if a != p and y[a] == y[p]:
            negs = [np.exp(s[a, n] / temperature) for n in range(b) if y[n] != y[a]]
            num = np.exp(s[a, p] / temperature)
            losses.append(-np.log(num / (num + sum(negs))))
    return float(np.mean(losses)) if losses else 0.0


def ref_supcon(x, y, temperature=0.1):
    s, _ = measure(x, "cosine")
    b = len(y)
    has_pos = any(y[i] == y[j] for i in range(b) for j in range(b) if i != j)
    has_neg = any(y[i] != y[j] for i in range(b) for j in range(b))
    if not (has_pos and has_neg):
        return 0.0
    losses = []
    for i in range(b):
        ps = [j for j in range(b) if j != i and y[j] == y[i]]
        if not ps:
            continue
        log_den = np.log(sum(np.exp(s[i, k] / temperature) for k in range(b) if k != i))
        losses.append(-np.mean([s[i, p] / temperature - log_den for p in ps]))
    return avg_nonzero(losses)


# The losses of the table above taking `(x, y)` only; `experiments/bench_losses.py` times them.
CLASSIC_REFS = {
    "contrastive": ref_contrastive,
    "triplet_margin": ref_triplet,
    "multi_similarity": ref_multi_similarity,
    "ntxent": ref_ntxent,
    "supcon": ref_supcon,
}
