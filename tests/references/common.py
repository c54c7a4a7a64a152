"""Helpers shared by the references: unit vectors, the similarity / distance matrix, PML's
mean over non-zero terms."""

from __future__ import annotations

import math

import numpy as np


def unit(v):
    """`v / max(||v||, 1e-12)` in float64 (one vector)."""
    v = np.asarray(v, np.float64)
    n = math.sqrt(float(np.sum(v * v)))
    return v / max(n, 1e-12)


def measure(x, distance):
    """`(matrix [B, B], is_similarity)`: dot / cosine similarities, or (squared) Euclidean
    distances of the L2-normalised rows."""
    x = np.asarray(x, np.float64)
    if distance == "dot":
        return x @ x.T, True
    xn = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    if distance == "cosine":
        return xn @ xn.T, True
    d = np.sqrt(((xn[:, None] - xn[None]) ** 2).sum(-1))
    return (d**2 if distance == "squared_euclidean" else d), False


def avg_nonzero(losses):
    """PML's `AvgNonZeroReducer`: the mean of the positive terms, 0 when there are none."""
    losses = np.asarray(losses, np.float64)
    nz = losses[losses > 0]
    return nz.mean() if nz.size else 0.0
