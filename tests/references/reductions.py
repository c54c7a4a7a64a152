"""The masked reductions of `himl.losses.reductions` and `himl.losses.class_lse` as plain
loops written from their definitions."""

from __future__ import annotations

import math

import numpy as np

from himl.losses.class_lse import MASKED_LOGIT


def ref_logsumexp(x, mask, axis, add_one=False, empty=0.0):
    """Row (axis=1) or column (axis=0) loop: log(sum of exp of the kept entries)."""
    x = np.asarray(x, np.float64)
    mask = np.broadcast_to(mask, x.shape)
    if axis == 0:
        x, mask = x.T, mask.T
    out = []
    for i in range(x.shape[0]):
        kept = [x[i, j] for j in range(x.shape[1]) if mask[i, j]]
        terms = [1.0] * add_one + [math.exp(v) for v in kept]
        out.append(math.log(math.fsum(terms)) if kept else empty)
    return np.array(out)


def ref_softmax_grad(x, mask, add_one=False):
    """d/dx of the row log-sum-exp: the softmax over the kept entries (0 elsewhere)."""
    g = np.zeros_like(x, dtype=np.float64)
    for i in range(x.shape[0]):
        kept = [j for j in range(x.shape[1]) if mask[i, j]]
        if not kept:
            continue
        total = math.fsum([1.0] * add_one + [math.exp(x[i, j]) for j in kept])
        for j in kept:
            g[i, j] = math.exp(x[i, j]) / total
    return g


def ref_class_logsumexp(z, col_class, num_classes):
    z = np.asarray(z, np.float64)
    s = z @ z.T
    out = np.full((len(z), num_classes), MASKED_LOGIT)
    for i in range(len(z)):
        for c in range(num_classes):
            vals = [s[i, k] for k in range(len(z)) if k != i and col_class[k] == c]
            if vals:
                m = max(vals)
                out[i, c] = m + np.log(sum(np.exp(v - m) for v in vals))
    return out
