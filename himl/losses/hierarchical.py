"""Hierarchical multi-label contrastive losses: HiMulCon, HiConE and HiMulConE.

Zhang, Xu, Xiong, Ramaiah, "Use All The Labels: A Hierarchical Multi-Label Contrastive
Learning Framework", CVPR 2022 (HiConE / HiMulConE are its Eq. 6-7).

Labels are rows `[N, L]`, column 0 the coarsest level and column L-1 the finest (in the
paper's DeepFashion setting: category, product, variation, image id). Level `l = 1 .. L-1`
groups samples by their label prefix of length `L - l`, so `l = 1` is the finest grouping
and the finest column itself is never used to form positives (views of one sample are
positives of each other at every level). The rows must form a tree (a finer label
determines all coarser ones); check the dataset with `himl.hierarchy.validate_tree` on the
host, a traced loss cannot.

Two modes:

* `"reference"` gives the numbers of the official PyTorch code
  (salesforce/hierarchicalContrastiveLearning, `losses/losses.py`, classes `HMLC` and
  `SupConLoss`): per level a SupCon loss over all view-anchors, scaled by
  `temperature / base_temperature`, then the batch is reduced to one representative per
  label prefix before the next level, and the sum is divided by L.
* `"paper"` evaluates the published equations on the whole batch at every level.

All shapes are static: the reduction is a keep-mask, never a gather, so the losses jit,
differentiate, and give the same value for a batch sharded over devices.

Cost: one sort of the label rows gives every level's groups and the level up to which the
official reduction keeps each row. The only `[R, R]` work (R = N * V rows) is one pass over
the logits: a log-sum-exp per *depth class* (rows kept up to level l), from which every
level's denominator follows (`himl.losses.class_lse`: the symmetric half of the logits,
one exp per pair, and a backward pass with no further exp); sums over positives are
`x_i . (group sum)`, O(R * D). Paper-mode HiConE adds a clamped pass over the pairs that
share a coarsest group only (`_clamp_sums`). `chunk_size=c` computes c x c blocks at a
time and recomputes them in the backward pass.

The three losses share their arguments, results and modes:

    Args:
      embeddings: `[N, V, D]` (V augmented views per sample) or `[N, D]` (V = 1); any
        float dtype, computed in float32. Rows are L2-normalised here (the official code
        expects normalised features, so its numbers are unchanged).
      labels: `[N, L]` integer label rows, column 0 coarsest, column L-1 finest (e.g. an
        instance id, which is never used to group). Rows must form a tree.
      temperature: softmax temperature t; default 0.07, the `--temp` default of the
        official `train_deepfashion.py` (its README example uses 0.1).
      mode: "reference" (official code's numbers) or "paper" (published equations).
      base_temperature: reference mode scales every level by `t / base_temperature`, as
        the official SupConLoss does with its fixed 0.07; unused in paper mode, whose
        equations have no such factor.
      chunk_size: an int c processes c anchor rows at a time, recomputed in the backward
        pass, so memory is O(R * (c + D)) instead of O(R^2) (R = N * V), with the same
        value and gradient. None: even blocks of <= 512 rows on the CPU (faster than one
        `[R, R]` pass there; their exps kept for the backward pass up to R = 8,192, a
        quarter fewer products), the dense `[R, R]` pass on accelerators.

    Returns:
      Scalar float32 loss. `L = 1` gives 0. An anchor with no positive at some level (only
      possible with V = 1) contributes nothing there.

    Raises:
      ValueError: bad shapes or dtypes, unknown mode or level_penalty.

    Modes:
      reference: for l = 1 .. L-1, SupCon over the view-anchors still in the batch, with
        positives sharing the label prefix of length L-l, averaged over those anchors;
        then keep one sample per prefix (the one whose row without its last column is
        lexicographically smallest, ties by batch index). Sum over levels, divided by L.
        The kept samples depend on the order of the batch, so a permuted batch can give
        another value at the coarse levels (as in the official code).
      paper: the pair loss `-log(exp(s_ip) / sum_{a != i} exp(s_ia))` over the full batch,
        averaged over the `|P_l(i)|` positives of i at level l, over the anchors that
        have one, summed over l = 1 .. L-1 and divided by L (as the official code does).
        Ambiguities resolved here: the paper's `sum_i` is taken as a mean over anchors
        (as in every SupCon implementation); levels are indexed from the finest grouping
        (the paper's lambda_l = F(l) needs l >= 1); positives at level l are all samples
        sharing the prefix, not only those whose lowest common ancestor is at l; the
        finest level l = 1 has no finer level, so HiConE leaves it unclamped; the
        normaliser `1/|L|` counts the L label columns.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np

from himl.distances import l2_normalize
from himl.losses.checks import (
    as_labels,
    check_choice,
    check_chunk_size,
    check_embeddings_and_labels,
    check_positive,
)
from himl.losses.class_lse import by_block, class_logsumexp
from himl.losses.group_sums import positive_sums
from himl.losses.reductions import MASKED_LOGIT

MODES = ("reference", "paper")

# lambda(l) for level l >= 1 (l = 1 is the finest grouping, which gets the largest weight).
LEVEL_PENALTIES = {
    "exp": lambda level: math.exp(1.0 / level),  # official training script: torch.exp
    "pow2": lambda level: 2.0 ** (1.0 / level),  # default of the official HMLC class
    "none": lambda level: 1.0,
}

# Official train_deepfashion.py: `--temp` defaults to 0.07 (its README example passes 0.1).
DEFAULT_TEMPERATURE = 0.07
# The official SupConLoss inside HMLC is built with its own default base temperature 0.07
# (HMLC's `base_temperature` argument is never used).
DEFAULT_BASE_TEMPERATURE = 0.07


def _level_groups(labels: jax.Array) -> tuple[jax.Array, jax.Array]:
    """Group ids per level and the level up to which the official reduction keeps a row.

    Sorts the rows once, lexicographically by `labels[:, :L-1]` with ties broken by the
    batch index: this is the order in which the official code's `unique(..., sorted=True)`
    picks representatives. O(N log N) time, O(N * L) memory: no `[N, N]` mask is built.

    Returns:
      `(groups, depth)`: `groups` `[L-1, N]` int32, `groups[l-1, i]` the id (in `0 .. N-1`)
      of the label prefix of length `L-l` of row i at level `l = 1 .. L-1`; `depth` `[N]`
      int32 in `1 .. L-1`, the last level at which reference mode still has row i.
    """
    n, num_levels = labels.shape
    index = jnp.arange(n, dtype=jnp.int32)
    # jnp.lexsort sorts by its last key first: column 0, then 1, ..., then the batch index.
    order = jnp.lexsort((index, *(labels[:, c] for c in reversed(range(num_levels - 1)))))
    ranked = labels[order]
    changed = jnp.zeros((n,), dtype=bool).at[0].set(True)
    starts = []  # starts[k-1]: a new prefix of length k begins at this sorted position
    for col in range(num_levels - 1):
        changed = changed | jnp.concatenate(
            [jnp.ones((1,), bool), ranked[1:, col] != ranked[:-1, col]]
        )
        starts.append(changed)
    groups, depth = [], jnp.ones((n,), jnp.int32)
    for level in range(1, num_levels):
        first = starts[num_levels - level - 1]
        groups.append(jnp.zeros((n,), jnp.int32).at[order].set(jnp.cumsum(first) - 1))
        if level < num_levels - 1:
            # The first row of a group (in the order above) is its representative at the
            # next level; the representative of a coarse group also represents its finer
            # group, so "first at level l" already implies "kept up to level l".
            depth = depth + jnp.zeros((n,), jnp.int32).at[order].set(first.astype(jnp.int32))
    return jnp.stack(groups), depth


# Rows per block of paper-mode HiConE's clamped pass when the caller gives no chunk_size.
# A row's positives all share its coarsest group, a band along the diagonal once the rows
# are sorted by group, and only the blocks meeting that band are computed: small blocks
# follow the band closely.
CLAMP_BLOCK_ROWS = 128
_NO_BOUND = -MASKED_LOGIT  # stands in for +inf: min(s, it) is s


def _clamp_sums(x, groups, temperature, chunk_size):
    """Paper-mode HiConE sums `[R, L-1]`: `sum_{p in P_l(i)} min(s_ip, min_{q in P_{l-1}(i)} s_iq)`.

    `P_l(i)` are the rows sharing i's group at level l (i excluded), `s = x x^T / t`;
    level 1 has no finer level, so its sum is the plain `sum_p s_ip`. The rows are sorted
    by group (the ids of `_level_groups` follow the lexicographic order of the label rows,
    so sorted by the finest id every level's groups are contiguous) and only the blocks of
    rows and columns that share a coarsest group are computed: O(R * D) plus the pairs
    within coarsest groups, instead of O(R^2 * D). Memory O(c^2 + R * (D + L)), c the
    block size (`chunk_size`, or `CLAMP_BLOCK_ROWS`).
    """
    r, c = x.shape[0], min(chunk_size or CLAMP_BLOCK_ROWS, x.shape[0])
    z = x * jax.lax.rsqrt(jnp.asarray(temperature, jnp.float32))
    if c == r:  # one block: the order does not matter
        return _band_clamp_sums(z, groups, c)
    order = jnp.argsort(groups[0], stable=True)
    sums = _band_clamp_sums(z[order], groups[:, order], c)
    return jnp.zeros_like(sums).at[order].set(sums)


def _over_band(fn, carry, coarse, c):
    """`carry = fn(i, j, carry)` for each row block i and each column block j holding a row
    of a coarsest group of block i's rows (`coarse` `[R]` sorted): a band of blocks along
    the diagonal, walked with dynamic bounds (a while loop, so never differentiated)."""
    r = coarse.shape[0]
    if r <= c:  # one block: no loop
        return fn(0, 0, carry)
    starts = np.arange(0, r, c)
    ends = np.minimum(starts + c, r) - 1
    first = jnp.searchsorted(coarse, coarse[starts], side="left") // c
    last = (jnp.searchsorted(coarse, coarse[ends], side="right") - 1) // c

    def row_block(i, carry):
        def step(state):
            j, carry = state
            return j + 1, fn(i, j, carry)

        return jax.lax.while_loop(lambda s: s[0] <= last[i], step, (first[i], carry))[1]

    return jax.lax.fori_loop(0, len(starts), row_block, carry)


def _band_blocks(z, groups, c):
    """`block(i, j) -> (s, pos)`: logits `[c, c]` of row block i against column block j and
    the positives per level, `pos[l]` `[c, c]` bool (padding rows match no real row)."""
    zb, gb = by_block(z, c), by_block(groups.T, c, fill=-1)
    z_t = jnp.swapaxes(zb, 1, 2)  # a plain product runs faster than one with `b.T` on CPU
    ids = jnp.arange(zb.shape[0] * c).reshape(zb.shape[:2])

    def block(i, j):
        s = jnp.dot(zb[i], z_t[j], preferred_element_type=jnp.float32)
        others = ids[i][:, None] != ids[j][None, :]
        return s, [others & (gb[i][:, k, None] == gb[j][None, :, k]) for k in range(len(groups))]

    return block, zb


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _band_clamp_sums(z, groups, c):
    """`_clamp_sums` on rows sorted by group, `s = z z^T`, blocks of c rows."""
    return _band_clamp_fwd(z, groups, c)[0]


def _band_clamp_fwd(z, groups, c):
    """Two passes over the band: the minimum over each finer level (and where it is), then
    the clamped sums with those minima as bounds."""
    r, levels = z.shape[0], groups.shape[0]
    block, zb = _band_blocks(z, groups, c)
    shape = (zb.shape[0], c, levels - 1)
    mins, where = jnp.full(shape, _NO_BOUND, jnp.float32), jnp.zeros(shape, jnp.int32)
    cols = jnp.arange(c, dtype=jnp.int32)
    if levels > 1:

        def min_step(i, j, carry):
            mins, where = carry
            s, pos = block(i, j)
            masked = jnp.stack([jnp.where(p, s, _NO_BOUND) for p in pos[:-1]])  # [L-2, c, c]
            m = jnp.min(masked, axis=2)
            # The first column at the minimum (argmin's variadic reduce is slow on the CPU).
            at = jnp.min(jnp.where(masked == m[..., None], cols, c), axis=2)
            m, at = m.T, at.T + j * c
            lower = m < mins[i]
            mins = mins.at[i].set(jnp.where(lower, m, mins[i]))
            return mins, where.at[i].set(jnp.where(lower, at, where[i]))

        mins, where = _over_band(min_step, (mins, where), groups[-1], c)
    # Level l's bound is the minimum over level l-1; level 1 has none.
    bound = jnp.concatenate([jnp.full(shape[:2] + (1,), _NO_BOUND), mins], axis=2)

    def sum_step(i, j, sums):
        s, pos = block(i, j)
        parts = [
            jnp.sum(jnp.where(p, jnp.minimum(s, bound[i][:, k, None]), 0.0), axis=1)
            for k, p in enumerate(pos)
        ]
        return sums.at[i].add(jnp.stack(parts, axis=1))

    sums = _over_band(sum_step, jnp.zeros(shape[:2] + (levels,)), groups[-1], c)
    return sums.reshape(-1, levels)[:r], (z, groups, bound, where)


def _band_clamp_bwd(c, res, g):
    """`d sum_p min(s_ip, b_i) = ds_ip` where `s_ip < b_i`, and `db_i` times the count of
    the others, `b_i = s_iq` at its argmin q: `dz_i = sum_p G_ip z_p`, `dz_p = sum_i G_ip
    z_i` over the band, then the bounds' share at the argmins."""
    z, groups, bound, where = res
    block, zb = _band_blocks(z, groups, c)
    gb = by_block(g, c)

    def grad_step(i, j, carry):
        dz, at_bound = carry
        s, pos = block(i, j)
        below = [p & (s < bound[i][:, k, None]) for k, p in enumerate(pos)]
        w = sum(jnp.where(b, gb[i][:, k, None], 0.0) for k, b in enumerate(below))
        dz = dz.at[i].add(jnp.dot(w, zb[j])).at[j].add(jnp.dot(w.T, zb[i]))
        counts = [jnp.sum(p & ~b, axis=1) for p, b in zip(pos, below, strict=True)]
        return dz, at_bound.at[i].add(jnp.stack(counts, axis=1).astype(jnp.float32))

    init = (jnp.zeros_like(zb), jnp.zeros_like(gb))
    dz, at_bound = _over_band(grad_step, init, groups[-1], c)
    zf = zb.reshape(-1, z.shape[1])
    dz = dz.reshape(zf.shape)
    if groups.shape[0] > 1:  # level l's pairs at or above its bound pass theirs to s_iq
        coef = (gb * at_bound)[..., 1:].reshape(-1, groups.shape[0] - 1)
        where = where.reshape(coef.shape)
        dz = dz + jnp.einsum("rk,rkd->rd", coef, zf[where])
        dz = dz.at[where].add(coef[..., None] * zf[:, None, :])
    return dz[: z.shape[0]], None


_band_clamp_sums.defvjp(_band_clamp_fwd, _band_clamp_bwd)


def _mean_over(values, anchors):
    return jnp.sum(jnp.where(anchors, values, 0.0)) / jnp.maximum(jnp.sum(anchors), 1)


def _reference_loss(x, groups, depth, temperature, scale, penalty, clamp, chunk_size):
    """Official HMLC: per-level SupCon on a batch reduced to one sample per prefix.

    Level l's denominator runs over the rows kept at level l (`depth >= l`): the log-sum-exp
    per depth class comes from one pass over the logits, levels combine them.
    """
    num_levels = groups.shape[0] + 1
    z = x * jax.lax.rsqrt(jnp.asarray(temperature, jnp.float32))
    lse_by_depth = class_logsumexp(z, depth - 1, num_levels - 1, chunk_size)
    total = jnp.zeros((), jnp.float32)
    running_max = None
    for level in range(1, num_levels):
        kept = depth >= level
        log_denominator = jax.nn.logsumexp(lse_by_depth[:, level - 1 :], axis=1)
        pos_dots, num_pos = positive_sums(
            x, groups[level - 1], kept.astype(jnp.float32), temperature
        )
        per_anchor = log_denominator - pos_dots / jnp.maximum(num_pos, 1.0)
        # Official SupConLoss averages over *all* anchors of the (reduced) batch. With
        # V >= 2 every anchor has a positive (its other views); with V = 1 the official
        # code gives NaN for an anchor without one, so such anchors are left out here.
        level_loss = scale * _mean_over(per_anchor, kept & (num_pos > 0))
        if clamp:  # HiConE: never below the loss of any finer level (already clamped).
            if running_max is not None:
                level_loss = jnp.maximum(level_loss, running_max)
            running_max = level_loss
        total = total + penalty(level) * level_loss
    return total / num_levels


def _paper_loss(x, groups, temperature, penalty, clamp, chunk_size):
    """Published equations: no reduction, per-pair lambda weights and HiConE clamp.

    `L_pair(i, p) = -log(exp(s_ip) / sum_{a != i} exp(s_ia)) = lse_i - s_ip`, so the HiConE
    clamp `max(L_pair(i, p), max_{q in P_{l-1}(i)} L_pair(i, q))` is
    `lse_i - min(s_ip, min_q s_iq)`; without the clamp the positive sum is O(R * D).
    """
    num_levels = groups.shape[0] + 1
    r = x.shape[0]
    z = x * jax.lax.rsqrt(jnp.asarray(temperature, jnp.float32))
    lse = class_logsumexp(z, jnp.zeros((r,), jnp.int32), 1, chunk_size)[:, 0]
    clamp_sums = _clamp_sums(x, groups, temperature, chunk_size) if clamp else None
    total = jnp.zeros((), jnp.float32)
    for level in range(1, num_levels):
        pos_dots, num_pos = positive_sums(x, groups[level - 1], jnp.ones((r,)), temperature)
        if clamp:
            # Positives nest, so the running minimum over finer levels is the minimum
            # over P_{l-1}(i); level 1 has no finer level and stays unclamped.
            pos_dots = clamp_sums[:, level - 1]
        per_anchor = lse - pos_dots / jnp.maximum(num_pos, 1.0)
        total = total + penalty(level) * _mean_over(per_anchor, num_pos > 0)
    return total / num_levels


def _hierarchical_loss(
    embeddings, labels, name, *, temperature, mode, level_penalty, base_temperature, clamp,
    chunk_size,
):  # fmt: skip
    embeddings, labels = jnp.asarray(embeddings), as_labels(labels, name)
    check_embeddings_and_labels(embeddings, labels, name, label_rank=2)
    check_choice(name, "mode", mode, MODES)
    check_choice(name, "level_penalty", level_penalty, tuple(LEVEL_PENALTIES))
    if labels.shape[1] < 1:
        raise ValueError(f"{name}: labels need at least one column, got {labels.shape}")
    check_positive(name, temperature=temperature, base_temperature=base_temperature)
    check_chunk_size(name, chunk_size)
    if embeddings.ndim == 2:
        embeddings = embeddings[:, None, :]
    n, views, dim = embeddings.shape
    if labels.shape[1] == 1:
        return jnp.zeros((), jnp.float32)
    # float32 throughout (bf16 inputs included); rows are sample-major: r -> sample r // V.
    x = l2_normalize(embeddings.astype(jnp.float32).reshape(n * views, dim))
    groups, depth = _level_groups(labels)
    groups = jnp.repeat(groups, views, axis=1)
    penalty = LEVEL_PENALTIES[level_penalty]
    if mode == "reference":
        scale = temperature / base_temperature
        depth = jnp.repeat(depth, views)
        return _reference_loss(x, groups, depth, temperature, scale, penalty, clamp, chunk_size)
    return _paper_loss(x, groups, temperature, penalty, clamp, chunk_size)


def himulcon(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    mode: str = "reference",
    level_penalty: str = "exp",
    base_temperature: float = DEFAULT_BASE_TEMPERATURE,
    chunk_size: int | None = None,
) -> jax.Array:
    """HiMulCon: per-level contrastive losses weighted by `lambda(l)`.

    level_penalty: "exp" `lambda(l) = e^(1/l)` (official training script), "pow2"
    `2^(1/l)` (the official HMLC class default) or "none" (1); finer levels weigh more.
    """
    return _hierarchical_loss(
        embeddings, labels, "himulcon", temperature=temperature, mode=mode,
        level_penalty=level_penalty, base_temperature=base_temperature, clamp=False,
        chunk_size=chunk_size,
    )  # fmt: skip


def hicone(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    mode: str = "reference",
    base_temperature: float = DEFAULT_BASE_TEMPERATURE,
    chunk_size: int | None = None,
) -> jax.Array:
    """HiConE (Eq. 6): a coarser level never costs less than a finer one.

    Reference mode clamps each level's loss by the largest loss of the finer levels;
    paper mode clamps each pair's loss by the largest of the anchor's finer-level pair
    losses. No level penalty (the paper's HiConE has none), so no `level_penalty`.
    Arguments, result and modes: the module docstring (shared by the three losses).
    """
    return _hierarchical_loss(
        embeddings, labels, "hicone", temperature=temperature, mode=mode,
        level_penalty="none", base_temperature=base_temperature, clamp=True,
        chunk_size=chunk_size,
    )  # fmt: skip


def himulcone(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    mode: str = "reference",
    level_penalty: str = "exp",
    base_temperature: float = DEFAULT_BASE_TEMPERATURE,
    chunk_size: int | None = None,
) -> jax.Array:
    """HiMulConE (Eq. 7): the HiConE clamp first, then the HiMulCon weight `lambda(l)`.

    This is the official training default (`--loss hmce`, `layer_penalty=torch.exp`).
    Arguments, result and modes: the module docstring (shared by the three losses).
    """
    return _hierarchical_loss(
        embeddings, labels, "himulcone", temperature=temperature, mode=mode,
        level_penalty=level_penalty, base_temperature=base_temperature, clamp=True,
        chunk_size=chunk_size,
    )  # fmt: skip
