"""Row-wise log-sum-exp of a Gram matrix per column class, with a hand-written backward pass.

`class_logsumexp(z, col_class, C)[i, c] = log sum_{k != i, col_class[k] = c} exp(z_i . z_k)`,
the denominators of contrastive losses (SupCon, Khosla et al. 2020; the per-level
denominators of the hierarchical losses, Zhang et al. CVPR 2022) for all classes from one
pass over `s = z z^T`.

Both passes are products with one symmetric matrix. Every logit is shifted by the same
bound `m = max_k |z_k|^2` (so `E_ik = exp(s_ik - m) <= 1`): the forward pass is
`totals = E @ onehot(col_class)`, `lse = m + log(totals)`. The gradient is `(G + G^T) z`
with `G_ik = a_{i,c(k)} exp(s_ik - lse_{i,c(k)}) = E_ik a_{i,c(k)} exp(m - lse_{i,c(k)})`,
so `W = G + G^T` is `E` times the rank-2C matrix `[A, onehot] [onehot, A]^T`
(`A = a * exp(m - lse)`): symmetric, and free of any further exp. Blocked, a symmetric
product computes only the blocks on and above the diagonal (each block `(I, J)` also gives
`(J, I)`): half the logits and exps of a row-blocked pass, the flash-attention idea with
the transpose for free. A class whose sum underflows under the shared shift (logits
spanning more than ~46) is redone exactly, row block by row block.

Memory: the dense pass holds `[R, R]`; with `chunk_size=c` blocks of c x c are computed
one at a time and recomputed in the backward pass (memory O(R * (c + C + D))); the CPU
default keeps the exps of its blocks for the backward pass up to `KEEP_ROWS` rows.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

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


def by_block(v, c, fill=0):
    """`[R, ...]` -> `[ceil(R / c), c, ...]`, the last block padded with `fill`."""
    blocks = -(-v.shape[0] // c)
    pad = [(0, blocks * c - v.shape[0])] + [(0, 0)] * (v.ndim - 1)
    return jnp.pad(v, pad, constant_values=fill).reshape(blocks, c, *v.shape[1:])


def map_rows(fn, r, chunk_size, *row_args):
    """`fn(rows, *row_args_block)` over all `r` rows at once, or `chunk_size` rows at a time.

    Row arguments are `[r, ...]`; padding rows get indices >= r. Outputs `[r, ...]`.
    """
    if chunk_size is None or chunk_size >= r:
        return fn(jnp.arange(r), *row_args)
    blocks = -(-r // chunk_size)
    padded = [by_block(v, chunk_size) for v in row_args]
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
      chunk_size: rows per block (memory O(R * chunk_size), exps recomputed in the
        backward pass), or None: even blocks of <= 512 rows on the CPU (exps kept up to
        `KEEP_ROWS` rows), all rows at once (`[R, R]` memory) on accelerators.

    Returns:
      `[R, C]` float32, `lse[i, c] = log sum_{k != i, col_class[k] = c} exp(s_ik)`, and
      `MASKED_LOGIT` where row i has no such k. Differentiable in `z` (not `col_class`).
    """
    return _fwd(z, col_class, num_classes, chunk_size)[0]


# Rows per block when the caller gives no chunk_size, on the CPU: the symmetric blocked
# pass does half the work of one `[R, R]` pass, and 512 x 512 blocks measured fastest of
# 128 / 256 / 512 / dense at R = 1,024 - 8,192 (1.5x over 256 and over dense at R = 8,192
# on two threads; on one thread 512 and 128 tie, 10% ahead of 256). Accelerators run dense.
CPU_BLOCK_ROWS = 512


def block_rows(chunk_size: int | None, r: int) -> int | None:
    """Rows per block for `r` rows: `chunk_size`, or the default above; None means dense.

    The default splits the rows evenly over `ceil(r / CPU_BLOCK_ROWS)` blocks (rounded up
    to a multiple of 8), so that padding never costs more than a few rows: R = 640 runs
    two blocks of 320, not two of 512 (its HiMulConE step: 3.3 ms instead of 7.0).
    """
    if chunk_size is None and jax.default_backend() == "cpu" and r > CPU_BLOCK_ROWS:
        per_block = -(-r // -(-r // CPU_BLOCK_ROWS))
        chunk_size = -(-per_block // 8) * 8
    return None if chunk_size is None or chunk_size >= r else chunk_size


# Without a chunk_size, the exps E of the forward pass are kept for the backward pass up
# to this many rows (half of `[R, R]` float32 on the CPU: 128 MiB), saving a quarter of the
# matrix products; a given chunk_size always recomputes them (memory O(R * chunk_size)).
KEEP_ROWS = 8192

# A class whose exp-sum under the shared shift falls below this (logits spanning more than
# ~46: cosine logits at temperature < 0.043) would lose precision: the exact path redoes it.
UNDERFLOW = 1e-20


def _symmetric_product(z, shift, values, factors=None, chunk_size=None, exps=None, keep=False):
    """`(W @ values, E)`: `[R, W]` for the symmetric `W_ik = E_ik * (L_i . R_k)`, `E_ik =
    exp(z_i . z_k - shift)` off the diagonal and 0 on it (`factors = (L, R)`, or none: 1).

    `L_i . R_k` must equal `L_k . R_i`, so block `(I, J)` of W also gives block `(J, I)`:
    with `chunk_size=c` only the blocks on and above the diagonal are computed, each once
    (half the products and exps of a row-blocked pass, memory O(c^2 + R * W)). `exps`: E
    as an earlier call returned it with `keep=True` (dense `[R, R]`, or the diagonal
    blocks `[R/c, c, c]` and those above it `[P, c, c]`), so no logit is recomputed;
    otherwise the returned E is None.
    """
    r = z.shape[0]
    if chunk_size is None:
        if exps is None:
            exps = jnp.exp(dot_similarity(z, z) - shift)
            exps = jnp.where(jnp.eye(r, dtype=bool), 0.0, exps)
        w = exps
        if factors is not None:
            w = w * jnp.dot(factors[0], factors[1].T, preferred_element_type=jnp.float32)
        return jnp.dot(w, values, preferred_element_type=jnp.float32), exps if keep else None
    blocks = -(-r // chunk_size)
    # Zero padding rows: zero values and factors, so they add nothing.
    zb, vb = by_block(z, chunk_size), by_block(values, chunk_size)
    # Transposed blocks: `a @ bT` and `vT @ w` run as plain products (XLA's CPU product
    # with a transposed operand measured 1.5-2x slower at these sizes).
    z_t, v_t = jnp.swapaxes(zb, 1, 2), jnp.swapaxes(vb, 1, 2)
    fb = None if factors is None else tuple(by_block(f, chunk_size) for f in factors)
    diag_exps, pair_exps = (None, None) if exps is None else exps

    def weights(e, i, j):
        if fb is None:
            return e
        return e * jnp.einsum("...im,...km->...ik", fb[0][i], fb[1][j])

    eye = jnp.eye(chunk_size, dtype=bool)

    def block(outs, block_args, diagonal):  # block (I, J), I <= J, and if I < J (J, I) too
        (out, out_t), (i, j, e) = outs, block_args
        if e is None:
            e = jnp.exp(jnp.dot(zb[i], z_t[j], preferred_element_type=jnp.float32) - shift)
            if diagonal:  # the anchor itself left out
                e = jnp.where(eye, 0.0, e)
        w = weights(e, i, j)
        out = out.at[i].add(jnp.dot(w, vb[j], preferred_element_type=jnp.float32))
        if not diagonal:
            out_t = out_t.at[j].add(jnp.dot(v_t[i], w, preferred_element_type=jnp.float32))
        return (out, out_t), e if keep else None

    # One block in memory at a time: the diagonal blocks, then the pairs above them.
    outs = (jnp.zeros_like(vb), jnp.zeros_like(v_t))  # out_t: blocks below, transposed
    every = jnp.arange(blocks, dtype=jnp.int32)
    outs, diag_exps = jax.lax.scan(
        functools.partial(block, diagonal=True), outs, (every, every, diag_exps)
    )
    upper = tuple(jnp.asarray(u, jnp.int32) for u in np.triu_indices(blocks, 1))
    if blocks > 1:
        outs, pair_exps = jax.lax.scan(
            functools.partial(block, diagonal=False), outs, (*upper, pair_exps)
        )
    out = outs[0] + jnp.swapaxes(outs[1], 1, 2)
    kept = (diag_exps, pair_exps) if keep else None
    return out.reshape(blocks * chunk_size, -1)[:r], kept


# The exact path holds several `[rows, R]` logits and masks at once, and its buffers are
# part of every call's workspace whether or not it runs: row blocks of about this many
# logits (at least `EXACT_MIN_ROWS` rows) keep it from setting the step's memory. At
# R = 2,048 its 512-row blocks had pushed the workspace past 32 MiB, the size above which
# glibc maps each call's workspace afresh: 27 MB of page faults, ~1/3 of the step.
EXACT_BLOCK_LOGITS = 2**18
EXACT_MIN_ROWS = 64


def _exact_rows(fn, z, chunk_size, *row_args):
    """`fn(logit rows, rows, *row_args)` over the rows of `z z^T`, a few rows at a time."""
    r = z.shape[0]
    rows = max(EXACT_MIN_ROWS, EXACT_BLOCK_LOGITS // r)
    rows = rows if chunk_size is None else min(rows, chunk_size)

    def block(rows, zi, *args):
        return fn(dot_similarity(zi, z), rows, *args)

    return map_rows(block, r, None if rows >= r else rows, z, *row_args)


def _fwd(z, col_class, num_classes, chunk_size):
    """Fast path: one shift for every logit, `max_k |z_k|^2 >= s_ik` (Cauchy-Schwarz; the
    row's own bound when rows share a norm, as the normalised embeddings of the losses do),
    one `exp` per pair, class sums as a product with the one-hot column classes."""
    r, col_class = z.shape[0], jnp.asarray(col_class, jnp.int32)
    onehot = jax.nn.one_hot(col_class, num_classes, dtype=jnp.float32)
    shift = jnp.max(jnp.sum(z * z, axis=1))
    given, chunk_size = chunk_size, block_rows(chunk_size, r)
    keep = chunk_size is None or (given is None and r <= KEEP_ROWS)  # else: recomputed
    totals, exps = _symmetric_product(z, shift, onehot, chunk_size=chunk_size, keep=keep)
    counts = jnp.sum(onehot, axis=0)[None, :] - onehot  # entries per class, anchor excluded
    underflow = jnp.any((counts > 0) & (totals < UNDERFLOW))
    fast = jnp.where(counts > 0, shift + jnp.log(jnp.where(counts > 0, totals, 1.0)), MASKED_LOGIT)

    def exact():
        def rows_lse(s, rows):
            return _exact_lse(s, _valid(rows, r), col_class, num_classes)

        return _exact_rows(rows_lse, z, chunk_size)

    lse = jax.lax.cond(underflow, exact, lambda: fast)
    return lse, (z, col_class, exps, lse, shift, underflow)


def _bwd(num_classes, chunk_size, res, a):
    """`dL/dz = W z`, `W = G + G^T`, `G_ik = a_{i,c(k)} exp(s_ik - lse_{i,c(k)})`. On the fast
    path `exp(s_ik - lse_ic) = E_ik * exp(shift - lse_ic)`, so `W_ik = E_ik (A_{i,c(k)} +
    A_{k,c(i)})` with `A = a * exp(shift - lse)`: `L_i . R_k` with `L = [A, onehot]`,
    `R = [onehot, A]`, symmetric, and no exp beyond E's."""
    z, col_class, exps, lse, shift, underflow = res
    r = z.shape[0]
    chunk_size = block_rows(chunk_size, r)

    def fast():
        onehot = jax.nn.one_hot(col_class, num_classes, dtype=jnp.float32)
        coef = jnp.where(lse > MASKED_LOGIT, a * jnp.exp(shift - lse), 0.0)
        factors = (jnp.concatenate([coef, onehot], 1), jnp.concatenate([onehot, coef], 1))
        return _symmetric_product(z, shift, z, factors, chunk_size, exps)[0]

    def exact():
        def rows_grad(s, rows, lse_i, a_i):
            return _block_grad(s, rows, z, col_class, lse_i, lse.T, a_i, a.T)

        return _exact_rows(rows_grad, z, chunk_size, lse, a)

    return jax.lax.cond(underflow, exact, fast), None


class_logsumexp.defvjp(_fwd, _bwd)
