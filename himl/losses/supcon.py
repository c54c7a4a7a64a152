"""Supervised contrastive loss (Khosla et al., NeurIPS 2020), as PML's `SupConLoss`.

`supcon` takes its denominators from one pass over the logits (`himl.losses.class_lse`:
the symmetric half, blocked on the CPU, c x c blocks recomputed in the backward pass with
`chunk_size=c`) and its positives as group sums (`himl.losses.group_sums`), never an
`[N, N]` mask. `masked_supcon` is the same loss on a given logit matrix and explicit masks,
a building block for variants. `ntxent` is PML's `NTXentLoss` (one term per positive pair).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from himl.distances import is_similarity, l2_normalize, pairwise
from himl.losses.checks import check_chunk_size, check_distance, check_positive, flatten_views
from himl.losses.class_lse import class_logsumexp
from himl.losses.group_sums import group_ids, positive_sums
from himl.losses.reductions import (  # noqa: F401 (MASKED_LOGIT re-exported)
    MASKED_LOGIT,
    masked_logsumexp,
    masked_mean,
    mean_over_nonzero,
)
from himl.mining import label_masks


def masked_supcon(
    logits: jax.Array, pos_mask: jax.Array, denom_mask: jax.Array
) -> tuple[jax.Array, jax.Array]:
    """Per-anchor SupCon losses from logits and masks.

    `l_i = -mean_{p: pos_mask[i, p]} [logits_ip - logsumexp_{k: denom_mask[i, k]} logits_ik]`.

    Args:
      logits: `[N, M]` similarities already divided by the temperature.
      pos_mask: `[N, M]` bool, positives of each anchor (must be a subset of denom_mask).
      denom_mask: `[N, M]` bool, entries in each anchor's denominator (self excluded).

    Returns:
      `(losses [N], has_positive [N])`, float32 losses, 0 where an anchor has no positive.
    """
    logits = logits.astype(jnp.float32)
    # An anchor with an empty denominator has no positive either: its 0 is never used.
    log_denominator = masked_logsumexp(logits, denom_mask, axis=1)
    log_prob = logits - log_denominator[:, None]
    return -masked_mean(log_prob, pos_mask, axis=1), jnp.any(pos_mask, axis=1)


def supcon(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 0.1,
    chunk_size: int | None = None,
) -> jax.Array:
    """Supervised contrastive loss, equal to PML `SupConLoss(temperature)`.

    Args:
      embeddings: `[B, D]`, or `[B, V, D]` with V views of each sample (views of one
        sample share its label, so they are positives of each other).
      labels: `[B]` integer class labels.
      temperature: softmax temperature t (PML default 0.1).
      chunk_size: None: even blocks of <= 512 rows on the CPU, one `[N, N]` pass on
        accelerators; an int c computes c x c blocks of the logits at a time and recomputes
        them in the backward pass, so memory is O(N * (c + D)) instead of O(N^2), with the
        same value and gradient (N = B * V).

    Returns:
      Scalar: the mean over anchors with at least one positive of
      `-mean_p [s_ip / t - logsumexp_{k != i} s_ik / t]`, `s` the cosine similarity.
      As in PML, a batch with no positive pair or no negative pair gives 0.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
      >>> float(supcon(x, jnp.array([0, 0, 1, 1]))) < 0.01
      True
    """
    x, y = flatten_views(embeddings, labels, "supcon")
    check_positive("supcon", temperature=temperature)
    check_chunk_size("supcon", chunk_size)
    n = x.shape[0]
    xn = l2_normalize(x.astype(jnp.float32))
    z = xn * jax.lax.rsqrt(jnp.asarray(temperature, jnp.float32))
    log_denominator = class_logsumexp(z, jnp.zeros((n,), jnp.int32), 1, chunk_size)[:, 0]
    pos, num_pos = positive_sums(xn, group_ids(y), jnp.ones((n,), jnp.float32), temperature)
    losses = jnp.where(num_pos > 0, log_denominator - pos / jnp.maximum(num_pos, 1.0), 0.0)
    has_pairs = jnp.any(num_pos > 0) & jnp.any(num_pos < n - 1)  # a positive and a negative
    return jnp.where(has_pairs, mean_over_nonzero(losses), 0.0)


def ntxent(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = 0.07,
    distance: str = "cosine",
) -> jax.Array:
    """NT-Xent / InfoNCE (Chen et al., SimCLR, ICML 2020; Sohn, NeurIPS 2016), as PML's
    `NTXentLoss(temperature)`.

    One term per positive pair (a, p) (same label, p != a), whose denominator holds that
    positive and the anchor's negatives only (not its other positives):
    `l_ap = -log(exp(s_ap / t) / (exp(s_ap / t) + sum_{n in N(a)} exp(s_an / t)))`,
    `s` the cosine similarity (a distance enters as `-d`). The loss is the mean of `l_ap`
    over all positive pairs (PML `MeanReducer`); 0 if the batch has no positive pair or no
    negative pair. Unlike PML no `1e-38` is added inside the log, which differs only when a
    single term exceeds about 87.

    Args:
      embeddings: `[B, D]`, or `[B, V, D]` (e.g. V = 2 augmented views, the SimCLR setup
        with `labels = arange(B)`).
      labels: `[B]` integers.
      temperature: PML default 0.07.
      distance: "cosine" (default), "dot", "euclidean" or "squared_euclidean".

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> float(ntxent(x, jnp.array([0, 0, 1, 1]))) < 1e-5
      True
    """
    check_distance("ntxent", distance)
    check_positive("ntxent", temperature=temperature)
    x, y = flatten_views(embeddings, labels, "ntxent")
    mat = pairwise(distance, x.astype(jnp.float32))
    logits = (mat if is_similarity(distance) else -mat) / temperature
    pos, neg = label_masks(y)
    # log sum_{n in N(a)} exp(l_an); "-inf" (MASKED_LOGIT) for an anchor with no negative.
    log_neg = masked_logsumexp(logits, neg, axis=1, empty=MASKED_LOGIT)
    # -log(e^x / (e^x + e^L)) = softplus(L - x); L = -1e30 (no negative) gives 0.
    pair_losses = jax.nn.softplus(log_neg[:, None] - logits)
    loss = masked_mean(pair_losses, pos)
    return jnp.where(jnp.any(pos) & jnp.any(neg), loss, 0.0)
