"""HiMulCon / HiConE / HiMulConE (Zhang et al. 2022, "Use All The Labels", CVPR) as
float64 plain loops: `oracle_reference` replays the official HMLC algorithm
(salesforce/hierarchicalContrastiveLearning), `oracle_paper` evaluates Eq. 4-7 pair by pair.
`x [N, D]` or `[N, V, D]`, labels `[N, L]` coarsest column first."""

from __future__ import annotations

import math

import numpy as np

# HiConE and HiMulConE clamp each level's loss by the finer levels' largest; HiConE has
# no level penalty.
CLAMP = {"himulcon": False, "hicone": True, "himulcone": True}
PENALTY = {"exp": math.exp, "pow2": lambda v: 2.0**v, "none": lambda v: 1.0}


def _normalise(x):
    x = np.asarray(x, np.float64)
    if x.ndim == 2:
        x = x[:, None, :]
    norm = np.sqrt((x**2).sum(-1, keepdims=True))
    return x / np.maximum(norm, 1e-12)


def _penalty(loss, level_penalty):
    return "none" if loss == "hicone" else level_penalty


def oracle_reference(x, y, loss, t=0.07, level_penalty="exp", bt=0.07):
    """Official HMLC semantics, with explicit re-sorting of the batch after each level."""
    feats, labels = _normalise(x), np.asarray(y)
    views, num_levels = feats.shape[1], labels.shape[1]
    lam = PENALTY[_penalty(loss, level_penalty)]
    total, lower_max = 0.0, -math.inf
    for level in range(1, num_levels):
        plen = num_levels - level
        anchors = [(s, a) for s in range(len(labels)) for a in range(views)]
        per_anchor = []
        for s, a in anchors:
            others = [(s2, b) for s2, b in anchors if (s2, b) != (s, a)]
            sims = {o: feats[s, a] @ feats[o[0], o[1]] / t for o in others}
            log_denom = math.log(sum(math.exp(v) for v in sims.values()))
            pos = [o for o in others if tuple(labels[o[0], :plen]) == tuple(labels[s, :plen])]
            if pos:
                mean_log_prob = sum(sims[o] - log_denom for o in pos) / len(pos)
                per_anchor.append(-(t / bt) * mean_log_prob)
        layer = sum(per_anchor) / len(per_anchor) if per_anchor else 0.0
        if CLAMP[loss]:
            layer = max(layer, lower_max)
            lower_max = max(lower_max, layer)
        total += lam(1.0 / level) * layer
        keys = [tuple(row[:plen]) for row in labels]
        first = [keys.index(k) for k in sorted(set(keys))]  # sorted unique, first occurrence
        labels, feats = labels[first], feats[first]
    return total / num_levels


def oracle_paper(x, y, loss, t=0.07, level_penalty="exp"):
    """Eq. 4-7 with per-pair clamping by the largest finer-level pair loss."""
    feats, labels = _normalise(x), np.asarray(y)
    n, views = feats.shape[:2]
    num_levels = labels.shape[1]
    lam = PENALTY[_penalty(loss, level_penalty)]
    anchors = [(s, a) for s in range(n) for a in range(views)]

    def pair_loss(i, j):
        denom = sum(math.exp(feats[i] @ feats[k] / t) for k in anchors if k != i)
        return -(feats[i] @ feats[j] / t - math.log(denom))

    def positives(i, level):
        plen = num_levels - level
        same = [k for k in anchors if tuple(labels[k[0], :plen]) == tuple(labels[i[0], :plen])]
        return [k for k in same if k != i]

    total = 0.0
    for level in range(1, num_levels):
        per_anchor = []
        for i in anchors:
            pos = positives(i, level)
            if not pos:
                continue
            finer = [pair_loss(i, q) for lv in range(1, level) for q in positives(i, lv)]
            floor = max(finer) if (finer and CLAMP[loss]) else -math.inf
            costs = [max(pair_loss(i, p), floor) for p in pos]
            per_anchor.append(lam(1.0 / level) * sum(costs) / len(pos))
        total += sum(per_anchor) / len(per_anchor) if per_anchor else 0.0
    return total / num_levels


def oracle(x, y, loss, mode, **kw):
    """`oracle_paper` for mode "paper" (no base temperature), else `oracle_reference`."""
    if mode == "paper":
        kw.pop("bt", None)
        return oracle_paper(x, y, loss, **kw)
    return oracle_reference(x, y, loss, **kw)
