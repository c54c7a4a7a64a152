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
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp

from himl.distances import cosine_similarity
from himl.losses.checks import check_embeddings_and_labels
from himl.losses.supcon import MASKED_LOGIT, masked_supcon

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


def _label_relations(labels: jax.Array) -> tuple[list[jax.Array], jax.Array]:
    """Pairwise prefix equality and the representative order of label rows.

    Returns:
      `(prefix_eq, before)`: `prefix_eq[k - 1]` is `[N, N]` bool, rows i and j agree on
      columns `0 .. k-1` (k = 1 .. L-1); `before[i, j]` is True when row i comes first in
      the lexicographic order of `labels[:, :L-1]`, ties broken by the batch index.
    """
    n, num_levels = labels.shape
    equal = jnp.ones((n, n), dtype=bool)
    before = jnp.zeros((n, n), dtype=bool)
    prefix_eq = []
    for col in range(num_levels - 1):
        a = labels[:, col]
        before = before | (equal & (a[:, None] < a[None, :]))
        equal = equal & (a[:, None] == a[None, :])
        prefix_eq.append(equal)
    index = jnp.arange(n)
    before = before | (equal & (index[:, None] < index[None, :]))
    return prefix_eq, before


def _per_view(mask: jax.Array, views: int) -> jax.Array:
    """Sample-level `[N, N]` mask -> view-level `[N*V, N*V]` (rows sample-major)."""
    return jnp.repeat(jnp.repeat(mask, views, axis=0), views, axis=1)


def _reference_loss(logits, labels, views, scale, penalty, clamp):
    """Official HMLC: per-level SupCon on a batch reduced to one sample per prefix."""
    n, num_levels = labels.shape
    prefix_eq, before = _label_relations(labels)
    not_self = ~jnp.eye(n * views, dtype=bool)
    keep = jnp.ones((n,), dtype=bool)
    total = jnp.zeros((), jnp.float32)
    running_max = None
    for level in range(1, num_levels):
        same_prefix = prefix_eq[num_levels - level - 1]
        keep_v = jnp.repeat(keep, views)
        denom = not_self & keep_v[:, None] & keep_v[None, :]
        losses, has_pos = masked_supcon(logits, _per_view(same_prefix, views) & denom, denom)
        # Official SupConLoss averages over *all* anchors of the (reduced) batch. With
        # V >= 2 every anchor has a positive (its other views); with V = 1 the official
        # code gives NaN for an anchor without one, so such anchors are left out here.
        # (Not `mean_over_nonzero`: a loss that underflows to exactly 0 still counts.)
        anchors = keep_v & has_pos
        level_loss = scale * jnp.sum(jnp.where(anchors, losses, 0.0))
        level_loss = level_loss / jnp.maximum(jnp.sum(anchors), 1)
        if clamp:  # HiConE: never below the loss of any finer level (already clamped).
            if running_max is not None:
                level_loss = jnp.maximum(level_loss, running_max)
            running_max = level_loss
        total = total + penalty(level) * level_loss
        # Official: `unique(layer_labels)` re-sorts the batch by prefix and keeps first
        # occurrences, so the survivor of a group is its member that comes first in
        # `before`. Representatives of a coarser group are always representatives of
        # their finer group, so this equals reducing the already reduced batch.
        keep = ~jnp.any(same_prefix & before.T, axis=1)
    return total / num_levels


def _paper_loss(logits, labels, views, penalty, clamp):
    """Published equations: no reduction, per-pair lambda weights and HiConE clamp."""
    n, num_levels = labels.shape
    prefix_eq, _ = _label_relations(labels)
    not_self = ~jnp.eye(n * views, dtype=bool)
    log_denominator = jax.nn.logsumexp(jnp.where(not_self, logits, MASKED_LOGIT), axis=1)
    # L_pair(i, p) = -log(exp(s_ip) / sum_{a != i} exp(s_ia)), the same at every level.
    pair = log_denominator[:, None] - logits
    finer_max = jnp.full((n * views,), MASKED_LOGIT, jnp.float32)
    total = jnp.zeros((), jnp.float32)
    for level in range(1, num_levels):
        pos = _per_view(prefix_eq[num_levels - level - 1], views) & not_self
        # HiConE (Eq. 6-7 with the erratum's l+1): clamp from below by the largest pair
        # loss of i at any finer level (positives nest, so a running max suffices).
        cost = jnp.maximum(pair, finer_max[:, None]) if clamp else pair
        num_pos = jnp.sum(pos, axis=1)
        per_anchor = jnp.sum(jnp.where(pos, cost, 0.0), axis=1) / jnp.maximum(num_pos, 1)
        has_pos = num_pos > 0
        level_loss = jnp.sum(jnp.where(has_pos, per_anchor, 0.0))
        level_loss = level_loss / jnp.maximum(jnp.sum(has_pos), 1)
        total = total + penalty(level) * level_loss
        if clamp:
            finer_max = jnp.maximum(finer_max, jnp.max(jnp.where(pos, pair, MASKED_LOGIT), axis=1))
    return total / num_levels


def _hierarchical_loss(
    embeddings, labels, name, *, temperature, mode, level_penalty, base_temperature, clamp
):
    embeddings, labels = jnp.asarray(embeddings), jnp.asarray(labels)
    check_embeddings_and_labels(embeddings, labels, name, label_rank=2)
    if mode not in MODES:
        raise ValueError(f"{name}: unknown mode {mode!r}; valid modes: {', '.join(MODES)}")
    if level_penalty not in LEVEL_PENALTIES:
        raise ValueError(
            f"{name}: unknown level_penalty {level_penalty!r}; valid: {', '.join(LEVEL_PENALTIES)}"
        )
    if labels.shape[1] < 1:
        raise ValueError(f"{name}: labels need at least one column, got {labels.shape}")
    for what, value in (("temperature", temperature), ("base_temperature", base_temperature)):
        if isinstance(value, (int, float)) and value <= 0:
            raise ValueError(f"{name}: {what} must be positive, got {value}")
    if embeddings.ndim == 2:
        embeddings = embeddings[:, None, :]
    n, views, dim = embeddings.shape
    # float32 throughout (bf16 inputs included); rows are sample-major: r -> sample r // V.
    x = embeddings.astype(jnp.float32).reshape(n * views, dim)
    logits = cosine_similarity(x) / temperature
    penalty = LEVEL_PENALTIES[level_penalty]
    if mode == "reference":
        scale = temperature / base_temperature
        return _reference_loss(logits, labels, views, scale, penalty, clamp)
    return _paper_loss(logits, labels, views, penalty, clamp)


_ARGS_DOC = """
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


def himulcon(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    mode: str = "reference",
    level_penalty: str = "exp",
    base_temperature: float = DEFAULT_BASE_TEMPERATURE,
) -> jax.Array:
    """HiMulCon: per-level contrastive losses weighted by `lambda(l)`.

    level_penalty: "exp" `lambda(l) = e^(1/l)` (official training script), "pow2"
    `2^(1/l)` (the official HMLC class default) or "none" (1); finer levels weigh more.
    """
    return _hierarchical_loss(
        embeddings, labels, "himulcon", temperature=temperature, mode=mode,
        level_penalty=level_penalty, base_temperature=base_temperature, clamp=False,
    )  # fmt: skip


def hicone(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    mode: str = "reference",
    base_temperature: float = DEFAULT_BASE_TEMPERATURE,
) -> jax.Array:
    """HiConE (Eq. 6): a coarser level never costs less than a finer one.

    Reference mode clamps each level's loss by the largest loss of the finer levels;
    paper mode clamps each pair's loss by the largest of the anchor's finer-level pair
    losses. No level penalty (the paper's HiConE has none), so no `level_penalty`.
    """
    return _hierarchical_loss(
        embeddings, labels, "hicone", temperature=temperature, mode=mode,
        level_penalty="none", base_temperature=base_temperature, clamp=True,
    )  # fmt: skip


def himulcone(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    temperature: float = DEFAULT_TEMPERATURE,
    mode: str = "reference",
    level_penalty: str = "exp",
    base_temperature: float = DEFAULT_BASE_TEMPERATURE,
) -> jax.Array:
    """HiMulConE (Eq. 7): the HiConE clamp first, then the HiMulCon weight `lambda(l)`.

    This is the official training default (`--loss hmce`, `layer_penalty=torch.exp`).
    """
    return _hierarchical_loss(
        embeddings, labels, "himulcone", temperature=temperature, mode=mode,
        level_penalty=level_penalty, base_temperature=base_temperature, clamp=True,
    )  # fmt: skip


for _fn in (himulcon, hicone, himulcone):
    if _fn.__doc__:  # None under `python -OO`
        _fn.__doc__ += _ARGS_DOC
del _fn
