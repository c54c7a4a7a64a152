"""Tuple-based losses: N-pairs and lifted structure, as in pytorch-metric-learning (PML)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

from himl.distances import dot_similarity, euclidean_distance, l2_normalize
from himl.losses.checks import flatten_views
from himl.losses.group_sums import sorted_runs
from himl.losses.reductions import masked_logsumexp, masked_mean


def npairs(embeddings: jax.Array, labels: jax.Array) -> jax.Array:
    """Multi-class N-pair loss (Sohn, NeurIPS 2016), equal to PML `NPairsLoss()`.

    One (anchor, positive) pair per class, picked deterministically as PML does: the anchor
    is the class's first sample in batch order and the positive its second. Classes with a
    single sample give no pair. With `a_k, p_k` the K pairs and cosine similarities
    (PML `DotProductSimilarity` on normalised embeddings):

        loss = mean_k -log softmax_j(cos(a_k, p_j))[k]

    0 when no class has two samples. No embedding L2 penalty (PML's default; Sohn adds one).
    Because of the pair choice, the value depends on the order of samples within a class.

    Args:
      embeddings: `[B, D]` or `[B, V, D]` (flattened sample-major: the views of sample 0
        come first, so with V >= 2 its first two views form its class's pair).
      labels: `[B]` integer class labels (any values).

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
      >>> float(npairs(x, jnp.array([0, 0, 1, 1]))) < 0.7
      True
    """
    x, y = flatten_views(embeddings, labels, "npairs")
    n = x.shape[0]
    # An anchor's class has >= 2 samples, so there are at most n // 2 pairs: their [K, K]
    # logits are computed at the smallest size of `_pair_sizes` that holds K (traced), not
    # at [n, n] (16x the work at 4 samples per class).
    most = n // 2
    if most == 0:
        return jnp.zeros((), jnp.float32)
    # Sorted stably by label, a class's samples stand in batch order: its first two are
    # adjacent, found without any [n, n] comparison. (The loss does not depend on the order
    # of the pairs.)
    order, starts = sorted_runs(y)
    is_pair = starts & ~jnp.concatenate([starts[1:], jnp.ones((1,), bool)])  # next: same
    first = jnp.nonzero(is_pair, size=most, fill_value=0)[0]  # sorted positions
    count = jnp.sum(is_pair)
    anchors, positives = order[first], order[jnp.minimum(first + 1, n - 1)]
    sizes = _pair_sizes(most)
    branches = [functools.partial(_npairs_on_first, size) for size in sizes]
    which = jnp.searchsorted(jnp.asarray(sizes), count)  # the first size >= count
    # Normalised after the gather: a sample in no pair (a NaN one included) changes neither
    # the value nor the gradient.
    xa, xp = (l2_normalize(x[i].astype(jnp.float32)) for i in (anchors, positives))
    return jax.lax.switch(which, branches, xa, xp, count)


# The smallest number of pairs `npairs` computes at: below it one more size saves little.
NPAIRS_MIN_SIZE = 32


def _pair_sizes(most: int) -> list[int]:
    """Static sizes, ascending: `most`, halved (rounded up) while above `NPAIRS_MIN_SIZE`.
    Each is at most twice the one below, so K pairs cost at most 4x K^2 products."""
    sizes = [most]
    while sizes[0] > NPAIRS_MIN_SIZE:
        sizes.insert(0, -(-sizes[0] // 2))
    return sizes


def _npairs_on_first(size, anchors, positives, count):
    """The N-pair loss over the first `count` of the `size` leading pairs `[size, D]` each:
    anchor k's cross-entropy over the positives of all anchors, its own (k) the target."""
    anchors, positives = anchors[:size], positives[:size]
    valid = jnp.arange(size) < count
    logits = dot_similarity(anchors, positives)  # [anchor k, positive of anchor j]
    losses = masked_logsumexp(logits, valid[None, :], axis=1) - jnp.diagonal(logits)
    return masked_mean(losses, valid)


def lifted_structure(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
) -> jax.Array:
    """Lifted structured loss (Oh Song et al., CVPR 2016), equal to PML `LiftedStructureLoss`.

    With `d` the euclidean distance of L2-normalised embeddings (PML `LpDistance()`) and
    `N_i` the samples whose label differs from i's, every ordered positive pair (i, j),
    i != j, costs

        J_ij = log( sum_{k in N_i} exp(neg_margin - d_ik) + sum_{l in N_j} exp(neg_margin - d_jl) )
        l_ij = relu(J_ij + d_ij - pos_margin)^2 / 2

    and the loss is the mean of `l_ij` over ordered positive pairs (PML `MeanReducer`; each
    unordered pair counted twice, hence the 1/2 as in the paper's `1/(2|P|)`).
    0 when the batch has no positive pair or no negative pair.
    (PML's `GeneralizedLiftedStructureLoss` is a different, per-anchor formulation.)

    Args:
      embeddings: `[B, D]` or `[B, V, D]`.
      labels: `[B]` integer class labels.
      pos_margin: subtracted from positive distances (PML default 0).
      neg_margin: the margin alpha of the paper (PML default 1).

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
      >>> float(lifted_structure(x, jnp.array([0, 0, 1, 1]))) > 0
      True
    """
    x, y = flatten_views(embeddings, labels, "lifted_structure")
    n = x.shape[0]
    dist = euclidean_distance(x.astype(jnp.float32))  # Gram-based, like torch.cdist for B > 25
    same = y[:, None] == y[None, :]
    pos_mask = same & ~jnp.eye(n, dtype=bool)
    neg_mask = ~same
    neg_lse = masked_logsumexp(neg_margin - dist, neg_mask, 1)  # [N]
    pair = jnp.logaddexp(neg_lse[:, None], neg_lse[None, :]) + dist - pos_margin
    losses = jnp.square(jax.nn.relu(pair)) / 2.0
    return jnp.where(jnp.any(neg_mask), masked_mean(losses, pos_mask), 0.0)
