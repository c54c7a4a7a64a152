"""Pair- and triplet-based losses with PML's defaults and reductions.

- `contrastive`: Hadsell, Chopra & LeCun, CVPR 2006 (seed 002); PML `ContrastiveLoss`.
- `triplet_margin`: Weinberger & Saul, JMLR 2009; Schroff et al., CVPR 2015 (FaceNet);
  Hermans et al., 2017 (batch-hard); PML `TripletMarginLoss` (+ `BatchHardMiner`,
  `TripletMarginMiner(type_of_triplets="semihard")`).
- `multi_similarity`: Wang et al., CVPR 2019; PML `MultiSimilarityLoss`.

All take `embeddings [B, D]` or `[B, V, D]` (views share their sample's label) and integer
`labels [B]`, compute in float32 and return a scalar. `distance` names a measure of
`himl.distances`: "euclidean" (PML `LpDistance()`: L2-normalised, p=2), "squared_euclidean"
(`LpDistance(power=2)`), "cosine" (`CosineSimilarity()`) or "dot" (raw dot product). With a
similarity every inequality flips, as in PML.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from himl.distances import is_similarity, pairwise
from himl.losses.checks import check_choice, check_distance, check_positive, flatten_views
from himl.losses.reductions import masked_logsumexp, mean_over_nonzero
from himl.mining import batch_hard, label_masks, triplet_sums_chunked, triplet_sums_sorted

TRIPLET_MINING = ("all", "batch_hard", "semi_hard")


def prepare(embeddings, labels, loss_name: str, distance: str):
    """Checks inputs; returns `(mat [N, N] float32, is_similarity, pos_mask, neg_mask)`."""
    check_distance(loss_name, distance)
    x, y = flatten_views(embeddings, labels, loss_name)
    mat = pairwise(distance, x.astype(jnp.float32))
    pos, neg = label_masks(y)
    return mat, is_similarity(distance), pos, neg


def _margin(x, y, inverted: bool):
    """PML `BaseDistance.margin`: `x - y` for a distance, `y - x` for a similarity."""
    return y - x if inverted else x - y


def contrastive(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    pos_margin: float = 0.0,
    neg_margin: float = 1.0,
    distance: str = "euclidean",
) -> jax.Array:
    """Contrastive loss, equal to PML `ContrastiveLoss(pos_margin, neg_margin, distance)`.

    Positive pairs (i != j, same label) cost `relu(d_ij - pos_margin)`, negative pairs
    `relu(neg_margin - d_ij)` (flipped for a similarity: `relu(pos_margin - s_ij)` and
    `relu(s_ij - neg_margin)`). Each of the two terms is reduced by "average over non-zero"
    (mean of the strictly positive pair losses, 0 if none); the loss is their sum.
    `distance="squared_euclidean"` gives the classic `y d^2 + (1 - y) relu(m^2 - d^2)` of
    Hadsell et al. (pass `neg_margin=m**2`).

    Args:
      embeddings: `[B, D]` or `[B, V, D]`.
      labels: `[B]` integers.
      pos_margin, neg_margin: margins (PML defaults 0 and 1).
      distance: one of "euclidean" (default), "squared_euclidean", "cosine", "dot".

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0]])
      >>> float(contrastive(x, jnp.array([0, 0, 1])))  # every pair satisfies its margin
      0.0
    """
    mat, inv, pos, neg = prepare(embeddings, labels, "contrastive", distance)
    pos_loss = jax.nn.relu(_margin(mat, pos_margin, inv))
    neg_loss = jax.nn.relu(_margin(neg_margin, mat, inv))
    return mean_over_nonzero(pos_loss, pos) + mean_over_nonzero(neg_loss, neg)


def triplet_margin(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    margin: float = 0.05,
    swap: bool = False,
    smooth_loss: bool = False,
    mining: str = "all",
    distance: str = "euclidean",
) -> jax.Array:
    """Triplet margin loss, equal to PML `TripletMarginLoss(margin, swap, smooth_loss)`.

    Each triplet (anchor a, positive p != a, negative n) costs
    `relu(d_ap - d_an + margin)` (`softplus` if `smooth_loss`; with `swap`, `d_an` is
    replaced by `min(d_an, d_pn)`); flipped for a similarity. Reduction: average over the
    triplets with a non-zero loss (PML `AvgNonZeroReducer`), 0 if there are none.

    Mining (which triplets):
      - "all" (PML default, `triplets_per_anchor="all"`): every triplet. Computed in O(B^2)
        memory by sorting each anchor's negative distances (O(B^2 log B) time); `swap` or
        `smooth_loss` use a blockwise, rematerialised O(B^3)-time loop instead.
      - "batch_hard": for each anchor its hardest positive and hardest negative (PML
        `BatchHardMiner`), one triplet per anchor (Hermans et al., 2017).
      - "semi_hard": triplets with `0 < d_an - d_ap <= margin`, i.e. PML
        `TripletMarginMiner(margin, type_of_triplets="semihard")` with the loss's margin.

    Args:
      embeddings: `[B, D]` or `[B, V, D]`.
      labels: `[B]` integers.
      margin: PML default 0.05.
      swap, smooth_loss: PML options (default False).
      mining: "all", "batch_hard" or "semi_hard".
      distance: one of "euclidean" (default), "squared_euclidean", "cosine", "dot".

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [0.9, 0.1], [0.0, 1.0], [0.1, 0.9]])
      >>> float(triplet_margin(x, jnp.array([0, 0, 1, 1])))
      0.0
    """
    check_choice("triplet_margin", "mining", mining, TRIPLET_MINING)
    if mining != "all" and swap:
        raise ValueError("triplet_margin: swap is only supported with mining='all'")
    mat, inv, pos, neg = prepare(embeddings, labels, "triplet_margin", distance)
    d = -mat if inv else mat  # larger = farther from here on

    def violation(d_ap, d_an):
        v = d_ap - d_an + margin
        return jax.nn.softplus(v) if smooth_loss else jax.nn.relu(v)

    if mining == "batch_hard":
        d_ap, d_an, valid = batch_hard(d, pos, neg)
        return mean_over_nonzero(violation(d_ap, d_an), valid)
    if not (swap or smooth_loss):
        total, count = triplet_sums_sorted(d, pos, neg, margin, semi_hard=mining == "semi_hard")
        return total / jnp.maximum(count, 1)

    def per_triplet(d_ap, d_an, d_pn):
        if swap:
            d_an = jnp.minimum(d_an, d_pn)
        loss = violation(d_ap, d_an)
        if mining == "semi_hard":  # PML's miner: 0 < d_an - d_ap <= margin (softplus is
            # never 0, so the margin bound must be explicit here)
            loss = jnp.where((d_an > d_ap) & (d_an - d_ap <= margin), loss, 0.0)
        return loss

    total, count = triplet_sums_chunked(d, pos, neg, per_triplet)
    return total / jnp.maximum(count, 1)


def multi_similarity(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    alpha: float = 2.0,
    beta: float = 50.0,
    base: float = 0.5,
    distance: str = "cosine",
) -> jax.Array:
    """Multi-similarity loss (Wang et al., CVPR 2019), equal to PML `MultiSimilarityLoss`.

    For each anchor i, with `s` the cosine similarity:
    `l_i = 1/alpha log(1 + sum_{p in P(i)} exp(-alpha (s_ip - base)))
          + 1/beta log(1 + sum_{n in N(i)} exp(beta (s_in - base)))`
    (a term is 0 when its set is empty); the loss is the mean of `l_i` over *all* anchors
    (PML's default `MeanReducer`, no pair mining). A batch without any pair gives 0.

    Args:
      embeddings: `[B, D]` or `[B, V, D]`.
      labels: `[B]` integers.
      alpha, beta, base: PML defaults 2, 50, 0.5.
      distance: "cosine" (default), or "dot", "euclidean", "squared_euclidean" (for a
        distance the exponents flip sign, as in PML).

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax.numpy as jnp
      >>> x = jnp.array([[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]])
      >>> round(float(multi_similarity(x, jnp.array([0, 0, 1, 1]))), 4)  # log(1 + e^-1) / 2
      0.1566
    """
    check_positive("multi_similarity", alpha=alpha, beta=beta)
    mat, inv, pos, neg = prepare(embeddings, labels, "multi_similarity", distance)
    # PML lmu.logsumexp(..., add_one=True) per anchor: log(1 + sum e^z), 0 for an empty set.
    pos_term = masked_logsumexp(alpha * _margin(mat, base, inv), pos, 1, add_one=True) / alpha
    neg_term = masked_logsumexp(beta * _margin(base, mat, inv), neg, 1, add_one=True) / beta
    has_pairs = jnp.any(pos) | jnp.any(neg)
    return jnp.where(has_pairs, jnp.mean(pos_term + neg_term), 0.0)


__all__ = ["contrastive", "multi_similarity", "triplet_margin"]
