"""Proxy-based losses: Proxy-Anchor, Proxy-NCA and Normalized-Softmax, as in PML.

Each loss learns one proxy per class, `proxies [C, D]`, passed as an explicit keyword
argument (gradients flow to it like to the embeddings), and created by the matching
`init_*(rng, *, num_classes, embedding_dim) -> {"proxies": [C, D]}` with the same
distribution as pytorch-metric-learning (PML); pass that dict as `**variables` (a dict
given as `proxies=` is refused). Labels are class indices in `0 .. C-1`;
a label outside that range would silently select no proxy (or a clipped one), so it is
rejected with a ValueError whenever the labels are concrete, and under `jit` (where
nothing can raise) it makes the loss NaN: never a plausible wrong number.

All three compute in float32 whatever the input dtype (bf16 embeddings or proxies are fine)
and are finite, with finite gradients, for every legal input (zero vectors included).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import jax
import jax.numpy as jnp

from himl.distances import cosine_similarity, squared_euclidean_distance
from himl.losses.checks import (
    check_class_labels,
    check_positive,
    flatten_views,
    nan_unless_class_labels,
)
from himl.losses.reductions import masked_logsumexp, masked_mean


def _check_proxies(x: jax.Array, y: jax.Array, proxies, loss_name: str) -> jax.Array:
    """Validates `proxies [C, D]` against embeddings `[N, D]` and (concrete) labels."""
    if isinstance(proxies, Mapping):  # the whole dict of `init_*`, not its array
        raise ValueError(
            f"{loss_name}: proxies= got a dict (keys {list(proxies)}), e.g. the variables "
            f"from init_{loss_name}; pass it as **variables or proxies=variables['proxies']"
        )
    proxies = jnp.asarray(proxies)
    if proxies.ndim != 2 or proxies.shape[1] != x.shape[1]:
        raise ValueError(
            f"{loss_name}: proxies must be [num_classes, {x.shape[1]}] to match the "
            f"embeddings, got shape {proxies.shape}"
        )
    if not jnp.issubdtype(proxies.dtype, jnp.floating):
        raise ValueError(f"{loss_name}: proxies must be floating point, got {proxies.dtype}")
    if proxies.shape[0] == 0:
        raise ValueError(f"{loss_name}: proxies must hold at least one class")
    check_class_labels(y, proxies.shape[0], loss_name)
    return proxies.astype(jnp.float32)


def _prepare(embeddings, labels, proxies, loss_name):
    x, y = flatten_views(embeddings, labels, loss_name)
    p = _check_proxies(x, y, proxies, loss_name)
    return x.astype(jnp.float32), y, p


def proxy_anchor(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    proxies: jax.Array,
    margin: float = 0.1,
    alpha: float = 32.0,
) -> jax.Array:
    """Proxy-Anchor loss (Kim et al., CVPR 2020), equal to PML `ProxyAnchorLoss`.

    With `s_ic` the cosine similarity of sample i and proxy c, `P_c` the samples of class
    c and `C+` the classes present in the batch:

        loss = 1/|C+| sum_{c in C+} log(1 + sum_{i in P_c}   exp(-alpha (s_ic - margin)))
             + 1/C    sum_{c}       log(1 + sum_{i notin P_c} exp( alpha (s_ic + margin)))

    Args:
      embeddings: `[B, D]` or `[B, V, D]` (views share their sample's label).
      labels: `[B]` integer class indices in `0 .. C-1` (outside: ValueError, or NaN
        under jit).
      proxies: `[C, D]` learnable class proxies (PML's `loss.proxies`):
        `init_proxy_anchor` returns `{"proxies": [C, D]}`, passed as `**variables`.
      margin: the margin delta (PML default 0.1).
      alpha: the scale (PML default 32).

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = init_proxy_anchor(jax.random.key(0), num_classes=3, embedding_dim=8)
      >>> x = jax.random.normal(jax.random.key(1), (6, 8))
      >>> loss = proxy_anchor(x, jnp.array([0, 0, 1, 1, 2, 2]), **p)
      >>> loss.shape
      ()
    """
    check_positive("proxy_anchor", alpha=alpha)
    x, y, p = _prepare(embeddings, labels, proxies, "proxy_anchor")
    num_classes = p.shape[0]
    cos = cosine_similarity(x, p)  # [N, C]
    pos_mask = jax.nn.one_hot(y, num_classes, dtype=jnp.bool_)
    pos_term = masked_logsumexp(-alpha * (cos - margin), pos_mask, 0, add_one=True)
    neg_term = masked_logsumexp(alpha * (cos + margin), ~pos_mask, 0, add_one=True)
    # mean over the classes present in the batch (C+) and over all C classes
    loss = masked_mean(pos_term, jnp.any(pos_mask, axis=0)) + jnp.mean(neg_term)
    return nan_unless_class_labels(loss, y, num_classes)


def proxy_nca(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    proxies: jax.Array,
    softmax_scale: float = 1.0,
) -> jax.Array:
    """Proxy-NCA loss (Movshovitz-Attias et al., ICCV 2017), equal to PML `ProxyNCALoss`.

    With `d_ic = ||x_i/|x_i| - p_c/|p_c| ||^2` (PML `LpDistance(power=2)`, normalised):

        loss = mean_i -log softmax_c(-softmax_scale * d_i)[y_i]

    The softmax runs over all C proxies (the own proxy included, as in PML; the paper's
    denominator leaves it out). Computed as a log-softmax, so it stays finite where PML's
    `softmax` underflows to 0 and PML drops the sample (only for huge `softmax_scale`).

    Args:
      embeddings: `[B, D]` or `[B, V, D]`.
      labels: `[B]` integer class indices in `0 .. C-1` (outside: ValueError, or NaN
        under jit).
      proxies: `[C, D]` learnable class proxies: `init_proxy_nca` returns
        `{"proxies": [C, D]}`, passed as `**variables`.
      softmax_scale: multiplies the negative squared distances (PML default 1).

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = init_proxy_nca(jax.random.key(0), num_classes=3, embedding_dim=8)
      >>> x = jax.random.normal(jax.random.key(1), (6, 8))
      >>> float(proxy_nca(x, jnp.array([0, 0, 1, 1, 2, 2]), **p)) > 0
      True
    """
    check_positive("proxy_nca", softmax_scale=softmax_scale)
    x, y, p = _prepare(embeddings, labels, proxies, "proxy_nca")
    dist2 = squared_euclidean_distance(x, p)  # normalises both
    log_prob = jax.nn.log_softmax(-softmax_scale * dist2, axis=1)
    own = jnp.take_along_axis(log_prob, y[:, None], axis=1)[:, 0]
    return nan_unless_class_labels(-jnp.mean(own), y, p.shape[0])


def normalized_softmax(
    embeddings: jax.Array,
    labels: jax.Array,
    *,
    proxies: jax.Array,
    temperature: float = 0.05,
) -> jax.Array:
    """Normalized-Softmax loss (Zhai & Wu, BMVC 2019), equal to PML `NormalizedSoftmaxLoss`.

        loss = mean_i -log softmax_c(cos(x_i, w_c) / temperature)[y_i]

    Args:
      embeddings: `[B, D]` or `[B, V, D]`.
      labels: `[B]` integer class indices in `0 .. C-1` (outside: ValueError, or NaN
        under jit).
      proxies: `[C, D]` class weights (PML's `loss.W` is `[D, C]`: pass `W.T`):
        `init_normalized_softmax` returns `{"proxies": [C, D]}`, passed as `**variables`.
      temperature: softmax temperature (PML default 0.05).

    Returns:
      Scalar float32 loss.

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = init_normalized_softmax(jax.random.key(0), num_classes=3, embedding_dim=8)
      >>> x = jax.random.normal(jax.random.key(1), (6, 8))
      >>> float(normalized_softmax(x, jnp.array([0, 0, 1, 1, 2, 2]), **p)) > 0
      True
    """
    check_positive("normalized_softmax", temperature=temperature)
    x, y, p = _prepare(embeddings, labels, proxies, "normalized_softmax")
    log_prob = jax.nn.log_softmax(cosine_similarity(x, p) / temperature, axis=1)
    own = jnp.take_along_axis(log_prob, y[:, None], axis=1)[:, 0]
    return nan_unless_class_labels(-jnp.mean(own), y, p.shape[0])


def init_proxy_anchor(rng: jax.Array, *, num_classes: int, embedding_dim: int) -> dict:
    """The variables `{"proxies": [C, D]}` of `proxy_anchor`, passed to it as `**variables`
    (or `proxies=variables["proxies"]`). Kaiming-normal with mode fan_out as in PML and the
    official code: `N(0, 2 / C)` (torch's fan_out of a `[C, D]` matrix is C)."""
    std = math.sqrt(2.0 / num_classes)
    return {"proxies": std * jax.random.normal(rng, (num_classes, embedding_dim), jnp.float32)}


def init_proxy_nca(rng: jax.Array, *, num_classes: int, embedding_dim: int) -> dict:
    """The variables `{"proxies": [C, D]}` of `proxy_nca`, passed to it as `**variables`
    (or `proxies=variables["proxies"]`), drawn from `N(0, 1)` (PML's default `normal_`)."""
    return {"proxies": jax.random.normal(rng, (num_classes, embedding_dim), jnp.float32)}


def init_normalized_softmax(rng: jax.Array, *, num_classes: int, embedding_dim: int) -> dict:
    """The variables `{"proxies": [C, D]}` (class weights) of `normalized_softmax`, passed
    to it as `**variables` (or `proxies=variables["proxies"]`), drawn from `N(0, 1)` (PML's
    default)."""
    return {"proxies": jax.random.normal(rng, (num_classes, embedding_dim), jnp.float32)}
