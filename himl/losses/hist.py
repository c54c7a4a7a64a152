"""HIST: the hypergraph-induced semantic tuplet loss (Lim et al., CVPR 2022; seed 001).

Usage, like any loss with state (the registry entry describes it the same way):

    variables = init_hist(rng, num_classes=C, embedding_dim=D)      # hgnn_hidden=512
    loss, batch_stats = hist(embeddings, labels, variables)         # train=True
    variables = {**variables, "batch_stats": batch_stats}
    out = hist_outputs(embeddings, labels, variables)  # H, G, logits, ... for inspection

`variables` is `{"params": {"means", "log_vars", "hgnn"}, "batch_stats": {"hgnn"}}`; the
HGNN's width is read from its parameters, never repeated.

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

import flax.struct
import jax
import jax.numpy as jnp
import optax

from himl.distances import at_least_f32, l2_normalize, mahalanobis_diag_distance
from himl.losses.checks import (
    check_class_labels,
    check_non_negative,
    check_positive,
    flatten_views,
    nan_unless_class_labels,
)
from himl.models.hgnn import HGNN

_HI = jax.lax.Precision.HIGHEST


def hist_distances(x: jax.Array, means: jax.Array, log_vars: jax.Array) -> jax.Array:
    """Squared diagonal Mahalanobis distances `[N, C]` of normalised `x [N, D]` to the
    normalised `means [C, D]` with per-class variances `s2 = exp(relu6(log_vars))`
    (`himl.distances.mahalanobis_diag_distance`, float32 or wider)."""
    s2 = jnp.exp(jax.nn.relu6(at_least_f32(log_vars)))
    xh, muh = l2_normalize(at_least_f32(x)), l2_normalize(at_least_f32(means))
    return mahalanobis_diag_distance(xh, muh, s2=s2)


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


def init_hist(
    rng: jax.Array, *, num_classes: int, embedding_dim: int, hgnn_hidden: int = 512
) -> dict:
    """HIST's variables for C classes and D-dim embeddings, initialised as the official code:

        {"params": {"means": [C, D], "log_vars": [C, D], "hgnn": HGNN parameters},
         "batch_stats": {"hgnn": the HGNN's running statistics}}

    `hgnn_hidden` is the HGNN's hidden width (official `--hgnn-hidden`, 512).
    """
    check_positive("hist", num_classes=num_classes, hgnn_hidden=hgnn_hidden)
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


@flax.struct.dataclass
class HistOutputs:
    """Everything one HIST evaluation computes (a pytree: return it from `jit`).

    Shapes for N samples (embeddings `[B, V, D]` count as N = B * V) and C classes:
      loss: `L_D + lambda_s * L_CE`, scalar (NaN if a label is outside 0..C-1).
      distribution: `L_D`, the distribution (softmax over -tau * distances) loss.
      ce: `L_CE`, the HGNN's cross-entropy.
      distances: `[N, C]` squared Mahalanobis distances to the class distributions.
      incidence: `[N, C]` the semantic-tuplet hypergraph H (absent classes' columns 0).
      propagation: `[N, N]` the HGNN propagation matrix G.
      logits: `[N, C]` the HGNN's class logits.
      batch_stats: the new `variables["batch_stats"]` (unchanged with `train=False`).
    """

    loss: jax.Array
    distribution: jax.Array
    ce: jax.Array
    distances: jax.Array
    incidence: jax.Array
    propagation: jax.Array
    logits: jax.Array
    batch_stats: dict


def _check_variables(variables, embedding_dim: int) -> tuple[dict, dict, int]:
    """`(params, batch_stats, num_classes)` of `init_hist`'s variables, or a ValueError."""
    if not isinstance(variables, dict) or set(variables) != {"params", "batch_stats"}:
        got = sorted(variables) if isinstance(variables, dict) else type(variables).__name__
        raise ValueError(
            f"hist: variables must be init_hist's {{'params', 'batch_stats'}}, got {got}"
        )
    params, stats = variables["params"], variables["batch_stats"]
    if set(params) != {"means", "log_vars", "hgnn"} or set(stats) != {"hgnn"}:
        raise ValueError(
            f"hist: variables must hold params means, log_vars, hgnn and batch_stats hgnn "
            f"(see init_hist), got params {sorted(params)}, batch_stats {sorted(stats)}"
        )
    means, log_vars = params["means"], params["log_vars"]
    num_classes = means.shape[0]
    if means.shape != (num_classes, embedding_dim) or log_vars.shape != means.shape:
        raise ValueError(
            f"hist: means and log_vars must be [num_classes, {embedding_dim}], got "
            f"{means.shape} and {log_vars.shape}"
        )
    return params, stats, num_classes


def hist_outputs(
    embeddings: jax.Array,
    labels: jax.Array,
    variables: dict,
    *,
    train: bool = True,
    tau: float = 32.0,
    alpha: float = 0.9,
    lambda_s: float = 1.0,
) -> HistOutputs:
    """HIST's loss and its intermediate arrays (`HistOutputs`); `hist` returns its loss.

    `train=True` runs the HGNN's batch norm in train mode (normalising with the batch's own
    statistics, so the loss does not depend on the running ones) and returns the updated
    running statistics; `train=False` uses them and returns them unchanged.
    """
    # alpha > 0: exp(-alpha d2) of a negative alpha overflows (HIST's Eq. 4 kernel).
    check_positive("hist", tau=tau, alpha=alpha)
    check_non_negative("hist", lambda_s=lambda_s)
    x, y = flatten_views(embeddings, labels, "hist")
    params, stats, num_classes = _check_variables(variables, x.shape[1])
    check_class_labels(y, num_classes, "hist")
    y = y.astype(jnp.int32)
    d2 = hist_distances(x, params["means"], params["log_vars"])
    distribution = optax.softmax_cross_entropy_with_integer_labels(-tau * d2, y).mean()
    h = hypergraph_incidence(d2, y, alpha=alpha)
    g = hypergraph_laplacian(h)
    hidden = params["hgnn"]["theta1"]["kernel"].shape[-1]
    module = HGNN(num_classes=num_classes, hidden=hidden)
    hgnn_vars = {"params": params["hgnn"], "batch_stats": stats["hgnn"]}
    if train:
        logits, updates = module.apply(
            hgnn_vars, at_least_f32(x), g, train=True, mutable=["batch_stats"]
        )
        new_stats = {"hgnn": updates["batch_stats"]}
    else:
        logits = module.apply(hgnn_vars, at_least_f32(x), g, train=False)
        new_stats = stats
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, y).mean()
    loss = nan_unless_class_labels(distribution + lambda_s * ce, y, num_classes)
    return HistOutputs(
        loss=loss,
        distribution=distribution,
        ce=ce,
        distances=d2,
        incidence=h,
        propagation=g,
        logits=logits,
        batch_stats=new_stats,
    )


def hist(
    embeddings: jax.Array,
    labels: jax.Array,
    variables: dict,
    *,
    train: bool = True,
    tau: float = 32.0,
    alpha: float = 0.9,
    lambda_s: float = 1.0,
) -> tuple[jax.Array, dict]:
    """The HIST loss and the new batch statistics: `(loss, batch_stats)`.

    Args:
      embeddings: `[B, D]` or `[B, V, D]` (each view a sample with its label).
      labels: `[B]` class indices in `0..C-1` (outside: ValueError, or a NaN loss under jit).
      variables: `init_hist`'s `{"params", "batch_stats"}` (C classes, D dimensions).
      train: batch norm of the HGNN in train mode (the official training) or eval mode.
      tau: softmax scale of the distribution loss (official 32; CUB/Cars 32, SOP 16).
      alpha: hardness of the incidence (0.9; CUB 1.1, Cars 0.9, SOP 2.0).
      lambda_s: weight of the HGNN cross-entropy (1).

    Returns:
      Scalar float32 loss and `batch_stats` to put back into `variables` (unchanged with
      `train=False`).

    Example:
      >>> import jax, jax.numpy as jnp
      >>> v = init_hist(jax.random.key(0), num_classes=3, embedding_dim=4, hgnn_hidden=8)
      >>> x = jax.random.normal(jax.random.key(1), (6, 4))
      >>> loss, stats = hist(x, jnp.array([0, 0, 1, 1, 2, 2]), v)
      >>> v = {**v, "batch_stats": stats}  # the running statistics moved
      >>> bool(jnp.isfinite(loss))
      True
    """
    out = hist_outputs(
        embeddings, labels, variables, train=train, tau=tau, alpha=alpha, lambda_s=lambda_s
    )
    return out.loss, out.batch_stats
