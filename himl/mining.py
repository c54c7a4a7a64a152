"""Pair and triplet selection from a distance matrix, without B^3 memory.

Conventions: `dist` is a `[B, B]` *distance* (smaller = closer). A similarity `s` is turned
into one by negation (`dist = -s`), which flips every inequality exactly as PML's
`is_inverted` does (`relu(d_ap - d_an + m)` becomes `relu(s_an - s_ap + m)`).

- `label_masks`: positive pairs (same label, self excluded) and negative pairs.
- `batch_hard`: hardest positive and hardest negative per anchor (PML `BatchHardMiner`).
- `triplet_sums_sorted`: sum and count of the non-zero `relu(d_ap - d_an + m)` over *all*
  triplets (optionally only PML's "semihard" ones, `d_ap < d_an`) in O(B^2) memory and
  O(B^2 log B) time, by sorting each anchor's negative distances once and using prefix sums.
- `triplet_sums_chunked`: the same sums for any per-triplet function (e.g. softplus or the
  "swap" variant), one anchor block at a time under `jax.checkpoint`: O(chunk * B^2) memory,
  O(B^3) time.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
import jax.numpy as jnp

# Stands in for +inf among sorted distances (finite, so prefix sums stay finite).
_BIG = 1e30


def label_masks(labels: jax.Array, ref_labels: jax.Array | None = None):
    """`(pos_mask, neg_mask)`, both `[B, M]` bool, as PML's `get_matches_and_diffs`.

    `pos_mask[i, j]`: same label and (when `ref_labels` is None) `i != j`;
    `neg_mask[i, j]`: different labels.
    """
    ref = labels if ref_labels is None else ref_labels
    same = labels[:, None] == ref[None, :]
    pos = same
    if ref_labels is None:
        pos = same & ~jnp.eye(labels.shape[0], dtype=bool)
    return pos, ~same


def batch_hard(dist: jax.Array, pos_mask: jax.Array, neg_mask: jax.Array):
    """Hardest positive (largest distance) and negative (smallest distance) per anchor.

    Returns `(d_ap [B], d_an [B], valid [B])`; `valid` marks anchors with at least one
    positive and one negative (PML `BatchHardMiner` keeps only those). Invalid entries are 0.
    """
    has_p = jnp.any(pos_mask, axis=1)
    has_n = jnp.any(neg_mask, axis=1)
    d_ap = jnp.max(jnp.where(pos_mask, dist, -_BIG), axis=1)
    d_an = jnp.min(jnp.where(neg_mask, dist, _BIG), axis=1)
    valid = has_p & has_n
    return jnp.where(valid, d_ap, 0.0), jnp.where(valid, d_an, 0.0), valid


def triplet_sums_sorted(
    dist: jax.Array,
    pos_mask: jax.Array,
    neg_mask: jax.Array,
    margin: float,
    *,
    semi_hard: bool = False,
) -> tuple[jax.Array, jax.Array]:
    """`(sum, count)` of the positive `relu(d_ap - d_an + margin)` over all triplets.

    A triplet is (a, p, n) with `pos_mask[a, p]` and `neg_mask[a, n]`; `count` counts the
    triplets whose loss is > 0 (PML `AvgNonZeroReducer` is `sum / count`). With
    `semi_hard=True` only triplets with `d_an > d_ap` count (PML `TripletMarginMiner(margin,
    "semihard")` followed by the margin loss). Memory O(B^2): for each anchor the negatives'
    distances are sorted once; for each positive a binary search finds how many negatives
    violate the margin, and a prefix sum gives their total.
    """
    dist = dist.astype(jnp.float32)
    neg_sorted = jnp.sort(jnp.where(neg_mask, dist, _BIG), axis=1)
    real = neg_sorted < _BIG / 2
    prefix = jnp.cumsum(jnp.where(real, neg_sorted, 0.0), axis=1)
    prefix = jnp.concatenate([jnp.zeros_like(prefix[:, :1]), prefix], axis=1)
    threshold = dist + margin  # loss > 0  <=>  d_an < d_ap + margin
    search = jax.vmap(lambda row, q, side: jnp.searchsorted(row, q, side=side), (0, 0, None))
    hi = search(neg_sorted, jax.lax.stop_gradient(threshold), "left")
    if semi_hard:
        lo = search(neg_sorted, jax.lax.stop_gradient(dist), "right")
        lo = jnp.minimum(lo, hi)
    else:
        lo = jnp.zeros_like(hi)
    count = jnp.where(pos_mask, hi - lo, 0)
    neg_total = jnp.take_along_axis(prefix, hi, axis=1) - jnp.take_along_axis(prefix, lo, axis=1)
    per_pair = jnp.where(pos_mask, count * threshold - neg_total, 0.0)
    return jnp.sum(per_pair), jnp.sum(count)


def triplet_sums_chunked(
    dist: jax.Array,
    pos_mask: jax.Array,
    neg_mask: jax.Array,
    triplet_loss: Callable[[jax.Array, jax.Array, jax.Array], jax.Array],
    *,
    chunk_size: int | None = None,
) -> tuple[jax.Array, jax.Array]:
    """`(sum, count)` of the positive `triplet_loss(d_ap, d_an, d_pn)` over all triplets.

    `triplet_loss` gets, for one anchor a, `d_ap [B, 1]`, `d_an [1, B]` and `d_pn [B, B]`
    (rows: positives p, columns: negatives n; it is vmapped over blocks of anchors).
    Anchors are processed in blocks under `jax.checkpoint`, so the forward and backward
    passes hold O(chunk_size * B^2) values, never B^3.
    """
    b = dist.shape[0]
    dist = dist.astype(jnp.float32)
    if chunk_size is None:  # about 4M triplet values per block
        chunk_size = max(1, min(b, (1 << 22) // max(b * b, 1)))

    @jax.checkpoint
    def per_anchor(a):
        row = dist[a]
        loss = triplet_loss(row[:, None], row[None, :], dist)
        keep = pos_mask[a][:, None] & neg_mask[a][None, :] & (loss > 0)
        return jnp.sum(jnp.where(keep, loss, 0.0)), jnp.sum(keep)

    sums, counts = jax.lax.map(per_anchor, jnp.arange(b), batch_size=chunk_size)
    return jnp.sum(sums), jnp.sum(counts)
