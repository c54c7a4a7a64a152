"""N-pairs (Sohn 2016) and lifted structure (Oh Song et al. 2016, PML's generalized form)
as float64 plain loops with PML's reductions."""

from __future__ import annotations

import math

import numpy as np

from references.common import unit


def ref_npairs(x, y):
    # One pair per class: its first sample in batch order and its second one.
    pairs, seen = [], set()
    for i in range(len(y)):
        if y[i] in seen:
            continue
        seen.add(y[i])
        others = [j for j in range(len(y)) if j != i and y[j] == y[i]]
        if others:
            pairs.append((i, others[0]))
    if not pairs:
        return 0.0
    losses = []
    for a, _ in pairs:
        logits = [float(np.dot(unit(x[a]), unit(x[p]))) for _, p in pairs]
        top = max(logits)
        log_z = top + math.log(sum(math.exp(v - top) for v in logits))
        losses.append(log_z - logits[len(losses)])
    return sum(losses) / len(losses)


def ref_lifted(x, y, pos_margin=0.0, neg_margin=1.0):
    n = len(y)

    def dist(i, j):
        return math.sqrt(float(np.sum((unit(x[i]) - unit(x[j])) ** 2)))

    if all(y[i] == y[0] for i in range(n)):
        return 0.0
    losses = []
    for i in range(n):
        for j in range(n):
            if i == j or y[i] != y[j]:
                continue
            total = 0.0
            for a in (i, j):
                for k in range(n):
                    if y[k] != y[a]:
                        total += math.exp(neg_margin - dist(a, k))
            value = math.log(total) + dist(i, j) - pos_margin
            losses.append(max(value, 0.0) ** 2 / 2)
    return sum(losses) / len(losses) if losses else 0.0
