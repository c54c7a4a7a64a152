"""Retrieval metrics per query, from the definitions of Musgrave et al. 2020 ("A Metric
Learning Reality Check"): Recall@K, Precision@1, R-Precision, MAP@R; and the kNN majority
vote."""

from __future__ import annotations

import numpy as np


def ranking(q, g, exclude_self):
    qn = q / np.linalg.norm(q, axis=1, keepdims=True)
    gn = g / np.linalg.norm(g, axis=1, keepdims=True)
    cost = -(qn[:, None, :] * gn[None, :, :]).sum(-1)
    if exclude_self:
        np.fill_diagonal(cost, np.inf)
    order = np.argsort(cost, axis=1, kind="stable")
    return order[:, : g.shape[0] - int(exclude_self)]


def reference_metrics(q, ql, g, gl, ks, exclude_self, r_cap=None):
    """Loop-per-query definitions of Musgrave et al. 2020; R truncated to `r_cap` (PML's
    cap) when given, in the window and the denominator alike."""
    order = ranking(q, g, exclude_self)
    hits = {k: 0 for k in ks}
    p1, rp, ap, left = [], [], [], 0
    for i in range(len(q)):
        rel = gl[order[i]] == ql[i]
        r = int(rel.sum())
        for k in ks:
            hits[k] += bool(rel[:k].any())
        if r == 0:
            left += 1
            continue
        r = r if r_cap is None else min(r, r_cap)
        p1.append(float(rel[0]))
        rp.append(rel[:r].sum() / r)
        prec = np.cumsum(rel[:r]) / np.arange(1, r + 1)
        ap.append((prec * rel[:r]).sum() / r)
    out = {f"recall@{k}": hits[k] / len(q) for k in ks}
    out.update({"precision@1": np.mean(p1), "r_precision": np.mean(rp), "map@r": np.mean(ap)})
    out["num_left_out"] = left
    return out


def vote_reference(row):
    """Most common label; among equally common ones, the one met first (nearest)."""
    best = max(row.count(v) for v in row)
    return next(v for v in row if row.count(v) == best)
