"""Pairwise similarities and distances shared by the losses (seed 002, "Similarity Learning").

All functions take embeddings `[N, D]` (and optionally `[M, D]`) and return `[N, M]`.
Normalisation and square roots are made safe at zero, so zero vectors and identical
embeddings give finite values *and* finite gradients.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import NamedTuple

import jax
import jax.numpy as jnp

# PML / torch.nn.functional.normalize clamp the norm at 1e-12.
NORM_EPS = 1e-12


def l2_normalize(x: jax.Array, axis: int = -1, eps: float = NORM_EPS) -> jax.Array:
    """`x / max(||x||, eps)` along `axis`, with a finite gradient at `x = 0`."""
    sq = jnp.sum(jnp.square(x), axis=axis, keepdims=True)
    return x * jax.lax.rsqrt(jnp.maximum(sq, eps * eps))


def _gram(a: jax.Array, b: jax.Array) -> jax.Array:
    return jnp.einsum("nd,md->nm", a, b, preferred_element_type=jnp.float32)


@jax.custom_vjp
def self_gram(a: jax.Array) -> jax.Array:
    """`a @ a.T` `[N, N]` accumulated in float32, for `a [N, D]`.

    Autodiff of `a @ a.T` differentiates each operand apart: two `[N, N] x [N, D]`
    products, `G a + G^T a` for the cotangent G. On the CPU the backward pass here is one,
    `(G + G^T) a`. The self-pairwise losses (contrastive, triplet, multi-similarity, NTXent,
    lifted structure) are built on it: forward + backward at B = 1,024, D = 512 on one CPU
    thread measured 1.39x faster for contrastive (70.9 -> 51.1 ms), 1.25x for lifted
    structure and 1.06-1.12x for the others (XLA's CPU transpose in `G + G^T` costs back
    part of the saved product). Accelerators keep the two products: there G is sharded by
    rows over the mesh, and its transpose would move all `N^2` entries between devices
    where the second product needs an `[N, D]` reduction. A `custom_vjp`, so reverse mode
    only (no `jax.jvp`).
    """
    return _gram(a, a)


def _self_gram_fwd(a):
    return _gram(a, a), a


def _times(w, a):
    """`w @ a` for `w [N, N]` float32 and `a [N, D]`, computed like the forward product."""
    return jnp.einsum("nm,md->nd", w.astype(a.dtype), a, preferred_element_type=jnp.float32)


def _self_gram_bwd(a, g):
    if jax.default_backend() == "cpu":
        return (_times(g + g.T, a).astype(a.dtype),)
    return ((_times(g, a) + _times(g.T, a)).astype(a.dtype),)


self_gram.defvjp(_self_gram_fwd, _self_gram_bwd)


def dot_similarity(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """`a @ b.T` accumulated in float32 (bf16 inputs stay fast on accelerators); `b=None`
    is `self_gram(a)` (one product in the backward pass, not two)."""
    return self_gram(a) if b is None else _gram(a, b)


def cosine_similarity(a: jax.Array, b: jax.Array | None = None) -> jax.Array:
    """Cosine similarity `[N, M]` of L2-normalised rows (PML `CosineSimilarity`)."""
    a = l2_normalize(a)
    return dot_similarity(a, None if b is None else l2_normalize(b))


def safe_sqrt(x: jax.Array) -> jax.Array:
    """`sqrt(max(x, 0))` whose gradient is 0 (not inf/NaN) where `x <= 0`. NaN stays NaN
    (as `torch.sqrt(clamp(x, min=0))` in PML): a NaN embedding must not become a distance
    of 0, which would give a finite loss with NaN gradients."""
    positive = x > 0
    return jnp.where(positive, jnp.sqrt(jnp.where(positive, x, 1.0)), jnp.where(x <= 0, 0.0, x))


def _squared_norms_and_gram(a: jax.Array, b: jax.Array | None):
    sq_a = jnp.sum(jnp.square(a.astype(jnp.float32)), axis=-1)
    sq_b = sq_a if b is None else jnp.sum(jnp.square(b.astype(jnp.float32)), axis=-1)
    return sq_a, sq_b, dot_similarity(a, b)


def squared_euclidean_distance(
    a: jax.Array, b: jax.Array | None = None, *, normalize: bool = True
) -> jax.Array:
    """`||a_i - b_j||^2` `[N, M]` (PML `LpDistance(power=2)`; rows L2-normalised first
    unless `normalize=False`). Computed from the Gram matrix (O(N*M) memory), clamped at 0;
    with `b=None` the diagonal is exactly 0."""
    if normalize:
        a = l2_normalize(a)
        b = None if b is None else l2_normalize(b)
    sq_a, sq_b, gram = _squared_norms_and_gram(a, b)
    d2 = jnp.maximum(sq_a[:, None] + sq_b[None, :] - 2.0 * gram, 0.0)
    if b is None:
        d2 = jnp.where(jnp.eye(a.shape[0], dtype=bool), 0.0, d2)
    return d2


def euclidean_distance(
    a: jax.Array, b: jax.Array | None = None, *, normalize: bool = True
) -> jax.Array:
    """`||a_i - b_j||` `[N, M]`, PML's default `LpDistance()` (normalise, p=2, power 1).

    Uses a safe square root: identical rows give distance 0 with a finite (zero) gradient.

    Example:
      >>> import jax.numpy as jnp
      >>> d = euclidean_distance(jnp.array([[1.0, 0.0], [0.0, 2.0]]))
      >>> [round(float(v), 4) for v in d[0]]
      [0.0, 1.4142]
    """
    return safe_sqrt(squared_euclidean_distance(a, b, normalize=normalize))


def at_least_f32(x: jax.Array) -> jax.Array:
    """bf16/f16 -> float32; float32 and float64 unchanged."""
    return x.astype(jnp.promote_types(x.dtype, jnp.float32))


def mahalanobis_diag_distance(
    a: jax.Array, b: jax.Array | None = None, *, s2: jax.Array
) -> jax.Array:
    """Diagonal Mahalanobis `(a_i - b_j)^T diag(1 / s2) (a_i - b_j)` `[N, M]` (no square root).

    Args:
      a: `[N, D]`; b: `[M, D]` (default `a`).
      s2: positive variances, `[D]` (one metric) or `[M, D]` (one per reference row, as HIST's
        per-class variances). Inputs are used as given (normalise them first if wanted).

    Computed as three `[N, D] x [D, M]` products (no `[N, M, D]` tensor) at full precision
    (the expansion subtracts nearly equal terms, so reduced-precision matmuls would show),
    in float32 (float64 inputs stay float64), clamped at 0 against rounding.
    """
    b_ = a if b is None else b
    s2 = jnp.asarray(s2)
    if s2.ndim not in (1, 2) or s2.shape[-1] != a.shape[-1]:
        raise ValueError(f"mahalanobis: s2 must be [D] or [M, D], got {s2.shape}")
    if s2.ndim == 2 and s2.shape[0] != b_.shape[0]:
        raise ValueError(f"mahalanobis: s2 {s2.shape} does not match {b_.shape[0]} rows")
    dtype = jnp.promote_types(jnp.result_type(a, b_, s2), jnp.float32)
    af, bf = a.astype(dtype), b_.astype(dtype)
    inv = jnp.broadcast_to(1.0 / s2.astype(dtype), bf.shape)
    hi = jax.lax.Precision.HIGHEST
    d2 = (
        jnp.einsum("nd,md->nm", jnp.square(af), inv, precision=hi)
        - 2.0 * jnp.einsum("nd,md->nm", af, bf * inv, precision=hi)
        + jnp.sum(jnp.square(bf) * inv, axis=-1)[None, :]
    )
    d2 = jnp.maximum(d2, 0.0)
    if b is None and s2.ndim == 1:
        d2 = jnp.where(jnp.eye(a.shape[0], dtype=bool), 0.0, d2)
    return d2


class _Measure(NamedTuple):
    fn: Callable[..., jax.Array]
    # A similarity is "inverted" in PML's sense: larger means closer, so every margin
    # inequality flips.
    is_similarity: bool
    # Needs a metric (`s2=`) that the caller learns or supplies: not a plain `distance=`.
    needs_metric: bool = False


_MEASURES = {
    "euclidean": _Measure(euclidean_distance, False),
    "squared_euclidean": _Measure(squared_euclidean_distance, False),
    "cosine": _Measure(cosine_similarity, True),
    "dot": _Measure(dot_similarity, True),
    "mahalanobis": _Measure(mahalanobis_diag_distance, False, needs_metric=True),
}
MEASURES = tuple(_MEASURES)
# The measures a loss's `distance=` hyperparameter can name.
LOSS_MEASURES = tuple(name for name, m in _MEASURES.items() if not m.needs_metric)


def _lookup(name: str) -> _Measure:
    if name not in _MEASURES:
        raise ValueError(f"unknown distance {name!r}; valid names: {', '.join(MEASURES)}")
    return _MEASURES[name]


def is_similarity(name: str) -> bool:
    """True if `name` is a similarity (larger = closer; PML's `is_inverted`)."""
    return _lookup(name).is_similarity


def pairwise(name: str, a: jax.Array, b: jax.Array | None = None, **kwargs) -> jax.Array:
    """`[N, M]` matrix of measure `name` (one of `MEASURES`) between rows of `a` and `b`.

    `kwargs` go to the measure (`s2=` for "mahalanobis", `normalize=` for the euclidean
    ones). Example: `pairwise("euclidean", x)` is PML's `LpDistance()(x)`.
    """
    fn = _lookup(name).fn
    if a.ndim != 2 or (b is not None and (b.ndim != 2 or b.shape[-1] != a.shape[-1])):
        raise ValueError(
            f"pairwise({name!r}): need [N, D] and [M, D], got {a.shape} and "
            f"{None if b is None else b.shape}"
        )
    return fn(a, b, **kwargs).astype(jnp.float32)
