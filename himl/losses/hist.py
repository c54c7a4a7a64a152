"""HIST: the hypergraph-induced semantic tuplet loss (Lim et al., CVPR 2022; seed 001).

Semantics of the official code (ljin0429/HIST, `code/hist.py` classes `CDs2Hg` and `HGNN`,
`code/train.py`), in pure functions of explicit arrays:

- learnable class distributions: means `mu [C, D]` and log-variances `v [C, D]`, both
  Kaiming-normal with mode fan_out (`N(0, 2 / C)`); variance `s2 = exp(relu6(v))`;
- `hist_distances`: `d2_ic = sum_k (xh_ik - muh_ck)^2 / s2_ck` with `xh`, `muh` the
  L2-normalised embeddings and means (diagonal squared Mahalanobis distance);
- distribution loss `L_D = mean_i -log softmax_c(-tau d2_i)[y_i]` over all C classes;
- `hypergraph_incidence`: `H_ic = 1` if `y_i == c`, else `exp(-alpha d2_ic)`, for the
  classes present in the batch (semantic tuplets). H is *not* detached: the HGNN's loss
  reaches the distributions and the embeddings through it, as in the official code;
- `hypergraph_laplacian`: `G = Dv^-1/2 H De^-1 H^T Dv^-1/2` (unit hyperedge weights);
- the HGNN (`himl.models.hgnn.HGNN`, batch norm in train mode) classifies the *raw*
  embeddings (not L2-normalised: the official code passes the network output, after its
  LayerNorm, to both `CDs2Hg` and `HGNN`) into C logits; `L_CE` is their cross-entropy;
- `L_HIST = L_D + lambda_s * L_CE`. Training only: evaluation uses the embeddings.

Static shapes for jit: the official code gathers the columns of the classes present in the
batch; here H keeps all C columns and the absent classes' columns are zero. Their degree
`De = 0` is inverted as `1/0 := 0`, so G is exactly the official one. Views: `[B, V, D]`
embeddings are flattened, each view a sample with its label (the official code uses one view).

One documented difference: the official distribution loss takes `softmax` then `log` and
drops samples whose probability underflowed to exactly 0 in float32 (possible only when
`tau * (d2_i,y - min_c d2_ic) > ~87`); here `log_softmax` is used, which is finite for every
sample, so such samples are kept (with their large, correct loss) instead of dropped.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import optax

from himl.distances import l2_normalize
from himl.losses.checks import check_positive, flatten_views
from himl.models.hgnn import HGNN

_HI = jax.lax.Precision.HIGHEST


def _at_least_f32(x: jax.Array) -> jax.Array:
    """bf16/f16 -> float32; float32 and float64 unchanged."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def class_variances(log_vars: jax.Array) -> jax.Array:
    """`s2 = exp(relu6(log_vars))`, in `[1, e^6]`."""
    return jnp.exp(jax.nn.relu6(log_vars))


def hist_distances(x: jax.Array, means: jax.Array, log_vars: jax.Array) -> jax.Array:
    """Squared diagonal Mahalanobis distances `[N, C]` of normalised `x [N, D]` to the
    normalised `means [C, D]` with variances `exp(relu6(log_vars))`.

    Computed as three `[N, D] x [D, C]` products (no `[N, C, D]` tensor), in float32 at full
    precision, clamped at 0 against rounding.
    """
    xh = l2_normalize(_at_least_f32(x))
    muh = l2_normalize(_at_least_f32(means))
    inv = jnp.exp(-jax.nn.relu6(_at_least_f32(log_vars)))  # 1 / s2
    d2 = (
        jnp.einsum("nd,cd->nc", jnp.square(xh), inv, precision=_HI)
        - 2.0 * jnp.einsum("nd,cd->nc", xh, muh * inv, precision=_HI)
        + jnp.sum(jnp.square(muh) * inv, axis=-1)[None, :]
    )
    return jnp.maximum(d2, 0.0)


def hypergraph_incidence(d2: jax.Array, labels: jax.Array, *, alpha: float) -> jax.Array:
    """Incidence `H [N, C]`: 1 for the own class, `exp(-alpha d2)` for the other classes
    present in the batch, 0 for the classes absent from it (`labels` are indices 0..C-1)."""
    num_classes = d2.shape[1]
    one_hot = labels[:, None] == jnp.arange(num_classes)[None, :]
    present = jnp.any(one_hot, axis=0)
    h = jnp.where(one_hot, 1.0, jnp.exp(-alpha * d2))
    return jnp.where(present[None, :], h, 0.0)


def _safe_inverse(x: jax.Array, power: float) -> jax.Array:
    """`x ** -power` where `x > 0`, 0 elsewhere (`1/0 := 0`), with finite gradients."""
    positive = x > 0
    return jnp.where(positive, jnp.power(jnp.where(positive, x, 1.0), -power), 0.0)


def hypergraph_laplacian(h: jax.Array) -> jax.Array:
    """HGNN propagation matrix `G = Dv^-1/2 H De^-1 H^T Dv^-1/2` `[N, N]` of `H [N, E]`
    with unit hyperedge weights; zero degrees are inverted as 0."""
    dv_isqrt = _safe_inverse(jnp.sum(h, axis=1), 0.5)
    de_inv = _safe_inverse(jnp.sum(h, axis=0), 1.0)
    hs = h * dv_isqrt[:, None]
    return jnp.einsum("ne,me->nm", hs * de_inv[None, :], hs, precision=_HI)


def init_hist_variables(
    rng: jax.Array, *, num_classes: int, embedding_dim: int, hgnn_hidden: int = 512
) -> dict:
    """`{"params": {"means", "log_vars", "hgnn"}, "batch_stats": {"hgnn": ...}}` for C
    classes and D-dim embeddings, initialised as in the official code."""
    k_mu, k_var, k_hgnn = jax.random.split(rng, 3)
    std = math.sqrt(2.0 / num_classes)  # kaiming_normal_(mode="fan_out") of a [C, D] tensor
    shape = (num_classes, embedding_dim)
    hgnn = HGNN(num_classes=num_classes, hidden=hgnn_hidden).init(
        k_hgnn,
        jnp.zeros((1, embedding_dim), jnp.float32),
        jnp.ones((1, 1), jnp.float32),
        train=False,
    )
    return {
        "params": {
            "means": std * jax.random.normal(k_mu, shape, jnp.float32),
            "log_vars": std * jax.random.normal(k_var, shape, jnp.float32),
            "hgnn": hgnn["params"],
        },
        "batch_stats": {"hgnn": hgnn["batch_stats"]},
    }


def init_hist(
    rng: jax.Array, *, num_classes: int, embedding_dim: int, hgnn_hidden: int = 512
) -> dict:
    """The learnable arrays `{"means", "log_vars", "hgnn"}` passed to `hist_loss`."""
    return init_hist_variables(
        rng, num_classes=num_classes, embedding_dim=embedding_dim, hgnn_hidden=hgnn_hidden
    )["params"]


def hist_loss_and_aux(
    embeddings: jax.Array,
    labels: jax.Array,
    means: jax.Array,
    log_vars: jax.Array,
    hgnn: dict,
    hgnn_batch_stats: dict | None = None,
    *,
    tau: float = 32.0,
    alpha: float = 0.9,
    lambda_s: float = 1.0,
    hgnn_hidden: int = 512,
    train: bool = True,
) -> tuple[jax.Array, dict]:
    """`L_D + lambda_s L_CE` and `{"distribution", "ce", "batch_stats"}`.

    `batch_stats` are the HGNN's updated running statistics in train mode (its batch norm
    normalises with the batch's own statistics, so the loss does not depend on
    `hgnn_batch_stats` then) and `hgnn_batch_stats` unchanged with `train=False`.
    """
    check_positive("hist", tau=tau, hgnn_hidden=hgnn_hidden)
    x, y = flatten_views(embeddings, labels, "hist")
    num_classes = means.shape[0]
    if means.shape != (num_classes, x.shape[1]) or log_vars.shape != means.shape:
        raise ValueError(
            f"hist: means and log_vars must be [num_classes, {x.shape[1]}], got "
            f"{means.shape} and {log_vars.shape}"
        )
    width = hgnn["theta1"]["kernel"].shape[-1]
    if width != hgnn_hidden:
        raise ValueError(
            f"hist: hgnn_hidden={hgnn_hidden} but the HGNN parameters are {width} wide"
        )
    y = y.astype(jnp.int32)
    d2 = hist_distances(x, means, log_vars)
    distribution = optax.softmax_cross_entropy_with_integer_labels(-tau * d2, y).mean()
    g = hypergraph_laplacian(hypergraph_incidence(d2, y, alpha=alpha))
    module = HGNN(num_classes=num_classes, hidden=hgnn_hidden)
    variables = {"params": hgnn}
    if hgnn_batch_stats is not None:
        variables["batch_stats"] = hgnn_batch_stats
    if train:
        logits, updates = module.apply(
            variables, _at_least_f32(x), g, train=True, mutable=["batch_stats"]
        )
        new_stats = updates["batch_stats"]
    else:
        logits = module.apply(variables, _at_least_f32(x), g, train=False)
        new_stats = hgnn_batch_stats
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss = distribution + lambda_s * ce
    # A label outside 0..C-1 cannot raise under jit: make the loss NaN, not a wrong number.
    loss = jnp.where(jnp.all((y >= 0) & (y < num_classes)), loss, jnp.nan)
    return loss, {"distribution": distribution, "ce": ce, "batch_stats": new_stats}


def hist_loss(
    embeddings: jax.Array,
    labels: jax.Array,
    means: jax.Array,
    log_vars: jax.Array,
    hgnn: dict,
    hgnn_batch_stats: dict | None = None,
    *,
    tau: float = 32.0,
    alpha: float = 0.9,
    lambda_s: float = 1.0,
    hgnn_hidden: int = 512,
) -> jax.Array:
    """The HIST loss (HGNN batch norm in train mode) of embeddings `[B, D]` or `[B, V, D]`
    with class indices `labels [B]` in `0..C-1`, given the class distributions
    `means`, `log_vars` `[C, D]` and the HGNN parameters `hgnn` (see `init_hist`).

    Hyperparameters (official defaults of `code/train.py`): `tau` softmax scale of the
    distribution loss (32; CUB/Cars 32, SOP 16), `alpha` hardness of the incidence (0.9;
    CUB 1.1, Cars 0.9, SOP 2.0), `lambda_s` weight of the HGNN cross-entropy (1),
    `hgnn_hidden` the HGNN's hidden width (512; must match `hgnn`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> p = init_hist(jax.random.key(0), num_classes=3, embedding_dim=4, hgnn_hidden=8)
      >>> x = jax.random.normal(jax.random.key(1), (6, 4))
      >>> loss = hist_loss(x, jnp.array([0, 0, 1, 1, 2, 2]), **p, hgnn_hidden=8)
      >>> bool(jnp.isfinite(loss))
      True
    """
    loss, _ = hist_loss_and_aux(
        embeddings,
        labels,
        means,
        log_vars,
        hgnn,
        hgnn_batch_stats,
        tau=tau,
        alpha=alpha,
        lambda_s=lambda_s,
        hgnn_hidden=hgnn_hidden,
    )
    return loss
