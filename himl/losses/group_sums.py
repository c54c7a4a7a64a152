"""Sums over the pairs of a group in O(R * D): the numerators of contrastive losses.

With `s_ip = x_i . x_p / t`, the sum over the other members p of i's group is
`x_i . (sum of the group) - x_i . x_i`, so SupCon (Khosla et al. 2020) and the per-level
positives of the hierarchical losses (Zhang et al. CVPR 2022) need no `[R, R]` mask:
a segment sum per group and one dot per row.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sorted_runs(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """`(order, starts)` for integer `labels` `[R]`: the stable sorting permutation (equal
    labels stay in batch order) and, per sorted position, whether a new label starts
    there. One sort, never an `[R, R]` comparison."""
    order = jnp.argsort(labels, stable=True)
    ranked = labels[order]
    return order, jnp.concatenate([jnp.ones((1,), bool), ranked[1:] != ranked[:-1]])


def group_ids(labels: jax.Array) -> jax.Array:
    """`[R]` int32 ids in `0 .. R-1` of the distinct values of integer `labels` `[R]`
    (ranked in sorted order)."""
    order, starts = sorted_runs(labels)
    ids = jnp.cumsum(starts, dtype=jnp.int32) - 1
    return jnp.zeros((labels.shape[0],), jnp.int32).at[order].set(ids)


def positive_sums(x, groups, weight, temperature):
    """Per row i: `sum_{p != i, same group} w_p s_ip` and the count `sum_{p != i} w_p`.

    Args:
      x: `[R, D]` float32 rows; `s_ip = x_i . x_p / temperature`.
      groups: `[R]` int32 group ids in `0 .. R-1`.
      weight: `[R]` float32 weight of each row as a positive (0 leaves it out).
      temperature: t.

    Returns:
      `(sums [R], counts [R])` float32, computed as `x_i . (weighted group sum) - w_i x_i . x_i`.
    """
    r = x.shape[0]
    group_sum = jax.ops.segment_sum(x * weight[:, None], groups, num_segments=r)
    group_count = jax.ops.segment_sum(weight, groups, num_segments=r)
    self_dot = jnp.sum(x * x, axis=1)
    dots = (jnp.sum(x * group_sum[groups], axis=1) - weight * self_dot) / temperature
    return dots, group_count[groups] - weight
