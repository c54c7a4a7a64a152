"""Row-wise log-sum-exp of a Gram matrix per column class, with a hand-written backward pass.

`class_logsumexp(z, col_class, C)[i, c] = log sum_{k != i, col_class[k] = c} exp(z_i . z_k)`,
the denominators of contrastive losses (SupCon, Khosla et al. 2020; the per-level
denominators of the hierarchical losses, Zhang et al. CVPR 2022) for all classes from one
pass over `s = z z^T`. The backward pass uses the symmetry of `s`: the gradient is
`(G + G^T) z` with `G_ik = a_{i,c(k)} p_ik`, and `G^T_ik = a_{k,c(i)} exp(s_ik - lse_{k,c(i)})`
is again an elementwise function of row i of `s`, so every block of rows gets its full
gradient from one product `W_I z`, with no transpose and no accumulation over blocks
(the flash-attention trick). Autodiff instead needs `G^T z`, which XLA's CPU backend
computes through a slow strided transpose.

With `chunk_size=c` the `[R, R]` matrix is never stored: c rows at a time are computed,
reduced and recomputed in the backward pass (memory O(R * (c + C + D))).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from himl.distances import dot_similarity
from himl.losses.reductions import MASKED_LOGIT  # stands in for -inf: exp() of it is 0


def _pick(index, table, axis):
    """`table[k]` broadcast where `index == k`: `[c, R]` from a per-class table, by selects.

    axis=1: `index` `[R]` indexes columns, `table` `[c, C]` -> `out[i, k] = table[i, index[k]]`;
    axis=0: `index` `[c]` indexes rows, `table` `[C, R]` -> `out[i, k] = table[index[i], k]`.
    """
    num = table.shape[axis]
    if axis == 1:
        out = table[:, :1]
        for k in range(1, num):
            out = jnp.where((index == k)[None, :], table[:, k : k + 1], out)
    else:
        out = table[:1, :]
        for k in range(1, num):
            out = jnp.where((index == k)[:, None], table[k : k + 1, :], out)
    return out


def _valid(rows, r):
    """`[c, r]` bool: column k counts for anchor row `rows[i]` (not itself, not padding)."""
    return (rows[:, None] != jnp.arange(r)[None, :]) & (rows < r)[:, None]


def _exact_lse(s, valid, col_class, num_classes):
    """Class log-sum-exps with each class shifted by its own row maximum (never underflows)."""
    in_class = [valid & (col_class == k)[None, :] for k in range(num_classes)]
    maxima = jnp.stack([jnp.max(jnp.where(m, s, MASKED_LOGIT), axis=1) for m in in_class], 1)
    exps = jnp.exp(jnp.where(valid, s - _pick(col_class, maxima, 1), MASKED_LOGIT))
    totals = jnp.stack([jnp.sum(jnp.where(m, exps, 0.0), axis=1) for m in in_class], axis=1)
    positive = totals > 0
    return jnp.where(positive, maxima + jnp.log(jnp.where(positive, totals, 1.0)), MASKED_LOGIT)


def _block_lse(s, rows, bound, col_onehot):
    """`[c, C]` class log-sum-exps of the logit rows `s` `[c, R]` of anchors `rows`.

    Fast path: one shift per row, `bound[i] >= max_k s_ik` (Cauchy-Schwarz), one `exp` per
    entry, class sums as a product with the one-hot column classes. A class whose sum falls
    below 1e-20 (only possible when logits span more than ~46, i.e. cosine logits with
    temperature < 0.043) would lose precision, so the block is then redone exactly.
    """
    r, num_classes = col_onehot.shape
    valid = _valid(rows, r)
    exps = jnp.where(valid, jnp.exp(jnp.minimum(s - bound[:, None], 0.0)), 0.0)
    totals = jnp.dot(exps, col_onehot, preferred_element_type=jnp.float32)
    # Entries per class without a pass: all columns of the class minus the anchor itself.
    own = col_onehot[jnp.minimum(rows, r - 1)] * (rows < r)[:, None]
    counts = jnp.sum(col_onehot, axis=0)[None, :] - own
    counts = jnp.where((rows < r)[:, None], counts, 0.0)
    fast = jnp.where(
        counts > 0, bound[:, None] + jnp.log(jnp.where(counts > 0, totals, 1.0)), MASKED_LOGIT
    )
    underflow = jnp.any((counts > 0) & (totals < 1e-20))
    col_class = jnp.argmax(col_onehot, axis=1)
    return jax.lax.cond(
        underflow, lambda: _exact_lse(s, valid, col_class, num_classes), lambda: fast
    )


def _block_grad(s, rows, z, col_class, lse_i, lse_t, a_i, a_t):
    """Rows `rows` of `dL/dz = (G + G^T) z` given the cotangent `a` of the class lse."""
    r = z.shape[0]
    valid = _valid(rows, r)
    row_class = col_class[jnp.minimum(rows, r - 1)]
    # G_ik = a_{i,c(k)} exp(s_ik - lse_{i,c(k)}); G_ki the same with i and k swapped.
    own = jnp.exp(jnp.where(valid, s - _pick(col_class, lse_i, 1), MASKED_LOGIT))
    other = jnp.exp(jnp.where(valid, s - _pick(row_class, lse_t, 0), MASKED_LOGIT))
    w = _pick(col_class, a_i, 1) * own + _pick(row_class, a_t, 0) * other
    return jnp.dot(w, z, preferred_element_type=jnp.float32)


def map_rows(fn, r, chunk_size, *row_args):
    """`fn(rows, *row_args_block)` over all `r` rows at once, or `chunk_size` rows at a time.

    Row arguments are `[r, ...]`; padding rows get indices >= r. Outputs `[r, ...]`.
    """
    if chunk_size is None or chunk_size >= r:
        return fn(jnp.arange(r), *row_args)
    blocks = -(-r // chunk_size)
    pad = blocks * chunk_size - r
    padded = [
        jnp.pad(v, [(0, pad)] + [(0, 0)] * (v.ndim - 1)).reshape(blocks, chunk_size, *v.shape[1:])
        for v in row_args
    ]
    rows = jnp.arange(blocks * chunk_size).reshape(blocks, chunk_size)
    out = jax.lax.map(lambda args: fn(*args), (rows, *padded))
    return jax.tree.map(lambda v: v.reshape(blocks * chunk_size, *v.shape[2:])[:r], out)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def class_logsumexp(z, col_class, num_classes, chunk_size=None):
    """Per-row, per-column-class log-sum-exp of `s = z z^T` with the diagonal left out.

    Args:
      z: `[R, D]` float32 (e.g. normalised embeddings divided by `sqrt(temperature)`).
      col_class: `[R]` int32 in `0 .. num_classes-1`, the class of each column.
      num_classes: static C.
      chunk_size: rows per block (memory O(R * chunk_size)), or None: 256-row blocks on
        the CPU, all rows at once (`[R, R]` memory) on accelerators.

    Returns:
      `[R, C]` float32, `lse[i, c] = log sum_{k != i, col_class[k] = c} exp(s_ik)`, and
      `MASKED_LOGIT` where row i has no such k. Differentiable in `z` (not `col_class`).
    """
    return _fwd(z, col_class, num_classes, chunk_size)[0]


# Rows per block when the caller gives no chunk_size, on the CPU: blocks of `[256, R]` stay
# in cache and are faster than one `[R, R]` pass (measured 1.5-1.7x at R = 1,024 - 8,192 on
# two cores, experiments/bench_hierarchical.py). Accelerators run the dense pass.
CPU_BLOCK_ROWS = 256


def block_rows(chunk_size: int | None, r: int) -> int | None:
    """Rows per block for `r` rows: `chunk_size`, or the default above; None means dense."""
    if chunk_size is None and jax.default_backend() == "cpu" and r > CPU_BLOCK_ROWS:
        chunk_size = CPU_BLOCK_ROWS
    return None if chunk_size is None or chunk_size >= r else chunk_size


def _fwd(z, col_class, num_classes, chunk_size):
    r, col_class = z.shape[0], jnp.asarray(col_class, jnp.int32)
    norms = jnp.sqrt(jnp.sum(z * z, axis=1))
    bound = norms * jnp.max(norms)
    onehot = jax.nn.one_hot(col_class, num_classes, dtype=jnp.float32)
    chunk_size = block_rows(chunk_size, r)
    if chunk_size is None:  # keep the logits for the backward pass: one product fewer
        s = dot_similarity(z, z)
        lse = _block_lse(s, jnp.arange(r), bound, onehot)
        return lse, (z, col_class, s, lse)

    def block(rows, zi, bound_i):
        return _block_lse(dot_similarity(zi, z), rows, bound_i, onehot)

    lse = map_rows(block, r, chunk_size, z, bound)
    return lse, (z, col_class, None, lse)


def _bwd(num_classes, chunk_size, res, a):
    z, col_class, s, lse = res
    lse_t, a_t = lse.T, a.T

    def block(rows, zi, lse_i, a_i, s_i=None):
        s_i = dot_similarity(zi, z) if s_i is None else s_i
        return _block_grad(s_i, rows, z, col_class, lse_i, lse_t, a_i, a_t)

    if s is not None:
        return block(jnp.arange(z.shape[0]), z, lse, a, s), None
    return map_rows(block, z.shape[0], block_rows(chunk_size, z.shape[0]), z, lse, a), None


class_logsumexp.defvjp(_fwd, _bwd)
