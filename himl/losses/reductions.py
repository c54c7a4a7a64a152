"""Masked reductions shared by the losses: the one place for their masked arithmetic.

A loss builds a matrix of per-pair (or per-sample) terms and a boolean mask of the terms
that count; these functions reduce it. Masked-out entries change neither the value nor the
gradient, and a slice with no kept entry gives a stated constant with a zero gradient
(never NaN), so a batch without positives or negatives stays finite under `jit` and `grad`.
Masks broadcast against the values (e.g. a `[1, M]` column mask for `[N, M]` values).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

# Stands in for -inf in masked log-sum-exps: exp() of it is 0 in float32, and unlike -inf
# it keeps slices with no kept entry (and their gradients) finite.
MASKED_LOGIT = -1e30


def masked_logsumexp(
    x: jax.Array,
    mask: jax.Array,
    axis: int = -1,
    *,
    add_one: bool = False,
    empty: float = 0.0,
) -> jax.Array:
    """`log(sum_{k: mask_k} exp(x_k))` along `axis`; PML's `lmu.logsumexp(x, keep_mask)`.

    Args:
      x: logits, e.g. `[N, M]`.
      mask: bool, broadcastable to `x.shape`: the entries that enter the sum.
      axis: the axis reduced (removed from the result).
      add_one: append a zero logit first, i.e. `log(1 + sum exp)` (PML `add_one=True`).
      empty: the value of a slice with no kept entry: 0 as in PML; `MASKED_LOGIT` where
        the caller needs "log of an empty sum" (-inf) to add nothing to a later softplus.

    Returns:
      `x.shape` without `axis`. Stable (the kept maximum is subtracted first); the gradient
      is the softmax over the kept entries, 0 elsewhere and 0 for an empty slice.
    """
    mask = jnp.broadcast_to(mask, x.shape)
    masked = jnp.where(mask, x, MASKED_LOGIT)
    shift = jnp.max(masked, axis=axis, keepdims=True)
    if add_one:
        shift = jnp.maximum(shift, 0.0)
    shift = jax.lax.stop_gradient(shift)
    total = jnp.sum(jnp.where(mask, jnp.exp(masked - shift), 0.0), axis=axis, keepdims=True)
    if add_one:
        total = total + jnp.exp(-shift)
    any_kept = jnp.any(mask, axis=axis, keepdims=True)
    out = jnp.log(jnp.where(any_kept, total, 1.0)) + shift
    return jnp.squeeze(jnp.where(any_kept, out, empty), axis=axis)


def masked_mean(values: jax.Array, mask: jax.Array, axis: int | None = None) -> jax.Array:
    """Mean of the entries kept by `mask` (PML `MeanReducer` over the kept terms), over
    `axis` (all axes by default); 0 where nothing is kept."""
    mask = jnp.broadcast_to(mask, values.shape)
    total = jnp.sum(jnp.where(mask, values, 0.0), axis=axis)
    return total / jnp.maximum(jnp.sum(mask, axis=axis), 1)


def mean_over_nonzero(values: jax.Array, mask: jax.Array | None = None) -> jax.Array:
    """PML's `AvgNonZeroReducer`: the sum of the kept entries divided by how many of them
    are strictly positive (0 if none is). Scalar; `mask` defaults to every entry."""
    if mask is not None:
        values = jnp.where(jnp.broadcast_to(mask, values.shape), values, 0.0)
    return jnp.sum(values) / jnp.maximum(jnp.sum(values > 0), 1)
